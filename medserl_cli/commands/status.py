"""``medserl status``: what ``medserl up`` started, now: each service's health, policy version,
rollouts/s and last error, the consumer lag of every group, and the dead letters waiting.

Health comes from the gRPC health check, versions and rates from each service's /metrics (sampled
twice, ``--interval`` apart), lag from the broker (end offsets minus committed offsets), the last
error from the service's own log (its newest ERROR line: a message, never note text).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from medserl_cli.commands.up import (
    BROKER_MARKER,
    DEFAULT_STATE_DIR,
    health,
    process_alive,
    read_state,
    service_marker,
    state_path,
)

# what "rollouts/s" counts for each service: rollouts it generated, verified, judged or trained
ROLLOUT_COUNTERS = {
    "injector": ("medserl_rollouts_total", {}),
    "verifier": ("medserl_verifications_total", {}),
    "assessor": ("medserl_verdicts_total", {}),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="health, policy version, lag, rollouts/s and last error of `medserl up`",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="(default: %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between the two /metrics samples")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    p.set_defaults(func=run)


def scrape(port: int | None) -> dict[tuple[str, tuple], float]:
    """Prometheus samples of one service: {(name, sorted labels): value}; empty when unreachable."""
    if not port:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(samples: dict, name: str, **labels: str) -> float | None:
    values = [v for (n, lab), v in samples.items() if n == name and all((k, v2) in lab for k, v2 in labels.items())]
    return sum(values) if values else None


def last_error(log_file: str) -> str:
    """The newest ERROR line of a JSON log (its message and error fields), or ''."""
    path = Path(log_file)
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 2_000_000))
        lines = fh.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if not line.startswith("{"):
            if ": error: " in line:
                return line.strip()[:200]
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("level") in ("ERROR", "CRITICAL"):
            detail = record.get("error") or record.get("error_class") or ""
            return f"{record.get('ts', '')} {record.get('msg', '')}{': ' + str(detail) if detail else ''}"[:200]
    return ""


def consumer_lag(bootstrap: str, suffixes: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Lag of every active (or lagging) consumer group on this deployment's topics (its suffixes: a
    shared cluster has others), and the dead letters waiting on its dead-letter topics."""
    from kafka import TopicPartition

    from services.common.kafka_bus import KafkaBus
    from services.common.topics import ALL_TOPICS, DEAD_LETTER

    ours = {f"{t}{suffix}" for t in ALL_TOPICS for suffix in suffixes}

    bus = KafkaBus(bootstrap, connect_timeout_s=3)
    admin = bus.admin()
    try:
        groups = [g["group_id"] for g in admin.list_groups() if str(g["group_id"]).startswith("medserl-")]
        described = admin.describe_groups(groups) if groups else {}
        offsets = admin.list_group_offsets({g: None for g in groups}) if groups else {}
        topics = {tp.topic for committed in offsets.values() for tp in committed if tp.topic in ours}
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for partition, end in enumerate(bus.end_offsets(topic)):
                ends[(topic, partition)] = end
        rows = []
        for group in sorted(groups):
            committed: dict[TopicPartition, Any] = offsets.get(group, {})
            lag: dict[str, int] = {}
            for tp, meta in committed.items():
                if tp.topic in ours:
                    lag[tp.topic] = lag.get(tp.topic, 0) + max(0, ends.get((tp.topic, tp.partition), 0) - meta.offset)
            member_list = (described.get(group) or {}).get("members", [])
            subscribed = {t for m in member_list for t in (m.get("member_metadata") or {}).get("topics", [])}
            if not lag and not subscribed & ours:
                continue  # another deployment's group
            members = len(member_list)
            if members == 0 and not any(lag.values()):
                continue  # an old, caught-up group (e.g. a stopped injector's policy reader)
            rows.append({"group": group, "members": members, "state": (described.get(group) or {}).get("group_state"),
                         "lag": lag})
        existing = set(admin.list_topics())
        dead = sum(sum(bus.end_offsets(f"{DEAD_LETTER}{s}")) for s in suffixes if f"{DEAD_LETTER}{s}" in existing)
        return rows, dead
    finally:
        admin.close()
        bus.close()


def collect(state: dict[str, Any], interval: float) -> dict[str, Any]:
    services = state.get("services", {})
    first = {n: scrape(e.get("metrics_port")) for n, e in services.items()}
    started = time.monotonic()
    time.sleep(interval)
    second = {n: scrape(e.get("metrics_port")) for n, e in services.items()}
    elapsed = time.monotonic() - started
    rows = []
    for name, entry in services.items():
        alive = process_alive(entry.get("pid"), service_marker(name))
        row: dict[str, Any] = {"service": name, "pid": entry.get("pid"), "alive": alive,
                               "health": health(f"127.0.0.1:{entry['grpc_port']}", 2.0)
                               if alive and entry.get("grpc_port") else "DOWN",
                               "grpc": f"127.0.0.1:{entry.get('grpc_port')}", "log": entry.get("log")}
        version = metric_sum(second[name], "medserl_policy_version", service=name)
        row["policy_version"] = int(version) if version is not None else None
        if name == "trainer":
            rate = metric_sum(second[name], "medserl_rl_step_stat", stat="rollouts_per_s")
        elif name in ROLLOUT_COUNTERS:
            counter, labels = ROLLOUT_COUNTERS[name]
            before, after = metric_sum(first[name], counter, **labels), metric_sum(second[name], counter, **labels)
            rate = (after - (before or 0.0)) / elapsed if after is not None else None
        else:
            rate = None
        scraped = bool(second[name])  # a counter with no sample yet is a zero, when /metrics answered
        row["rollouts_per_s"] = rate if rate is not None or not scraped or name not in (*ROLLOUT_COUNTERS,
                                                                                         "trainer") else 0.0
        row["dead_letters"] = metric_sum(second[name], "medserl_dead_letters_total") or (0.0 if scraped else None)
        row["last_error"] = last_error(entry.get("log", ""))
        rows.append(row)
    broker = state.get("broker") or {}
    out: dict[str, Any] = {"bootstrap": state.get("bootstrap"), "services": rows,
                           "broker": {"kind": broker.get("kind", "external"), "pid": broker.get("pid"),
                                      "alive": process_alive(broker.get("pid"), BROKER_MARKER)
                                      if broker.get("kind") == "java" else None}}
    try:
        out["groups"], out["dead_letters_on_topic"] = consumer_lag(state["bootstrap"],
                                                                   state.get("topic_suffixes") or [""])
    except Exception as exc:  # noqa: BLE001 - the broker being down is a status, not a crash
        out["groups"], out["dead_letters_on_topic"], out["broker_error"] = [], None, str(exc)[:300]
    return out


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def print_tables(status: dict[str, Any]) -> None:
    broker = status["broker"]
    where = {"java": f"local broker pid {broker['pid']} ({'up' if broker['alive'] else 'DOWN'})",
             "docker": "local broker (docker)"}.get(broker["kind"], "external broker")
    print(f"kafka {status['bootstrap']}: {where}" + (f"; error: {status['broker_error']}"
                                                     if status.get("broker_error") else ""))
    header = ("service", "health", "grpc", "policy", "rollouts/s", "dead-lettered", "last error")
    rows = [(r["service"], r["health"], r["grpc"], _fmt(r["policy_version"]), _fmt(r["rollouts_per_s"], ".1f"),
             _fmt(None if r["dead_letters"] is None else int(r["dead_letters"])), r["last_error"] or "-")
            for r in status["services"]]
    _table(header, rows)
    if status["groups"]:
        print()
        _table(("consumer group", "members", "lag"),
               [(g["group"], str(g["members"]), ", ".join(f"{t} {n}" for t, n in sorted(g["lag"].items())) or "0")
                for g in status["groups"]])
    if status.get("dead_letters_on_topic"):
        print(f"\n{status['dead_letters_on_topic']} dead letters on the topic: `medserl deadletter list` to inspect, "
              "`medserl deadletter replay` to put them back")


def _table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError

    state = read_state(args.state_dir)
    if state is None:
        raise CliError(f"nothing is up: no {state_path(args.state_dir)} (start it with `medserl up`; for a service "
                       "started some other way: `medserl client status --target HOST:PORT`)")
    status = collect(state, args.interval)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_tables(status)
    healthy = all(r["health"] == "SERVING" for r in status["services"])
    return 0 if healthy else 1
