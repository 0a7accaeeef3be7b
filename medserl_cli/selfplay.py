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

from services.common.fileio import write_atomic

log = logging.getLogger(__name__)


@dataclass
class SelfPlayConfig:
    """One self-play run. Defaults suit the CPU demo; the trainer/assessor fields mirror their settings."""

    policy: str = ""  # the SFT policy folder (injector, learner and KL reference start here)
    assessor_model: str = ""  # the frozen assessor's model folder (default: the policy's)
    checkpoint_dir: str = "outputs/rl"  # learner state and versions; a second run resumes from it
    bus: str = "memory"  # memory (one process) | kafka
    kafka_bootstrap: str = ""  # host:port of the Kafka cluster with bus=kafka
    topic_suffix: str = ""  # namespace every topic (experiments sharing a cluster)
    versions: int = 16  # new policy versions to train (counted from a resume)
    rollouts_per_update: int = 32  # rollouts per learner step
    group_size: int = 4  # edits sampled per seed note (the per-note baseline)
    max_new_tokens: int = 96  # the injector's longest edit
    temperature: float = 1.0  # the injector's sampling temperature
    learning_rate: float = 1e-4  # the learner's rate (full weights of the tiny demo; with lora: the LoRA rate)
    lora: bool = False  # train a LoRA adapter (vLLM hot-loads it) instead of all weights
    kl_coef: float = 0.01  # beta of the KL penalty to the SFT policy
    max_staleness: int = 4  # the learner drops groups sampled more versions ago than this
    seed: int = 0  # seeds sampling and the learner
    timeout_s: float = 900.0  # stop after this long
    starve_after_s: float = 15.0  # the learner asks for rollouts after this long without input
    reward: str = "ladder"  # ladder (services/common/reward.py defaults) | flat (-1 for every failure: the ablation)
    progress: bool = True  # a progress bar
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
    from services.common.reward import RewardWeights
    from services.common.runtime import ServiceRuntime, make_bus
    from services.common.settings import ServiceSettings
    from services.common.topics import ALL_TOPICS, NOTES_SEED, POLICY_UPDATES, ROLLOUTS_SCORED
    from services.injector.service import InjectorService, InjectorSettings
    from services.verifier.service import VerifierService, VerifierSettings
    from trainer.service import TrainerService, TrainerSettings

    if not seeds:
        raise ValueError("self-play needs at least one seed note")
    if config.reward not in ("ladder", "flat"):
        raise ValueError(f"reward must be ladder or flat, got {config.reward!r}")
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
    weights = RewardWeights.flat() if config.reward == "flat" else RewardWeights()
    services = [
        VerifierService(VerifierSettings(**common), bus),
        AssessorService(AssessorSettings(**common, model=config.assessor_model or config.policy,
                                         max_batch_size=16, max_new_tokens=48, seed=config.seed,
                                         reward_fooled=weights.fooled, reward_caught=weights.caught,
                                         verifier_penalty=weights.verifier_penalty,
                                         format_penalty=weights.format_penalty), bus),
        TrainerService(trainer, bus),
    ]
    start_version = services[-1].loop.version  # resuming: the learner announces it, the injector loads it
    trainer.max_updates = start_version + config.versions  # versions counts new ones, also on a resume
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
            epoch, index = divmod(next_seed, len(seeds))
            next_seed += 1
            note = seeds[index]
            if epoch:  # a seed's group id names its content: a note seen again needs a new id
                note = pb.Note(note_id=f"{note.note_id}@e{epoch}", text=note.text, sentences=note.sentences,
                               source=note.source, split=note.split)
            producer.publish(topic(NOTES_SEED), note.SerializeToString(), key=note.note_id)
            fed += 1
        producer.flush()

    target = start_version + config.versions
    per_version_groups = max(1, config.rollouts_per_update // config.group_size)
    feed(4 * per_version_groups)
    scored: dict[str, dict] = {}
    fooled: list[dict] = []  # verified edits that fooled the assessor: the next round's assessor data
    updates: list[dict] = []
    deadline = time.monotonic() + config.timeout_s
    timed_out = False
    trainer_service = services[-1]
    try:
        with tqdm(total=config.versions, desc="RL policy versions", unit="version",
                  disable=not config.progress) as bar:
            while (updates[-1]["version"] if updates else start_version) < target:  # seen on the bus
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
                        if rollout.rollout_id not in scored and rollout.reward.outcome == "fooled":
                            fooled.append(fooled_edit(group, rollout))
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
            "fates": dict(trainer_service.loop.fates), "config": asdict(config), "fooled": fooled,
            "final_policy": updates[-1]["uri"] if updates else None}


def fooled_edit(group, rollout) -> dict:
    """A verified edit that fooled the assessor, as plain data (seed and edited sentences)."""
    from medserl.v1 import messages_pb2 as pb

    return {"group": group.group_id, "seed_note_id": group.seed_note_id, "mode": pb.Mode.Name(rollout.mode),
            "seed": [[s.id, s.text] for s in group.seed_note.sentences],
            "edited": [[s.id, s.text] for s in rollout.modified_note.sentences],
            "changed_sentence_id": rollout.changed_sentence_id, "error_type": rollout.claimed_error_type}


def assessor_records(fooled: list[dict]) -> list[dict]:
    """SFT records (the generator's layout) that teach the assessor what fooled it: an injected error
    that fooled it becomes an INCORRECT record with its safe twin (the seed note, CORRECT) for
    balance; a safe paraphrase it flagged becomes a CORRECT record."""
    from services.common import formats

    records = []
    for i, edit in enumerate(fooled):
        seed = [(int(a), b) for a, b in edit["seed"]]
        edited = [(int(a), b) for a, b in edit["edited"]]
        changed = int(edit["changed_sentence_id"])
        before, after = dict(seed).get(changed, ""), dict(edited).get(changed, "")
        base = {"pair_id": f"selfplay-{edit['group']}", "source_sentences": [list(s) for s in seed],
                "changed_sentence_id": changed, "reasoning": None, "model_written": False,
                "prompt_version": formats.FORMAT_VERSION}
        if edit["mode"] == "MODE_INJECT":
            records.append({**base, "id": f"selfplay-{i}:incorrect", "kind": "INCORRECT",
                            "note_sentences": [list(s) for s in edited], "original_sentence": before,
                            "new_sentence": after, "error_type": edit["error_type"] or "diagnosis"})
            records.append({**base, "id": f"selfplay-{i}:twin", "kind": "CORRECT",
                            "note_sentences": [list(s) for s in seed], "original_sentence": before,
                            "new_sentence": before, "error_type": None})
        else:
            records.append({**base, "id": f"selfplay-{i}:correct", "kind": "CORRECT",
                            "note_sentences": [list(s) for s in edited], "original_sentence": before,
                            "new_sentence": after, "error_type": None})
    for record in records:
        record["messages"] = formats.sft_messages(record, "assessor")
    return records


@dataclass
class RoundsConfig:
    """Self-play rounds: after each round, a fresh assessor is fine-tuned (TRL SFT, assessor role) from
    ``assessor_base`` on ``assessor_data`` plus the edits that fooled the current one, then frozen."""

    rounds: int = 1
    assessor_base: str = ""  # the model a fresh assessor starts from (the SFT base model)
    assessor_data: str = ""  # the assessor's original SFT records (JSONL)
    tiny: bool = False  # the CPU demo's SFT preset
    sft_epochs: float = 1.0
    eval_reference: str = ""  # MEDEC CSV for the assessor's metrics per round ('' : none)
    eval_limit: int = 60


def run_rounds(config: SelfPlayConfig, rounds: RoundsConfig, seeds: list, out: Path) -> dict:
    """``rounds.rounds`` rounds of ``config.versions`` versions each, a new frozen assessor between them."""
    from trainer.sft import SFTRunConfig, run_sft

    if rounds.rounds > 1 and not (rounds.assessor_base and rounds.assessor_data):
        raise ValueError("self-play rounds need assessor_base (the model a fresh assessor starts from) and "
                         "assessor_data (its original SFT records)")
    assessor = config.assessor_model or config.policy
    results = []
    for index in range(1, rounds.rounds + 1):
        round_out = out / f"round-{index}"
        result = run_selfplay(_replace(config, assessor_model=assessor), seeds, round_out)
        entry = {"round": index, "assessor": assessor, "rollouts": result["rollouts"],
                 "versions": [u["version"] for u in result["updates"]], "fooled": len(result["fooled"]),
                 "history": result["history"], "assessor_metrics": _assessor_metrics(assessor, rounds, round_out)}
        results.append(entry)
        if index == rounds.rounds:
            break
        data = round_out / "assessor_sft.jsonl"
        original = Path(rounds.assessor_data).read_text().splitlines()
        extra = assessor_records(result["fooled"])
        write_atomic(data, "".join(line + "\n" for line in original if line.strip())
                     + "".join(json.dumps(r) + "\n" for r in extra), private=True)  # SFT records: notes, 0600
        save = round_out / "assessor"
        if rounds.tiny:
            sft = SFTRunConfig.for_tiny_model(rounds.assessor_base, str(data), str(save), role="assessor",
                                              num_epochs=rounds.sft_epochs, seed=config.seed, eval_fraction=0.0,
                                              progress=config.progress, save_total_limit=1)
        else:
            sft = SFTRunConfig(model=rounds.assessor_base, train_data=str(data), save_path=str(save),
                               role="assessor", num_epochs=rounds.sft_epochs, seed=config.seed,
                               progress=config.progress)
        assessor = run_sft(sft).save_path
        log.info("new frozen assessor for the next round", extra={"round": index + 1, "fooled_records": len(extra)})
    return {"rounds": results, "final_assessor": assessor}


def _replace(config: SelfPlayConfig, **changes) -> SelfPlayConfig:
    from dataclasses import replace

    return replace(config, **changes)


def _assessor_metrics(assessor: str, rounds: RoundsConfig, out: Path) -> dict | None:
    """The assessor's MEDEC metrics (official MEDIQA-CORR scorer) on the evaluation reference."""
    if not rounds.eval_reference:
        return None
    from medec import mediqa_eval as me
    from services.assessor.evaluate import assess_reference

    reference = me.load_reference(rounds.eval_reference)
    outcome = assess_reference(reference, None, {"model": assessor, "max_batch_size": 16, "max_new_tokens": 48},
                               out_path=out / "assessor-run.txt", limit=rounds.eval_limit, progress=False)
    return me.score(outcome.reference, outcome.run)


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
