"""The streaming REINFORCE++ learner on rollout groups: versions published with the accounting the
injector's admission follows, every group disposed of exactly once (trained, duplicate, stale,
invalid, lost), nothing counted twice after a restart, bad messages dead-lettered."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from medec.prepare import read_medec_csv
from medserl.v1 import messages_pb2 as pb
from services.common import formats
from services.common.bus import MemoryBus
from services.common.settings import load_settings
from services.common.topics import (
    DEAD_LETTER,
    NOTES_SEED,
    POLICY_UPDATES,
    ROLLOUTS_GENERATED,
    ROLLOUTS_SCORED,
)
from services.inference import checkpoint_sha256
from tests.bus_fakes import PollFailingBus
from tests.rl_fakes import group, read_all, recording_factory, rollout, wait_for_update
from trainer.reinforce import ReinforcePPConfig, sequence_logprobs
from trainer.service import HISTORY_FILE, STATE_FILE, LearnerLoop, TrainerSettings

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


def _scored_groups(tiny_dir, medec_path, n: int, tag: str = "g") -> list[pb.RolloutGroup]:
    """Groups of 2 from real MEDEC notes: injector prompt tokens + two rendered edits as completions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    all_notes, _ = read_medec_csv(medec_path / VALIDATION)
    notes = [note for note in all_notes if not note.error_flag][:n]
    out = []
    for i, note in enumerate(notes):
        sentences = [(int(s), t) for s, t in note.sentences][:6]
        mode = "inject" if i % 2 else "paraphrase"
        text = tokenizer.apply_chat_template(formats.injector_messages(sentences, mode), tokenize=False,
                                             add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        gid = f"{note.note_id}~{tag}"
        g = pb.RolloutGroup(group_id=gid, seed_note_id=note.note_id, policy_version=0,
                            mode=pb.MODE_INJECT if mode == "inject" else pb.MODE_PARAPHRASE)
        for j, (sid, sentence) in enumerate((sentences[-1], sentences[0])):
            edit = formats.InjectorEdit(sid, sentence, "diagnosis" if mode == "inject" else None)
            completion = tokenizer(formats.render_injector_edit(edit), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([list(prompt) + completion])
            with torch.no_grad():
                logp = sequence_logprobs(model, ids, torch.ones_like(ids))[0][0, len(prompt):].tolist()
            reward = 1.0 if (i + j) % 2 else -1.0
            g.rollouts.append(pb.Rollout(
                rollout_id=f"{gid}-{j}", seed_note_id=note.note_id, group_id=gid, mode=g.mode, policy_version=0,
                prompt_token_ids=list(prompt), completion_token_ids=completion, behaviour_logprobs=logp,
                reward=pb.RewardParts(total=reward, game=reward, outcome="fooled" if reward > 0 else "caught")))
        out.append(g)
    return out


def _settings(tiny_dir, tmp_path, **overrides) -> TrainerSettings:
    values = dict(model=str(tiny_dir), checkpoint_dir=str(tmp_path / "rl"), lora=False, rollouts_per_update=4,
                  micro_batch_size=4, learning_rate=1e-3, poll_timeout_s=0.02, max_batch=1, metrics_port=-1,
                  starve_after_s=1e9)
    values.update(overrides)
    return TrainerSettings(**values)


def _publish(bus: MemoryBus, topic: str, messages) -> None:
    producer = bus.producer()
    for m in messages:
        value = m if isinstance(m, bytes) else m.SerializeToString()
        producer.publish(topic, value, key=m.group_id if isinstance(m, pb.RolloutGroup) else "x")


def test_settings_derive_the_reinforce_config_and_accept_the_old_model_name():
    settings = TrainerSettings(kl_estimator="k3", off_policy="icepop", lr_schedule="cosine", warmup_steps=3,
                               max_staleness=2, model="m")
    config = settings.reinforce_config()
    assert isinstance(config, ReinforcePPConfig) and config.validate()
    assert (config.kl_estimator, config.off_policy, config.lr_schedule, config.warmup_steps, config.max_staleness) == \
        ("k3", "icepop", "cosine", 3, 2)
    assert load_settings(TrainerSettings, overrides={"model_name": "old/name"}, env={}).model == "old/name"


def test_learner_publishes_versions_skips_duplicates_and_resumes_without_double_counting(tiny_model_dir, medec_path,
                                                                                        tmp_path):
    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED], partitions=1)  # arrival order = publish order
    groups = _scored_groups(tiny_model_dir, medec_path, 4)
    g0, g1, g2, g3 = groups
    _publish(bus, ROLLOUTS_SCORED, [g0, g1, g0, g2, g3])  # g0 redelivered in the middle
    _publish(bus, ROLLOUTS_SCORED, [b"\x08\x96\x01garbage\xff"])

    loop = LearnerLoop(_settings(tiny_model_dir, tmp_path), bus)
    consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], loop.group_id)
    for _ in range(12):
        loop.poll_once(consumer)
    consumer.close()
    assert loop.version == 2
    assert loop.fates == {"trained": 4, "duplicate": 1}
    updates = [u for u in read_all(bus, POLICY_UPDATES, "check", pb.PolicyUpdate) if u.checkpoint_uri]
    assert [u.version for u in updates] == [1, 2]
    assert [list(u.step_group_ids) for u in updates] == [[g0.group_id, g1.group_id], [g2.group_id, g3.group_id]]
    assert (updates[-1].groups_consumed, updates[-1].rollouts_consumed) == (5, 10), "the duplicate is consumed too"
    assert all(u.kind == "full" and u.base_model == str(tiny_model_dir) for u in updates)
    assert all(checkpoint_sha256(u.checkpoint_uri) == u.checkpoint_sha256 for u in updates)
    letters = [d for d in read_all(bus, DEAD_LETTER, "check", pb.DeadLetter) if d.service == "trainer"]
    assert len(letters) == 1 and "undecodable" in letters[0].reason

    history = [json.loads(line) for line in (Path(loop.dir) / HISTORY_FILE).read_text().splitlines()]
    assert [h["version"] for h in history] == [1, 2] and [h["staleness_max"] for h in history] == [0, 1]
    assert all(h["rollouts"] == 4 and h["groups"] == 2 and "fool_rate" in h and "is_ratio_max" in h for h in history)

    from transformers import AutoModelForCausalLM

    v2 = AutoModelForCausalLM.from_pretrained(updates[-1].checkpoint_uri)
    v0 = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(v2.parameters(), v0.parameters(), strict=True))
    assert moved > 0, "an update must change the weights"

    # a restarted learner announces v2 at once and skips every group it already learned from
    _publish(bus, ROLLOUTS_SCORED, groups)
    resumed = LearnerLoop(_settings(tiny_model_dir, tmp_path), bus)
    assert resumed.version == 2 and resumed.groups_consumed == 5
    resumed.announce()
    announced = read_all(bus, POLICY_UPDATES, "check-2", pb.PolicyUpdate)[-1]
    assert announced.version == 2 and announced.checkpoint_uri == updates[-1].checkpoint_uri
    assert announced.checkpoint_sha256 == updates[-1].checkpoint_sha256 and announced.groups_consumed == 5
    consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], resumed.group_id)
    for _ in range(10):
        resumed.poll_once(consumer)
    consumer.close()
    assert resumed.version == 2 and resumed.fates == {"trained": 4, "duplicate": 5}


def test_lora_policy_versions_are_adapters_and_resume(tiny_model_dir, medec_path, tmp_path):
    bus = MemoryBus()
    settings = _settings(tiny_model_dir, tmp_path, lora=True, lora_r=4, lora_alpha=8)
    _publish(bus, ROLLOUTS_SCORED, _scored_groups(tiny_model_dir, medec_path, 2, tag="lora"))
    loop = LearnerLoop(settings, bus)
    assert loop.learner.is_lora and loop.learner.base_lr == settings.lora_learning_rate
    consumer = bus.consumer([ROLLOUTS_SCORED], loop.group_id)
    for _ in range(4):
        loop.poll_once(consumer)
    assert loop.version == 1
    (update,) = [u for u in read_all(bus, POLICY_UPDATES, "check", pb.PolicyUpdate) if u.checkpoint_uri]
    assert update.kind == "lora" and (Path(update.checkpoint_uri) / "adapter_config.json").exists()
    resumed = LearnerLoop(settings, bus)
    assert resumed.version == 1 and resumed.learner.is_lora and resumed.learner.step_count == 1


def _tiny_group(gid: str, version: int = 0, rewards=(1.0, -1.0)) -> pb.RolloutGroup:
    """A scored group the recording learner can train on (token ids below its vocabulary)."""
    seed = pb.Note(note_id=gid.split("~")[0], text="A note.")
    rollouts = [rollout(gid, i, pb.MODE_INJECT) for i in range(len(rewards))]
    for r, total in zip(rollouts, rewards, strict=True):
        r.reward.CopyFrom(pb.RewardParts(total=total, game=total, outcome="fooled" if total > 0 else "caught"))
    return group(gid, pb.MODE_INJECT, seed, rollouts, version=version)


def test_stop_mid_buffer_hands_the_groups_back(tmp_path):
    bus = MemoryBus()
    _publish(bus, ROLLOUTS_SCORED, [_tiny_group(f"n{i}~s") for i in range(3)])  # 6 of 8 rollouts
    holder: list = []
    loop = LearnerLoop(_settings("tiny", tmp_path, rollouts_per_update=8), bus, recording_factory(holder))
    three_prepared = threading.Event()
    prepare = holder[0].prepare
    prepared: list[str] = []

    def counting_prepare(g):
        out = prepare(g)
        prepared.append(g.group_id)
        if len(prepared) == 3:
            three_prepared.set()
        return out

    holder[0].prepare = counting_prepare
    stop = threading.Event()
    loop.start(stop)
    assert three_prepared.wait(60), "the learner never buffered the three groups"
    stop.set()
    loop.join(60)
    assert loop.error is None and loop.version == 0 and loop.buffered_rollouts == 6
    # nothing was committed: the next learner gets all three back
    again = bus.consumer([ROLLOUTS_SCORED], loop.group_id).poll(0.5, 100)
    assert sorted(pb.RolloutGroup.FromString(r.value).group_id for r in again) == ["n0~s", "n1~s", "n2~s"]


def test_every_group_is_disposed_of_once_and_the_accounting_says_so(tmp_path):
    """stale, invalid, lost (dead-lettered upstream, decodable or not), duplicate of a lost group,
    a starving learner's request, and the announcement of a resumed version."""
    rl = tmp_path / "rl"
    rl.mkdir()
    (rl / STATE_FILE).write_text(json.dumps({"version": 5, "groups_consumed": 7, "rollouts_consumed": 14,
                                             "fates": {"trained": 7}, "consumed_group_ids": ["old~1"]}))
    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED, DEAD_LETTER], partitions=1)
    holder: list = []
    loop = LearnerLoop(_settings("tiny", tmp_path, max_staleness=1, accounting_interval_s=0.0), bus,
                       recording_factory(holder))
    assert loop.version == 5 and loop.groups_consumed == 7
    loop.announce()

    no_reward = _tiny_group("bad~1", version=5)
    no_reward.rollouts[1].ClearField("reward")
    lost = _tiny_group("lost~1", version=5, rewards=(1.0, 1.0, 1.0))
    _publish(bus, ROLLOUTS_SCORED, [_tiny_group("stale~1", version=3), no_reward, _tiny_group("fresh~1", version=4)])

    def letter(payload: bytes, source: str, service: str, offset: int = 0) -> pb.DeadLetter:
        return pb.DeadLetter(source_topic=source, source_offset=offset, payload=payload, reason="rejected",
                             service=service)

    _publish(bus, DEAD_LETTER, [
        letter(lost.SerializeToString(), "rollouts.verified", "assessor"),
        letter(b"\xff\xff\xff", ROLLOUTS_GENERATED, "verifier", offset=41),  # poison: keyed by its offset
        letter(lost.SerializeToString(), ROLLOUTS_GENERATED, "verifier"),  # a redelivered copy of lost~1
        letter(pb.Note(note_id="x").SerializeToString(), NOTES_SEED, "injector"),  # never took a slot
        # as the stream worker writes it by default: no payload (no note text), keyed by the group id
        pb.DeadLetter(source_topic="rollouts.verified", source_offset=3, key=b"lost~2", reason="rejected",
                      service="assessor"),
    ])
    consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], loop.group_id)
    for _ in range(12):
        loop.poll_once(consumer)

    assert loop.fates == {"trained": 7, "stale": 1, "invalid": 1, "lost": 3, "duplicate": 1}
    bus.ensure_topics(["another.topic"])  # a rebalance: everything uncommitted is delivered again
    for _ in range(12):
        loop.poll_once(consumer)
    assert loop.fates == {"trained": 7, "stale": 1, "invalid": 1, "lost": 3, "duplicate": 1}, \
        "a message delivered again is no new copy: nothing counted twice"
    assert loop.buffered_rollouts == 2, "fresh~1 (one version behind) waits for a full batch"
    assert (loop.groups_consumed, loop.rollouts_consumed) == (7 + 6, 14 + 2 + 2 + 3 + 0 + 3 + 0)
    updates = read_all(bus, POLICY_UPDATES, "acct", pb.PolicyUpdate)
    assert updates[0].version == 5 and updates[0].groups_consumed == 7, "announced on start"
    assert updates[-1].version == 5 and updates[-1].groups_consumed == 13 and not updates[-1].rollouts_wanted
    letters = [d for d in read_all(bus, DEAD_LETTER, "dl", pb.DeadLetter) if d.service == "trainer"]
    assert len(letters) == 1 and "no reward" in letters[0].reason and letters[0].error_class == "InvalidInput"

    # starving (no input for starve_after_s): the learner asks for what its batch still lacks
    loop.settings.starve_after_s = 0.0
    loop.poll_once(consumer)
    wanted = read_all(bus, POLICY_UPDATES, "acct-2", pb.PolicyUpdate)[-1]
    assert wanted.rollouts_wanted == 4 - 2 and wanted.groups_consumed == 13 and wanted.version == 5
    assert holder[0].steps == [] and loop.version == 5


@pytest.mark.parametrize(("last_sampled_by", "kept"), [(3, [3, 4]), (2, [2, 3, 4])])
def test_checkpoints_kept_are_the_newest_plus_any_still_sampling(tmp_path, last_sampled_by, kept):
    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED], partitions=1)
    loop = LearnerLoop(_settings("tiny", tmp_path, rollouts_per_update=2, keep_versions=2, max_staleness=10),
                       bus, recording_factory([]))
    consumer = bus.consumer([ROLLOUTS_SCORED], loop.group_id)
    for i, version in enumerate((0, 1, 2, last_sampled_by)):  # one group (one version) per step
        _publish(bus, ROLLOUTS_SCORED, [_tiny_group(f"k{i}~r", version=version)])
        loop.poll_once(consumer)
    assert loop.version == 4
    assert sorted(int(p.name.removeprefix("policy-v")) for p in Path(loop.dir).glob("policy-v*")) == kept


def test_a_broker_away_mid_batch_neither_stops_the_learner_nor_loses_or_repeats_a_group(tmp_path):
    bus = PollFailingBus()
    holder: list = []
    loop = LearnerLoop(_settings("tiny", tmp_path, rollouts_per_update=8), bus, recording_factory(holder))
    three_prepared = threading.Event()
    prepare = holder[0].prepare

    def counting_prepare(g):
        out = prepare(g)
        if len(loop._buffer) + 1 == 3:
            three_prepared.set()
        return out

    holder[0].prepare = counting_prepare
    stop = threading.Event()
    loop.start(stop)
    _publish(bus, ROLLOUTS_SCORED, [_tiny_group(f"n{i}~s") for i in range(3)])  # 6 of 8 rollouts: part-filled
    assert three_prepared.wait(60)
    bus.fail_polls(3)  # the broker goes away with the batch in hand; back after three failed polls
    assert bus.recovered.wait(60), "the learner stopped polling"
    _publish(bus, ROLLOUTS_SCORED, [_tiny_group(f"n{i}~s") for i in range(3, 5)])  # fills the step, 2 left
    update = wait_for_update(bus, "check", lambda u: u.version == 1, timeout_s=120)
    stop.set()
    loop.join(60)
    assert loop.error is None, "a bus failure must not stop the learner"
    assert bus.failed_polls == 3
    trained = holder[0].trained_group_ids
    assert sorted(trained) == ["n0~s", "n1~s", "n2~s", "n3~s"], "the batch in hand was kept, nothing twice"
    assert sorted(update.step_group_ids) == sorted(trained)
