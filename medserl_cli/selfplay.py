"""Self-play: the verifier, injector, frozen assessor and REINFORCE++ learner as services on one bus.

One path for ``make run``'s RL stage and ``medserl train --phase rl``: embedded (the in-memory bus,
one process, exactly the code that runs distributed) or over Kafka (``bus="kafka"``; the services
run here, the broker elsewhere). The learner resumes from ``checkpoint_dir``. Seeds are fed to
``notes.seed`` as the injector's admission budget drains them; the run ends at ``versions`` new
policy versions (or the time limit) and returns the per-version history and every scored rollout.

Also the injector evaluation (``evaluate_injector``): a fixed held-out set of seed notes, fixed
sampling seeds, one policy version against the frozen assessor, through the same service code
(injector -> verifier -> assessor -> reward), reporting valid-edit and fool rates by mode and error
type and which sentence positions and error types the policy prefers.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class SelfPlayConfig:
    """One self-play run. Defaults suit the CPU demo; the trainer/assessor fields mirror their settings."""

    policy: str = ""  # the SFT policy folder (injector, learner and KL reference start here)
    assessor_model: str = ""  # the frozen assessor's model folder (default: the policy's)
    checkpoint_dir: str = "outputs/rl"
    bus: str = "memory"  # memory | kafka
    kafka_bootstrap: str = ""
    topic_suffix: str = ""
    versions: int = 16  # new policy versions to train (the learner's max_updates)
    rollouts_per_update: int = 32
    group_size: int = 4
    max_new_tokens: int = 96
    temperature: float = 1.0
    learning_rate: float = 1e-4  # full weights of the tiny demo model
    lora: bool = False
    kl_coef: float = 0.01
    max_staleness: int = 4
    seed: int = 0
    timeout_s: float = 900.0
    starve_after_s: float = 15.0
    progress: bool = True
    trainer_overrides: dict = field(default_factory=dict)


def _scored_row(group, rollout) -> dict:
    from medserl.v1 import messages_pb2 as pb

    sentences = len(group.seed_note.sentences)
    return {"id": rollout.rollout_id, "group": group.group_id, "mode": pb.Mode.Name(rollout.mode),
            "version": rollout.policy_version, "reward": rollout.reward.total, "outcome": rollout.reward.outcome,
            "verified": rollout.verification.passed,
            "failed_checks": [c.name for c in rollout.verification.checks if not c.passed],
            "flag": rollout.verdict.error_flag, "p_flag": rollout.verdict.flag_probability,
            "sentence_id": rollout.changed_sentence_id, "sentences": sentences,
            "error_type": rollout.claimed_error_type}


def run_selfplay(config: SelfPlayConfig, seeds: list, out: Path) -> dict:
    """Run self-play until ``config.versions`` new versions; returns history, updates and rollouts."""
    from tqdm import tqdm

    from medserl.v1 import messages_pb2 as pb
    from services.assessor.service import AssessorService, AssessorSettings
    from services.common.bus import MemoryBus
    from services.common.runtime import ServiceRuntime, make_bus
    from services.common.settings import ServiceSettings
    from services.common.topics import ALL_TOPICS, NOTES_SEED, POLICY_UPDATES, ROLLOUTS_SCORED
    from services.injector.service import InjectorService, InjectorSettings
    from services.verifier.service import VerifierService, VerifierSettings
    from trainer.service import TrainerService, TrainerSettings

    if not seeds:
        raise ValueError("self-play needs at least one seed note")
    out.mkdir(parents=True, exist_ok=True)
    common = {"bus": config.bus, "kafka_bootstrap": config.kafka_bootstrap, "topic_suffix": config.topic_suffix,
              "grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": -1, "poll_timeout_s": 0.2}
    bus = MemoryBus() if config.bus == "memory" else make_bus(ServiceSettings(**common))
    topic = lambda name: f"{name}{config.topic_suffix}"  # noqa: E731
    bus.ensure_topics([topic(t) for t in ALL_TOPICS])
    trainer = TrainerSettings(**common, model=config.policy, checkpoint_dir=config.checkpoint_dir,
                              lora=config.lora, rollouts_per_update=config.rollouts_per_update,
                              learning_rate=config.learning_rate, lora_learning_rate=config.learning_rate,
                              kl_coef=config.kl_coef, max_staleness=config.max_staleness,
                              max_updates=config.versions, micro_batch_size=8, seed=config.seed,
                              starve_after_s=config.starve_after_s, **config.trainer_overrides)
    services = [
        VerifierService(VerifierSettings(**common), bus),
        AssessorService(AssessorSettings(**common, model=config.assessor_model or config.policy,
                                         max_batch_size=16, max_new_tokens=48, seed=config.seed), bus),
        TrainerService(trainer, bus),
    ]
    start_version = services[-1].loop.version  # resuming: the learner announces it, the injector loads it
    injector_settings = InjectorSettings(**common, model=config.policy, group_size=config.group_size, max_batch=4,
                                         max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                         seed=config.seed, learner_batch_rollouts=config.rollouts_per_update,
                                         max_staleness=1)
    services.insert(2, InjectorService(injector_settings, bus))
    runtimes = [ServiceRuntime(s).start() for s in services]
    watcher = bus.consumer([topic(ROLLOUTS_SCORED), topic(POLICY_UPDATES)], f"selfplay-report-{time.time_ns()}")
    producer = bus.producer()
    fed, next_seed = 0, 0

    def feed(count: int) -> None:
        nonlocal fed, next_seed
        for _ in range(count):
            note = seeds[next_seed % len(seeds)]
            next_seed += 1
            producer.publish(topic(NOTES_SEED), note.SerializeToString(), key=note.note_id)
            fed += 1
        producer.flush()

    target = start_version + config.versions
    per_version_groups = max(1, config.rollouts_per_update // config.group_size)
    feed(4 * per_version_groups)
    scored: dict[str, dict] = {}
    updates: list[dict] = []
    deadline = time.monotonic() + config.timeout_s
    timed_out = False
    trainer_service = services[-1]
    try:
        with tqdm(total=config.versions, desc="RL policy versions", unit="version",
                  disable=not config.progress) as bar:
            while trainer_service.loop.version < target:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if any(rt.failed for rt in runtimes):
                    raise RuntimeError("a service failed during self-play; see the log above")
                groups_seen = len({r["group"] for r in scored.values()})
                if fed - groups_seen < 2 * per_version_groups:  # keep the seed topic stocked
                    feed(per_version_groups)
                for record in watcher.poll(0.5, 500):
                    if record.topic == topic(POLICY_UPDATES):
                        update = pb.PolicyUpdate.FromString(record.value)
                        if update.checkpoint_uri and update.version > (updates[-1]["version"] if updates else start_version):
                            updates.append({"version": update.version, "uri": update.checkpoint_uri})
                            bar.update(1)
                        continue
                    group = pb.RolloutGroup.FromString(record.value)
                    for rollout in group.rollouts:
                        scored[rollout.rollout_id] = _scored_row(group, rollout)
                    bar.set_postfix(rollouts=len(scored))
    finally:
        watcher.close()
        for runtime in reversed(runtimes):
            runtime.shutdown()
    history = list(trainer_service.loop.history)
    rollouts_file = out / "rl_rollouts.jsonl"
    rollouts_file.write_text("".join(json.dumps(row) + "\n" for row in scored.values()))
    return {"seed_notes": len(seeds), "seeds_fed": fed, "rollouts": len(scored), "updates": updates,
            "history": history, "timed_out": timed_out, "rollouts_file": str(rollouts_file),
            "fates": dict(trainer_service.loop.fates), "config": asdict(config),
            "final_policy": updates[-1]["uri"] if updates else None}


# --------------------------------------------------------------------------------------------
# injector evaluation
# --------------------------------------------------------------------------------------------


def _position(sentence_id: int, sentences: int) -> str:
    if sentences <= 1 or sentence_id <= 0:
        return "first"
    return "last" if sentence_id >= sentences - 1 else "middle"


def evaluate_injector(policy: str, assessor_model: str, seeds: list, *, samples: int = 4, seed: int = 0,
                      max_new_tokens: int = 96, temperature: float = 1.0, label: str = "") -> dict:
    """Valid-edit rate, fool rate among valid edits (by mode and error type) and the policy's
    preferences (sentence positions, error types) on fixed seeds with fixed sampling seeds."""
    from services.assessor.service import AssessorService, AssessorSettings
    from services.common.bus import MemoryBus
    from services.common.notes import note_sentences
    from services.common.reward import EXCLUDED, FOOLED, INVALID, UNPARSEABLE
    from services.injector.service import InjectorService, InjectorSettings
    from services.verifier.service import VerifierCore

    bus = MemoryBus()
    common = {"bus": "memory", "grpc_port": 0, "metrics_port": -1}
    injector = InjectorService(InjectorSettings(**common, model=policy, group_size=samples, seed=seed,
                                                max_new_tokens=max_new_tokens, temperature=temperature,
                                                learner_batch_rollouts=0), bus)
    assessor = AssessorService(AssessorSettings(**common, model=assessor_model, max_batch_size=16,
                                                max_new_tokens=48, seed=seed), bus)
    verifier = VerifierCore()
    rows = []
    try:
        for i in range(0, len(seeds), 4):
            chunk = seeds[i:i + 4]
            items = [(note, note_sentences(note), injector.choose_mode(note), None) for note in chunk]
            groups = injector.generate_groups(items, injector.params)
            verified = [verifier.rollout_group(g, "-")[0].message for g in groups]
            for result in assessor.score_groups(verified):
                group = result[0].message
                rows.extend(_scored_row(group, r) for r in group.rollouts)
    finally:
        injector.close()
        assessor.close()
    n = max(1, len(rows))
    valid = [r for r in rows if r["outcome"] not in (INVALID, UNPARSEABLE, EXCLUDED)]
    out: dict = {"label": label, "policy": policy, "rollouts": len(rows),
                 "parseable_rate": 1 - sum(r["outcome"] == UNPARSEABLE for r in rows) / n,
                 "valid_rate": len(valid) / n,
                 "fool_rate": sum(r["outcome"] == FOOLED for r in valid) / max(1, len(valid)),
                 "mean_reward": sum(r["reward"] for r in rows) / n}
    for mode in ("MODE_INJECT", "MODE_PARAPHRASE"):
        of_mode = [r for r in rows if r["mode"] == mode]
        valid_mode = [r for r in valid if r["mode"] == mode]
        key = mode.removeprefix("MODE_").lower()
        out[f"valid_rate_{key}"] = len(valid_mode) / max(1, len(of_mode))
        out[f"fool_rate_{key}"] = sum(r["outcome"] == FOOLED for r in valid_mode) / max(1, len(valid_mode))
    by_type: dict[str, list] = {}
    for r in valid:
        if r["mode"] == "MODE_INJECT":
            by_type.setdefault(r["error_type"] or "none", []).append(r["outcome"] == FOOLED)
    out["fool_rate_by_error_type"] = {k: sum(v) / len(v) for k, v in sorted(by_type.items())}
    out["error_types"] = dict(Counter(r["error_type"] or "none" for r in valid if r["mode"] == "MODE_INJECT"))
    out["positions"] = dict(Counter(_position(r["sentence_id"], r["sentences"]) for r in valid))
    return out
