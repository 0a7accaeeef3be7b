"""The consume -> handle -> produce -> flush -> commit loop every service uses.

At-least-once: a batch is committed only after its outputs are acknowledged. A message that
cannot be decoded, or that the handler rejects as invalid, goes to the dead-letter topic with its
reason (never the note text) and the loop goes on. A transient failure (a model server or the bus
restarting: ``transient``) pauses the message and retries it with a capped exponential backoff for up
to ``retry_for_s``; any other error is retried ``max_attempts`` times; then it is dead-lettered
(``medserl deadletter replay`` puts it back). An id is remembered as processed only once its outputs
are acknowledged, so a redelivery after a failed flush is processed again, never skipped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from medserl.v1 import messages_pb2 as pb
from services.common import metrics
from services.common.auth import bus_auth
from services.common.bus import Bus, BusError, Consumer, Producer, Record, close_quietly
from services.common.fileio import write_atomic
from services.common.topics import DEAD_LETTER

log = logging.getLogger(__name__)


class InvalidInput(ValueError):
    """The message is well-formed protobuf but its content cannot be processed (bad note, bad ids)."""


# dead letters whose reason the worker itself wrote (never note text): safe to log
_OWN_REASONS = frozenset({"DecodeError", "WrongType", "TooLarge", "Poison", "Unauthenticated", "OutputTooLarge",
                          "OutputRefused", "InvalidInput"})


class _Interrupted(Exception):
    """A stop was asked for while a message waited out a transient failure: hand the batch back."""


def transient(exc: BaseException) -> bool:
    """Failures that go away by themselves (a server restarting, a broker election): worth waiting for."""
    from services.inference.base import InferenceError  # lazy: the verifier never loads a model

    return isinstance(exc, ConnectionError | TimeoutError | BusError | InferenceError)


@dataclass(frozen=True)
class Output:
    topic: str
    key: str
    message: Message


HandlerResult = Iterable[Output] | BaseException
BatchHandler = Callable[[list[Message]], Sequence[HandlerResult]]


def per_message(fn: Callable[[Message], Iterable[Output]]) -> BatchHandler:
    """Adapt a one-message handler to the batch interface, isolating each message's errors."""

    def handle(batch: list[Message]) -> list[HandlerResult]:
        results: list[HandlerResult] = []
        for message in batch:
            try:
                results.append(list(fn(message)))
            except Exception as exc:  # noqa: BLE001 - reported per message, never lost
                results.append(exc)
        return results

    return handle


class SeenIds:
    """A bounded memory of processed ids: skips redeliveries after a rebalance within one process."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


# bytes of the failed message a dead letter copies: none by default, so no note text rests on the
# dead-letter topic (PHI); the letter names the source topic, partition and offset, and
# `medserl deadletter replay` re-reads the message from there
DEAD_LETTER_PAYLOAD_BYTES = 0
DEAD_LETTER_KEY_BYTES = 512  # a key is an id; a longer one is cut (it was the attack, not the data)
MAX_MESSAGE_BYTES = 1_000_000  # default largest message read or written (the Kafka producer's limit)
_FRAME_BYTES = 4096  # what a record adds to key and value: headers, batch framing (generous)


def dead_letter(record: Record, service: str, reason: str, error_class: str, attempts: int = 1,
                max_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES) -> pb.DeadLetter:
    """The dead letter of ``record``: bounded whatever the record's size (issue 12: a 2 MB poison
    message made a 2 MB dead letter, over the producer's limit, and the worker died). The payload is
    cut to ``max_payload_bytes`` (0: ids and reason only; the message stays at its source offset)."""
    payload = record.value or b""
    kept = payload[: max(0, max_payload_bytes)]
    if len(kept) < len(payload):
        reason = f"{reason} [payload {len(payload)} bytes, {len(kept)} kept]"
    return pb.DeadLetter(
        source_topic=record.topic[:500],
        source_partition=record.partition,
        source_offset=record.offset,
        key=(record.key or b"")[:DEAD_LETTER_KEY_BYTES],
        payload=kept,
        reason=reason[:2000],
        error_class=error_class[:100],
        service=service,
        failed_unix_ms=int(time.time() * 1000),
        attempts=attempts,
    )


def has_unknown_fields(message: Message) -> bool:
    """Fields this schema does not know, at any depth: the sign of another type's bytes (a Rollout
    published to notes.seed parses as a Note with unknown fields; issue 12). Two C calls instead of a
    walk in Python (the walk was half the assessor's CPU per group): dropping the unknown fields
    shrinks the message only if it had some. Such a message is refused, so dropping them is harmless."""
    size = message.ByteSize()
    message.DiscardUnknownFields()
    return message.ByteSize() != size


class DeliveryTracker:
    """How many times each uncommitted record was handed to the handler without the batch completing.

    A record whose handler crashed the process (or whose delivery was killed) comes back; after
    ``max_deliveries`` it is poison and is dead-lettered unhandled, so it never crash-loops a service.
    A batch with a redelivered record is handled one record at a time, so only the culprit counts up.
    Deliveries that end in a bus failure are not counted (the bus, not the message, failed). With
    ``path`` the counts survive the crash they count (a small JSON file, written before each batch).
    """

    def __init__(self, path: str | Path | None = None, capacity: int = 10_000):
        self.path = Path(path) if path else None
        self.capacity = capacity
        self._counts: OrderedDict[str, int] = OrderedDict()
        if self.path is not None and self.path.exists():
            try:
                self._counts.update(json.loads(self.path.read_text()))
            except (OSError, ValueError):
                log.warning("delivery counts unreadable; starting from zero", extra={"path": str(self.path)})

    @staticmethod
    def _key(record: Record) -> str:
        return f"{record.topic}:{record.partition}:{record.offset}"

    def count(self, record: Record) -> int:
        return self._counts.get(self._key(record), 0)

    def redelivered(self, records: Sequence[Record]) -> bool:
        return any(self._key(r) in self._counts for r in records)

    def begin(self, records: Sequence[Record]) -> None:
        for record in records:
            key = self._key(record)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._counts.move_to_end(key)
        while len(self._counts) > self.capacity:
            self._counts.popitem(last=False)
        self._save()

    def undo(self, records: Sequence[Record]) -> None:
        for record in records:
            key = self._key(record)
            if self._counts.get(key, 0) <= 1:
                self._counts.pop(key, None)
            else:
                self._counts[key] -= 1
        self._save()

    def done(self, records: Sequence[Record]) -> None:
        for record in records:
            self._counts.pop(self._key(record), None)
        self._save()

    def _save(self) -> None:
        if self.path is not None:
            write_atomic(self.path, json.dumps(self._counts))


class StreamWorker:
    """Consumes ``topics`` as ``group_id``, decodes ``message_type``, hands batches to ``handler``."""

    def __init__(
        self,
        *,
        service: str,
        bus: Bus,
        topics: Sequence[str],
        group_id: str,
        message_type: type[Message],
        handler: BatchHandler,
        producer: Producer | None = None,
        message_id: Callable[[Message], str] | None = None,
        dead_letter_topic: str = DEAD_LETTER,
        max_batch: int = 32,
        poll_timeout_s: float = 0.5,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.5,
        retry_max_backoff_s: float = 10.0,
        retry_for_s: float = 120.0,
        with_records: bool = False,
    ):
        self.service = service
        self.bus = bus
        self.topics = list(topics)
        self.group_id = group_id
        self.message_type = message_type
        self.handler = handler
        self.producer = producer or bus.producer()
        self.message_id = message_id
        self.dead_letter_topic = dead_letter_topic
        self.max_batch = max_batch
        self.poll_timeout_s = poll_timeout_s
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s  # first pause; doubles per attempt up to retry_max_backoff_s
        self.retry_max_backoff_s = retry_max_backoff_s
        self.retry_for_s = retry_for_s  # how long a transient failure is retried (keep under max.poll.interval)
        self.with_records = with_records  # the handler is called as handler(messages, records)
        self.seen = SeenIds()
        self._unflushed_ids: list[str] = []  # handled, outputs published but not yet acknowledged
        self._stop = threading.Event()
        self.processed = 0
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # hostile input (issue 12): sizes, poison, authentication; ServiceRuntime.configure() sets them
        self.max_message_bytes = int(getattr(bus, "max_message_bytes", None) or MAX_MESSAGE_BYTES)
        self.dead_letter_payload_bytes = DEAD_LETTER_PAYLOAD_BYTES
        self.max_deliveries = 3
        self.deliveries = DeliveryTracker()
        self.auth = bus_auth(bus)
        self.reject_unknown_fields = True
        # positions already dead-lettered and flushed: a redelivery after a failed commit (a rebalance)
        # does not write a second dead letter for the same message
        self.dead_lettered = SeenIds(10_000)
        self._unflushed_letters: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, args=(stop,), name=f"{self.service}-worker", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; the batch in hand is finished and committed before leaving."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.run_once()
        except BaseException as exc:
            self.error = exc
            log.exception("worker stopped on an unexpected error", extra={"topics": ",".join(self.topics)})
            raise
        finally:
            self.close()

    def configure(self, settings) -> None:
        """The limits a service's settings name (max_message_bytes, dead_letter_payload_bytes,
        max_deliveries, delivery_state_dir)."""
        self.max_message_bytes = int(getattr(settings, "max_message_bytes", self.max_message_bytes))
        self.dead_letter_payload_bytes = int(getattr(settings, "dead_letter_payload_bytes",
                                                     self.dead_letter_payload_bytes))
        self.max_deliveries = max(1, int(getattr(settings, "max_deliveries", self.max_deliveries)))
        self.retry_for_s = float(getattr(settings, "retry_for_s", self.retry_for_s))  # a model server's restart
        state_dir = getattr(settings, "delivery_state_dir", "")
        if state_dir:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.group_id)
            self.deliveries = DeliveryTracker(Path(state_dir) / f"deliveries-{name}.json")

    def _drop_consumer(self) -> None:
        """Leave the group without committing: what was polled comes back (to us or another member)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None

    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = self.bus.consumer(self.topics, self.group_id, client_id=f"{self.service}")
        return self._consumer

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    # --- one poll -------------------------------------------------------------------------------
    def run_once(self) -> int:
        try:
            consumer = self.consumer()
            records = consumer.poll(self.poll_timeout_s, self.max_batch)
        except BusError as exc:  # the broker is away (a restart): reconnect, nothing was taken
            log.warning("bus unavailable; reconnecting", extra={"error": str(exc)[:300], "topics": ",".join(self.topics)})
            consumer, self._consumer = self._consumer, None
            close_quietly(consumer)
            self._stop.wait(min(5.0, max(0.5, self.poll_timeout_s)))
            return 0
        if not records:
            return 0
        if len(records) > 1 and self.deliveries.redelivered(records):
            # a delivery of this batch never completed (a crash, a kill): one record at a time, so a
            # poison message is pinned down and only it counts towards max_deliveries
            done = 0
            for record in records:
                handled = self._run_records(consumer, [record])
                if not handled:
                    return done
                done += handled
            return done
        return self._run_records(consumer, records)

    def _run_records(self, consumer: Consumer, records: list[Record]) -> int:
        self.deliveries.begin(records)
        metrics.INFLIGHT.labels(self.service).set(len(records))
        try:
            self._process(records)
            self.producer.flush()
            for mid in self._unflushed_ids:  # acknowledged: a redelivery of these may now be skipped
                self.seen.add(mid)
            self._unflushed_ids = []
            for position in self._unflushed_letters:
                self.dead_lettered.add(position)
            self._unflushed_letters = []
            consumer.commit(records)
            self.deliveries.done(records)
        except (BusError, _Interrupted) as exc:
            self.deliveries.undo(records)  # the handler completed: the bus failed, not the message
            # outputs not acknowledged, the group moved, or a stop came during a pause: drop the
            # consumer so the uncommitted records come back (to us or to another member); nothing is lost
            log.warning("batch not committed, will be redelivered", extra={"error": str(exc), "records": len(records)})
            self._unflushed_ids, self._unflushed_letters = [], []
            self._drop_consumer()
            return 0
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one message (issue 12)
            # counted, not undone: redelivered one at a time, and dead-lettered as poison if it recurs
            log.error("batch failed outside the handler; it will be redelivered", extra={
                "error_class": type(exc).__name__, "records": len(records), "topic": records[0].topic})
            self._unflushed_ids, self._unflushed_letters = [], []
            self._drop_consumer()
            self._stop.wait(self.poll_timeout_s)
            return 0
        finally:
            metrics.INFLIGHT.labels(self.service).set(0)
        self.processed += len(records)
        return len(records)

    def _process(self, records: list[Record]) -> None:
        decoded: list[tuple[Record, Message]] = []
        in_batch: set[str] = set()
        for record in records:
            metrics.MESSAGES_CONSUMED.labels(self.service, record.topic).inc()
            refusal = self._screen(record)
            if refusal is not None:
                self._dead_letter(record, *refusal)
                continue
            message = self.message_type()
            try:
                message.ParseFromString(record.value)
            except (DecodeError, RuntimeError, ValueError) as exc:
                self._dead_letter(record, f"undecodable {self.message_type.DESCRIPTOR.full_name}: {exc}", "DecodeError")
                continue
            if self.reject_unknown_fields and has_unknown_fields(message):
                self._dead_letter(record, f"not a {self.message_type.DESCRIPTOR.full_name}: it has fields that type "
                                          "does not know (another message type on this topic?)", "WrongType")
                continue
            if self.message_id is not None:
                mid = self.message_id(message)
                if mid and (mid in self.seen or mid in in_batch):
                    metrics.DUPLICATES_SKIPPED.labels(self.service, record.topic).inc()
                    continue
                in_batch.add(mid)
            decoded.append((record, message))
        if not decoded:
            return
        started = time.perf_counter()
        results = self._handle_with_retries([m for _, m in decoded], [r for r, _ in decoded])
        per_message = (time.perf_counter() - started) / len(decoded)
        for (record, message), result in zip(decoded, results, strict=True):
            metrics.PROCESSING_SECONDS.labels(self.service, record.topic).observe(per_message)
            if isinstance(result, tuple):  # (exception, attempts)
                exc, attempts = result
                cls = type(exc).__name__
                self._dead_letter(record, str(exc) or cls, cls, attempts)
                continue
            if not self._publish_outputs(record, result):
                continue
            if self.message_id is not None:
                self._unflushed_ids.append(self.message_id(message))  # seen once the flush is acknowledged

    def _handle_with_retries(self, messages: list[Message], records: list[Record]) -> list:
        results = list(self._call(messages, records))
        deadline: float | None = None  # transient failures share one pause per batch, from the first
        for i, result in enumerate(results):
            if not isinstance(result, BaseException):
                results[i] = list(result)
                continue
            attempts = 1
            # InvalidInput is final; a transient failure waits (up to retry_for_s); anything else: max_attempts
            while not isinstance(result, InvalidInput):
                if transient(result):
                    if deadline is None:
                        deadline = time.monotonic() + self.retry_for_s
                        log.warning("transient failure; pausing and retrying", extra={
                            "error_class": type(result).__name__, "error": str(result)[:300],
                            "retry_for_s": self.retry_for_s, "topic": records[i].topic})
                    left = deadline - time.monotonic()
                elif attempts < self.max_attempts:
                    left = float("inf")
                else:
                    break
                if left <= 0:
                    break
                self._pause(min(left, self.retry_max_backoff_s, self.retry_backoff_s * (2 ** (attempts - 1))))
                attempts += 1
                result = self._call([messages[i]], [records[i]])[0]
                if not isinstance(result, BaseException):
                    break
            results[i] = (result, attempts) if isinstance(result, BaseException) else list(result)
            if isinstance(result, BaseException) and not isinstance(result, InvalidInput):
                log.error("message failed after retries", extra={"error_class": type(result).__name__,
                                                                 "attempts": attempts, "topic": records[i].topic})
        return results

    def _pause(self, seconds: float) -> None:
        """Back off, but leave at once on a stop (SIGTERM must not wait out a model server's restart)."""
        if self._stop.wait(seconds):
            raise _Interrupted("stopping during a retry pause")

    def _call(self, messages: list[Message], records: list[Record]) -> Sequence[HandlerResult]:
        try:
            results = self.handler(messages, records) if self.with_records else self.handler(messages)
        except Exception as exc:  # noqa: BLE001 - a whole-batch failure is retried per message
            return [exc] * len(messages)
        if len(results) != len(messages):
            err = RuntimeError(f"handler returned {len(results)} results for {len(messages)} messages")
            return [err] * len(messages)
        return results

    def _screen(self, record: Record) -> tuple[str, str] | None:
        """(reason, error class) when a record must not be decoded or handled: oversized, poison, or
        refused by message authentication."""
        size = len(record.value or b"") + len(record.key or b"")
        if size > self.max_message_bytes:
            return f"message is {size} bytes, over the limit of {self.max_message_bytes}", "TooLarge"
        deliveries = self.deliveries.count(record)
        if deliveries > self.max_deliveries:
            metrics.POISON_MESSAGES.labels(self.service, record.topic).inc()
            return (f"poison: handed to the handler {deliveries - 1} times without completing "
                    f"(max_deliveries {self.max_deliveries})", "Poison")
        if self.auth is not None:
            refused = self.auth.check(record, self.message_type.DESCRIPTOR.full_name)
            if refused:
                return refused, "Unauthenticated"
        return None

    def _publish_outputs(self, record: Record, outputs: Sequence[Output]) -> bool:
        """Publish one message's outputs, or dead-letter the message when one cannot be published (too
        large for the producer, refused by the client): the worker goes on either way."""
        serialized = []
        for out in outputs:
            value = out.message.SerializeToString()
            key = out.key.encode("utf-8") if isinstance(out.key, str) else (out.key or b"")
            size = len(value) + len(key) + _FRAME_BYTES
            if size > self.max_message_bytes:
                self._dead_letter(record, f"its output for {out.topic} would be {size} bytes, over the producer "
                                          f"limit of {self.max_message_bytes}", "OutputTooLarge")
                return False
            serialized.append((out, value))
        for out, value in serialized:
            try:
                self.producer.publish(out.topic, value, key=out.key)
            except BusError:
                raise  # the bus is down: the batch is handed back
            except Exception as exc:  # noqa: BLE001 - a client-side refusal of one output, not of the bus
                self._dead_letter(record, f"its output for {out.topic} was refused by the producer "
                                          f"({type(exc).__name__})", "OutputRefused")
                return False
            metrics.MESSAGES_PRODUCED.labels(self.service, out.topic).inc()
        return True

    def _dead_letter(self, record: Record, reason: str, error_class: str, attempts: int = 1) -> None:
        position = DeliveryTracker._key(record)
        if position in self.dead_lettered:
            return  # its dead letter is already acknowledged (this is a redelivery after a failed commit)
        self._unflushed_letters.append(position)
        room = self.max_message_bytes - _FRAME_BYTES - 2 * DEAD_LETTER_KEY_BYTES - 4096  # reason, ids, framing
        letter = dead_letter(record, self.service, reason, error_class, attempts,
                             max(0, min(self.dead_letter_payload_bytes, room)))
        self.producer.publish(self.dead_letter_topic, letter.SerializeToString(), key=letter.key)
        metrics.DEAD_LETTERS.labels(self.service, record.topic, error_class).inc()
        # the reason goes to the log only when the worker wrote it (a handler's exception text could
        # quote a note); the dead letter itself always has it
        ours = error_class in _OWN_REASONS
        log.warning("dead-lettered a message", extra={"topic": record.topic, "partition": record.partition,
                                                     "offset": record.offset, "error_class": error_class,
                                                     **({"reason": reason[:300]} if ours else {})})
