"""``medserl up`` / ``medserl down``: the distributed pipeline on one machine, one process per service.

``up`` starts a local Kafka broker (the KRaft broker the tests use, on 127.0.0.1:9092 unless told
otherwise) when no bootstrap address is given, then every service the config names as its own
``medserl serve`` process, waits until each answers its gRPC health check, and prints where each
listens and where its log goes. Everything it started is written to ``<state-dir>/up.json`` (default
``runs/up``), which ``medserl status`` and ``medserl down`` read. ``down`` stops the services with
SIGTERM (each finishes, flushes and commits the batch in hand), then the broker's Java process.

A config (YAML/JSON; examples in configs/up/)::

    kafka: {port: 9092}             # or {bootstrap: host:port} for an existing cluster
    build: {tiny_model: models/tiny} # built offline when missing (the CPU example)
    settings: {log_json: true}      # every service (any ServiceSettings field)
    services:                       # each one's own settings (medserl serve <name> --help)
      verifier: {}
      assessor: {backend: baseline_last_sentence}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "runs/up"
DEFAULT_CONFIG = "configs/up/cpu.yaml"
START_ORDER = ("verifier", "assessor", "trainer", "injector", "generator")
STOP_ORDER = ("injector", "generator", "verifier", "assessor", "trainer")  # producers of new work first
CONFIG_KEYS = {"kafka", "build", "settings", "services"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a local Kafka broker and every service as its own process",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"pipeline config (default: {DEFAULT_CONFIG})")
    p.add_argument("--bus", choices=("kafka",), default="kafka", help="separate processes need Kafka (default: kafka)")
    p.add_argument("--kafka-bootstrap", default="", help="use this broker instead of starting one (HOST:PORT)")
    p.add_argument("--kafka-port", type=int, default=None,
                   help="port of the local broker (default: the config's kafka.port, else 9092; 0: any free port)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="logs, per-service configs, broker data, "
                   "up.json (default: %(default)s)")
    p.add_argument("--only", default="", help="comma-separated subset of the config's services")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds each service may take to become healthy")
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM brings it all down")
    p.set_defaults(func=run_up)

    d = sub.add_parser("down", help="stop what `medserl up` started (services, then the broker)",
                       description="SIGTERM to each service (the batch in hand is finished and committed), "
                       "then the broker; SIGKILL after --timeout seconds.")
    d.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="(default: %(default)s)")
    d.add_argument("--timeout", type=float, default=120.0, help="seconds each process may take to exit")
    d.add_argument("--purge", action="store_true", help="also delete the broker's data and the logs")
    d.set_defaults(func=run_down)


# --- the state file -----------------------------------------------------------------------------

def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "up.json"


def read_state(state_dir: str | Path) -> dict[str, Any] | None:
    path = state_path(state_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_state(state_dir: str | Path, state: dict[str, Any]) -> None:
    from services.common.fileio import write_atomic

    write_atomic(state_path(state_dir), json.dumps(state, indent=2))


def process_alive(pid: int | None, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (a recycled pid is not ours)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (not Linux): trust the pid
    if not cmdline.strip():
        return False  # a zombie
    return marker in cmdline


def service_marker(name: str) -> str:
    return f"serve {name}"


BROKER_MARKER = "kafka.Kafka"


# --- up -----------------------------------------------------------------------------------------

def load_pipeline_config(path: str | None) -> tuple[dict[str, Any], Path | None]:
    from medserl_cli.cli import CliError

    chosen = Path(path or DEFAULT_CONFIG)
    if not chosen.exists():
        if path is None:
            raise CliError(f"no --config given and {DEFAULT_CONFIG} is not here (run from the repository root, "
                           "or pass --config FILE; examples in configs/up/)")
        raise CliError(f"--config {path}: no such file")
    text = chosen.read_text()
    try:
        if chosen.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise CliError(f"--config {chosen}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"--config {chosen}: expected a mapping with 'services'")
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise CliError(f"--config {chosen}: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    from medserl_cli.registry import SERVICES

    services = data.get("services") or {}
    if not isinstance(services, dict) or not services:
        raise CliError(f"--config {chosen}: 'services' must name at least one of {', '.join(SERVICES)}")
    for name, block in services.items():
        if name not in SERVICES:
            raise CliError(f"--config {chosen}: unknown service {name!r}; choose from {', '.join(SERVICES)}")
        if block is not None and not isinstance(block, dict):
            raise CliError(f"--config {chosen}: services.{name} must be a mapping of settings")
    return data, chosen


def _ordered(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: START_ORDER.index(n) if n in START_ORDER else len(START_ORDER))


def _build(config: dict[str, Any]) -> None:
    tiny = (config.get("build") or {}).get("tiny_model")
    if tiny and not Path(tiny).exists():
        from trainer.tiny_model import build_tiny_model

        print(f"building the tiny model at {tiny} (offline, once)", flush=True)
        build_tiny_model(tiny, texts=None, seed=0)


def _start_broker(port: int, state_dir: Path) -> dict[str, Any]:
    from medserl_cli.cli import CliError
    from medserl_cli.kafka_local import (
        BrokerError,
        DockerKafka,
        LocalKafka,
        port_in_use_error,
        port_open,
        start_broker,
    )

    if port and port_open(port):
        raise CliError(str(port_in_use_error(port)))
    workdir = state_dir / "kafka"
    try:
        broker = start_broker(port=port, workdir=workdir)
    except BrokerError as exc:
        raise CliError(f"could not start a Kafka broker: {exc}") from None
    if isinstance(broker, LocalKafka):
        return {"kind": "java", "pid": broker.pid, "bootstrap": broker.bootstrap, "port": broker.port,
                "data": str(workdir), "log": str(workdir / "broker.log")}
    assert isinstance(broker, DockerKafka)
    return {"kind": "docker", "name": broker.name, "bootstrap": broker.bootstrap, "port": broker.port,
            "log": f"docker logs {broker.name}"}


def _spawn(name: str, settings: dict[str, Any], bootstrap: str, state_dir: Path) -> dict[str, Any]:
    import yaml

    config_file = state_dir / "config" / f"{name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    # static group membership: one process per service, restarted under the same name, takes its
    # partitions back at once (the name carries the deployment, so two state dirs never fence each other)
    instance = f"{name}-{hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]}"
    values = {"kafka_group_instance_id": instance, **settings, "bus": "kafka", "kafka_bootstrap": bootstrap}
    config_file.write_text(yaml.safe_dump(values, sort_keys=True))
    log_file = state_dir / "logs" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        # the bus as flags: they beat MEDSERL_* variables, so every service joins the broker `up` chose
        proc = subprocess.Popen([sys.executable, "-m", "medserl_cli", "serve", name, "--config", str(config_file),
                                 "--bus", "kafka", "--kafka-bootstrap", bootstrap],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    return {"pid": proc.pid, "log": str(log_file), "config": str(config_file),
            "log_offset": log_file.stat().st_size if log_file.exists() else 0, "_proc": proc}


def last_error_line(log_file: str | Path, start: int = 0) -> str:
    """The most useful line of a failed service's log: its ``error:`` line, else its last log line."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(start)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if ": error: " in line:
            return line.strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()[-400:]
    return ""


def _wait_ready(name: str, entry: dict[str, Any], deadline: float) -> None:
    """Until the READY line is in the log and gRPC health says SERVING; CliError when it exits first."""
    from medserl_cli.cli import CliError

    proc: subprocess.Popen = entry["_proc"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"{name} exited with {proc.returncode} while starting: "
                           f"{last_error_line(entry['log'], entry['log_offset'])} (log: {entry['log']})")
        with open(entry["log"], "rb") as fh:
            fh.seek(entry["log_offset"])
            for raw in fh:
                line = raw.decode(errors="replace")
                if line.startswith("READY "):
                    fields = dict(part.split("=", 1) for part in line.split()[1:])
                    entry["grpc_port"] = int(fields["grpc_port"])
                    metrics_port = fields.get("metrics_port", "None")
                    entry["metrics_port"] = int(metrics_port) if metrics_port.isdigit() else None
        if "grpc_port" in entry and health(f"127.0.0.1:{entry['grpc_port']}", 2.0) == "SERVING":
            return
        time.sleep(0.3)
    raise CliError(f"{name} did not become healthy in time: {last_error_line(entry['log'], entry['log_offset'])} "
                   f"(log: {entry['log']}; more time: --timeout)")


def health(target: str, deadline_s: float, service: str = "") -> str:
    """gRPC health of ``target``: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=deadline_s)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


def run_up(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError

    state_dir = Path(args.state_dir)
    previous = read_state(state_dir)
    if previous and any_alive(previous):
        raise CliError(f"already up (state in {state_path(state_dir)}): `medserl down --state-dir {state_dir}` "
                       "first, or use another --state-dir")
    config, config_path = load_pipeline_config(args.config)
    services: dict[str, dict] = {name: dict(block or {}) for name, block in config["services"].items()}
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in services]
        if missing:
            raise CliError(f"--only {args.only}: {', '.join(missing)} not in {config_path}")
        services = {n: services[n] for n in wanted}
    common = dict(config.get("settings") or {})
    kafka = dict(config.get("kafka") or {})
    bootstrap = args.kafka_bootstrap or kafka.get("bootstrap", "")
    state_dir.mkdir(parents=True, exist_ok=True)
    _build(config)
    suffixes = sorted({str({**common, **block}.get("topic_suffix", "")) for block in services.values()})
    state: dict[str, Any] = {"config": str(config_path), "started_unix": time.time(), "broker": None,
                             "bootstrap": bootstrap, "topic_suffixes": suffixes, "services": {}}
    try:
        if not bootstrap:
            port = args.kafka_port if args.kafka_port is not None else int(kafka.get("port", 9092))
            print(f"starting a Kafka broker on 127.0.0.1:{port or '<free port>'} ...", flush=True)
            state["broker"] = _start_broker(port, state_dir)
            state["bootstrap"] = bootstrap = state["broker"]["bootstrap"]
            write_state(state_dir, state)
        else:
            from services.common.kafka_bus import KafkaBus

            KafkaBus(bootstrap).require_reachable()  # a BusError that says how to start one
        _create_topics(bootstrap, services, common, suffixes)
        deadline = time.monotonic() + args.timeout
        for name in _ordered(list(services)):
            state["services"][name] = _spawn(name, {**common, **services[name]}, bootstrap, state_dir)
        write_state(state_dir, _public(state))
        for name in _ordered(list(services)):
            print(f"waiting for {name} ...", flush=True)
            _wait_ready(name, state["services"][name], deadline)
        write_state(state_dir, _public(state))
    except (CliError, KeyboardInterrupt, RuntimeError):
        write_state(state_dir, _public(state))
        print("start-up failed; stopping what was started", file=sys.stderr, flush=True)
        stop_all(_public(state), timeout_s=30, quiet=True)
        state_path(state_dir).unlink(missing_ok=True)
        raise
    print_started(state)
    if not args.foreground:
        print(f"`medserl status --state-dir {state_dir}` shows health, lag and throughput; "
              f"`medserl down --state-dir {state_dir}` stops it all.")
        return 0
    stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    print("running in the foreground; Ctrl-C stops everything", flush=True)
    signal.sigwait(stop_signals)
    code = stop_all(_public(state), timeout_s=120)
    state_path(state_dir).unlink(missing_ok=True)
    return code


def _create_topics(bootstrap: str, services: dict[str, dict], common: dict[str, Any], suffixes: list[str]) -> None:
    """Every topic once, before the services race to create them."""
    from services.common.kafka_bus import KafkaBus
    from services.common.topics import ALL_TOPICS

    factors = {int({**common, **block}.get("kafka_replication_factor", 0)) for block in services.values()}
    bus = KafkaBus(bootstrap, replication_factor=max(factors))
    try:
        bus.ensure_topics([f"{t}{suffix}" for suffix in suffixes for t in ALL_TOPICS])
    finally:
        bus.close()


def _public(state: dict[str, Any]) -> dict[str, Any]:
    """The state without the Popen objects (for up.json)."""
    return {**state, "services": {n: {k: v for k, v in e.items() if not k.startswith("_")}
                                  for n, e in state["services"].items()}}


def print_started(state: dict[str, Any]) -> None:
    broker = state.get("broker")
    rows = []
    if broker:
        where = f"pid {broker['pid']}" if broker["kind"] == "java" else f"container {broker['name']}"
        rows.append(("kafka", broker["bootstrap"], "-", where, broker["log"]))
    else:
        rows.append(("kafka", state["bootstrap"], "-", "external", "-"))
    for name, e in state["services"].items():
        metrics = f":{e['metrics_port']}/metrics" if e.get("metrics_port") else "-"
        rows.append((name, f"127.0.0.1:{e.get('grpc_port', '?')}", metrics, f"pid {e['pid']}", e["log"]))
    widths = [max(len(str(r[i])) for r in rows + [("service", "listens", "metrics", "process", "log")])
              for i in range(5)]
    for row in [("service", "listens", "metrics", "process", "log"), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- down ---------------------------------------------------------------------------------------

def any_alive(state: dict[str, Any]) -> bool:
    broker = state.get("broker") or {}
    if broker.get("kind") == "java" and process_alive(broker.get("pid"), BROKER_MARKER):
        return True
    return any(process_alive(e.get("pid"), service_marker(n)) for n, e in state.get("services", {}).items())


def _terminate(pid: int, marker: str, timeout_s: float, group: bool = False) -> str:
    """SIGTERM, wait, SIGKILL after ``timeout_s``; how it ended."""
    if not process_alive(pid, marker):
        return "not running"
    send = (lambda sig: os.killpg(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid, marker):
            return "stopped"
        _reap(pid)
        time.sleep(0.2)
    try:
        send(signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    return f"killed after {timeout_s:.0f}s"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child (foreground mode): no zombie left
    except ChildProcessError:
        pass


def stop_all(state: dict[str, Any], timeout_s: float, quiet: bool = False) -> int:
    services = state.get("services", {})
    for name in sorted(services, key=lambda n: STOP_ORDER.index(n) if n in STOP_ORDER else -1):
        outcome = _terminate(services[name]["pid"], service_marker(name), timeout_s)
        if not quiet:
            print(f"{name}: {outcome}", flush=True)
    broker = state.get("broker")
    if broker and broker.get("kind") == "java":
        outcome = _terminate(broker["pid"], BROKER_MARKER, max(30.0, timeout_s / 2), group=True)
        from medserl_cli.kafka_local import port_open

        deadline = time.monotonic() + 15
        while port_open(int(broker["port"])) and time.monotonic() < deadline:  # gone means the port is free again
            time.sleep(0.1)
        if not quiet:
            print(f"kafka: {outcome}", flush=True)
    elif broker and broker.get("kind") == "docker":
        subprocess.run(["docker", "rm", "-f", broker["name"]], capture_output=True, timeout=60)
        if not quiet:
            print("kafka: container removed", flush=True)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError

    state_dir = Path(args.state_dir)
    state = read_state(state_dir)
    if state is None:
        raise CliError(f"nothing to stop: no {state_path(state_dir)} (was `medserl up` run with another --state-dir?)")
    stop_all(state, args.timeout)
    state_path(state_dir).unlink(missing_ok=True)
    if args.purge:
        import shutil

        for sub in ("kafka", "logs", "config"):
            shutil.rmtree(state_dir / sub, ignore_errors=True)
    return 0
