"""The distributed pipeline over a real Kafka broker: throughput next to raw kafka-python, latency,
and a fault run (kill -9 of every service, a broker restart, a SIGSTOP) with a ledger.

Verifier, injector, assessor and learner run as separate processes (``tests/reliability/harness.py``,
the same harness as the chaos suite), with instant stand-in models: the injector's backend returns canned one-sentence edits at once, the
assessor is the last-sentence baseline, the learner steps instantly (the real LearnerLoop: dedup,
staleness, accounting, checkpoints, commits). What is measured is the pipeline's own cost:
serialisation, Kafka, verification, bookkeeping. The broker is the local KRaft broker configured as
production brokers are (no fsync per message).

Printed: raw kafka-python produce+consume of messages of a generated group's size on the same broker
in the same run; end-to-end rollouts/s with admission control off and on; generated->scored latency
p50/p95; the chaos run's fault table (``harness.run_chaos``: fault, recovery seconds, and per fault
lost, trained twice, second groups, splits, staleness, duplicates on topic); peak memory per service.

    python bench/bench_pipeline_kafka.py [--groups 1000] [--seeds-per-fault 48] [--no-faults]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.harness import (  # noqa: E402 - after the path
    PipelineConfig,
    fault_table,
    publish_seeds,
    read_all,
    run_chaos,
    seed_notes,
    start_children,
    stop_children,
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def raw_kafka(bootstrap: str, size: int, count: int) -> dict:
    """kafka-python alone, the KafkaBus producer settings: produce ``count`` messages of ``size`` bytes
    (one flush at the end) while a consumer reads them."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{topic}", auto_offset_reset="earliest",
                             enable_auto_commit=False)
    consumer.poll(timeout_ms=100)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                             batch_size=256 * 1024)
    payload = os.urandom(size)
    got = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal got
        while got < count:
            for records in consumer.poll(timeout_ms=200, max_records=5000).values():
                got += len(records)
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    started = time.monotonic()
    reader.start()
    for i in range(count):
        producer.send(topic, payload, key=str(i).encode())
    producer.flush()
    produced = time.monotonic() - started
    done.wait(300)
    elapsed = time.monotonic() - started
    producer.close()
    consumer.close()
    return {"msgs_per_s": count / elapsed, "produce_per_s": count / produced, "seconds": elapsed}


def run_pipeline(bootstrap: str, args, *, admission: bool, groups: int, workdir: Path) -> dict:
    """One throughput run on fresh topics: every seed published at once, until all are scored."""
    from medserl.v1 import messages_pb2 as pb
    from services.common.kafka_bus import KafkaBus
    from services.common.topics import NOTES_SEED, ROLLOUTS_GENERATED, ROLLOUTS_SCORED

    config = PipelineConfig(bootstrap=bootstrap, workdir=workdir, group_size=args.group_size,
                            rollouts_per_update=args.rollouts_per_update, max_batch=args.max_batch,
                            admission=admission, max_staleness=1 if admission else 10**6,
                            suffix=f".bench{uuid.uuid4().hex[:6]}")
    children = start_children(config)
    bus = KafkaBus(bootstrap, client_id="bench")
    notes = seed_notes(groups)
    broker_cpu = process_cpu(args.broker_pid)
    own_cpu = time.process_time()
    for child in children.values():
        child.sample_memory()
    idle_cpu = {role: c.cpu_seconds() for role, c in children.items()}  # start-up (imports, lexicons) excluded
    started = time.monotonic()
    publish_seeds(bus, f"{NOTES_SEED}{config.suffix}", notes)
    finished = wait_scored(bus, f"{ROLLOUTS_SCORED}{config.suffix}", groups, time.monotonic() + args.timeout)
    elapsed = time.monotonic() - started
    broker_cpu = process_cpu(args.broker_pid) - broker_cpu
    own_cpu = time.process_time() - own_cpu
    for child in children.values():
        child.sample_memory()
    stop_children(children)
    generated = read_all(bus, f"{ROLLOUTS_GENERATED}{config.suffix}")
    scored_records = read_all(bus, f"{ROLLOUTS_SCORED}{config.suffix}")
    scored = [pb.RolloutGroup.FromString(r.value) for r in scored_records]
    latency = [(r.timestamp_ms - g.created_unix_ms) / 1000 for r, g in zip(scored_records, scored, strict=True)]
    bus.close()
    return {"groups": groups, "finished": finished, "seconds": elapsed,
            "rollouts_per_s": groups * args.group_size / elapsed, "groups_per_s": groups / elapsed,
            "p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95),
            "cpu_s": {**{role: c.cpu_seconds() - idle_cpu[role] for role, c in children.items()}, "broker": broker_cpu,
                      "harness": own_cpu},
            "size": len(generated[0].value) if generated else 0}


def wait_scored(bus, topic: str, groups: int, deadline: float) -> bool:
    """Until ``groups`` distinct groups are on rollouts.scored: every seed went through every service."""
    from medserl.v1 import messages_pb2 as pb

    while time.monotonic() < deadline:
        try:
            if sum(bus.end_offsets(topic)) >= groups:
                distinct = {pb.RolloutGroup.FromString(r.value).group_id for r in read_all(bus, topic)}
                if len(distinct) >= groups:
                    return True
        except Exception:  # noqa: BLE001 - the broker restarting
            pass
        time.sleep(0.1)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
                        help="an existing broker (the chaos run then skips the broker restart)")
    parser.add_argument("--groups", type=int, default=1000, help="seed notes per throughput run")
    parser.add_argument("--seeds-per-fault", type=int, default=48, help="seed notes per phase of the chaos run")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--rollouts-per-update", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=256, help="messages per poll in every service")
    parser.add_argument("--raw-messages", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-faults", action="store_true", help="throughput only, no chaos run")
    args = parser.parse_args()

    from medserl_cli.kafka_local import LocalKafka

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = LocalKafka(die_with_parent=True)  # a killed bench leaves no broker behind
        bootstrap = broker.start()
    args.broker_pid = getattr(broker, "pid", None)
    workdir = Path(tempfile.mkdtemp(prefix="medserl-bench-pipeline-"))
    try:
        off = run_pipeline(bootstrap, args, admission=False, groups=args.groups, workdir=workdir)
        raw = raw_kafka(bootstrap, off["size"] or 4000, args.raw_messages)
        on = run_pipeline(bootstrap, args, admission=True, groups=args.groups, workdir=workdir)
        chaos = None
        if not args.no_faults:
            chaos = [run_chaos(broker if broker is not None else _NoRestart(), bootstrap, workdir,
                               seeds_per_fault=args.seeds_per_fault, group_size=args.group_size,
                               static_membership=static) for static in (False, True)]
    finally:
        if broker is not None:
            broker.cleanup()
    report(args, raw, off, on, chaos)
    return 0


def process_cpu(pid: int | None) -> float:
    """User+system seconds of a process (0 when unknown: an external broker)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def crc32c_in_c() -> bool:
    """kafka-python checksums every record batch (CRC-32C): in pure Python unless ``crc32c`` is installed."""
    try:
        from kafka.record import util
    except ImportError:
        return False
    return getattr(util, "crc32c_c", None) is not None


class _NoRestart:
    def restart(self, down_s: float = 2.0) -> None:
        print("(external broker: broker restart skipped)")


def report(args, raw: dict, off: dict, on: dict, chaos) -> None:
    cores = os.cpu_count()
    print(f"\ndistributed pipeline over Kafka: 4 service processes + broker on {cores} CPU cores, instant stand-in "
          f"models; a group = {args.group_size} rollouts, {off['size']} bytes on rollouts.generated; "
          f"{args.max_batch} messages per poll; learner step = {args.rollouts_per_update} rollouts")
    print(f"{'run':<42} {'groups':>7} {'seconds':>8} {'rollouts/s':>11} {'msgs/s':>9} {'x raw':>6} "
          f"{'p50 s':>6} {'p95 s':>6}")
    print(f"{'raw kafka-python (produce+consume)':<42} {args.raw_messages:>7} {raw['seconds']:8.1f} {'-':>11} "
          f"{raw['msgs_per_s']:9.0f} {1.0:6.2f} {'-':>6} {'-':>6}")
    for name, r in (("pipeline, admission off", off), ("pipeline, admission on (instant learner)", on)):
        msgs = r["groups_per_s"] * 4  # seed, generated, verified, scored: each produced once and consumed once
        print(f"{name:<42} {r['groups']:>7} {r['seconds']:8.1f} {r['rollouts_per_s']:11.0f} {msgs:9.0f} "
              f"{msgs / raw['msgs_per_s']:6.2f} {r['p50']:6.2f} {r['p95']:6.2f}"
              + ("" if r["finished"] else "  (timed out)"))
    print(f"(raw produce alone: {raw['produce_per_s']:.0f} msgs/s; msgs/s of the pipeline = 4 hops per group; "
          f"kafka-python CRC-32C in {'C (crc32c)' if crc32c_in_c() else 'pure Python: pip install crc32c'})")
    for name, r in (("admission off", off), ("admission on", on)):
        print(f"CPU ms per group, {name} (start-up excluded): "
              + ", ".join(f"{k} {1000 * v / r['groups']:.2f}" for k, v in r["cpu_s"].items()))
    for run in chaos or []:
        membership = "static (group.instance.id)" if run.config.static_membership else "dynamic"
        print(f"\nchaos run, {membership} group membership: {run.total['seeds']} seeds ({run.total['rollouts']} "
              f"rollouts), one phase per fault, admission on, learner step {run.config.rollouts_per_update} "
              f"rollouts, max_staleness {run.config.max_staleness}, session timeout "
              f"{run.config.session_timeout_ms / 1000:.0f} s")
        print(fault_table(run))
        print("peak memory (VmHWM, MB): " + ", ".join(f"{k} {v:.0f}" for k, v in run.memory_mb.items()))


if __name__ == "__main__":
    sys.exit(main())
