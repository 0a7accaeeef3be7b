"""The distributed RL pipeline as separate processes over a real broker, and the chaos run on it.

Verifier, injector, assessor and learner each run as their own process (``python -m
tests.reliability.harness --role ROLE``) with instant stand-in models: the injector's backend returns
canned one-sentence edits at once, the assessor is the last-sentence baseline, the learner steps
instantly but is the real ``LearnerLoop`` (dedup, staleness, accounting, checkpoints, commits). So what
a fault can break is the pipeline's own machinery: delivery, commits, dedup, admission, recovery.

``run_chaos`` feeds seeds in one phase per fault and lands the fault mid-traffic: kill -9 of each
service in turn (then restarted), a broker restart, and a consumer paused past its session timeout.
Afterwards a ledger read back from the topics and the learner's saved state says, per phase, what
happened to every seed: lost, trained twice, a second group, a split group, trained past the
staleness bound, duplicates on the topics. ``tests/reliability/test_chaos.py`` asserts it;
``bench/bench_pipeline_kafka.py`` prints it next to the throughput numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROLES = ("verifier", "assessor", "trainer", "injector")
SESSION_TIMEOUT_MS = 6000  # the broker's group.min.session.timeout.ms: a killed member is noticed soonest
FAULTS = (
    ("kill -9 injector", "injector"),
    ("kill -9 verifier", "verifier"),
    ("kill -9 assessor", "assessor"),
    ("kill -9 learner", "trainer"),
    ("broker restart", None),
    ("pause verifier past session timeout", "verifier"),
)


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

    setup_logging(args.role, os.environ.get("MEDSERL_HARNESS_LOG_LEVEL", "WARNING"))
    logging.getLogger("kafka").setLevel(logging.WARNING)
    common = dict(bus="kafka", kafka_bootstrap=args.bootstrap, topic_suffix=args.suffix, grpc_host="127.0.0.1",
                  grpc_port=0, metrics_port=-1, poll_timeout_s=0.1, max_batch=args.max_batch,
                  group_id=f"{args.role}{args.suffix}", retry_for_s=120.0)
    bus = KafkaBus(args.bootstrap, client_id=args.role, session_timeout_ms=args.session_timeout_ms,
                   group_instance_id=f"{args.role}{args.suffix}" if args.static_membership else "")
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
                                                   max_staleness=args.max_staleness), bus, backend=InstantInjector())
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


@dataclass
class PipelineConfig:
    """One distributed pipeline: its topics (a fresh suffix), its learner step, its bounds."""

    bootstrap: str
    workdir: Path
    group_size: int = 4
    rollouts_per_update: int = 32
    max_staleness: int = 1
    admission: bool = True
    max_batch: int = 256
    session_timeout_ms: int = SESSION_TIMEOUT_MS
    static_membership: bool = False  # KIP-345: a restarted service takes its partitions back at once
    suffix: str = field(default_factory=lambda: f".chaos{uuid.uuid4().hex[:6]}")

    @property
    def run_dir(self) -> Path:
        return self.workdir / self.suffix.strip(".")

    @property
    def groups_per_step(self) -> int:
        return max(1, self.rollouts_per_update // self.group_size)

    def argv(self) -> list[str]:
        return ["--bootstrap", self.bootstrap, "--suffix", self.suffix, "--group-size", str(self.group_size),
                "--rollouts-per-update", str(self.rollouts_per_update), "--max-batch", str(self.max_batch),
                "--admission-rollouts", str(self.rollouts_per_update if self.admission else 0),
                "--max-staleness", str(self.max_staleness), "--checkpoint-dir", str(self.run_dir / "rl"),
                "--session-timeout-ms", str(self.session_timeout_ms)] + \
            (["--static-membership"] if self.static_membership else [])


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
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.harness", "--role", self.role,
                                      *self.argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
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


def start_children(config: PipelineConfig) -> dict[str, Child]:
    from services.common.kafka_bus import KafkaBus
    from services.common.topics import ALL_TOPICS

    (config.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    bus = KafkaBus(config.bootstrap, client_id="harness-admin")
    bus.ensure_topics([f"{t}{config.suffix}" for t in ALL_TOPICS])
    bus.close()
    children = {role: Child(role, config.argv(), config.run_dir / "logs") for role in ROLES}
    try:
        for child in children.values():
            child.start()
    except BaseException:
        stop_children(children)
        raise
    return children


def stop_children(children: dict[str, Child]) -> None:
    for role in ("injector", "verifier", "assessor", "trainer"):
        if role in children:
            children[role].stop()


def seed_notes(count: int, prefix: str = "") -> list:
    """``count`` seed notes from MEDEC (the validation CSV beside the clone, else the demo set), each
    with an id of its own."""
    from medec.prepare import demo_csv_path
    from medserl_cli.commands.client import notes_from_medec_csv

    medec = ROOT.parent / "shared" / "medec" / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
    base = notes_from_medec_csv(medec if medec.exists() else demo_csv_path())
    notes = []
    for i in range(count):
        note = type(base[0])()
        note.CopyFrom(base[i % len(base)])
        note.note_id = f"{note.note_id}#{prefix}{i}"
        notes.append(note)
    return notes


def expected_group_id(note) -> str:
    """The group id the injector gives a seed (its content digest; any seed record gives the same)."""
    from services.common.bus import Record
    from services.common.topics import NOTES_SEED
    from services.injector.service import group_id_for

    return group_id_for(note, Record(NOTES_SEED, 0, 0, None, b""))


def publish_seeds(bus, topic: str, notes: list) -> None:
    producer = bus.producer()
    for note in notes:
        producer.publish(topic, note.SerializeToString(), key=note.note_id)
    producer.flush()
    producer.close()


def feed_seeds(bootstrap: str, topic: str, notes: list, seconds: float) -> None:
    """Publish the seeds evenly over ``seconds`` (each batch flushed: acknowledged before the next)."""
    from services.common.kafka_bus import KafkaBus

    bus = KafkaBus(bootstrap, client_id="harness-feeder")
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


def read_all(bus, topic: str):
    from medserl_cli.commands.deadletter import read_topic

    return read_topic(bus, topic)


def learner_state(config: PipelineConfig) -> dict:
    path = config.run_dir / "rl" / "learner_state.json"
    try:
        return json.loads(path.read_text())  # written atomically: never a torn read
    except (OSError, ValueError):
        return {}


def disposed_ids(config: PipelineConfig) -> set[str]:
    return set(learner_state(config).get("consumed_group_ids", []))


def wait_disposed(config: PipelineConfig, group_ids: set[str], *, allow: int, timeout_s: float) -> int:
    """Until at most ``allow`` of ``group_ids`` are still without a fate in the learner's saved state
    (a part-filled batch waits for more input). Returns how many are left."""
    deadline = time.monotonic() + timeout_s
    left = len(group_ids)
    while time.monotonic() < deadline:
        left = len(group_ids - disposed_ids(config))
        if left <= allow:
            return left
        time.sleep(0.2)
    return left


# ------------------------------------------------------------------------------------------------
# the chaos run
# ------------------------------------------------------------------------------------------------

def inject_fault(name: str, role: str | None, children: dict[str, Child], broker, pause_s: float) -> None:
    if name.startswith("kill"):
        children[role].kill9()
        children[role].start()
    elif name.startswith("broker"):
        broker.restart(down_s=2.0)
    else:
        pid = children[role].proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(pause_s)  # the fault itself: stopped past the session timeout, the group moves on
        finally:
            os.kill(pid, signal.SIGCONT)


def wait_recovered(config: PipelineConfig, timeout_s: float = 300) -> float:
    """Seconds from the end of a fault until the learner disposed of a group it had not before: the
    whole pipeline moved again, seed to learner (read from the learner's saved state, not over Kafka:
    the measurement must not depend on a client that lived through the fault)."""
    ended = time.monotonic()
    consumed = int(learner_state(config).get("groups_consumed", 0))
    while time.monotonic() - ended < timeout_s:
        if int(learner_state(config).get("groups_consumed", 0)) > consumed:
            break
        time.sleep(0.1)
    return time.monotonic() - ended


@dataclass
class ChaosResult:
    config: PipelineConfig
    phases: list[dict]  # per fault: at_s, recovery_s, and its seeds' ledger
    total: dict  # the ledger over every seed
    seconds: float
    memory_mb: dict[str, float]


def run_chaos(broker, bootstrap: str, workdir: Path, *, seeds_per_fault: int = 48, feed_s: float = 8.0,
              faults=FAULTS, **config_overrides) -> ChaosResult:
    """One phase per fault: feed ``seeds_per_fault`` seeds over ``feed_s`` seconds, land the fault in the
    middle, wait until the pipeline moves again, drain the phase. Then fill the learner's last
    part-filled batch and read the ledger back."""
    from services.common.kafka_bus import KafkaBus
    from services.common.topics import NOTES_SEED

    config = PipelineConfig(bootstrap=bootstrap, workdir=workdir, **config_overrides)
    children = start_children(config)
    seed_topic = f"{NOTES_SEED}{config.suffix}"
    started = time.monotonic()
    phases: list[dict] = []
    fed: list = []
    try:
        for k, (name, role) in enumerate(faults):
            notes = seed_notes(seeds_per_fault, prefix=f"p{k}-")
            feeder = threading.Thread(target=feed_seeds, args=(bootstrap, seed_topic, notes, feed_s), daemon=True)
            feeder.start()
            time.sleep(feed_s / 2)  # pacing, not synchronisation: the fault lands mid-traffic
            at = time.monotonic() - started
            inject_fault(name, role, children, broker, pause_s=config.session_timeout_ms / 1000 + 4)
            recovery = wait_recovered(config)
            feeder.join()
            fed.extend(notes)
            left = wait_disposed(config, {expected_group_id(n) for n in fed}, allow=config.groups_per_step,
                                 timeout_s=180)
            phases.append({"fault": name, "at_s": at, "recovery_s": recovery, "notes": notes, "left": left})
        # the learner trains whole steps: fillers complete its last part-filled batch, so every seed
        # of the run gets its fate (fillers are not in the ledger)
        real = {expected_group_id(n) for n in fed}
        for j in range(20):
            if not real - disposed_ids(config):
                break
            feed_seeds(bootstrap, seed_topic, seed_notes(config.groups_per_step, prefix=f"fill{j}-"), 0.0)
            wait_disposed(config, real, allow=0, timeout_s=10)
        seconds = time.monotonic() - started
        for child in children.values():
            child.sample_memory()
    finally:
        stop_children(children)
    bus = KafkaBus(bootstrap, client_id="harness-ledger")
    topics = read_topics(bus, config)
    bus.close()
    state = learner_state(config)
    trained = trained_entries(config, state)
    for phase in phases:
        phase.update(ledger(phase.pop("notes"), topics, trained, state, config))
    total = ledger(fed, topics, trained, state, config)
    return ChaosResult(config, phases, total, seconds, {r: c.peak_kb / 1024 for r, c in children.items()})


def read_topics(bus, config: PipelineConfig) -> dict[str, list]:
    from medserl.v1 import messages_pb2 as pb
    from services.common.topics import ROLLOUTS_GENERATED, ROLLOUTS_SCORED, ROLLOUTS_VERIFIED

    return {name: [pb.RolloutGroup.FromString(r.value) for r in read_all(bus, f"{name}{config.suffix}")]
            for name in (ROLLOUTS_GENERATED, ROLLOUTS_VERIFIED, ROLLOUTS_SCORED)}


def trained_entries(config: PipelineConfig, state: dict) -> list[tuple[int, str, int, int]]:
    """(learner version, group id, rollouts, policy version) of every group in a saved version: a
    version redone after a kill -9 is counted as it was saved last (the one the state points past)."""
    final = int(state.get("version", 0))
    by_version: dict[int, list] = {}
    path = config.run_dir / "rl" / "ledger.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["version"] <= final:
                by_version[entry["version"]] = entry["groups"]
    return [(v, gid, n, pv) for v, entries in sorted(by_version.items()) for gid, n, pv in entries]


def ledger(notes: list, topics: dict[str, list], trained: list, state: dict, config: PipelineConfig) -> dict:
    """What happened to each of ``notes``: read back from the topics and the learner's state."""
    from services.common.topics import ROLLOUTS_GENERATED, ROLLOUTS_SCORED, ROLLOUTS_VERIFIED

    seeds = {n.note_id for n in notes}
    mine = {name: [g for g in groups if g.seed_note_id in seeds] for name, groups in topics.items()}
    times: dict[str, int] = {}
    split = stale = 0
    for version, gid, rollouts, policy_version in trained:
        if gid.split("~")[0] not in seeds:
            continue
        times[gid] = times.get(gid, 0) + 1
        split += rollouts != config.group_size
        stale += (version - 1 - policy_version) > config.max_staleness
    ids_per_seed: dict[str, set] = {}
    for group in mine[ROLLOUTS_GENERATED]:
        ids_per_seed.setdefault(group.seed_note_id, set()).add(group.group_id)
    disposed = set(state.get("consumed_group_ids", []))
    with_a_fate = {gid for gid in disposed if gid.split("~")[0] in seeds}
    lost = sum(1 for s in seeds if not ids_per_seed.get(s, set()) & disposed)

    def dups(name: str) -> int:
        return len(mine[name]) - len({g.group_id for g in mine[name]})

    return {"seeds": len(seeds), "rollouts": len(seeds) * config.group_size, "trained_groups": len(times),
            "rollouts_trained": len(times) * config.group_size, "disposed_untrained": len(with_a_fate - set(times)),
            "lost": lost, "trained_twice": sum(c > 1 for c in times.values()),
            "second_group": sum(len(ids) > 1 for ids in ids_per_seed.values()), "split": split,
            "stale_trained": stale, "dup_generated": dups(ROLLOUTS_GENERATED),
            "dup_verified": dups(ROLLOUTS_VERIFIED), "dup_scored": dups(ROLLOUTS_SCORED)}


def fault_table(result: ChaosResult) -> str:
    columns = ("at s", "recovery s", "seeds", "trained", "untrained", "lost", "trained 2x", "2nd group", "split",
               "stale", "dup gen/ver/sco")
    lines = [f"{'fault':<36}" + "".join(f"{c:>12}" for c in columns[:-1]) + f"{columns[-1]:>17}"]

    def row(name: str, at: str, recovery: str, led: dict) -> str:
        cells = (at, recovery, led["seeds"], led["trained_groups"], led["disposed_untrained"], led["lost"],
                 led["trained_twice"], led["second_group"], led["split"], led["stale_trained"],
                 f"{led['dup_generated']}/{led['dup_verified']}/{led['dup_scored']}")
        return f"{name:<36}" + "".join(f"{c!s:>12}" for c in cells[:-1]) + f"{cells[-1]:>17}"

    for phase in result.phases:
        lines.append(row(phase["fault"], f"{phase['at_s']:.1f}", f"{phase['recovery_s']:.1f}", phase))
    lines.append(row("whole run", "-", f"{result.seconds:.0f} s", result.total))
    state_fates = "untrained = disposed of with a fate (stale: sampled > max_staleness versions ago)"
    return "\n".join(lines + [state_fates])


def main() -> int:
    parser = argparse.ArgumentParser(description="one service of the harness pipeline (see the module doc)")
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--suffix", default="")
    parser.add_argument("--checkpoint-dir", default="")
    parser.add_argument("--admission-rollouts", type=int, default=0)
    parser.add_argument("--max-staleness", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--rollouts-per-update", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--session-timeout-ms", type=int, default=SESSION_TIMEOUT_MS)
    parser.add_argument("--static-membership", action="store_true")
    return serve_role(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
