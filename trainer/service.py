"""The trainer service: the REINFORCE++ learner on the rollouts.scored stream.

Loop: poll scored rollouts -> skip ones already learned from (by rollout id) -> buffer until
``rollouts_per_update`` -> one REINFORCE++ step -> save the new policy version (weights, optimizer,
consumed ids) atomically -> publish PolicyUpdate -> commit the consumed offsets.

A kill at any point loses nothing and counts nothing twice: offsets are committed only after the
version that used them is saved, and the saved state lists the rollout ids it learned from, so a
redelivered rollout is skipped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from medserl.v1 import messages_pb2 as pb
from medserl.v1 import trainer_pb2, trainer_pb2_grpc
from services.common import metrics
from services.common.bus import Bus, BusError, Consumer, Record
from services.common.fileio import write_atomic
from services.common.runtime import GrpcBinding, Service
from services.common.settings import ServiceSettings
from services.common.topics import DEAD_LETTER, POLICY_UPDATES, ROLLOUTS_SCORED
from services.common.worker import dead_letter
from trainer.reinforce import Learner, ReinforcePPConfig, StepStats

log = logging.getLogger(__name__)

STATE_FILE = "learner_state.json"
MAX_REMEMBERED_IDS = 200_000


@dataclass
class TrainerSettings(ServiceSettings):
    grpc_port: int = 50056
    metrics_port: int = 9106
    model_name: str = "outputs/qwen3_4b_sft"  # the SFT policy (HF id or local path); also the KL reference
    checkpoint_dir: str = "outputs/rl"
    lora: bool = True  # LoRA adapters are small and vLLM hot-loads them; full weights otherwise
    lora_r: int = 16
    lora_alpha: int = 32
    device: str = "auto"  # auto | cpu | cuda
    learning_rate: float = ReinforcePPConfig.learning_rate
    kl_coef: float = ReinforcePPConfig.kl_coef
    clip_eps: float = ReinforcePPConfig.clip_eps
    baseline: str = ReinforcePPConfig.baseline
    rollouts_per_update: int = ReinforcePPConfig.rollouts_per_update
    micro_batch_size: int = ReinforcePPConfig.micro_batch_size
    max_updates: int = 0  # stop learning after this many versions (0: no limit)
    seed: int = 0


class LearnerLoop:
    """Consumes rollouts.scored and publishes policy.updates. Runs on its own thread."""

    def __init__(self, settings: TrainerSettings, bus: Bus, learner_factory=None):
        self.settings = settings
        self.bus = bus
        self.dir = Path(settings.checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.consumed: deque[str] = deque(maxlen=MAX_REMEMBERED_IDS)
        self._consumed_set: set[str] = set()
        self.history: list[dict] = []
        self._load_state()
        self.learner: Learner = (learner_factory or build_learner)(settings, self.latest_checkpoint())
        self.producer = bus.producer()
        self.group_id = settings.group_id or "medserl-trainer"
        self._buffer: list[pb.Rollout] = []
        self._polled: list[Record] = []
        self.duplicates = 0
        self.last_stats: StepStats | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def topic(self, name: str) -> str:
        return f"{name}{self.settings.topic_suffix}"

    @property
    def processed(self) -> int:
        return len(self.consumed)

    # --- durable state ------------------------------------------------------------------------
    def _load_state(self) -> None:
        path = self.dir / STATE_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        self.version = int(state["version"])
        self.history = state.get("history", [])
        for rid in state.get("consumed_ids", []):
            self._remember(rid)
        log.info("learner resumed", extra={"version": self.version, "remembered_ids": len(self.consumed)})

    def _remember(self, rollout_id: str) -> None:
        if len(self.consumed) == self.consumed.maxlen:
            self._consumed_set.discard(self.consumed[0])
        self.consumed.append(rollout_id)
        self._consumed_set.add(rollout_id)

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
        consumer = self.bus.consumer([self.topic(ROLLOUTS_SCORED)], self.group_id, client_id="trainer")
        try:
            while not stop.is_set():
                if self.settings.max_updates and self.version >= self.settings.max_updates:
                    stop.wait(0.5)
                    continue
                self.poll_once(consumer)
        except BaseException as exc:
            self.error = exc
            log.exception("learner stopped on an unexpected error")
            raise
        finally:
            # a partial buffer is handed back: its offsets were never committed
            consumer.close()
            self.producer.flush()

    def poll_once(self, consumer: Consumer) -> StepStats | None:
        records = consumer.poll(self.settings.poll_timeout_s, self.settings.max_batch)
        for record in records:
            self._polled.append(record)
            metrics.MESSAGES_CONSUMED.labels("trainer", record.topic).inc()
            try:
                scored = pb.ScoredRollout.FromString(record.value)
            except DecodeError as exc:
                self._reject(record, f"undecodable medserl.v1.ScoredRollout: {exc}", "DecodeError")
                continue
            rollout = scored.rollout
            if not rollout.rollout_id or not rollout.completion_token_ids:
                self._reject(record, "scored rollout without an id or completion tokens", "InvalidInput")
                continue
            if len(rollout.behaviour_logprobs) != len(rollout.completion_token_ids):
                self._reject(
                    record, "behaviour_logprobs and completion_token_ids differ in length", "InvalidInput"
                )
                continue
            if rollout.rollout_id in self._consumed_set or any(
                r.rollout_id == rollout.rollout_id for r in self._buffer
            ):
                self.duplicates += 1
                metrics.DUPLICATES_SKIPPED.labels("trainer", record.topic).inc()
                continue
            self._buffer.append(rollout)
        if len(self._buffer) < self.settings.rollouts_per_update:
            return None
        return self._update(consumer)

    def _reject(self, record: Record, reason: str, error_class: str) -> None:
        letter = dead_letter(record, "trainer", reason, error_class)
        self.producer.publish(self.topic(DEAD_LETTER), letter.SerializeToString(), key=record.key)
        metrics.DEAD_LETTERS.labels("trainer", record.topic, error_class).inc()

    def _update(self, consumer: Consumer) -> StepStats:
        batch, self._buffer = self._buffer, []
        stats = self.learner.step(batch)
        self.version += 1
        for rollout in batch:
            self._remember(rollout.rollout_id)
        out_dir, digest = self.learner.save(self.dir / f"policy-v{self.version}")
        entry = {
            **asdict(stats),
            "version": self.version,
            "time": time.time(),
            "by_outcome": _count(r.reward.outcome for r in batch),
            "by_mode": _count(pb.Mode.Name(r.mode) for r in batch),
        }
        self.history.append(entry)
        write_atomic(
            self.dir / STATE_FILE,
            json.dumps(
                {"version": self.version, "history": self.history, "consumed_ids": list(self.consumed)}
            ),
        )
        update = pb.PolicyUpdate(
            version=self.version,
            checkpoint_uri=str(out_dir.resolve()),
            kind="lora" if self.settings.lora else "full",
            base_model=self.settings.model_name,
            checkpoint_sha256=digest,
            learner_step=stats.step,
            created_unix_ms=int(time.time() * 1000),
        )
        self.producer.publish(self.topic(POLICY_UPDATES), update.SerializeToString(), key="policy")
        metrics.MESSAGES_PRODUCED.labels("trainer", self.topic(POLICY_UPDATES)).inc()
        self.producer.flush()
        polled, self._polled = self._polled, []
        try:
            consumer.commit(polled)
        except BusError as exc:  # the ids are saved, so a redelivery is skipped, not double counted
            log.warning(
                "commit after update failed; redelivered rollouts will be skipped", extra={"error": str(exc)}
            )
        metrics.TRAIN_STEP.labels("rl").set(stats.step)
        metrics.TRAIN_LOSS.labels("rl").set(stats.loss)
        metrics.TRAIN_MEAN_REWARD.set(stats.mean_reward)
        metrics.TRAIN_TOKENS_PER_SECOND.labels("rl").set(stats.tokens / max(stats.seconds, 1e-9))
        metrics.POLICY_VERSION.labels("trainer").set(self.version)
        self.last_stats = stats
        log.info(
            "policy updated",
            extra={
                "version": self.version,
                "mean_reward": round(stats.mean_reward, 4),
                "kl": round(stats.mean_kl, 5),
                "rollouts": stats.rollouts,
            },
        )
        return stats


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
    tokenizer = AutoTokenizer.from_pretrained(settings.model_name)
    config = ReinforcePPConfig(
        learning_rate=settings.learning_rate,
        kl_coef=settings.kl_coef,
        clip_eps=settings.clip_eps,
        baseline=settings.baseline,
        rollouts_per_update=settings.rollouts_per_update,
        micro_batch_size=settings.micro_batch_size,
        seed=settings.seed,
    )
    if settings.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        base = AutoModelForCausalLM.from_pretrained(settings.model_name, dtype=dtype).to(device)
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
            str(resume_from or settings.model_name), dtype=dtype
        ).to(device)
        reference = AutoModelForCausalLM.from_pretrained(settings.model_name, dtype=dtype).to(device)
    learner = Learner(policy, reference, tokenizer, config)
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
            rollouts_consumed=len(loop.consumed),
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
            base_model=loop.settings.model_name,
        )


class TrainerService(Service):
    name = "trainer"
    settings_cls = TrainerSettings

    def __init__(self, settings: TrainerSettings, bus: Bus, learner_factory=None):
        super().__init__(settings, bus)
        self.loop = LearnerLoop(settings, bus, learner_factory)

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
