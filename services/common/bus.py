"""The message bus: one interface, two implementations (Kafka and in-memory).

Semantics every implementation keeps (tests/test_bus_conformance.py checks them on both):

* ``publish(topic, value, key)`` puts messages with the same key on the same partition, so
  order per key holds. ``flush()`` returns once everything published before it is acknowledged.
* Consumers join a *group*; the partitions of their topics are split among the group's members.
  Different groups each see every message.
* Nothing is committed implicitly. A consumer commits after it has processed (and flushed the
  outputs of) what it polled. Whatever is not committed when a consumer dies is redelivered to
  the group: at-least-once. Consumers deduplicate by id to make the effect exactly-once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kafka.partitioner.default import murmur2

DEFAULT_PARTITIONS = 4


class BusError(RuntimeError):
    """The bus could not do what was asked (broker unreachable past its timeout, closed bus...)."""


@dataclass(frozen=True)
class Record:
    """One message as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0


def encode_key(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8")


def partition_for_key(key: bytes | None, num_partitions: int, counter: itertools.count) -> int:
    """Kafka's default partitioner (murmur2 of the key), so both buses place keys alike."""
    if key is None:
        return next(counter) % num_partitions
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class Producer(ABC):
    @abstractmethod
    def publish(
        self,
        topic: str,
        value: bytes,
        key: str | bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one message. It is durable once ``flush`` returns."""

    @abstractmethod
    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued message is acknowledged; raise BusError if one failed."""

    @abstractmethod
    def close(self) -> None: ...


class Consumer(ABC):
    @abstractmethod
    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        """Records from this member's partitions, in offset order per partition."""

    @abstractmethod
    def commit(self, records: Iterable[Record] | None = None) -> None:
        """Mark records (default: everything polled so far) as processed for the group."""

    @abstractmethod
    def assignment(self) -> set[tuple[str, int]]: ...

    @abstractmethod
    def close(self) -> None:
        """Leave the group. Uncommitted records go to the remaining members."""


def close_quietly(consumer: Consumer | None) -> None:
    """Close a consumer that may already be broken (its broker gone); errors are only logged."""
    if consumer is None:
        return
    try:
        consumer.close()
    except Exception as exc:  # noqa: BLE001 - a consumer of a broker that is gone
        logging.getLogger(__name__).debug("consumer close failed", extra={"error_class": type(exc).__name__})


class Bus(ABC):
    """Factory for producers and consumers on one cluster (or one process)."""

    kind: str = "abstract"

    @abstractmethod
    def producer(self) -> Producer: ...

    @abstractmethod
    def consumer(self, topics: Sequence[str], group_id: str, client_id: str | None = None) -> Consumer: ...

    @abstractmethod
    def ensure_topics(self, topics: Sequence[str], partitions: int = DEFAULT_PARTITIONS) -> None: ...

    def require_topics(self, topics: Sequence[str]) -> None:
        """Fail with the names of any topic that does not exist (topics an operator creates)."""
        missing = self.missing_topics(topics)
        if missing:
            raise BusError(f"topics missing on the broker: {', '.join(missing)} (kafka_create_topics is off: the "
                           "Topic Operator creates them, deploy/k8s/components/kafka-strimzi/topics.yaml)")

    def missing_topics(self, topics: Sequence[str]) -> list[str]:
        return []

    def read_at(self, topic: str, partition: int, offset: int) -> Record | None:
        """The record at one offset (a dead letter's source), None when it is gone (retention)."""
        return None

    @abstractmethod
    def end_offsets(self, topic: str) -> list[int]:
        """The next offset of every partition of ``topic``: how many messages were ever written to it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources."""


def commit_offsets(records: Iterable[Record]) -> dict[tuple[str, int], int]:
    """The next offset to read per partition after processing ``records``."""
    offsets: dict[tuple[str, int], int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


# ----------------------------------------------------------------------------------------------
# In-memory bus: the embedded mode. Same semantics, one process.
# ----------------------------------------------------------------------------------------------


@dataclass
class _Group:
    members: list[int] = field(default_factory=list)
    subscriptions: dict[int, tuple[str, ...]] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    generation: int = 0
    assignment: dict[int, set[tuple[str, int]]] = field(default_factory=dict)


class MemoryBus(Bus):
    """A thread-safe in-process broker with partitions, consumer groups and committed offsets."""

    kind = "memory"

    def __init__(self, default_partitions: int = DEFAULT_PARTITIONS, unavailable_timeout_s: float = 30.0):
        self._cond = threading.Condition()
        self._topics: dict[str, list[list[Record]]] = {}
        self._groups: dict[str, _Group] = {}
        self._member_ids = itertools.count(1)
        self._round_robin = itertools.count()
        self._default_partitions = default_partitions
        self._available = True
        self._unavailable_timeout_s = unavailable_timeout_s

    # --- broker administration --------------------------------------------------------------
    def missing_topics(self, topics: Sequence[str]) -> list[str]:
        with self._cond:
            return [t for t in topics if t not in self._topics]

    def read_at(self, topic: str, partition: int, offset: int) -> Record | None:
        with self._cond:
            partitions = self._topics.get(topic, [])
            if 0 <= partition < len(partitions) and 0 <= offset < len(partitions[partition]):
                return partitions[partition][offset]
        return None

    def ensure_topics(self, topics: Sequence[str], partitions: int = DEFAULT_PARTITIONS) -> None:
        with self._cond:
            for topic in topics:
                self._topic(topic, partitions)
            self._rebalance_all()

    def _topic(self, topic: str, partitions: int | None = None) -> list[list[Record]]:
        if topic not in self._topics:
            self._topics[topic] = [[] for _ in range(partitions or self._default_partitions)]
        return self._topics[topic]

    def set_available(self, available: bool) -> None:
        """Simulate a broker outage (restart): producers wait and retry, nothing acked is lost."""
        with self._cond:
            self._available = available
            self._cond.notify_all()

    def end_offsets(self, topic: str) -> list[int]:
        with self._cond:
            return [len(p) for p in self._topic(topic)]

    # --- produce --------------------------------------------------------------------------------
    def _append(self, topic: str, value: bytes, key: bytes | None, headers: tuple) -> None:
        deadline = time.monotonic() + self._unavailable_timeout_s
        with self._cond:
            while not self._available:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusError(f"in-memory broker unavailable for {self._unavailable_timeout_s}s")
                self._cond.wait(remaining)
            partitions = self._topic(topic)
            p = partition_for_key(key, len(partitions), self._round_robin)
            log = partitions[p]
            log.append(Record(topic, p, len(log), key, value, headers, int(time.time() * 1000)))
            self._cond.notify_all()

    def producer(self) -> Producer:
        return _MemoryProducer(self)

    # --- consume --------------------------------------------------------------------------------
    def consumer(self, topics: Sequence[str], group_id: str, client_id: str | None = None) -> Consumer:
        with self._cond:
            for topic in topics:
                self._topic(topic)
            member = next(self._member_ids)
            group = self._groups.setdefault(group_id, _Group())
            group.members.append(member)
            group.subscriptions[member] = tuple(topics)
            self._rebalance(group)
            return _MemoryConsumer(self, group_id, member)

    def _rebalance_all(self) -> None:
        for group in self._groups.values():
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Round-robin each topic's partitions over the members subscribed to it."""
        group.generation += 1
        assignment: dict[int, set[tuple[str, int]]] = {m: set() for m in group.members}
        topics = sorted({t for m in group.members for t in group.subscriptions[m]})
        for topic in topics:
            subscribers = [m for m in sorted(group.members) if topic in group.subscriptions[m]]
            for p in range(len(self._topic(topic))):
                assignment[subscribers[p % len(subscribers)]].add((topic, p))
        group.assignment = assignment
        self._cond.notify_all()

    def _leave(self, group_id: str, member: int) -> None:
        with self._cond:
            group = self._groups[group_id]
            if member in group.members:
                group.members.remove(member)
                group.subscriptions.pop(member, None)
                self._rebalance(group)


class _MemoryProducer(Producer):
    def __init__(self, bus: MemoryBus):
        self._bus = bus
        self._closed = False

    def publish(self, topic, value, key=None, headers=()):
        if self._closed:
            raise BusError("producer is closed")
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        self._bus._append(topic, bytes(value), encode_key(key), tuple(headers))

    def flush(self, timeout_s=None):
        return None  # appends are synchronous: acknowledged on return

    def close(self):
        self._closed = True


class _MemoryConsumer(Consumer):
    def __init__(self, bus: MemoryBus, group_id: str, member: int):
        self._bus = bus
        self._group_id = group_id
        self._member = member
        self._generation = -1
        self._positions: dict[tuple[str, int], int] = {}
        self._polled: dict[tuple[str, int], int] = {}
        self._closed = False

    def _sync_assignment(self, group: _Group) -> None:
        if group.generation != self._generation:
            # after a rebalance, resume every owned partition from the group's committed offset
            self._generation = group.generation
            owned = group.assignment.get(self._member, set())
            self._positions = {tp: group.committed.get(tp, 0) for tp in owned}
            self._polled = {}

    def poll(self, timeout_s=1.0, max_records=500):
        if self._closed:
            raise BusError("consumer is closed")
        deadline = time.monotonic() + timeout_s
        bus = self._bus
        with bus._cond:
            while True:
                group = bus._groups[self._group_id]
                self._sync_assignment(group)
                out: list[Record] = []
                for tp in sorted(self._positions):
                    log = bus._topics[tp[0]][tp[1]]
                    start = self._positions[tp]
                    take = log[start : start + (max_records - len(out))]
                    if take:
                        out.extend(take)
                        self._positions[tp] = start + len(take)
                        self._polled[tp] = self._positions[tp]
                    if len(out) >= max_records:
                        break
                if out:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                bus._cond.wait(remaining)

    def commit(self, records=None):
        bus = self._bus
        with bus._cond:
            group = bus._groups[self._group_id]
            if group.generation != self._generation:
                # partitions moved since the poll: like Kafka, the commit is refused
                raise BusError("commit failed: the group rebalanced since the last poll")
            offsets = commit_offsets(records) if records is not None else dict(self._polled)
            for tp, offset in offsets.items():
                if tp in self._positions:
                    group.committed[tp] = max(group.committed.get(tp, 0), offset)

    def assignment(self):
        with self._bus._cond:
            self._sync_assignment(self._bus._groups[self._group_id])
            return set(self._positions)

    def close(self):
        if not self._closed:
            self._closed = True
            self._bus._leave(self._group_id, self._member)
