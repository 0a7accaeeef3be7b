"""The trainer service: the REINFORCE++ learner on the ``rollouts.scored`` stream of rollout groups.

Loop: poll scored groups (and the dead-letter topic) -> dispose of each group exactly once, by id:
``duplicate`` (seen before), ``stale`` (sampled more than ``max_staleness`` versions ago),
``invalid`` / ``quarantined`` (to the dead-letter topic with the reason), ``lost`` (a group another
service dead-lettered) or ``buffered`` -> old and reference log-probs computed on arrival, while the
batch fills -> at ``rollouts_per_update`` rollouts, one REINFORCE++ step on whole groups -> save the
new version (weights, optimizer, state) atomically -> publish a PolicyUpdate with the accounting the
injector's admission budget is computed from -> commit the consumed offsets.

A kill at any point loses nothing and counts nothing twice: offsets are committed only after the
version that used them is saved, and the saved state lists the group ids it disposed of, so a
redelivered group is dropped as a duplicate. On start the learner announces its newest version (a
version saved just before a kill is still announced). When no input arrived for ``starve_after_s``
it says how many rollouts it still wants (``rollouts_wanted``), so losses the counts cannot see
never stall the loop. Non-finite log-probs, losses or gradient norms skip the step, quarantine the
groups on the dead-letter topic and never publish a policy.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from medserl.v1 import messages_pb2 as pb
from medserl.v1 import trainer_pb2, trainer_pb2_grpc
from services.common import metrics
from services.common.auth import bus_auth
from services.common.bus import Bus, BusError, Consumer, Record, close_quietly
from services.common.fileio import write_atomic
from services.common.limits import MAX_ID_CHARS, id_problem
from services.common.reward import EXCLUDED, FOOLED, INVALID, OUTCOMES, UNPARSEABLE
from services.common.runtime import GrpcBinding, Service
from services.common.settings import ServiceSettings
from services.common.topics import (
    DEAD_LETTER,
    POLICY_UPDATES,
    ROLLOUTS_GENERATED,
    ROLLOUTS_SCORED,
    ROLLOUTS_VERIFIED,
)
from services.common.worker import DEAD_LETTER_PAYLOAD_BYTES, dead_letter
from trainer.reinforce import Learner, NonFiniteError, PreparedGroup, ReinforcePPConfig, StepStats

log = logging.getLogger(__name__)

STATE_FILE = "learner_state.json"
HISTORY_FILE = "history.jsonl"
MAX_REMEMBERED_GROUPS = 50_000
HISTORY_IN_MEMORY = 1_000


@dataclass
class TrainerSettings(ServiceSettings, ReinforcePPConfig):
    """The runtime's settings plus every REINFORCE++ hyperparameter (one definition: ReinforcePPConfig)."""

    grpc_port: int = 50056
    metrics_port: int = 9106
    shutdown_grace_s: float = 900.0  # a learner step on a 4B model can take minutes: let it finish
    model: str = "outputs/qwen3_4b_sft"  # the SFT policy (HF id or local path); also the KL reference
    checkpoint_dir: str = "outputs/rl"
    lora: bool = True  # LoRA adapters are small and vLLM hot-loads them; full weights otherwise
    lora_r: int = 16
    lora_alpha: int = 32
    device: str = "auto"  # auto | cpu | cuda
    max_updates: int = 0  # stop learning after this many versions (0: no limit)
    keep_versions: int = 3  # checkpoints kept: the newest K plus any version still sampling rollouts
    starve_after_s: float = 30.0  # no input for this long with a part-filled batch: ask for rollouts
    accounting_interval_s: float = 2.0  # publish disposals (stale, lost, ...) at most this often

    def reinforce_config(self) -> ReinforcePPConfig:
        return ReinforcePPConfig(**{f.name: getattr(self, f.name) for f in fields(ReinforcePPConfig)})


def rollout_stats(groups: list[pb.RolloutGroup]) -> dict:
    """What a batch of scored groups says about the game: the report and the dashboard read these."""
    rollouts = [r for g in groups for r in g.rollouts]
    n = max(1, len(rollouts))
    by_outcome = _count(r.reward.outcome for r in rollouts)
    judged = [r for r in rollouts if r.reward.outcome not in (INVALID, UNPARSEABLE, EXCLUDED)]
    stats: dict = {"by_outcome": by_outcome, "by_mode": _count(pb.Mode.Name(r.mode) for r in rollouts),
                   "parseable_rate": 1 - by_outcome.get(UNPARSEABLE, 0) / n,
                   "valid_rate": len(judged) / n,
                   "fool_rate": sum(r.reward.outcome == FOOLED for r in judged) / max(1, len(judged)),
                   "reward_format": sum(r.reward.format for r in rollouts) / n,
                   "reward_verifier": sum(r.reward.verifier for r in rollouts) / n,
                   "reward_game": sum(r.reward.game for r in rollouts) / n,
                   "reward_total": sum(r.reward.total for r in rollouts) / n}
    for mode, name in ((pb.MODE_INJECT, "inject"), (pb.MODE_PARAPHRASE, "paraphrase")):
        valid = [r for r in judged if r.mode == mode]
        stats[f"fool_rate_{name}"] = (sum(r.reward.outcome == FOOLED for r in valid) / len(valid)) if valid else None
        stats[f"valid_{name}"] = len(valid)
    inject = [r for r in judged if r.mode == pb.MODE_INJECT]
    para = [r for r in judged if r.mode == pb.MODE_PARAPHRASE]
    stats["detection_rate"] = (sum(r.reward.outcome != FOOLED for r in inject) / len(inject)) if inject else None
    stats["false_flag_rate"] = (sum(r.verdict.error_flag for r in para) / len(para)) if para else None
    return stats


class LearnerLoop:
    """Consumes rollouts.scored (+ dead letters) and publishes policy.updates. Runs on its own thread."""

    def __init__(self, settings: TrainerSettings, bus: Bus, learner_factory=None):
        self.settings = settings
        self.config = settings.reinforce_config().validate()
        self.bus = bus
        self.dir = Path(settings.checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.groups_consumed = 0
        self.rollouts_consumed = 0
        self.fates: dict[str, int] = {}
        self._remembered: deque[str] = deque(maxlen=MAX_REMEMBERED_GROUPS)
        self._remembered_set: set[str] = set()
        self.history: deque[dict] = deque(maxlen=HISTORY_IN_MEMORY)
        self._load_state()
        self.learner: Learner = (learner_factory or build_learner)(settings, self.latest_checkpoint())
        self.learner.step_count = self.version
        self.producer = bus.producer()  # the service's view of the bus: signs as the trainer when keyed
        self.vocab_size = _vocab_size(self.learner)
        self.group_id = settings.group_id or "medserl-trainer"
        self._buffer: list[PreparedGroup] = []
        self._polled: list[Record] = []  # disposed of, not committed yet
        self._polled_at: set[tuple[str, int, int]] = set()  # their (topic, partition, offset)
        self.last_stats: StepStats | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_input = time.monotonic()
        self._last_starve_request = 0.0
        self._last_accounting = 0.0
        self._accounting_dirty = False
        self._checkpoint_digest: tuple[int, str] = (-1, "")
        self._last_group_size = 0  # unknown until the first group: poll one record to learn it
        self._idle_s = 0.0
        self._busy_s = 0.0
        self._window_started = time.monotonic()

    def topic(self, name: str) -> str:
        return f"{name}{self.settings.topic_suffix}"

    @property
    def processed(self) -> int:
        return self.rollouts_consumed

    @property
    def buffered_rollouts(self) -> int:
        return sum(p.size for p in self._buffer)

    # --- durable state ------------------------------------------------------------------------
    def _load_state(self) -> None:
        path = self.dir / STATE_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        self.version = int(state["version"])
        self.groups_consumed = int(state.get("groups_consumed", 0))
        self.rollouts_consumed = int(state.get("rollouts_consumed", 0))
        self.fates = dict(state.get("fates", {}))
        self.history.extend(state.get("history", []))
        for gid in state.get("consumed_group_ids", []):
            self._remember(gid)
        log.info("learner resumed", extra={"version": self.version, "remembered_groups": len(self._remembered)})

    def _save_state(self) -> None:
        write_atomic(self.dir / STATE_FILE, json.dumps({
            "version": self.version, "groups_consumed": self.groups_consumed,
            "rollouts_consumed": self.rollouts_consumed, "fates": self.fates,
            "history": list(self.history)[-50:], "consumed_group_ids": list(self._remembered)}))

    def _remember(self, group_id: str) -> None:
        if len(self._remembered) == self._remembered.maxlen:
            self._remembered_set.discard(self._remembered[0])
        self._remembered.append(group_id)
        self._remembered_set.add(group_id)

    def latest_checkpoint(self) -> Path | None:
        return self.dir / f"policy-v{self.version}" if self.version > 0 else None

    # --- loop ---------------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="learner", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        topics = [self.topic(ROLLOUTS_SCORED), self.topic(DEAD_LETTER)]
        consumer: Consumer | None = None
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    if consumer is None:
                        consumer = self.bus.consumer(topics, self.group_id, client_id="trainer")
                        self.announce()  # also after a reconnect: the newest saved version, perhaps unpublished
                    if self.settings.max_updates and self.version >= self.settings.max_updates:
                        stop.wait(0.5)
                        continue
                    self.poll_once(consumer)
                    backoff = 0.5
                except BusError as exc:
                    # the broker is away (a restart, a partition): keep the batch in hand (its records
                    # come again and are skipped by position; committed with the next step) and reconnect
                    log.warning("bus unavailable; the learner keeps its batch and reconnects",
                                extra={"error": str(exc)[:300], "retry_in_s": backoff})
                    close_quietly(consumer)
                    consumer = None
                    stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
        except BaseException as exc:
            self.error = exc
            log.exception("learner stopped on an unexpected error")
            raise
        finally:
            # a part-filled batch is handed back: its offsets were never committed
            close_quietly(consumer)
            self.producer.flush()

    def poll_once(self, consumer: Consumer) -> StepStats | None:
        waited = time.monotonic()
        # poll no more groups than the batch still needs: a step trains at most one group past its size
        group_size = self._buffer[-1].size if self._buffer else self._last_group_size
        wanted = -(-(self.config.rollouts_per_update - self.buffered_rollouts) // group_size) if group_size else 1
        records = consumer.poll(self.settings.poll_timeout_s, max(1, min(self.settings.max_batch, wanted)))
        self._idle_s += time.monotonic() - waited
        busy = time.monotonic()
        for record in records:
            position = (record.topic, record.partition, record.offset)
            if position in self._polled_at:
                continue  # the same message again (a rebalance rewinds to the commit): disposed of already
            self._polled_at.add(position)
            self._polled.append(record)
            metrics.MESSAGES_CONSUMED.labels("trainer", record.topic).inc()
            if record.topic == self.topic(DEAD_LETTER):
                self._dead_letter_seen(record)
            else:
                self._last_input = time.monotonic()
                self._group_arrived(record)
        self._busy_s += time.monotonic() - busy
        if self.buffered_rollouts >= self.config.rollouts_per_update:
            return self._update(consumer)
        self._maybe_publish_accounting()
        return None

    def _dispose(self, group_id: str, rollouts: int, fate: str) -> None:
        self.groups_consumed += 1
        self.rollouts_consumed += rollouts
        self.fates[fate] = self.fates.get(fate, 0) + 1
        metrics.RL_GROUPS.labels(fate).inc()
        if group_id:
            self._remember(group_id)
        if fate != "trained":
            self._accounting_dirty = True

    def _count_duplicate(self, rollouts: int) -> None:
        """A copy of a group already disposed of: never trained, but consumed (its copy occupies an
        offset of rollouts.generated too, and the injector's window counts offsets)."""
        self.fates["duplicate"] = self.fates.get("duplicate", 0) + 1
        self.groups_consumed += 1
        self.rollouts_consumed += rollouts
        self._accounting_dirty = True

    def _group_arrived(self, record: Record) -> None:
        # rewards only from the assessor (issue 12): a forged or oversized group is dead-lettered and
        # never disposed of, so it can neither take a real group's id nor widen the injector's window
        limit = getattr(self.settings, "max_message_bytes", 0)
        if limit and len(record.value) > limit:
            self._reject(record, f"message is {len(record.value)} bytes, over the limit of {limit}", "TooLarge")
            return
        auth = bus_auth(self.bus)
        refused = auth.check(record, "medserl.v1.RolloutGroup") if auth is not None else ""
        if refused:
            self._reject(record, refused, "Unauthenticated")
            return
        try:
            group = pb.RolloutGroup.FromString(record.value)
        except DecodeError as exc:
            self._reject(record, f"undecodable medserl.v1.RolloutGroup: {exc}", "DecodeError")
            return
        problem = _invalid_group(group, self.vocab_size)
        if problem:
            self._reject(record, problem, "InvalidInput")
            self._dispose("" if id_problem("group_id", group.group_id) else group.group_id, len(group.rollouts),
                          "invalid")
            return
        if group.group_id in self._remembered_set or any(p.group.group_id == group.group_id for p in self._buffer):
            metrics.DUPLICATES_SKIPPED.labels("trainer", record.topic).inc()
            self._count_duplicate(len(group.rollouts))
            return
        staleness = self.version - group.policy_version
        metrics.RL_STALENESS.observe(max(0, staleness))
        if staleness > self.config.max_staleness:
            self._dispose(group.group_id, len(group.rollouts), "stale")
            return
        self._last_group_size = len(group.rollouts)
        try:
            self._buffer.append(self.learner.prepare(group))
        except NonFiniteError as exc:
            self._quarantine([group], exc.reason, record)
        except (ValueError, IndexError, RuntimeError) as exc:  # a group the model cannot take: never a crash
            log.error("group could not be prepared", extra={"error_class": type(exc).__name__})
            self._quarantine([group], f"could not be prepared ({type(exc).__name__})", record)

    def _dead_letter_seen(self, record: Record) -> None:
        """A group another service dead-lettered on its way here counts as disposed of (``lost``)."""
        auth = bus_auth(self.bus)
        if auth is not None and auth.check(record, "medserl.v1.DeadLetter"):
            return  # a forged dead letter would inflate the accounting the injector's window follows
        try:
            letter = pb.DeadLetter.FromString(record.value)
        except DecodeError:
            return
        pipeline = {self.topic(t) for t in (ROLLOUTS_GENERATED, ROLLOUTS_VERIFIED, ROLLOUTS_SCORED)}
        if letter.service == "trainer" or letter.source_topic not in pipeline:
            return
        try:
            group = pb.RolloutGroup.FromString(letter.payload)
            key, rollouts = group.group_id, len(group.rollouts)
        except DecodeError:  # cut to dead_letter_payload_bytes
            group, key, rollouts = None, "", 0
        if not key:  # no payload (the default: no note text on the topic): the record key is the group id
            key = letter.key.decode("utf-8", "replace")
        if id_problem("group_id", key):
            key = ""
        if not key:
            if letter.source_topic != self.topic(ROLLOUTS_GENERATED):
                return  # not one of ours: it never took a slot of the injector's window
            key = f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"
        if key in self._remembered_set or any(p.group.group_id == key for p in self._buffer):
            # another copy of a group already disposed of (a redelivered seed): like a duplicate on
            # rollouts.scored it took its own offset of rollouts.generated, so it is consumed too
            self._count_duplicate(rollouts)
            return
        self._dispose(key, rollouts, "lost")

    def _reject(self, record: Record, reason: str, error_class: str) -> None:
        letter = dead_letter(record, "trainer", reason, error_class)  # bounded: payload and key cut
        self.producer.publish(self.topic(DEAD_LETTER), letter.SerializeToString(), key=letter.key)
        metrics.DEAD_LETTERS.labels("trainer", record.topic, error_class).inc()

    def _quarantine(self, groups: list[pb.RolloutGroup], reason: str, record: Record | None = None) -> None:
        """Dead-letter groups the learner will not train on. Like every dead letter it copies no more of
        the group than ``dead_letter_payload_bytes`` (none by default: notes are PHI) and names where
        the group sits on rollouts.scored, so it can be read back from there."""
        keep = int(getattr(self.settings, "dead_letter_payload_bytes", DEAD_LETTER_PAYLOAD_BYTES))
        for group in groups:
            where = {"source_partition": record.partition, "source_offset": record.offset} if record else {}
            letter = pb.DeadLetter(source_topic=self.topic(ROLLOUTS_SCORED), key=group.group_id.encode(),
                                   payload=group.SerializeToString()[:max(0, keep)], **where,
                                   reason=f"quarantined: {reason}"[:2000],
                                   error_class="NonFinite", service="trainer",
                                   failed_unix_ms=int(time.time() * 1000), attempts=1)
            self.producer.publish(self.topic(DEAD_LETTER), letter.SerializeToString(), key=group.group_id)
            metrics.DEAD_LETTERS.labels("trainer", self.topic(ROLLOUTS_SCORED), "NonFinite").inc()
            self._dispose(group.group_id, len(group.rollouts), "quarantined")
        log.warning("groups quarantined", extra={"groups": len(groups), "reason": reason[:200]})

    # --- accounting ---------------------------------------------------------------------------
    def _policy_update(self, **fields_) -> pb.PolicyUpdate:
        """An update for the current version. Every update names the version's checkpoint, so an
        injector that failed to load it (or restarted) tries again at the next accounting update
        instead of sampling stale rollouts forever."""
        if "checkpoint_uri" not in fields_:
            fields_.update(self._checkpoint_fields())
        return pb.PolicyUpdate(version=self.version, kind="lora" if self.settings.lora else "full",
                               base_model=self.settings.model, learner_step=self.learner.step_count,
                               created_unix_ms=int(time.time() * 1000), groups_consumed=self.groups_consumed,
                               rollouts_consumed=self.rollouts_consumed, **fields_)

    def _checkpoint_fields(self) -> dict:
        checkpoint = self.latest_checkpoint()
        if checkpoint is None or not checkpoint.exists():
            return {}
        if self._checkpoint_digest[0] != self.version:
            from services.inference import checkpoint_sha256

            self._checkpoint_digest = (self.version, checkpoint_sha256(checkpoint))
        return {"checkpoint_uri": str(checkpoint.resolve()), "checkpoint_sha256": self._checkpoint_digest[1]}

    def _publish(self, update: pb.PolicyUpdate) -> None:
        self.producer.publish(self.topic(POLICY_UPDATES), update.SerializeToString(), key="policy")
        metrics.MESSAGES_PRODUCED.labels("trainer", self.topic(POLICY_UPDATES)).inc()
        self.producer.flush()
        self._last_accounting = time.monotonic()
        self._accounting_dirty = False

    def announce(self) -> None:
        """The newest saved version and the accounting, so a restarted learner is seen at once."""
        self._publish(self._policy_update())

    def _maybe_publish_accounting(self) -> None:
        now = time.monotonic()
        starving = (now - self._last_input > self.settings.starve_after_s
                    and now - self._last_starve_request > self.settings.starve_after_s)
        if starving:
            self._last_starve_request = now
            wanted = self.config.rollouts_per_update - self.buffered_rollouts
            log.info("learner waiting for input; asking for rollouts", extra={"wanted": wanted})
            self._publish(self._policy_update(rollouts_wanted=wanted))
        elif self._accounting_dirty and now - self._last_accounting > self.settings.accounting_interval_s:
            self._publish(self._policy_update())

    # --- the update ---------------------------------------------------------------------------
    def _update(self, consumer: Consumer) -> StepStats | None:
        started = time.monotonic()
        batch, self._buffer = self._buffer, []
        groups = [p.group for p in batch]
        try:
            stats = self.learner.step(batch)
        except NonFiniteError as exc:
            bad = set(exc.group_ids)
            self._quarantine([g for g in groups if g.group_id in bad], exc.reason)
            self._buffer = [p for p in batch if p.group.group_id not in bad]
            return None
        self.version += 1
        for group in groups:
            self._dispose(group.group_id, len(group.rollouts), "trained")
        out_dir, digest = self.learner.save(self.dir / f"policy-v{self.version}")
        self._checkpoint_digest = (self.version, digest)
        staleness = [self.version - 1 - g.policy_version for g in groups]
        elapsed_window = max(1e-9, time.monotonic() - self._window_started)
        entry = {
            **{k: v for k, v in asdict(stats).items() if k != "extra"},
            **rollout_stats(groups),
            "version": self.version, "time": time.time(),
            "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
            "rollouts_per_s": stats.rollouts / elapsed_window,
            "tokens_per_s": stats.tokens / max(stats.seconds, 1e-9),
            "idle_fraction": self._idle_s / elapsed_window,
            "fates": dict(self.fates),
        }
        self.history.append(entry)
        with (self.dir / HISTORY_FILE).open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        self._save_state()
        self._publish(self._policy_update(checkpoint_uri=str(out_dir.resolve()), checkpoint_sha256=digest,
                                          step_group_ids=[g.group_id for g in groups]))
        try:
            consumer.commit(self._polled)
            self._polled, self._polled_at = [], set()
        except BusError as exc:  # kept: redelivered records are skipped by position and committed next time
            log.warning("commit after update failed; redelivered records will be skipped", extra={"error": str(exc)})
        self._retain(min(g.policy_version for g in groups))
        self._observe(entry)
        self.last_stats = stats
        self._idle_s, self._busy_s, self._window_started = 0.0, 0.0, time.monotonic()
        log.info("policy updated", extra={"version": self.version, "mean_reward": round(stats.mean_reward, 4),
                                          "kl": round(stats.mean_kl, 5), "rollouts": stats.rollouts,
                                          "seconds": round(time.monotonic() - started, 2)})
        return stats

    def _retain(self, oldest_in_use: int) -> None:
        """Keep the newest ``keep_versions`` checkpoints plus any version still sampling rollouts."""
        keep_from = min(self.version - self.settings.keep_versions + 1, oldest_in_use)
        for path in self.dir.glob("policy-v*"):
            try:
                version = int(path.name.removeprefix("policy-v"))
            except ValueError:
                continue
            if version < keep_from:
                shutil.rmtree(path, ignore_errors=True)

    def _observe(self, entry: dict) -> None:
        metrics.TRAIN_STEP.labels("rl").set(entry["step"])
        metrics.TRAIN_LOSS.labels("rl").set(entry["loss"])
        metrics.TRAIN_LEARNING_RATE.labels("rl").set(entry["learning_rate"])
        metrics.TRAIN_MEAN_REWARD.set(entry["mean_reward"])
        metrics.TRAIN_TOKENS_PER_SECOND.labels("rl").set(entry["tokens_per_s"])
        metrics.POLICY_VERSION.labels("trainer").set(self.version)
        for name in metrics.RL_STEP_STATS:
            value = entry.get(name)
            if value is not None:
                metrics.RL_STEP.labels(name).set(value)


GAME_MODES = (pb.MODE_INJECT, pb.MODE_PARAPHRASE)
MAX_ABS_REWARD = 100.0  # far above any reward ladder; a larger one is forged or broken
MAX_GROUP_ROLLOUTS = 1024


def _vocab_size(learner) -> int | None:
    """The policy's embedding rows: a token id at or above it would crash the forward pass."""
    policy = getattr(learner, "policy", None)
    try:
        return int(policy.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, ValueError):
        size = getattr(getattr(policy, "config", None), "vocab_size", None)
        return int(size) if size else None


def _invalid_group(group: pb.RolloutGroup, vocab_size: int | None = None) -> str:
    """Why a scored group cannot be trained on ('' when it can): ids, token ids within the vocabulary,
    finite log-probs and rewards (issue 12: a token id of 1e9 crash-looped the trainer)."""
    if not group.group_id or not group.rollouts:
        return "scored group without a group_id or without rollouts"
    if problem := id_problem("group_id", group.group_id):
        return problem
    if len(group.rollouts) > MAX_GROUP_ROLLOUTS:
        return f"group has {len(group.rollouts)} rollouts (limit {MAX_GROUP_ROLLOUTS})"
    if group.mode not in GAME_MODES or any(r.mode not in GAME_MODES for r in group.rollouts):
        return f"group {group.group_id!r}: a mode other than MODE_INJECT or MODE_PARAPHRASE"
    for r in group.rollouts:
        if not r.rollout_id or not r.completion_token_ids:
            return f"group {group.group_id!r}: a rollout without an id or completion tokens"
        if problem := id_problem("rollout_id", r.rollout_id, 2 * MAX_ID_CHARS):
            return problem
        if len(r.behaviour_logprobs) != len(r.completion_token_ids):
            return f"rollout {r.rollout_id!r}: behaviour_logprobs and completion_token_ids differ in length"
        if not r.HasField("reward") or not r.reward.outcome:
            return f"rollout {r.rollout_id!r} has no reward (only the assessor scores rollouts)"
        if r.reward.outcome not in OUTCOMES:
            return f"rollout {r.rollout_id!r}: unknown reward outcome"
        # non-finite values pass: the learner quarantines them (NonFiniteError) before any step
        parts = (r.reward.total, r.reward.game, r.reward.verifier, r.reward.format)
        if any(math.isfinite(x) and abs(x) > MAX_ABS_REWARD for x in parts):
            return f"rollout {r.rollout_id!r}: a reward beyond +-{MAX_ABS_REWARD:g}"
        if any(math.isfinite(x) and x > 1e-3 for x in r.behaviour_logprobs):  # log-probs are <= 0 (+ rounding)
            return f"rollout {r.rollout_id!r}: a positive behaviour log-prob"
        for name, ids in (("prompt", r.prompt_token_ids), ("completion", r.completion_token_ids)):
            if ids and (min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size)):
                return f"rollout {r.rollout_id!r}: a {name} token id outside the vocabulary (size {vocab_size})"
    return ""


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


class _AdapterDisabled:
    """The frozen reference for a LoRA policy: the same weights with the adapter switched off."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def eval(self):
        return self

    def requires_grad_(self, _flag):
        return self

    def __call__(self, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**kwargs)


def build_learner(settings: TrainerSettings, resume_from: Path | None) -> Learner:
    """Load the SFT policy (and its frozen copy as the KL reference), resuming a saved version."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    if settings.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = settings.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    config = settings.reinforce_config()
    if settings.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        base = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).to(device)
        if resume_from is not None:
            policy = PeftModel.from_pretrained(base, str(resume_from), is_trainable=True)
        else:
            policy = get_peft_model(
                base,
                LoraConfig(
                    r=settings.lora_r,
                    lora_alpha=settings.lora_alpha,
                    task_type="CAUSAL_LM",
                    target_modules=[
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "o_proj",
                        "gate_proj",
                        "up_proj",
                        "down_proj",
                    ],
                ),
            )
        reference = _AdapterDisabled(policy)
    else:
        policy = AutoModelForCausalLM.from_pretrained(
            str(resume_from or settings.model), dtype=dtype
        ).to(device)
        reference = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).to(device)
    learner = Learner(policy, reference, tokenizer, config, total_steps=settings.max_updates)
    if resume_from is not None and (resume_from / "optimizer.pt").exists():
        learner.optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", map_location=device))
    return learner


class _TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, loop_ref):
        self._loop_ref = loop_ref

    def GetStatus(self, request, context):
        loop = self._loop_ref()
        if loop is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the learner is still loading its model")
        stats = loop.last_stats
        return trainer_pb2.TrainerStatus(
            phase="rl",
            step=loop.learner.step_count,
            policy_version=loop.version,
            last_loss=stats.loss if stats else 0.0,
            mean_reward=stats.mean_reward if stats else 0.0,
            rollouts_consumed=loop.rollouts_consumed,
        )

    def GetLatestPolicy(self, request, context):
        loop = self._loop_ref()
        if loop is None or loop.version == 0:
            context.abort(
                grpc.StatusCode.NOT_FOUND, "no policy version published yet (version 0 is the SFT model)"
            )
        path = loop.latest_checkpoint()
        return pb.PolicyUpdate(
            version=loop.version,
            checkpoint_uri=str(path.resolve()),
            kind="lora" if loop.settings.lora else "full",
            base_model=loop.settings.model,
        )


class TrainerService(Service):
    name = "trainer"
    settings_cls = TrainerSettings

    def __init__(self, settings: TrainerSettings, bus: Bus, learner_factory=None):
        super().__init__(settings, bus)
        self.loop = LearnerLoop(settings, self.bus, learner_factory)

    def grpc_bindings(self):
        return [
            GrpcBinding(
                trainer_pb2_grpc.add_TrainerServicer_to_server,
                _TrainerServicer(lambda: self.loop),
                "medserl.v1.Trainer",
            )
        ]

    def workers(self):
        return [self.loop]

    def close(self) -> None:
        self.loop.producer.flush()
