"""A real single-node Apache Kafka 4.x broker (KRaft) on 127.0.0.1, for tests and laptops.

Sources, in order: an existing ``KAFKA_BOOTSTRAP_SERVERS``; Maven Central jars run with the local
Java 17 (``org.apache.kafka:kafka_2.13`` and its runtime dependencies, cached under
``~/.cache/medserl/kafka-<version>``); docker ``apache/kafka`` where a docker engine answers.

    python -m medserl_cli.kafka_local start   # prints the bootstrap address, runs until Ctrl-C
"""

from __future__ import annotations

import argparse
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
    """One KRaft broker+controller process. ``restart`` keeps its data and ports."""

    def __init__(self, version: str = KAFKA_VERSION, workdir: str | None = None, heap: str = "512m"):
        self.version = version
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="medserl-kafka-"))
        self.port = free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.proc: subprocess.Popen | None = None
        self.libs: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> Path:
        props = self.workdir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    "num.partitions=4",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.flush.interval.messages=1",
                ]
            )
            + "\n"
        )
        return props

    def _java(self, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC", "-cp", f"{self.libs}/*", *args]

    def start(self, timeout_s: float = 90.0) -> str:
        if self.libs is None:
            self.libs = resolve_jars(self.version)
        props = self._properties()
        if not (self.workdir / "data" / "meta.properties").exists():
            cluster_id = uuid.uuid4().bytes
            import base64

            cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
            fmt = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cid, "-c", str(props)),
                                 capture_output=True, text=True, timeout=120)
            if fmt.returncode != 0:
                raise BrokerError(f"kafka storage format failed: {fmt.stderr[-2000:]}")
        logfile = open(self.workdir / "broker.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True)
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

    def __init__(self, version: str = KAFKA_VERSION):
        self.version = version
        self.port = free_port()
        self.name = f"medserl-kafka-{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> str:
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


def start_broker() -> LocalKafka | DockerKafka:
    """Start a broker from the best available source. Raises BrokerError with what to fix."""
    errors = []
    if shutil.which("java"):
        broker = LocalKafka()
        try:
            broker.start()
            return broker
        except BrokerError as exc:
            broker.cleanup()
            errors.append(f"maven/java: {exc}")
    else:
        errors.append("maven/java: java not found (install Java 17)")
    if docker_available():
        broker = DockerKafka()
        broker.start()
        return broker
    errors.append("docker: no engine answers")
    raise BrokerError("could not start Apache Kafka. " + " | ".join(errors)
                      + " | or point KAFKA_BOOTSTRAP_SERVERS at a running broker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "fetch"], help="start: run a broker until Ctrl-C; fetch: only download jars")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(resolve_jars())
        return 0
    broker = start_broker()
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
