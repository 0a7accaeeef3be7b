"""The consume -> handle -> produce -> flush -> commit loop every service uses.

At-least-once: a batch is committed only after its outputs are acknowledged. A message that
cannot be decoded, or that the handler rejects as invalid, goes to the dead-letter topic with its
reason (never the note text) and the loop goes on. Other errors are retried, then dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from medserl.v1 import messages_pb2 as pb
from services.common import metrics
from services.common.bus import Bus, BusError, Consumer, Producer, Record
from services.common.topics import DEAD_LETTER

log = logging.getLogger(__name__)


class InvalidInput(ValueError):
    """The message is well-formed protobuf but its content cannot be processed (bad note, bad ids)."""


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


def dead_letter(record: Record, service: str, reason: str, error_class: str, attempts: int = 1) -> pb.DeadLetter:
    return pb.DeadLetter(
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        key=record.key or b"",
        payload=record.value,
        reason=reason[:2000],
        error_class=error_class,
        service=service,
        failed_unix_ms=int(time.time() * 1000),
        attempts=attempts,
    )


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
        retry_backoff_s: float = 0.2,
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
        self.retry_backoff_s = retry_backoff_s
        self.with_records = with_records  # the handler is called as handler(messages, records)
        self.seen = SeenIds()
        self.processed = 0
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

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
        try:
            while not stop.is_set():
                self.run_once()
        except BaseException as exc:
            self.error = exc
            log.exception("worker stopped on an unexpected error", extra={"topics": ",".join(self.topics)})
            raise
        finally:
            self.close()

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
        consumer = self.consumer()
        records = consumer.poll(self.poll_timeout_s, self.max_batch)
        if not records:
            return 0
        metrics.INFLIGHT.labels(self.service).set(len(records))
        try:
            self._process(records)
            self.producer.flush()
            consumer.commit(records)
        except BusError as exc:
            # outputs not acknowledged or the group moved: drop the consumer so the uncommitted
            # records come back (to us or to another member); nothing is lost
            log.warning("batch not committed, will be redelivered", extra={"error": str(exc), "records": len(records)})
            self._consumer.close()
            self._consumer = None
            return 0
        finally:
            metrics.INFLIGHT.labels(self.service).set(0)
        self.processed += len(records)
        return len(records)

    def _process(self, records: list[Record]) -> None:
        decoded: list[tuple[Record, Message]] = []
        for record in records:
            metrics.MESSAGES_CONSUMED.labels(self.service, record.topic).inc()
            message = self.message_type()
            try:
                message.ParseFromString(record.value)
            except (DecodeError, RuntimeError) as exc:
                self._dead_letter(record, f"undecodable {self.message_type.DESCRIPTOR.full_name}: {exc}", "DecodeError")
                continue
            if self.message_id is not None:
                mid = self.message_id(message)
                if mid and mid in self.seen:
                    metrics.DUPLICATES_SKIPPED.labels(self.service, record.topic).inc()
                    continue
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
            for out in result:
                self.producer.publish(out.topic, out.message.SerializeToString(), key=out.key)
                metrics.MESSAGES_PRODUCED.labels(self.service, out.topic).inc()
            if self.message_id is not None:
                self.seen.add(self.message_id(message))

    def _handle_with_retries(self, messages: list[Message], records: list[Record]) -> list:
        results = list(self._call(messages, records))
        for i, result in enumerate(results):
            if not isinstance(result, BaseException):
                results[i] = list(result)
                continue
            attempts = 1
            # InvalidInput is final; anything else may be transient (a backend hiccup): retry alone
            while not isinstance(result, InvalidInput) and attempts < self.max_attempts:
                time.sleep(self.retry_backoff_s * (2 ** (attempts - 1)))
                attempts += 1
                result = self._call([messages[i]], [records[i]])[0]
                if not isinstance(result, BaseException):
                    break
            results[i] = (result, attempts) if isinstance(result, BaseException) else list(result)
            if isinstance(result, BaseException) and not isinstance(result, InvalidInput):
                log.error("message failed after retries", extra={"error_class": type(result).__name__,
                                                                 "attempts": attempts, "topic": records[i].topic})
        return results

    def _call(self, messages: list[Message], records: list[Record]) -> Sequence[HandlerResult]:
        try:
            results = self.handler(messages, records) if self.with_records else self.handler(messages)
        except Exception as exc:  # noqa: BLE001 - a whole-batch failure is retried per message
            return [exc] * len(messages)
        if len(results) != len(messages):
            err = RuntimeError(f"handler returned {len(results)} results for {len(messages)} messages")
            return [err] * len(messages)
        return results

    def _dead_letter(self, record: Record, reason: str, error_class: str, attempts: int = 1) -> None:
        letter = dead_letter(record, self.service, reason, error_class, attempts)
        self.producer.publish(self.dead_letter_topic, letter.SerializeToString(), key=record.key)
        metrics.DEAD_LETTERS.labels(self.service, record.topic, error_class).inc()
        log.warning("dead-lettered a message", extra={"topic": record.topic, "partition": record.partition,
                                                     "offset": record.offset, "reason": reason[:300],
                                                     "error_class": error_class})
