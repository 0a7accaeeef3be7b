"""One conformance suite, two buses: the in-memory bus (embedded mode) and Apache Kafka."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from medserl.v1 import messages_pb2 as pb
from services.common.bus import Bus, MemoryBus, Record
from services.common.worker import Output, StreamWorker, per_message


class BusHarness:
    def __init__(self, bus: Bus, restart):
        self.bus = bus
        self.restart = restart


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def harness(request) -> BusHarness:
    if request.param == "memory":
        bus = MemoryBus()

        def restart(down_s: float = 1.0) -> None:
            bus.set_available(False)
            threading.Timer(down_s, bus.set_available, args=(True,)).start()

        return BusHarness(bus, restart)
    from services.common.kafka_bus import KafkaBus

    broker = request.getfixturevalue("kafka_broker")
    bus = KafkaBus(broker.bootstrap, session_timeout_ms=6000)
    return BusHarness(bus, lambda down_s=1.0: broker.restart(down_s))


def drain(consumer, want: int, timeout_s: float = 60.0, commit: bool = True) -> list[Record]:
    """Poll until ``want`` records arrived (or the timeout), committing as a real service would."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        batch = consumer.poll(0.5, 500)
        got.extend(batch)
        if batch and commit:
            consumer.commit(batch)
    return got


def test_order_is_kept_per_key(harness: BusHarness, unique: str):
    topic = f"order-{unique}"
    harness.bus.ensure_topics([topic])
    producer = harness.bus.producer()
    keys = [f"note-{i}" for i in range(5)]
    for seq in range(40):
        for key in keys:
            producer.publish(topic, f"{key}:{seq}".encode(), key=key)
    producer.flush()
    consumer = harness.bus.consumer([topic], f"g-{unique}")
    records = drain(consumer, 200)
    consumer.close()
    assert len(records) == 200
    by_key: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for r in records:
        key, seq = r.value.decode().split(":")
        by_key[key].append(int(seq))
        partition_of[key].add(r.partition)
    for key in keys:
        assert by_key[key] == list(range(40)), f"order broken for {key}"
        assert len(partition_of[key]) == 1, "one key must live on one partition"


def test_uncommitted_messages_are_redelivered_after_a_consumer_dies(harness: BusHarness, unique: str):
    topic, group = f"redeliver-{unique}", f"g-{unique}"
    harness.bus.ensure_topics([topic])
    producer = harness.bus.producer()
    for i in range(30):
        producer.publish(topic, f"m{i}".encode(), key=f"k{i % 3}")
    producer.flush()

    first = harness.bus.consumer([topic], group)
    processed = drain(first, 30, commit=False)
    assert len(processed) == 30
    first.commit(processed[:10])  # processed 10 of them, then "dies" before committing the rest
    committed = {r.value for r in processed[:10]}
    first.close()

    second = harness.bus.consumer([topic], group)
    redelivered = drain(second, 20)
    second.close()
    values = {r.value for r in redelivered}
    expected = {f"m{i}".encode() for i in range(30)}
    # everything not committed comes back; nothing is lost
    assert expected - committed <= values
    assert values <= expected


def test_two_consumers_in_one_group_split_the_partitions(harness: BusHarness, unique: str):
    topic, group = f"split-{unique}", f"g-{unique}"
    harness.bus.ensure_topics([topic], partitions=4)
    a = harness.bus.consumer([topic], group, client_id="a")
    b = harness.bus.consumer([topic], group, client_id="b")
    deadline = time.monotonic() + 120  # a rebalance is slow on a loaded 2-core machine
    while time.monotonic() < deadline:
        a.poll(0.2, 1)
        b.poll(0.2, 1)
        if a.assignment() and b.assignment() and len(a.assignment() | b.assignment()) == 4:
            break
    assert a.assignment() and b.assignment(), "both members must own partitions"
    assert not (a.assignment() & b.assignment()), "a partition belongs to one member"
    assert a.assignment() | b.assignment() == {(topic, p) for p in range(4)}

    producer = harness.bus.producer()
    for i in range(100):
        producer.publish(topic, f"m{i}".encode(), key=f"k{i}")
    producer.flush()
    got_a: list[Record] = []
    got_b: list[Record] = []
    deadline = time.monotonic() + 60
    while len(got_a) + len(got_b) < 100 and time.monotonic() < deadline:
        for consumer, sink in ((a, got_a), (b, got_b)):
            batch = consumer.poll(0.3, 500)
            sink.extend(batch)
            if batch:
                consumer.commit(batch)
    a.close()
    b.close()
    assert len(got_a) + len(got_b) == 100
    assert got_a and got_b, "work must be shared"
    assert not ({r.value for r in got_a} & {r.value for r in got_b}), "no message goes to both members"


def test_two_groups_each_see_everything(harness: BusHarness, unique: str):
    topic = f"fanout-{unique}"
    harness.bus.ensure_topics([topic])
    producer = harness.bus.producer()
    for i in range(25):
        producer.publish(topic, f"m{i}".encode(), key=str(i))
    producer.flush()
    for group in (f"g1-{unique}", f"g2-{unique}"):
        consumer = harness.bus.consumer([topic], group)
        records = drain(consumer, 25)
        consumer.close()
        assert sorted(r.value for r in records) == sorted(f"m{i}".encode() for i in range(25))


def test_undecodable_payload_goes_to_dead_letter_and_the_consumer_goes_on(harness: BusHarness, unique: str):
    src, out, dlq = f"in-{unique}", f"out-{unique}", f"dlq-{unique}"
    harness.bus.ensure_topics([src, out, dlq])
    producer = harness.bus.producer()
    good = [pb.Note(note_id=f"n{i}", text=f"Patient {i} is well.") for i in range(5)]
    producer.publish(src, good[0].SerializeToString(), key="n0")
    producer.publish(src, b"\xff\xff\xff not protobuf", key="bad")
    for note in good[1:]:
        producer.publish(src, note.SerializeToString(), key=note.note_id)
    producer.flush()

    def handle(note: pb.Note):
        return [Output(out, note.note_id, pb.Note(note_id=note.note_id, source="relayed"))]

    worker = StreamWorker(service="test", bus=harness.bus, topics=[src], group_id=f"g-{unique}",
                          message_type=pb.Note, handler=per_message(handle), dead_letter_topic=dlq,
                          message_id=lambda n: n.note_id)
    deadline = time.monotonic() + 60
    while worker.processed < 6 and time.monotonic() < deadline:
        worker.run_once()
    worker.close()

    outputs = drain(harness.bus.consumer([out], f"r-{unique}"), 5)
    assert sorted(pb.Note.FromString(r.value).note_id for r in outputs) == [f"n{i}" for i in range(5)]
    letters = drain(harness.bus.consumer([dlq], f"d-{unique}"), 1)
    assert len(letters) == 1
    letter = pb.DeadLetter.FromString(letters[0].value)
    assert letter.source_topic == src and letter.payload == b"", "no copy of the message by default (PHI)"
    original = harness.bus.read_at(src, letter.source_partition, letter.source_offset)
    assert original is not None and original.value.startswith(b"\xff\xff\xff"), "the letter points at it"
    assert "undecodable medserl.v1.Note" in letter.reason and letter.error_class == "DecodeError"


def test_producer_survives_a_broker_restart_without_losing_acknowledged_messages(harness: BusHarness, unique: str):
    topic = f"restart-{unique}"
    harness.bus.ensure_topics([topic])
    producer = harness.bus.producer()
    acknowledged: list[bytes] = []
    for i in range(20):
        producer.publish(topic, f"before-{i}".encode(), key=f"k{i % 4}")
    producer.flush()
    acknowledged += [f"before-{i}".encode() for i in range(20)]

    restarter = threading.Thread(target=harness.restart, kwargs={"down_s": 2.0})
    restarter.start()
    time.sleep(0.3)
    for i in range(20):  # published while the broker is down or coming back
        producer.publish(topic, f"during-{i}".encode(), key=f"k{i % 4}")
    producer.flush(timeout_s=120)
    acknowledged += [f"during-{i}".encode() for i in range(20)]
    restarter.join()
    for i in range(10):
        producer.publish(topic, f"after-{i}".encode(), key=f"k{i % 4}")
    producer.flush()
    acknowledged += [f"after-{i}".encode() for i in range(10)]
    producer.close()

    consumer = harness.bus.consumer([topic], f"g-{unique}")
    records = drain(consumer, len(acknowledged), timeout_s=90)
    consumer.close()
    values = [r.value for r in records]
    assert set(acknowledged) <= set(values), "an acknowledged message was lost"
    assert len(values) == len(set(values)), "idempotent producer must not duplicate on retry"


@pytest.mark.kafka
def test_static_members_keep_their_names_across_a_restart(kafka_broker, unique: str):
    """``kafka_group_instance_id``: each consumer of a group gets a stable name (the n-th live consumer
    of the process: name, name-1, ...), so a restarted replica rejoins as the same member (KIP-345)
    and takes its partitions back without a rebalance; what it had not committed comes again."""
    from kafka.admin import KafkaAdminClient

    from services.common.kafka_bus import KafkaBus

    topic, group = f"static-{unique}", f"g-{unique}"
    bus = KafkaBus(kafka_broker.bootstrap, session_timeout_ms=6000, group_instance_id="verifier-0")
    bus.ensure_topics([topic], partitions=2)
    producer = bus.producer()
    for i in range(10):
        producer.publish(topic, f"m{i}".encode(), key=f"k{i}")
    producer.flush()
    first = bus.consumer([topic], group)
    assert len(drain(first, 10, commit=False)) == 10
    second = bus.consumer([topic], group)  # a second member in the same process gets a name of its own
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    deadline = time.monotonic() + 60
    names: set = set()
    while time.monotonic() < deadline and names != {"verifier-0", "verifier-0-1"}:
        first.poll(0.2, 1)
        second.poll(0.2, 1)
        names = member_names(admin, group)
    assert names == {"verifier-0", "verifier-0-1"}
    first.close()
    second.close()

    restarted = KafkaBus(kafka_broker.bootstrap, session_timeout_ms=6000, group_instance_id="verifier-0")
    again = restarted.consumer([topic], group)  # slot 0 is free again: the same member as ``first``
    got = drain(again, 10)
    assert member_names(admin, group) <= {"verifier-0", "verifier-0-1"}, "no new member: the same one rejoined"
    assert sorted(r.value for r in got) == sorted(f"m{i}".encode() for i in range(10)), "uncommitted: redelivered"
    again.close()
    admin.close()
    for b in (bus, restarted):
        b.close()


def member_names(admin, group: str) -> set:
    return {m.get("group_instance_id") for m in admin.describe_groups([group])[group].get("members", [])}
