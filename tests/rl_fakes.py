"""Test doubles for the RL data plane: a scripted assessor detector, a scripted injector backend, a
recording REINFORCE++ learner on a tiny in-memory Qwen3, and helpers that build rollout groups."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from medserl.v1 import messages_pb2 as pb
from services.assessor.detector import Detection, Detector
from services.common import formats
from services.common.bus import Bus
from services.common.topics import POLICY_UPDATES
from services.inference import Completion, GenerationParams, InferenceBackend
from trainer.reinforce import Learner, PreparedGroup, ReinforcePPConfig, StepStats

Sentences = list[tuple[int, str]]
VOCAB = 32  # the tiny policy's vocabulary: every token id in these tests is below it


def note(note_id: str, sentences: Sentences) -> pb.Note:
    return pb.Note(note_id=note_id, sentences=[pb.Sentence(id=int(i), text=t) for i, t in sentences])


def edited(sentences: Sentences, changes: dict[int, str]) -> Sentences:
    return [(i, changes.get(i, t)) for i, t in sentences]


def rollout(group_id: str, index: int, mode: int, *, modified: Sentences | None = None, changed: int = -1,
            error_type: str = "", parse_error: str = "", version: int = 0,
            completion: Sequence[int] = (7, 8, 9), logprobs: Sequence[float] | None = None) -> pb.Rollout:
    """One rollout as the injector writes it (no verification, verdict or reward yet)."""
    rid = f"{group_id}-{index}"
    out = pb.Rollout(rollout_id=rid, group_id=group_id, mode=mode,
                     policy_version=version, prompt_token_ids=[1, 2, 3, 4 + index % 3],
                     completion_token_ids=list(completion),
                     behaviour_logprobs=list(logprobs) if logprobs is not None else [-1.0] * len(completion),
                     changed_sentence_id=changed if modified is not None else -1, claimed_error_type=error_type,
                     completion_text="scripted", parse_error=parse_error)
    if modified is not None:
        out.modified_note.CopyFrom(note(rid, modified))
    return out


def group(group_id: str, mode: int, seed: pb.Note, rollouts: Sequence[pb.Rollout], version: int = 0) -> pb.RolloutGroup:
    out = pb.RolloutGroup(group_id=group_id, seed_note_id=seed.note_id, mode=mode, policy_version=version,
                          rollouts=list(rollouts), created_unix_ms=int(time.time() * 1000))
    out.seed_note.CopyFrom(seed)
    for r in out.rollouts:
        r.seed_note_id = seed.note_id
        r.policy_version = version
    return out


# ------------------------------------------------------------------------------------------------
# the assessor's detector, scripted by the note it is shown
# ------------------------------------------------------------------------------------------------

Answer = formats.AssessorOutput | formats.ParseFailure
GARBAGE = formats.ParseFailure("no error_flag line", "lorem ipsum")


class ScriptedDetector(Detector):
    """Answers by the note's sentences: ``script[tuple(sentences)]`` is the list of answers for the
    first, second, ... judgement of that note (the last one repeats). Unknown notes: "no error"."""

    name = "scripted"

    def __init__(self, script: dict[tuple, list[Answer]] | None = None):
        self.script = dict(script or {})
        self.calls: list[list[tuple[int, str]]] = []
        self._seen: dict[tuple, int] = {}
        self._lock = threading.Lock()

    @property
    def checkpoint_hash(self) -> str:
        return "scripted"

    def detect(self, notes):
        out = []
        with self._lock:
            for sentences in notes:
                key = tuple((int(i), t) for i, t in sentences)
                self.calls.append(list(key))
                answers = self.script.get(key, [formats.AssessorOutput(False, -1, None)])
                n = self._seen.get(key, 0)
                self._seen[key] = n + 1
                answer = answers[min(n, len(answers) - 1)]
                flag = isinstance(answer, formats.AssessorOutput) and answer.error_flag
                text = formats.render_assessor_output(answer) if isinstance(answer, formats.AssessorOutput) else answer.raw
                out.append(Detection(answer, 1.0 if flag else 0.0, text, 0, 0.0))
        return out


# ------------------------------------------------------------------------------------------------
# the injector's backend, scripted
# ------------------------------------------------------------------------------------------------


class ScriptedBackend(InferenceBackend):
    """Completion j of every prompt: j even -> garbage (unparseable), j odd -> an edit of sentence 0
    (which the verifier judges). Token ids are tiny (below VOCAB); policy loads are recorded."""

    name = "scripted"

    def __init__(self):
        self.loaded: list[tuple[int, str]] = []
        self.prompts = 0

    def generate(self, prompts, params: GenerationParams) -> list[Completion]:
        out = []
        for i, _ in enumerate(prompts):
            self.prompts += 1
            for j in range(params.n):
                if j % 2:
                    text = formats.render_injector_edit(formats.InjectorEdit(0, "Edited by the policy.", None, "x"))
                else:
                    text = "lorem ipsum"
                out.append(Completion(prompt_index=i, prompt_token_ids=[1, 2, 3, 4], token_ids=[5 + j % 20, 6, 7],
                                      logprobs=[-0.5, -1.0, -1.5], text=text, finish_reason="stop"))
        return out

    def load_policy(self, version: int, checkpoint_uri: str, kind: str = "lora") -> None:
        self.loaded.append((version, checkpoint_uri))


# ------------------------------------------------------------------------------------------------
# a real REINFORCE++ learner on a tiny random Qwen3, recording what it trains on
# ------------------------------------------------------------------------------------------------


class TinyTokenizer:
    pad_token_id = 0

    def save_pretrained(self, out_dir) -> None:
        Path(out_dir, "tokenizer_config.json").write_text("{}")


def tiny_policy(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    return Qwen3ForCausalLM(config)


class RecordingLearner(Learner):
    """The real Learner; every step's groups (and their group-centred rewards) are recorded."""

    def __init__(self, config: ReinforcePPConfig, on_step: Callable[[StepStats], None] | None = None):
        policy, reference = tiny_policy(), tiny_policy()
        reference.load_state_dict(policy.state_dict())
        super().__init__(policy, reference, TinyTokenizer(), config)
        self.steps: list[list[pb.RolloutGroup]] = []
        self.centred: list[dict[str, float]] = []
        self.on_step = on_step

    def step(self, prepared: Sequence[PreparedGroup]) -> StepStats:
        from trainer.reinforce import collate, group_centred

        stats = super().step(prepared)
        rollouts = [r for p in prepared for r in p.group.rollouts]
        batch = collate(rollouts, 0)
        centred = group_centred(batch.rewards, batch.groups, batch.included)
        self.steps.append([p.group for p in prepared])
        self.centred.append({r.rollout_id: float(c) for r, c in zip(rollouts, centred, strict=True)})
        if self.on_step is not None:
            self.on_step(stats)
        return stats

    @property
    def trained_group_ids(self) -> list[str]:
        return [g.group_id for step in self.steps for g in step]


def recording_factory(holder: list) -> Callable:
    """A ``learner_factory`` for LearnerLoop that keeps the learner it builds in ``holder``."""

    def build(settings, _resume_from):
        learner = RecordingLearner(settings.reinforce_config())
        holder.append(learner)
        return learner

    return build


# ------------------------------------------------------------------------------------------------
# waiting on the bus (a blocking poll wakes on publish: no sleeps)
# ------------------------------------------------------------------------------------------------


def wait_for_update(bus: Bus, consumer_group: str, done: Callable[[pb.PolicyUpdate], bool],
                    timeout_s: float = 240.0, topic: str = POLICY_UPDATES) -> pb.PolicyUpdate:
    """Read policy.updates until an update satisfies ``done``; fail (not hang) after ``timeout_s``."""
    consumer = bus.consumer([topic], consumer_group)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for record in consumer.poll(min(1.0, max(0.01, deadline - time.monotonic())), 1000):
                update = pb.PolicyUpdate.FromString(record.value)
                if done(update):
                    return update
    finally:
        consumer.close()
    raise AssertionError(f"no matching policy update on {topic} within {timeout_s}s")


def read_all(bus: Bus, topic: str, consumer_group: str, message_type) -> list:
    """Everything on ``topic`` so far (a fresh consumer group reads from the start)."""
    consumer = bus.consumer([topic], consumer_group)
    out = []
    try:
        while True:
            records = consumer.poll(0.05, 1000)
            if not records:
                return out
            out.extend(message_type.FromString(r.value) for r in records)
    finally:
        consumer.close()
