"""The message bus on Apache Kafka (kafka-python). Same contract as services.common.bus.MemoryBus."""

from __future__ import annotations

import logging
import os
import socket
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

HOW_TO_START = ("start one with `make kafka` (127.0.0.1:9092) or `medserl up`, or point --kafka-bootstrap "
                "(KAFKA_BOOTSTRAP_SERVERS) at a running broker")


def _addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap_servers.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise BusError(f"bad Kafka bootstrap address {item.strip()!r}: expected host:port[,host:port]")
        out.append((host.strip("[]"), int(port)))
    return out


def _not_reachable(bootstrap_servers: str, exc: BaseException) -> BusError:
    return BusError(f"cannot reach Kafka at {bootstrap_servers} ({type(exc).__name__}: {exc}); {HOW_TO_START}")


DEFAULT_MAX_MESSAGE_BYTES = 1_000_000  # under the broker default message.max.bytes (1048588)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def kafka_security(settings) -> dict:
    """kafka-python client options for TLS (Strimzi's TLS listener with KafkaUser certificates) and
    SASL, from the service settings. The SASL password comes from a file or $MEDSERL_KAFKA_SASL_PASSWORD,
    never from a flag; errors name the setting, never a value."""
    protocol = (getattr(settings, "kafka_security_protocol", "") or "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"kafka_security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}")
    options: dict = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(settings, name, "")
            if path and not os.path.isfile(path):
                raise ValueError(f"{name} {path} does not exist")
            if path:
                options[name.removeprefix("kafka_")] = path
        options["ssl_check_hostname"] = True
    if protocol.startswith("SASL_"):
        mechanism = (getattr(settings, "kafka_sasl_mechanism", "") or "SCRAM-SHA-512").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"kafka_sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}")
        password_file = getattr(settings, "kafka_sasl_password_file", "")
        if password_file:
            if not os.path.isfile(password_file):
                raise ValueError(f"kafka_sasl_password_file {password_file} does not exist")
            with open(password_file, encoding="utf-8") as fh:
                password = fh.read().strip()
        else:
            password = os.environ.get("MEDSERL_KAFKA_SASL_PASSWORD", "")
        if not getattr(settings, "kafka_sasl_username", "") or not password:
            raise ValueError(f"{protocol} needs kafka_sasl_username and a password (kafka_sasl_password_file "
                             "or $MEDSERL_KAFKA_SASL_PASSWORD)")
        options.update(sasl_mechanism=mechanism, sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=password)
    return options


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
        replication_factor: int = 0,
        connect_timeout_s: float = 10.0,
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        compression_type: str | None = None,
        security: dict | None = None,
        max_message_bytes: int | None = None,
        group_instance_id: str = "",
    ):
        if not bootstrap_servers:
            raise BusError("--bus kafka needs a broker address: pass --kafka-bootstrap HOST:PORT (or set "
                           "MEDSERL_KAFKA_BOOTSTRAP / KAFKA_BOOTSTRAP_SERVERS); no broker yet? `make kafka` runs one "
                           "on 127.0.0.1:9092, `medserl up` runs the whole pipeline")
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._delivery_timeout_ms = delivery_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        # topics this bus creates: 0 = min(3, brokers in the cluster), so a 3-node cluster survives a node
        self.replication_factor = replication_factor
        self._connect_timeout_s = connect_timeout_s
        self._linger_ms = linger_ms  # batching: one request carries many messages (flush() still waits)
        self._batch_size = batch_size
        self._compression_type = compression_type
        self._reachable = False
        self.security = dict(security or {})  # kafka_security(): TLS / SASL options for every client
        # the largest message a producer sends: kafka-python raises on a larger one, so the stream
        # worker checks outputs against it first and dead-letters instead of dying
        self.max_message_bytes = int(max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES)
        self.group_instance_id = group_instance_id  # static membership: see ServiceSettings
        self._instances: dict[str, set[int]] = {}  # live consumers per group: each member needs its own name
        self._instances_lock = threading.Lock()
        self._offsets_client = None  # a group-less consumer for end offsets, made on first use
        self._offsets_lock = threading.Lock()

    def require_reachable(self) -> None:
        """Fail in seconds, with what to do, when nothing listens at the bootstrap address (the client
        library would retry for 30 s and end in a traceback). Checked once per bus."""
        if self._reachable:
            return
        addresses = _addresses(self.bootstrap_servers)
        deadline = time.monotonic() + self._connect_timeout_s
        last: BaseException = ConnectionRefusedError("no address answered")
        while True:
            for host, port in addresses:
                try:
                    with socket.create_connection((host, port), timeout=min(2.0, self._connect_timeout_s)):
                        self._reachable = True
                        return
                except OSError as exc:
                    last = exc
            if time.monotonic() >= deadline:
                raise _not_reachable(self.bootstrap_servers, last)
            time.sleep(0.5)

    def _client(self, build):
        """A kafka-python client; a broker that never answers the bootstrap is a BusError that says so."""
        from kafka.errors import KafkaConnectionError, KafkaTimeoutError

        self.require_reachable()
        try:
            return build()
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            protocol = self.security.get("security_protocol", "PLAINTEXT")
            if protocol != "PLAINTEXT":  # the port answers (require_reachable): the handshake is the suspect
                raise BusError(f"Kafka at {self.bootstrap_servers} answered but no {protocol} session came up "
                               f"({type(exc).__name__}): check kafka_ssl_cafile, kafka_ssl_certfile and "
                               "kafka_ssl_keyfile (a certificate the cluster CA signed) or the SASL user") from exc
            raise _not_reachable(self.bootstrap_servers, exc) from exc

    def producer(self) -> Producer:
        return self._client(lambda: _KafkaProducer(self))

    def consumer(self, topics: Sequence[str], group_id: str, client_id: str | None = None) -> Consumer:
        return self._client(lambda: _KafkaConsumer(self, topics, group_id, client_id or self.client_id))

    def admin(self):
        from kafka.admin import KafkaAdminClient

        return self._client(lambda: KafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                                     client_id=f"{self.client_id}-admin",
                                                     request_timeout_ms=self._request_timeout_ms,
                                                     **self.security))

    def topic_replication(self, admin) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) for new topics: the configured factor, else
        min(3, brokers); min ISR one below it, so acks=all survives one broker down."""
        factor = self.replication_factor
        if factor <= 0:
            factor = min(3, max(1, len(admin.describe_cluster().get("brokers", []))))
        return factor, max(1, factor - 1)

    def missing_topics(self, topics: Sequence[str]) -> list[str]:
        from kafka.errors import KafkaError

        admin = self.admin()
        try:
            return _missing(admin, topics)
        except KafkaError as exc:
            raise BusError(f"could not list topics on {self.bootstrap_servers}: {exc!r}") from exc
        finally:
            admin.close()

    def read_at(self, topic: str, partition: int, offset: int, timeout_s: float = 10.0) -> Record | None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        tp = TopicPartition(topic, partition)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                 client_id=f"{self.client_id}-read-at", **self.security)
        try:
            consumer.assign([tp])
            start, end = consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]
            if not start <= offset < end:
                return None  # past retention, or never written
            consumer.seek(tp, offset)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for r in consumer.poll(timeout_ms=500, max_records=1).get(tp, []):
                    if r.offset == offset:
                        return Record(topic=r.topic, partition=r.partition, offset=r.offset, key=r.key, value=r.value,
                                      headers=tuple(r.headers or ()), timestamp_ms=r.timestamp)
                    if r.offset > offset:
                        return None  # compacted away
            return None
        except KafkaError as exc:
            raise BusError(f"could not read {topic}[{partition}]@{offset}: {exc}") from exc
        finally:
            consumer.close()

    def ensure_topics(self, topics: Sequence[str], partitions: int = DEFAULT_PARTITIONS) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        admin = self.admin()
        try:
            missing = _missing(admin, topics)
            if missing:
                factor, min_isr = self.topic_replication(admin)
                new = [NewTopic(name=t, num_partitions=partitions, replication_factor=factor,
                                topic_configs={"min.insync.replicas": str(min_isr)}) for t in missing]
                try:
                    admin.create_topics(new_topics=new, validate_only=False)
                except TopicAlreadyExistsError:
                    pass  # another service created it between list and create
            self._wait_for_metadata(admin, list(topics))
        except KafkaError as exc:
            raise BusError(f"could not create or describe topics on {self.bootstrap_servers}: {exc!r}") from exc
        finally:
            admin.close()

    def end_offsets(self, topic: str) -> list[int]:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        self.require_reachable()
        with self._offsets_lock:
            try:
                if self._offsets_client is None:
                    self._offsets_client = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                                         enable_auto_commit=False,
                                                         client_id=f"{self.client_id}-offsets",
                                                         request_timeout_ms=self._request_timeout_ms,
                                                         **self.security)
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
    """One kafka-python producer, safe to share between threads: ``flush`` reports on the messages the
    calling thread published since its last flush, never on another thread's."""

    def __init__(self, bus: KafkaBus):
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=bus.bootstrap_servers,
            client_id=f"{bus.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=bus._linger_ms,
            batch_size=bus._batch_size,
            compression_type=bus._compression_type,
            request_timeout_ms=bus._request_timeout_ms,
            delivery_timeout_ms=bus._delivery_timeout_ms,
            reconnect_backoff_max_ms=1000,
            # headroom over the largest value for its key, headers and the record batch's framing
            max_request_size=bus.max_message_bytes + 64 * 1024,
            **bus.security,
        )
        self._local = threading.local()  # this thread's unacknowledged futures

    def _pending(self) -> list:
        pending = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def publish(self, topic, value, key=None, headers=()):
        from kafka.errors import KafkaError

        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        try:
            future = self._producer.send(topic, value=bytes(value), key=encode_key(key), headers=list(headers))
        except KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms: the caller must not commit
            raise BusError(f"could not queue a message for {topic}: {exc!r}") from exc
        self._pending().append(future)

    def flush(self, timeout_s=None):
        from kafka.errors import KafkaError

        # taken first: whatever happens below, these are reported to this caller once, and only to it
        pending, self._local.pending = self._pending(), []
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BusError(f"{len(pending)} messages not acknowledged within {timeout_s}s: {exc!r}") from exc
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


def _missing(admin, topics: Sequence[str]) -> list[str]:
    existing = set(admin.list_topics())
    return [t for t in topics if t not in existing]


def _static_membership(bus: KafkaBus, group_id: str) -> tuple[int | None, dict]:
    """``group_instance_id`` for a new consumer of ``group_id``: the bus's name, numbered by the lowest
    slot free in this process, so a consumer made again (after a restart or a reconnect) is the same
    member. Returns (slot, consumer options)."""
    if not bus.group_instance_id:
        return None, {}
    with bus._instances_lock:
        taken = bus._instances.setdefault(group_id, set())
        slot = next(i for i in range(len(taken) + 1) if i not in taken)
        taken.add(slot)
    return slot, {"group_instance_id": f"{bus.group_instance_id}-{slot}" if slot else bus.group_instance_id}


class _KafkaConsumer(Consumer):
    def __init__(self, bus: KafkaBus, topics: Sequence[str], group_id: str, client_id: str):
        from kafka import KafkaConsumer

        self._bus, self._group_id = bus, group_id
        self._slot, static = _static_membership(bus, group_id)
        try:
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
                **static,
                **bus.security,
            )
        except BaseException:
            self._release()
            raise
        self._consumer.subscribe(list(topics))
        # fetch the topics' metadata before the group join (first poll): a leader that assigns without it
        # gives the topic no partitions until the next periodic refresh (metadata_max_age_ms, 5 minutes)
        for topic in topics:
            self._consumer.partitions_for_topic(topic)
        self._polled: dict[tuple[str, int], int] = {}

    def poll(self, timeout_s=1.0, max_records=500):
        from kafka.errors import KafkaError

        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:  # the coordinator or broker away: the caller reconnects
            raise BusError(f"poll failed: {type(exc).__name__}: {exc}") from exc
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
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._release()

    def _release(self) -> None:
        if self._slot is not None:
            with self._bus._instances_lock:
                self._bus._instances.get(self._group_id, set()).discard(self._slot)
            self._slot = None
