"""The distributed pipeline over a real Kafka broker: throughput next to raw kafka-python, latency,
and a fault run (kill -9 of every service, a broker restart, a SIGSTOP) with a ledger.

Verifier, injector, assessor and learner run as separate processes (this script with ``--role``),
with instant stand-in models: the injector's backend returns canned one-sentence edits at once, the
assessor is the last-sentence baseline, the learner steps instantly (the real LearnerLoop: dedup,
staleness, accounting, checkpoints, commits). What is measured is the pipeline's own cost:
serialisation, Kafka, verification, bookkeeping. The broker is the local KRaft broker configured as
production brokers are (no fsync per message).

Printed: raw kafka-python produce+consume of messages of a generated group's size on the same broker
in the same run; end-to-end rollouts/s with admission control off and on; generated->scored latency
p50/p95; the fault table (fault, recovery seconds) and the ledger (lost, trained twice, duplicates on
topic, groups split, staleness); the peak memory of each service.

    python bench/bench_pipeline_kafka.py [--groups 1000] [--fault-groups 300] [--no-faults]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROLES = ("verifier", "assessor", "trainer", "injector")
SESSION_TIMEOUT_S = 10  # KafkaBus's default consumer session timeout


# ------------------------------------------------------------------------------------------------
# the service processes (--role): real services, instant stand-in models
# ------------------------------------------------------------------------------------------------

class InstantInjector:
    """A model server that answers at once: n canned one-sentence edits per prompt."""

    name = "instant"

    def __init__(self):
        from services.common import formats

        self.text = formats.render_injector_edit(
            formats.InjectorEdit(0, "The patient was seen in the clinic today for follow-up.", "diagnosis", ""))

    def generate(self, prompts, params):
        from services.inference import Completion

        prompt_ids = list(range(3, 403))  # ~a note's prompt in tokens: message sizes as in a real run
        ids = list(range(5, 45))
        return [Completion(i, prompt_ids, ids, [-0.5] * len(ids), self.text, "stop")
                for i in range(len(prompts)) for _ in range(params.n)]

    def load_policy(self, version, checkpoint_uri, kind="lora"):
        return None

    def close(self):
        return None


class InstantLearner:
    """Steps instantly; each saved version appends its groups to a ledger (the effect, read back later)."""

    def __init__(self, ledger: Path):
        self.ledger = ledger
        self.step_count = 0
        self._last: list = []

    def prepare(self, group):
        return SimpleNamespace(group=group, size=len(group.rollouts))

    def step(self, prepared):
        from trainer.reinforce import StepStats

        self._last = [(p.group.group_id, len(p.group.rollouts), p.group.policy_version) for p in prepared]
        rollouts = sum(p.size for p in prepared)
        self.step_count += 1
        rewards = [r.reward.total for p in prepared for r in p.group.rollouts]
        return StepStats(step=self.step_count, rollouts=rollouts, groups=len(prepared), trained_rollouts=rollouts,
                         mean_reward=sum(rewards) / max(1, len(rewards)), mean_kl=0.0, kl_loss=0.0, loss=0.0,
                         clip_fraction=0.0, is_ratio_mean=1.0, is_ratio_max=1.0, is_corrected_fraction=0.0,
                         entropy=0.0, grad_norm=0.0, learning_rate=0.0, tokens=0, seconds=0.0)

    def save(self, out_dir: Path):
        from services.inference import checkpoint_sha256

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "adapter.bin").write_bytes(str(self.step_count).encode())
        version = int(out_dir.name.removeprefix("policy-v"))
        with self.ledger.open("a") as fh:  # the loop saves its state after this: the last entry per version wins
            fh.write(json.dumps({"version": version, "groups": self._last}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return out_dir, checkpoint_sha256(out_dir)


def serve_role(args) -> int:
    from services.common.kafka_bus import KafkaBus
    from services.common.logs import setup_logging
    from services.common.runtime import ServiceRuntime

    setup_logging(args.role, "WARNING")
    common = dict(bus="kafka", kafka_bootstrap=args.bootstrap, topic_suffix=args.suffix, grpc_host="127.0.0.1",
                  grpc_port=0, metrics_port=-1, poll_timeout_s=0.1, max_batch=args.max_batch,
                  group_id=f"{args.role}{args.suffix}", retry_for_s=60.0)
    bus = KafkaBus(args.bootstrap, client_id=args.role)
    if args.role == "verifier":
        from services.verifier.service import VerifierService, VerifierSettings

        service = VerifierService(VerifierSettings(**common), bus)
    elif args.role == "assessor":
        from services.assessor.service import AssessorService, AssessorSettings

        service = AssessorService(AssessorSettings(**common, backend="baseline_last_sentence"), bus)
    elif args.role == "injector":
        from services.injector.service import InjectorService, InjectorSettings

        service = InjectorService(InjectorSettings(**common, model="instant", group_size=args.group_size,
                                                   learner_batch_rollouts=args.admission_rollouts,
                                                   max_staleness=1), bus, backend=InstantInjector())
    else:
        from trainer.service import TrainerService, TrainerSettings

        checkpoints = Path(args.checkpoint_dir)
        checkpoints.mkdir(parents=True, exist_ok=True)
        settings = TrainerSettings(**{**common, "max_batch": 500}, checkpoint_dir=str(checkpoints), lora=False,
                                   rollouts_per_update=args.rollouts_per_update, max_staleness=args.max_staleness,
                                   accounting_interval_s=0.5, keep_versions=2)
        service = TrainerService(settings, bus,
                                 learner_factory=lambda _s, _resume: InstantLearner(checkpoints / "ledger.jsonl"))
    runtime = ServiceRuntime(service)
    runtime.install_signal_handlers()
    runtime.start()
    print(f"READY role={args.role} grpc_port={runtime.grpc_port}", flush=True)
    runtime.wait()
    bus.close()
    return 0


# ------------------------------------------------------------------------------------------------
# the harness
# ------------------------------------------------------------------------------------------------

class Child:
    """One service process; restartable with the same arguments."""

    def __init__(self, role: str, argv: list[str], logdir: Path):
        self.role, self.argv, self.logdir = role, argv, logdir
        self.proc: subprocess.Popen | None = None
        self.peak_kb = 0
        self.cpu_s = 0.0  # user+system seconds over every incarnation
        self._cpu_now = 0.0
        self.starts = 0

    def start(self, timeout_s: float = 180) -> float:
        started = time.monotonic()
        self.starts += 1
        log = (self.logdir / f"{self.role}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", self.role, *self.argv], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain
                return time.monotonic() - started
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"{self.role} did not start; see {self.logdir / (self.role + '.log')}")

    def sample_memory(self) -> None:
        """Peak RSS and CPU time so far (read before each kill: a restarted process starts from zero)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self._cpu_now = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass

    def cpu_seconds(self) -> float:
        return self.cpu_s + self._cpu_now

    def kill9(self) -> None:
        self.sample_memory()
        self.proc.kill()
        self.proc.wait(30)
        self.cpu_s, self._cpu_now = self.cpu_s + self._cpu_now, 0.0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_memory()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Progress:
    """Follows policy.updates: the learner's groups_consumed, as it publishes it."""

    def __init__(self, bus, topic: str):
        self.consumed = 0
        self.updates = 0
        self._stop = threading.Event()
        self._bus, self._topic = bus, topic
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from medserl.v1 import messages_pb2 as pb

        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._bus.consumer([self._topic], f"bench-progress-{uuid.uuid4().hex[:8]}")
                for record in consumer.poll(0.2, 1000):
                    update = pb.PolicyUpdate.FromString(record.value)
                    self.consumed = max(self.consumed, update.groups_consumed)
                    self.updates += 1
            except Exception:  # noqa: BLE001 - the broker restarting: reconnect
                consumer = None
                self._stop.wait(0.5)
        if consumer is not None:
            consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def seed_notes(count: int) -> list:
    from medec.prepare import demo_csv_path
    from medserl_cli.commands.client import notes_from_medec_csv

    medec = ROOT.parent / "shared" / "medec" / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
    base = notes_from_medec_csv(medec if medec.exists() else demo_csv_path())
    notes = []
    for i in range(count):
        note = type(base[0])()
        note.CopyFrom(base[i % len(base)])
        note.note_id = f"{note.note_id}#{i}"
        notes.append(note)
    return notes


def publish_seeds(bus, topic: str, notes: list) -> None:
    producer = bus.producer()
    for note in notes:
        producer.publish(topic, note.SerializeToString(), key=note.note_id)
    producer.flush()
    producer.close()


def read_all(bus, topic: str):
    from medserl_cli.commands.deadletter import read_topic

    return read_topic(bus, topic)


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


def run_pipeline(broker, bootstrap: str, args, *, admission: bool, groups: int, faults: bool, workdir: Path,
                 rollouts_per_update: int) -> dict:
    """One run on fresh topics. Throughput runs publish every seed at once; the fault run feeds them
    steadily (``--fault-seconds``) so every fault lands in the middle of traffic."""
    from medserl.v1 import messages_pb2 as pb
    from services.common.kafka_bus import KafkaBus
    from services.common.topics import (
        ALL_TOPICS,
        NOTES_SEED,
        POLICY_UPDATES,
        ROLLOUTS_GENERATED,
        ROLLOUTS_SCORED,
    )

    suffix = f".bench{uuid.uuid4().hex[:6]}"
    run_dir = workdir / suffix.strip(".")
    (run_dir / "logs").mkdir(parents=True)
    bus = KafkaBus(bootstrap, client_id="bench")
    bus.ensure_topics([f"{t}{suffix}" for t in ALL_TOPICS])
    argv = ["--bootstrap", bootstrap, "--suffix", suffix, "--group-size", str(args.group_size),
            "--rollouts-per-update", str(rollouts_per_update), "--max-batch", str(args.max_batch),
            "--admission-rollouts", str(rollouts_per_update if admission else 0),
            "--max-staleness", str(1 if admission else 10**6), "--checkpoint-dir", str(run_dir / "rl")]
    children = {role: Child(role, argv, run_dir / "logs") for role in ROLES}
    for child in children.values():
        child.start()
    progress = Progress(bus, f"{POLICY_UPDATES}{suffix}")
    notes = seed_notes(groups)
    broker_cpu = process_cpu(getattr(broker, "pid", None))
    own_cpu = time.process_time()
    started = time.monotonic()
    fault_rows: list[dict] = []
    if faults:
        feeder = threading.Thread(target=feed_seeds, args=(bootstrap, f"{NOTES_SEED}{suffix}", notes,
                                                           args.fault_seconds), daemon=True)
        feeder.start()
        fault_rows = inject_faults(children, broker, bus, progress, suffix)
        feeder.join()
    else:
        publish_seeds(bus, f"{NOTES_SEED}{suffix}", notes)
    finished = wait_scored(bus, f"{ROLLOUTS_SCORED}{suffix}", groups, time.monotonic() + args.timeout)
    elapsed = time.monotonic() - started
    broker_cpu = process_cpu(getattr(broker, "pid", None)) - broker_cpu
    own_cpu = time.process_time() - own_cpu
    # the learner trains whole steps: what is left (< one step) waits for more input, neither lost nor trained
    deadline = time.monotonic() + 30
    while progress.consumed < groups - rollouts_per_update // args.group_size and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2 * 0.5)  # two accounting intervals: the learner's last disposals are published
    for child in children.values():
        child.sample_memory()
    progress.close()
    for role in ("injector", "verifier", "assessor", "trainer"):
        children[role].stop()
    generated = [pb.RolloutGroup.FromString(r.value) for r in read_all(bus, f"{ROLLOUTS_GENERATED}{suffix}")]
    scored_records = read_all(bus, f"{ROLLOUTS_SCORED}{suffix}")
    scored = [pb.RolloutGroup.FromString(r.value) for r in scored_records]
    latency = [(r.timestamp_ms - g.created_unix_ms) / 1000 for r, g in zip(scored_records, scored, strict=True)]
    bus.close()
    result = {"groups": groups, "finished": finished, "seconds": elapsed,
              "rollouts_per_s": groups * args.group_size / elapsed, "learner_groups": progress.consumed,
              "groups_per_s": groups / elapsed, "p50": percentile(latency, 0.5),
              "p95": percentile(latency, 0.95), "faults": fault_rows,
              "memory_mb": {role: c.peak_kb / 1024 for role, c in children.items()},
              "cpu_s": {**{role: c.cpu_seconds() for role, c in children.items()}, "broker": broker_cpu,
                        "harness": own_cpu},
              "size": len(generated[0].SerializeToString()) if generated else 0}
    result["ledger"] = ledger(notes, generated, scored, run_dir / "rl", args)
    return result


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


def feed_seeds(bootstrap: str, topic: str, notes: list, seconds: float) -> None:
    """Publish the seeds evenly over ``seconds`` (each batch flushed: acknowledged before the next)."""
    from services.common.kafka_bus import KafkaBus

    bus = KafkaBus(bootstrap, client_id="bench-feeder")
    producer = bus.producer()
    started = time.monotonic()
    batch = max(1, len(notes) // max(1, int(seconds * 5)))
    for i in range(0, len(notes), batch):
        for note in notes[i:i + batch]:
            producer.publish(topic, note.SerializeToString(), key=note.note_id)
        producer.flush()  # through a broker restart the client retries (delivery timeout 120 s): no copies
        time.sleep(max(0.0, started + seconds * (i + batch) / len(notes) - time.monotonic()))
    producer.close()
    bus.close()


def _scored(bus, suffix: str) -> int:
    from services.common.topics import ROLLOUTS_SCORED

    try:
        return sum(bus.end_offsets(f"{ROLLOUTS_SCORED}{suffix}"))
    except Exception:  # noqa: BLE001 - still reconnecting
        return -1


def inject_faults(children: dict, broker, bus, progress: Progress, suffix: str) -> list[dict]:
    """Faults one after another while seeds keep arriving; recovery = from the end of the fault (the
    restart, SIGCONT) until both the pipeline's output (rollouts.scored) and the learner moved again."""
    plan = [("kill -9 injector", "injector"), ("kill -9 verifier", "verifier"), ("kill -9 assessor", "assessor"),
            ("kill -9 learner", "trainer"), ("broker restart", None), ("SIGSTOP verifier 15 s", "verifier")]
    rows = []
    started = time.monotonic()
    time.sleep(3.0)  # traffic first
    for name, role in plan:
        at = time.monotonic() - started
        if name.startswith("kill"):
            children[role].kill9()
            children[role].start()
        elif name.startswith("broker"):
            broker.restart(down_s=2.0)
        else:
            pid = children[role].proc.pid
            os.kill(pid, signal.SIGSTOP)
            time.sleep(SESSION_TIMEOUT_S + 5)  # past the session timeout: the group moves on without it
            os.kill(pid, signal.SIGCONT)
        ended = time.monotonic()
        consumed, scored = progress.consumed, _scored(bus, suffix)
        deadline = ended + 300
        while time.monotonic() < deadline and not (progress.consumed > consumed and _scored(bus, suffix) > scored):
            time.sleep(0.1)
        rows.append({"fault": name, "at_s": at, "recovery_s": time.monotonic() - ended})
        time.sleep(2.0)  # a little steady traffic between faults
    return rows


def ledger(notes: list, generated: list, scored: list, rl_dir: Path, args) -> dict:
    """Read back from the topics and the learner's state: what happened to every seed."""
    state = json.loads((rl_dir / "learner_state.json").read_text()) if (rl_dir / "learner_state.json").exists() else {}
    final = int(state.get("version", 0))
    by_version: dict[int, list] = {}
    if (rl_dir / "ledger.jsonl").exists():
        for line in (rl_dir / "ledger.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if entry["version"] <= final:
                by_version[entry["version"]] = entry["groups"]  # a version redone after a kill: the saved one counts
    trained: dict[str, int] = {}
    split = 0
    stale = 0
    for version, entries in by_version.items():
        for gid, rollouts, policy_version in entries:
            trained[gid] = trained.get(gid, 0) + 1
            split += rollouts != args.group_size
            stale += (version - 1 - policy_version) > 1
    group_ids_per_seed: dict[str, set] = {}
    for g in generated:
        group_ids_per_seed.setdefault(g.seed_note_id, set()).add(g.group_id)
    disposed = set(state.get("consumed_group_ids", []))
    scored_ids = {g.group_id for g in scored}
    seeds = [n.note_id for n in notes]
    lost = sum(1 for s in seeds if not group_ids_per_seed.get(s, set()) & (scored_ids | disposed))
    waiting = sum(1 for s in seeds if group_ids_per_seed.get(s, set()) & scored_ids
                  and not group_ids_per_seed.get(s, set()) & disposed)
    return {"seeds": len(seeds), "trained_groups": len(trained), "trained_twice": sum(c > 1 for c in trained.values()),
            "lost": lost, "waiting_for_a_step": waiting,
            "second_group_for_a_seed": sum(len(ids) > 1 for ids in group_ids_per_seed.values()),
            "dup_generated": len(generated) - len({g.group_id for g in generated}),
            "dup_scored": len(scored) - len({g.group_id for g in scored}),
            "split": split, "stale_beyond_bound": stale, "fates": state.get("fates", {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
                        help="an existing broker (the fault run then skips the broker restart)")
    parser.add_argument("--suffix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--admission-rollouts", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-staleness", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--groups", type=int, default=1000, help="seed notes per throughput run")
    parser.add_argument("--fault-groups", type=int, default=400, help="seed notes in the fault run")
    parser.add_argument("--fault-seconds", type=float, default=100, help="the fault run feeds its seeds over this long")
    parser.add_argument("--fault-rollouts-per-update", type=int, default=32,
                        help="learner step in the fault run (small: the learner's progress shows recovery)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--rollouts-per-update", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=256, help="messages per poll in every service")
    parser.add_argument("--raw-messages", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-faults", action="store_true")
    args = parser.parse_args()
    if args.role:
        return serve_role(args)

    from medserl_cli.kafka_local import LocalKafka

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = LocalKafka()
        bootstrap = broker.start()
    workdir = Path(tempfile.mkdtemp(prefix="medserl-bench-pipeline-"))
    try:
        common = dict(groups=args.groups, faults=False, workdir=workdir, rollouts_per_update=args.rollouts_per_update)
        off = run_pipeline(broker, bootstrap, args, admission=False, **common)
        raw = raw_kafka(bootstrap, off["size"] or 4000, args.raw_messages)
        on = run_pipeline(broker, bootstrap, args, admission=True, **common)
        fault = None
        if not args.no_faults:
            fault = run_pipeline(broker if broker is not None else _NoRestart(), bootstrap, args, admission=True,
                                 groups=args.fault_groups, faults=True, workdir=workdir,
                                 rollouts_per_update=args.fault_rollouts_per_update)
    finally:
        if broker is not None:
            broker.cleanup()
    report(args, raw, off, on, fault)
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


def report(args, raw: dict, off: dict, on: dict, fault: dict | None) -> None:
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
        print(f"CPU seconds per service, {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"].items()))
    if fault is None:
        return
    print(f"\nfault run: {fault['groups']} seeds ({fault['groups'] * args.group_size} rollouts) fed over "
          f"{args.fault_seconds:.0f} s, admission on, learner step {args.fault_rollouts_per_update} rollouts, "
          f"{fault['seconds']:.0f} s" + ("" if fault["finished"] else " (timed out)"))
    print(f"{'fault':<24} {'at s':>6} {'recovery s':>11}")
    for row in fault["faults"]:
        print(f"{row['fault']:<24} {row['at_s']:6.1f} {row['recovery_s']:11.1f}")
    led = fault["ledger"]
    print(f"ledger: {led['seeds']} seeds, {led['trained_groups']} groups trained, {led['waiting_for_a_step']} in the "
          f"learner's part-filled batch; lost {led['lost']}, trained twice "
          f"{led['trained_twice']}, second group for a seed {led['second_group_for_a_seed']}, groups split "
          f"{led['split']}, trained beyond max_staleness {led['stale_beyond_bound']}, duplicates on topic: "
          f"generated {led['dup_generated']}, scored {led['dup_scored']}; learner fates {led['fates']}")
    print("peak memory (VmHWM, MB): " + ", ".join(f"{k} {v:.0f}" for k, v in fault["memory_mb"].items()))


if __name__ == "__main__":
    sys.exit(main())
