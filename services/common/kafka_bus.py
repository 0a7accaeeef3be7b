"""The message bus on Apache Kafka (kafka-python). Same contract as services.common.bus.MemoryBus."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from services.common.bus import (
    DEFAULT_PARTITIONS,
    Bus,
    BusError,
    Consumer,
    Producer,
    Record,
    commit_offsets,
    encode_key,
)

log = logging.getLogger(__name__)


class KafkaBus(Bus):
    """Producers with acks=all and idempotence; consumers with manual commits."""

    kind = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str = "medserl",
        request_timeout_ms: int = 30_000,
        delivery_timeout_ms: int = 120_000,
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
    ):
        if not bootstrap_servers:
            raise BusError("KafkaBus needs bootstrap servers (MEDSERL_KAFKA_BOOTSTRAP or --kafka-bootstrap)")
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._delivery_timeout_ms = delivery_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        self._offsets_client = None  # a group-less consumer for end offsets, made on first use
        self._offsets_lock = threading.Lock()

    def producer(self) -> Producer:
        return _KafkaProducer(self)

    def consumer(self, topics: Sequence[str], group_id: str, client_id: str | None = None) -> Consumer:
        return _KafkaConsumer(self, topics, group_id, client_id or self.client_id)

    def ensure_topics(self, topics: Sequence[str], partitions: int = DEFAULT_PARTITIONS) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id=f"{self.client_id}-admin")
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                new = [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
                try:
                    admin.create_topics(new_topics=new, validate_only=False)
                except TopicAlreadyExistsError:
                    pass  # another service created it between list and create
            self._wait_for_metadata(admin, list(topics))
        finally:
            admin.close()

    def end_offsets(self, topic: str) -> list[int]:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        with self._offsets_lock:
            try:
                if self._offsets_client is None:
                    self._offsets_client = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                                         enable_auto_commit=False,
                                                         client_id=f"{self.client_id}-offsets",
                                                         request_timeout_ms=self._request_timeout_ms)
                partitions = sorted(self._offsets_client.partitions_for_topic(topic) or ())
                tps = [TopicPartition(topic, p) for p in partitions]
                offsets = self._offsets_client.end_offsets(tps) if tps else {}
            except KafkaError as exc:
                raise BusError(f"could not read the end offsets of {topic}: {exc}") from exc
            return [int(offsets[tp]) for tp in tps]

    def close(self) -> None:
        with self._offsets_lock:
            if self._offsets_client is not None:
                self._offsets_client.close()
                self._offsets_client = None

    def _wait_for_metadata(self, admin, topics: list[str], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = admin.describe_topics(topics)
            if all(d.get("error_code", 0) == 0 and d.get("partitions") for d in described):
                return
            time.sleep(0.2)
        raise BusError(f"topics not ready after {timeout_s}s: {topics}")


class _KafkaProducer(Producer):
    def __init__(self, bus: KafkaBus):
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=bus.bootstrap_servers,
            client_id=f"{bus.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=bus._request_timeout_ms,
            delivery_timeout_ms=bus._delivery_timeout_ms,
            reconnect_backoff_max_ms=1000,
        )
        self._pending: list = []

    def publish(self, topic, value, key=None, headers=()):
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        future = self._producer.send(topic, value=bytes(value), key=encode_key(key), headers=list(headers))
        self._pending.append(future)

    def flush(self, timeout_s=None):
        from kafka.errors import KafkaError

        self._producer.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        failures = []
        for future in pending:
            try:
                future.get(timeout=0 if future.is_done else timeout_s)
            except KafkaError as exc:  # surfaced, never swallowed: the caller must not commit
                failures.append(exc)
        if failures:
            raise BusError(f"{len(failures)} of {len(pending)} messages were not acknowledged: {failures[0]!r}")

    def close(self):
        self._producer.close(timeout=10)


class _KafkaConsumer(Consumer):
    def __init__(self, bus: KafkaBus, topics: Sequence[str], group_id: str, client_id: str):
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            bootstrap_servers=bus.bootstrap_servers,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=bus._session_timeout_ms,
            heartbeat_interval_ms=max(1000, bus._session_timeout_ms // 4),
            max_poll_interval_ms=bus._max_poll_interval_ms,
            request_timeout_ms=max(bus._request_timeout_ms, bus._session_timeout_ms + 5000),
            reconnect_backoff_max_ms=1000,
        )
        self._consumer.subscribe(list(topics))
        # fetch the topics' metadata before the group join (first poll): a leader that assigns without it
        # gives the topic no partitions until the next periodic refresh (metadata_max_age_ms, 5 minutes)
        for topic in topics:
            self._consumer.partitions_for_topic(topic)
        self._polled: dict[tuple[str, int], int] = {}

    def poll(self, timeout_s=1.0, max_records=500):
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Record] = []
        for tp, records in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            for r in records:
                out.append(
                    Record(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key,
                        value=r.value,
                        headers=tuple((k, v) for k, v in (r.headers or [])),
                        timestamp_ms=r.timestamp,
                    )
                )
            if records:
                self._polled[(tp.topic, tp.partition)] = records[-1].offset + 1
        return out

    def commit(self, records=None):
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = commit_offsets(records) if records is not None else dict(self._polled)
        if not offsets:
            return
        payload = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            self._consumer.commit(offsets=payload)
        except CommitFailedError as exc:
            raise BusError(f"commit failed: the group rebalanced since the last poll ({exc})") from exc
        except KafkaError as exc:
            raise BusError(f"commit failed: {exc!r}") from exc

    def assignment(self):
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self):
        # autocommit is off, so closing never commits what was not processed
        self._consumer.close(autocommit=False)
