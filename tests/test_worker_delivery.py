"""Delivery guarantees of the stream worker and the Kafka producer (issue 11).

* An id is remembered as processed only after its outputs are acknowledged: a flush that fails,
  then a redelivery, processes the message again (before the fix it was skipped and committed with
  no output ever written).
* A producer shared by threads tells each thread about its own messages only.
* A transient failure (a model server restarting) pauses and retries instead of dead-lettering; a
  stop during that pause hands the batch back; a message that keeps failing for good is dead-lettered.
* An unreachable broker, or no broker address, is a BusError that says what to do, in seconds.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from medserl.v1 import messages_pb2 as pb
from services.common.bus import BusError, MemoryBus, Producer
from services.common.worker import Output, StreamWorker, per_message
from services.inference import InferenceError
from tests.bus_fakes import PollFailingBus

IN, OUT, DEAD = "w.in", "w.out", "w.dead"


class FlakyProducer(Producer):
    """Holds messages until flush; the first ``fail_flushes`` flushes drop them and raise (never acked)."""

    def __init__(self, inner: Producer, fail_flushes: int = 1):
        self.inner = inner
        self.fail_flushes = fail_flushes
        self.held: list[tuple] = []
        self.flushes = 0

    def publish(self, topic, value, key=None, headers=()):
        self.held.append((topic, value, key, headers))

    def flush(self, timeout_s=None):
        self.flushes += 1
        held, self.held = self.held, []
        if self.fail_flushes > 0:
            self.fail_flushes -= 1
            raise BusError("broker did not acknowledge (simulated)")
        for topic, value, key, headers in held:
            self.inner.publish(topic, value, key=key, headers=headers)
        self.inner.flush(timeout_s)

    def close(self):
        self.inner.close()


def read(bus: MemoryBus, topic: str, group: str, message_type=pb.Note) -> list:
    consumer = bus.consumer([topic], group)
    out = []
    try:
        while records := consumer.poll(0.01, 1000):
            out.extend(message_type.FromString(r.value) for r in records)
    finally:
        consumer.close()
    return out


def relay(calls: list[str]):
    def handle(note: pb.Note):
        calls.append(note.note_id)
        return [Output(OUT, note.note_id, pb.Note(note_id=note.note_id + "-out"))]

    return per_message(handle)


def seeded_bus(ids: list[str]) -> MemoryBus:
    bus = MemoryBus()
    bus.ensure_topics([IN, OUT, DEAD])
    producer = bus.producer()
    for note_id in ids:
        producer.publish(IN, pb.Note(note_id=note_id).SerializeToString(), key=note_id)
    return bus


def worker(bus: MemoryBus, handler, producer: Producer | None = None, **kwargs) -> StreamWorker:
    return StreamWorker(service="test", bus=bus, topics=[IN], group_id="g", message_type=pb.Note, handler=handler,
                        producer=producer, message_id=lambda m: m.note_id, dead_letter_topic=DEAD,
                        poll_timeout_s=0.01, **kwargs)


def test_a_failed_flush_then_redelivery_processes_the_messages_again():
    ids = [f"n{i}" for i in range(5)]
    bus = seeded_bus(ids)
    calls: list[str] = []
    flaky = FlakyProducer(bus.producer(), fail_flushes=1)
    w = worker(bus, relay(calls), producer=flaky)
    assert w.run_once() == 0, "the batch whose flush failed is not committed"
    assert len(w.seen) == 0, "nothing is remembered as processed before its outputs are acknowledged"
    assert w.run_once() == len(ids), "the redelivered batch is processed, not skipped as already seen"
    w.close()
    assert sorted(calls) == sorted(ids + ids)
    assert sorted(n.note_id for n in read(bus, OUT, "check")) == sorted(f"{i}-out" for i in ids), \
        "every output written exactly once (the unacknowledged first copies were never written)"
    assert not read(bus, IN, "g"), "the group's offsets were committed after the acknowledged flush"
    assert all(i in w.seen for i in ids)


def test_a_poll_that_fails_while_the_broker_is_away_reconnects_instead_of_stopping_the_service():
    bus = PollFailingBus()
    bus.fail_polls(2)
    bus.ensure_topics([IN, OUT, DEAD])
    producer = bus.producer()
    for note_id in ("a", "b"):
        producer.publish(IN, pb.Note(note_id=note_id).SerializeToString(), key=note_id)
    calls: list[str] = []
    w = worker(bus, relay(calls))
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    got: list = []
    consumer = MemoryBus.consumer(bus, [OUT], "check")  # the test's own reader never fails
    while len(got) < 2 and thread.is_alive():
        got.extend(consumer.poll(0.5, 10))
    stop.set()
    thread.join(30)
    assert w.error is None, "a bus failure in poll must not stop the worker"
    assert bus.failed_polls == 2 and sorted(calls) == ["a", "b"] and len(got) == 2


def test_a_duplicate_id_is_skipped_once_its_first_copy_is_acknowledged():
    bus = seeded_bus(["a", "b", "a"])
    calls: list[str] = []
    w = worker(bus, relay(calls))
    assert w.run_once() == 3
    producer = bus.producer()
    producer.publish(IN, pb.Note(note_id="b").SerializeToString(), key="b")  # a redelivered copy
    assert w.run_once() == 1
    w.close()
    assert calls == ["a", "b"], "a copy in the same batch and a later redelivery are both skipped"
    assert len(read(bus, OUT, "check")) == 2


class Outage:
    """A handler whose model server is down for the first ``down_calls`` calls (ConnectionError-like)."""

    def __init__(self, down_calls: int, error: type[Exception] = InferenceError):
        self.down_calls = down_calls
        self.error = error
        self.calls = 0
        self.failing = threading.Event()

    def __call__(self, batch):
        self.calls += 1
        if self.calls <= self.down_calls:
            self.failing.set()
            raise self.error("POST http://vllm:8000/v1/completions failed: connection refused")
        return [[Output(OUT, m.note_id, pb.Note(note_id=m.note_id + "-out"))] for m in batch]


def test_a_transient_failure_pauses_and_retries_instead_of_dead_lettering():
    bus = seeded_bus(["x"])
    outage = Outage(down_calls=6)  # more tries than max_attempts: the old worker dead-lettered it
    w = worker(bus, outage, max_attempts=3, retry_backoff_s=0.001, retry_max_backoff_s=0.002, retry_for_s=60)
    assert w.run_once() == 1
    w.close()
    assert outage.calls == 7
    assert [n.note_id for n in read(bus, OUT, "check")] == ["x-out"]
    assert not read(bus, DEAD, "check-dead", pb.DeadLetter), "a model server restart never dead-letters"


def test_a_transient_failure_that_outlasts_retry_for_s_is_dead_lettered_with_its_attempts():
    bus = seeded_bus(["x"])
    outage = Outage(down_calls=10**6)
    w = worker(bus, outage, retry_backoff_s=0.001, retry_max_backoff_s=0.002, retry_for_s=0.05)
    assert w.run_once() == 1
    w.close()
    letters = read(bus, DEAD, "check-dead", pb.DeadLetter)
    assert len(letters) == 1 and letters[0].error_class == "InferenceError" and letters[0].attempts > 3
    assert "connection refused" in letters[0].reason


def test_a_bug_is_dead_lettered_after_max_attempts_without_waiting_for_retry_for_s():
    bus = seeded_bus(["x"])
    outage = Outage(down_calls=10**6, error=KeyError)
    w = worker(bus, outage, max_attempts=3, retry_backoff_s=0.001, retry_for_s=3600)
    assert w.run_once() == 1
    w.close()
    assert outage.calls == 3
    assert [letter.attempts for letter in read(bus, DEAD, "check-dead", pb.DeadLetter)] == [3]


def test_a_stop_during_a_retry_pause_hands_the_batch_back():
    bus = seeded_bus(["x"])
    outage = Outage(down_calls=10**6)
    w = worker(bus, outage, retry_backoff_s=3600, retry_max_backoff_s=3600, retry_for_s=3600)
    stop = threading.Event()
    thread = w.start(stop)
    assert outage.failing.wait(30), "the handler was called"
    stop.set()  # SIGTERM while the worker waits out the outage
    thread.join(30)
    assert not thread.is_alive(), "a stop ends the pause at once"
    assert not read(bus, DEAD, "check-dead", pb.DeadLetter), "nothing dead-lettered"
    assert [n.note_id for n in read(bus, IN, "g")] == ["x"], "the message was handed back uncommitted"


# --- Kafka ---------------------------------------------------------------------------------------

@pytest.mark.kafka
def test_a_shared_producer_reports_each_thread_only_its_own_failures(kafka_bootstrap, unique):
    from kafka.admin import NewTopic

    from services.common.kafka_bus import KafkaBus

    bus = KafkaBus(kafka_bootstrap)
    small, normal = f"small-{unique}", f"normal-{unique}"
    admin = bus.admin()
    try:  # the broker refuses messages over 1 kB on this topic: a failure only the sender should see
        admin.create_topics([NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "1024"})])
    finally:
        admin.close()
    bus.ensure_topics([small, normal])
    producer = bus.producer()
    published = threading.Barrier(2)
    outcome: dict[str, BaseException | None] = {}
    first_flushed = threading.Event()

    def sender(name: str, topic: str, size: int, flush_first: bool) -> None:
        producer.publish(topic, b"x" * size, key=name)
        published.wait(30)  # both messages are queued before either thread flushes
        if not flush_first:
            first_flushed.wait(60)
        try:
            producer.flush(60)
            outcome[name] = None
        except BusError as exc:
            outcome[name] = exc
        finally:
            first_flushed.set()

    # the healthy thread flushes first: before the fix it took (and raised) the other thread's failure
    threads = [threading.Thread(target=sender, args=("ok", normal, 100, True)),
               threading.Thread(target=sender, args=("bad", small, 50_000, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    producer.close()
    bus.close()
    assert outcome["ok"] is None, f"the healthy thread was told of another's failure: {outcome['ok']}"
    assert isinstance(outcome["bad"], BusError) and "not acknowledged" in str(outcome["bad"])


@pytest.mark.kafka
def test_new_topics_get_min_of_3_and_the_brokers_replicas_and_a_wrong_factor_is_clear(kafka_bootstrap, unique):
    from services.common.kafka_bus import KafkaBus

    bus = KafkaBus(kafka_bootstrap)
    admin = bus.admin()
    try:
        brokers = len(admin.describe_cluster()["brokers"])
        bus.ensure_topics([f"rf-{unique}"])
        (described,) = admin.describe_topics([f"rf-{unique}"])
        assert {len(p["replica_nodes"]) for p in described["partitions"]} == {min(3, brokers)}
    finally:
        admin.close()
    too_many = KafkaBus(kafka_bootstrap, replication_factor=brokers + 1)
    with pytest.raises(BusError, match="could not create or describe topics"):
        too_many.ensure_topics([f"rf-too-many-{unique}"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_broker_is_a_clear_error_in_seconds():
    from services.common.kafka_bus import KafkaBus

    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BusError) as caught:
        KafkaBus(address, connect_timeout_s=0.5).producer()
    message = str(caught.value)
    assert f"cannot reach Kafka at {address}" in message and "make kafka" in message
    assert time.monotonic() - started < 25, "before the client library's own 30 s bootstrap timeout"
    with pytest.raises(BusError, match="--kafka-bootstrap HOST:PORT"):
        KafkaBus("")
