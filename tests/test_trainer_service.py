"""The streaming REINFORCE++ learner: versions published, duplicates skipped, nothing counted twice
after a restart, bad messages dead-lettered."""

from __future__ import annotations

import threading

import pytest
import torch

from medec.prepare import read_medec_csv
from medserl.v1 import messages_pb2 as pb
from services.common import formats
from services.common.bus import MemoryBus
from services.common.topics import DEAD_LETTER, POLICY_UPDATES, ROLLOUTS_SCORED
from trainer.reinforce import sequence_logprobs
from trainer.service import LearnerLoop, TrainerSettings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, medec_path):
    from trainer.tiny_model import build_tiny_model, medec_texts

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), medec_texts(medec_path)[:200], seed=0)


def _scored_rollouts(tiny_dir, medec_path, n: int) -> list[pb.ScoredRollout]:
    """Rollouts from real MEDEC notes: injector prompt tokens + a rendered edit as the completion."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    all_notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    notes = [note for note in all_notes if not note.error_flag][: n // 2]
    out = []
    for i, note in enumerate(notes):
        sentences = list(note.sentences)[:6]
        for j, mode in enumerate(("paraphrase", "inject")):
            text = tokenizer.apply_chat_template(formats.injector_messages(sentences, mode), tokenize=False,
                                                 add_generation_prompt=True)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            edit = formats.InjectorEdit(sentences[-1][0], sentences[-1][1], "diagnosis" if mode == "inject" else None)
            completion = tokenizer(formats.render_injector_edit(edit), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([list(prompt) + completion])
            with torch.no_grad():
                logp = sequence_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt):].tolist()
            reward = 1.0 if (i + j) % 2 else -1.0
            out.append(pb.ScoredRollout(rollout=pb.Rollout(
                rollout_id=f"r-{note.note_id}-{mode}", seed_note_id=note.note_id, group_id=note.note_id,
                mode=pb.MODE_INJECT if mode == "inject" else pb.MODE_PARAPHRASE, prompt_token_ids=list(prompt),
                completion_token_ids=completion, behaviour_logprobs=logp,
                reward=pb.RewardParts(total=reward, game=reward, outcome="fooled" if reward > 0 else "caught"))))
    return out


def _settings(tiny_dir, tmp_path) -> TrainerSettings:
    return TrainerSettings(model_name=str(tiny_dir), checkpoint_dir=str(tmp_path / "rl"), lora=False,
                           rollouts_per_update=4, micro_batch_size=4, learning_rate=1e-3, poll_timeout_s=0.05,
                           max_batch=4)


def _read(bus: MemoryBus, topic: str, group: str) -> list:
    return bus.consumer([topic], group).poll(0.2, 1000)


def test_learner_publishes_versions_skips_duplicates_and_resumes_without_double_counting(tiny_dir, medec_path, tmp_path):
    bus = MemoryBus()
    producer = bus.producer()
    rollouts = _scored_rollouts(tiny_dir, medec_path, 8)
    assert len(rollouts) == 8
    for r in rollouts[:4] + rollouts[:2] + rollouts[4:]:  # two redeliveries in the middle
        producer.publish(ROLLOUTS_SCORED, r.SerializeToString(), key=r.rollout.rollout_id)
    producer.publish(ROLLOUTS_SCORED, b"\x08\x96\x01garbage\xff", key="bad")

    loop = LearnerLoop(_settings(tiny_dir, tmp_path), bus)
    consumer = bus.consumer([ROLLOUTS_SCORED], loop.group_id)
    for _ in range(20):
        loop.poll_once(consumer)
    consumer.close()
    assert loop.version == 2
    assert loop.duplicates == 2
    updates = [pb.PolicyUpdate.FromString(r.value) for r in _read(bus, POLICY_UPDATES, "check")]
    assert [u.version for u in updates] == [1, 2]
    assert all(u.kind == "full" and len(u.checkpoint_sha256) == 64 for u in updates)
    letters = [pb.DeadLetter.FromString(r.value) for r in _read(bus, DEAD_LETTER, "check")]
    assert len(letters) == 1 and letters[0].service == "trainer"

    from transformers import AutoModelForCausalLM

    v2 = AutoModelForCausalLM.from_pretrained(updates[-1].checkpoint_uri)
    v0 = AutoModelForCausalLM.from_pretrained(tiny_dir)
    moved = sum(float((a - b).abs().sum()) for a, b in zip(v2.parameters(), v0.parameters(), strict=True))
    assert moved > 0, "an update must change the weights"

    # a restarted learner resumes at version 2 and skips every rollout it already learned from
    for r in rollouts:
        producer.publish(ROLLOUTS_SCORED, r.SerializeToString(), key=r.rollout.rollout_id)
    resumed = LearnerLoop(_settings(tiny_dir, tmp_path), bus)
    assert resumed.version == 2
    consumer = bus.consumer([ROLLOUTS_SCORED], resumed.group_id)
    for _ in range(10):
        resumed.poll_once(consumer)
    assert resumed.version == 2 and resumed.duplicates == 8


def test_stop_mid_buffer_hands_rollouts_back(tiny_dir, medec_path, tmp_path):
    bus = MemoryBus()
    producer = bus.producer()
    for r in _scored_rollouts(tiny_dir, medec_path, 4)[:3]:  # fewer than one update's worth
        producer.publish(ROLLOUTS_SCORED, r.SerializeToString(), key=r.rollout.rollout_id)
    loop = LearnerLoop(_settings(tiny_dir, tmp_path), bus)
    stop = threading.Event()
    loop.start(stop)
    threading.Timer(1.0, stop.set).start()
    loop.join(30)
    assert loop.version == 0
    # nothing was committed: the next learner gets all three back
    again = bus.consumer([ROLLOUTS_SCORED], loop.group_id).poll(0.5, 100)
    assert len(again) == 3
