"""A real single-node Apache Kafka 4.x broker (KRaft) on 127.0.0.1, for tests and laptops.

Sources, in order: an existing ``KAFKA_BOOTSTRAP_SERVERS``; Maven Central jars run with the local
Java 17 (``org.apache.kafka:kafka_2.13`` and its runtime dependencies, cached under
``~/.cache/medserl/kafka-<version>``); docker ``apache/kafka`` where a docker engine answers.

    python -m medserl_cli.kafka_local start [--port 9092]   # prints the bootstrap address, runs until stopped

The broker is configured as production brokers are where it matters for speed: no fsync per message
(flushing is left to the OS; durability comes from replication and ``acks=all``). The wrapper owns
the Java process: SIGTERM/SIGINT stop it cleanly, and on Linux it dies with the wrapper even on kill -9.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

KAFKA_VERSION = os.environ.get("MEDSERL_KAFKA_VERSION", "4.1.1")
DEFAULT_PORT = 9092  # `make kafka` and `medserl up`: Kafka's usual port, so clients need no discovery
CACHE_DIR = Path(os.environ.get("MEDSERL_CACHE_DIR", Path.home() / ".cache" / "medserl"))

POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>medserl</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
"""


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_in_use_error(port: int) -> BrokerError:
    return BrokerError(f"127.0.0.1:{port} is already in use: if a broker runs there, use it "
                       f"(--kafka-bootstrap 127.0.0.1:{port} or KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}); "
                       "otherwise choose another port (0: any free one)")


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _prctl():
    """libc's prctl, loaded in the parent (never between fork and exec); None where there is none."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None


def _broker_preexec(parent_pid: int | None, prctl) -> None:
    """preexec_fn: the broker takes stop signals even if the wrapper blocks them (a blocked mask is
    inherited); with ``parent_pid`` the kernel also sends it SIGTERM when the wrapper dies (kill -9)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if parent_pid is None or prctl is None:
        return
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the wrapper died before prctl took effect
        os._exit(1)


def resolve_jars(version: str = KAFKA_VERSION) -> Path:
    """Download the broker's jars once with Maven; later calls use the cache."""
    libs = CACHE_DIR / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if not shutil.which("mvn"):
        raise BrokerError("Maven (mvn) is needed to fetch Kafka jars from Maven Central; install it or set KAFKA_BOOTSTRAP_SERVERS")
    work = CACHE_DIR / f"kafka-{version}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(POM_TEMPLATE.format(version=version))
    cmd = ["mvn", "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BrokerError(f"mvn could not fetch kafka_2.13:{version}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    marker.touch()
    return libs


class LocalKafka:
    """One KRaft broker+controller process. ``restart`` keeps its data and ports.

    ``port=0`` picks a free port (tests); ``die_with_parent`` ties the Java process to the thread that
    starts it (the ``start`` wrapper), so killing the wrapper in any way stops the broker.
    """

    def __init__(self, version: str = KAFKA_VERSION, workdir: str | Path | None = None, heap: str = "512m",
                 port: int = 0, die_with_parent: bool = False, tls: dict | None = None):
        self.version = version
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="medserl-kafka-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.die_with_parent = die_with_parent
        # a mutual-TLS listener beside the plain one, as Strimzi's: {"keystore": PEM key + chain,
        # "truststore": PEM CA}; clients must present a certificate the CA signed
        self.tls = dict(tls) if tls else None
        self.tls_port = free_port() if tls else None
        self.proc: subprocess.Popen | None = None
        self.libs: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_bootstrap(self) -> str | None:
        return f"127.0.0.1:{self.tls_port}" if self.tls_port else None

    def _properties(self) -> Path:
        props = self.workdir / "server.properties"
        listeners = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        advertised = f"PLAINTEXT://127.0.0.1:{self.port}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        tls: list[str] = []
        if self.tls:
            listeners += f",SSL://127.0.0.1:{self.tls_port}"
            advertised += f",SSL://127.0.0.1:{self.tls_port}"
            protocols += ",SSL:SSL"
            tls = ["inter.broker.listener.name=PLAINTEXT", "ssl.keystore.type=PEM",
                   f"ssl.keystore.location={self.tls['keystore']}", "ssl.truststore.type=PEM",
                   f"ssl.truststore.location={self.tls['truststore']}", "ssl.client.auth=required"]
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners={listeners}",
                    f"advertised.listeners={advertised}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map={protocols}",
                    *tls,
                    f"log.dirs={self.workdir / 'data'}",
                    "num.partitions=4",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    # no log.flush.interval.messages: like production brokers, flushing is the OS's job
                ]
            )
            + "\n"
        )
        return props

    def _java(self, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC", "-cp", f"{self.libs}/*", *args]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout_s: float = 90.0) -> str:
        if port_open(self.port):
            raise port_in_use_error(self.port)
        if self.libs is None:
            self.libs = resolve_jars(self.version)
        props = self._properties()
        if not (self.workdir / "data" / "meta.properties").exists():
            cid = "-"
            while cid.startswith("-"):  # the storage tool would read a leading "-" as an option
                cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cid, "-c", str(props)),
                                 capture_output=True, text=True, timeout=120)
            if fmt.returncode != 0:
                raise BrokerError(f"kafka storage format failed: {fmt.stderr[-2000:]}")
        logfile = open(self.workdir / "broker.log", "ab")  # noqa: SIM115 - owned by the process
        parent, prctl = (os.getpid(), _prctl()) if self.die_with_parent else (None, None)
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=lambda: _broker_preexec(parent, prctl))
        logfile.close()  # the child has its own descriptor
        self._wait_ready(timeout_s)
        return self.bootstrap

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"kafka exited with {self.proc.returncode}; see {self.workdir / 'broker.log'}")
            if port_open(self.port) and self._metadata_ok():
                return
            time.sleep(0.5)
        raise BrokerError(f"kafka did not become ready in {timeout_s}s; see {self.workdir / 'broker.log'}")

    def _metadata_ok(self) -> bool:
        try:
            from kafka.admin import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            admin.list_topics()
            admin.close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, down_s: float = 2.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class DockerKafka:
    """apache/kafka in docker, for laptops that have an engine and no Java."""

    def __init__(self, version: str = KAFKA_VERSION, port: int = 0):
        self.version = version
        self.port = port or free_port()
        self.name = f"medserl-kafka-{self.port}"
        self.pid: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> str:
        if port_open(self.port):
            raise port_in_use_error(self.port)
        env = [
            "-e", "KAFKA_NODE_ID=1", "-e", "KAFKA_PROCESS_ROLES=broker,controller",
            "-e", "KAFKA_LISTENERS=PLAINTEXT://:9092,CONTROLLER://:9093",
            "-e", f"KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://127.0.0.1:{self.port}",
            "-e", "KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER",
            "-e", "KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093",
            "-e", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1",
            "-e", "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0",
        ]
        subprocess.run(["docker", "run", "-d", "--rm", "--name", self.name, "-p", f"127.0.0.1:{self.port}:9092", *env,
                        f"apache/kafka:{self.version}"], check=True, capture_output=True, timeout=300)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_open(self.port):
                return self.bootstrap
            time.sleep(1)
        raise BrokerError("docker kafka did not come up")

    def restart(self, down_s: float = 2.0) -> None:
        subprocess.run(["docker", "restart", self.name], check=True, capture_output=True, timeout=120)
        while not port_open(self.port):
            time.sleep(0.5)

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)

    cleanup = stop


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def start_broker(port: int = 0, workdir: str | Path | None = None,
                 die_with_parent: bool = False) -> LocalKafka | DockerKafka:
    """Start a broker from the best available source. Raises BrokerError with what to fix."""
    if port and port_open(port):
        raise port_in_use_error(port)
    errors = []
    if shutil.which("java"):
        broker = LocalKafka(workdir=workdir, port=port, die_with_parent=die_with_parent)
        try:
            broker.start()
            return broker
        except BrokerError as exc:
            if workdir is None:
                broker.cleanup()
            else:
                broker.stop()  # a named data folder is the caller's: keep it
            errors.append(f"maven/java: {exc}")
    else:
        errors.append("maven/java: java not found (install Java 17)")
    if docker_available():
        broker = DockerKafka(port=port)
        broker.start()
        return broker
    errors.append("docker: no engine answers")
    raise BrokerError("could not start Apache Kafka. " + " | ".join(errors)
                      + " | or point KAFKA_BOOTSTRAP_SERVERS at a running broker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "fetch"], help="start: run a broker until stopped; fetch: only download jars")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="listener port on 127.0.0.1; 0: any free one "
                        "(default: %(default)s)")
    parser.add_argument("--data", default=None, help="data folder to keep (default: a temporary one, deleted on stop)")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(resolve_jars())
        return 0
    # blocked before the broker starts, so the signal waits for sigwait instead of killing us first
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        broker = start_broker(port=args.port, workdir=args.data, die_with_parent=True)
    except BrokerError as exc:
        print(f"kafka_local: error: {exc}", file=sys.stderr)
        return 2
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
    try:
        signal.sigwait(STOP_SIGNALS)
    finally:
        if args.data:
            broker.stop()
        else:
            broker.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
