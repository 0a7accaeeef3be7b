"""Hostile messages on the bus (issue 12): every attack is made to happen on a real topic and the
service answers with a bounded dead letter that says why, then goes on.

Poison (garbage, oversized, wrong type, a message that crashes its handler), forged rewards on
rollouts.scored, token ids outside the vocabulary, forged / replayed / hash-mismatched policy updates.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from medserl.v1 import messages_pb2 as pb
from services.common.auth import HEADER_SIGNATURE, secure_bus
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.common.settings import ServiceSettings
from services.common.topics import (
    DEAD_LETTER,
    NOTES_SEED,
    POLICY_UPDATES,
    ROLLOUTS_GENERATED,
    ROLLOUTS_SCORED,
)
from services.common.worker import StreamWorker, per_message
from services.inference import checkpoint_sha256
from services.injector.service import InjectorService, InjectorSettings
from services.verifier.service import VerifierService, VerifierSettings
from tests.rl_fakes import VOCAB, ScriptedBackend, read_all, recording_factory
from trainer.service import LearnerLoop, TrainerSettings

COMMON = dict(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1, poll_timeout_s=0.05)
LIMIT = 1_000_000  # the default max_message_bytes (the Kafka producer's limit)


def letters_from(bus, service: str, group: str) -> list[pb.DeadLetter]:
    return [d for d in read_all(bus, DEAD_LETTER, group, pb.DeadLetter) if d.service == service]


def drain(worker: StreamWorker, rounds: int = 20) -> None:
    for _ in range(rounds):
        if worker.run_once() == 0:
            return


def valid_group(gid: str, completion: str = "garbage") -> pb.RolloutGroup:
    text = "She has a cough."
    seed = pb.Note(note_id=gid, text=text, sentences=[pb.Sentence(id=0, text=text)])
    group = pb.RolloutGroup(group_id=f"{gid}~0", seed_note_id=gid, mode=pb.MODE_PARAPHRASE, seed_note=seed)
    group.rollouts.append(pb.Rollout(rollout_id=f"{gid}~0-0", group_id=f"{gid}~0", seed_note_id=gid,
                                     mode=pb.MODE_PARAPHRASE, completion_token_ids=[1, 2],
                                     behaviour_logprobs=[-0.5, -0.5], completion_text=completion,
                                     parse_error="unparseable", changed_sentence_id=-1))
    return group


# --------------------------------------------------------------------------------------------
# poison on a real topic: the verifier (rollouts.generated) dead-letters it, bounded, and goes on


def test_garbage_oversized_and_wrong_type_messages_become_bounded_dead_letters_and_the_verifier_goes_on():
    bus = MemoryBus()
    runtime = ServiceRuntime(VerifierService(VerifierSettings(**COMMON), bus)).start()
    rng = random.Random(12)
    producer = bus.producer()
    try:
        cases = {
            "garbage-2mb": rng.randbytes(2_000_000),  # over the limit: never decoded
            "truncated": valid_group("t").SerializeToString()[:-7],
            "invalid-utf8": b"\x0a\x04\xff\xfe\xfd\xfc",  # group_id with bytes that are not UTF-8
            "wrong-type": pb.PolicyUpdate(version=7, checkpoint_uri="/x", groups_consumed=3).SerializeToString(),
            "near-limit": valid_group("big", "x" * (LIMIT - 2000)).SerializeToString(),  # its output outgrows it
        }
        for key, value in cases.items():
            producer.publish(ROLLOUTS_GENERATED, value, key=key)
        producer.publish(ROLLOUTS_GENERATED, valid_group("after").SerializeToString(), key="after")
        deadline = time.monotonic() + 60
        forwarded = []
        consumer = bus.consumer(["rollouts.verified"], "check")
        while not forwarded and time.monotonic() < deadline:
            forwarded = [pb.RolloutGroup.FromString(r.value) for r in consumer.poll(0.5, 10)]
        letters = {d.key.decode(): d for d in letters_from(bus, "verifier", "dl")}
        assert not runtime.failed, "the worker is alive"
    finally:
        runtime.shutdown()
    assert [g.group_id for g in forwarded] == ["after~0"], "the valid message after the poison went through"
    assert set(letters) == set(cases)
    expected = {"garbage-2mb": "TooLarge", "truncated": "DecodeError", "invalid-utf8": "DecodeError",
                "wrong-type": "WrongType", "near-limit": "OutputTooLarge"}
    for key, error_class in expected.items():
        letter = letters[key]
        assert letter.error_class == error_class and letter.reason, key
        assert letter.ByteSize() < LIMIT, f"{key}: the dead letter itself fits the producer's limit"
    assert "over the limit" in letters["garbage-2mb"].reason and len(letters["garbage-2mb"].payload) <= 262_144
    assert "payload 2000000 bytes" in letters["garbage-2mb"].reason
    assert "over the producer limit" in letters["near-limit"].reason


def test_a_message_that_crashes_its_handler_is_dead_lettered_as_poison_after_max_deliveries(tmp_path):
    """A handler that takes the process down (a BaseException escaping the worker, like a segfault or
    an OOM kill) would crash-loop the service forever: the delivery count survives the restarts in
    ``delivery_state_dir``, the batch is retried one record at a time, and the culprit alone ends up
    as a Poison dead letter while the good messages of its batch are handled."""

    class Crash(BaseException):
        pass

    handled: list[str] = []

    def handle(note: pb.Note):
        if note.note_id == "poison":
            raise Crash("the process dies")
        handled.append(note.note_id)
        return []

    bus = MemoryBus()
    bus.ensure_topics([NOTES_SEED], partitions=1)
    producer = bus.producer()
    for nid in ("a", "poison", "b"):
        producer.publish(NOTES_SEED, pb.Note(note_id=nid, text="x").SerializeToString(), key=nid)
    settings = ServiceSettings(delivery_state_dir=str(tmp_path / "state"), max_deliveries=3)
    restarts = 0
    while True:
        worker = StreamWorker(service="victim", bus=bus, topics=[NOTES_SEED], group_id="victim",
                              message_type=pb.Note, handler=per_message(handle))
        worker.configure(settings)
        try:
            drain(worker)
            break
        except Crash:
            restarts += 1
            worker._drop_consumer()  # the process is gone: its group membership ends
            assert restarts <= 5, "poison detection must end the crash loop"
    (letter,) = letters_from(bus, "victim", "dl")
    assert letter.error_class == "Poison" and letter.key == b"poison" and "3 times" in letter.reason
    assert restarts == 3
    assert {"a", "b"} <= set(handled) and "poison" not in handled


def test_a_failure_outside_the_handler_does_not_stop_the_worker():
    """Anything raised while a batch is processed (here: the id function) hands the batch back; the
    worker keeps running and the record is eventually dead-lettered as poison."""
    bus = MemoryBus()
    bus.ensure_topics([NOTES_SEED], partitions=1)
    producer = bus.producer()
    for nid in ("a", "boom", "b"):
        producer.publish(NOTES_SEED, pb.Note(note_id=nid).SerializeToString(), key=nid)

    def message_id(note: pb.Note) -> str:
        if note.note_id == "boom":
            raise ValueError("no id for you")
        return note.note_id

    done: list[str] = []
    worker = StreamWorker(service="sturdy", bus=bus, topics=[NOTES_SEED], group_id="sturdy", message_type=pb.Note,
                          handler=per_message(lambda n: done.append(n.note_id) or []), message_id=message_id,
                          poll_timeout_s=0.01)
    for _ in range(12):
        worker.run_once()
    (letter,) = letters_from(bus, "sturdy", "dl")
    assert letter.error_class == "Poison" and letter.key == b"boom"
    assert {"a", "b"} <= set(done) and worker.error is None


# --------------------------------------------------------------------------------------------
# the learner: forged rewards, token ids outside the vocabulary, NaN never reach an optimizer step


def _keys(tmp_path, *services: str, wrong: str = "", name: str = "keys") -> str:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for name in services:
        (folder / f"{name}.key").write_text(f"{name}-secret-key-{'x' * 24}\n")
    if wrong:
        (folder / f"{wrong}.key").write_text("an-attackers-guess-of-the-key-0000\n")
    return str(folder)


def scored_group(gid: str, completion=(10, 11, 12), reward: float = 1.0) -> pb.RolloutGroup:
    group = pb.RolloutGroup(group_id=gid, seed_note_id=gid, mode=pb.MODE_INJECT, policy_version=0)
    for i, r in enumerate((reward, -reward)):
        group.rollouts.append(pb.Rollout(rollout_id=f"{gid}-{i}", group_id=gid, seed_note_id=gid, mode=pb.MODE_INJECT,
                                         prompt_token_ids=[3, 4, 5], completion_token_ids=list(completion),
                                         behaviour_logprobs=[-1.0] * len(completion),
                                         reward=pb.RewardParts(total=r, game=r, outcome="fooled" if r > 0 else "caught")))
    return group


def test_the_learner_trains_only_on_groups_the_assessor_signed(tmp_path):
    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED, DEAD_LETTER], partitions=1)
    keys = _keys(tmp_path, "assessor", "trainer")
    settings = TrainerSettings(model="tiny", checkpoint_dir=str(tmp_path / "rl"), lora=False, rollouts_per_update=4,
                               poll_timeout_s=0.01, max_batch=1, accounting_interval_s=0.0, starve_after_s=1e9,
                               metrics_port=-1, message_keys_dir=keys)
    holder: list = []
    loop = LearnerLoop(settings, secure_bus(bus, "trainer", settings), learner_factory=recording_factory(holder))
    assessor = secure_bus(bus, "assessor", replace(settings, message_keys_dir=keys)).producer()
    injector = secure_bus(bus, "injector", replace(settings, message_keys_dir=_keys(tmp_path, "injector",
                                                                                  name="other"))).producer()
    forger = secure_bus(bus, "assessor", replace(settings, message_keys_dir=_keys(tmp_path, wrong="assessor", name="forger")))
    raw = bus.producer()

    raw.publish(ROLLOUTS_SCORED, scored_group("unsigned", reward=50.0).SerializeToString(), key="unsigned")
    forger.producer().publish(ROLLOUTS_SCORED, scored_group("forged", reward=50.0).SerializeToString(), key="forged")
    injector.publish(ROLLOUTS_SCORED, scored_group("not-the-assessor").SerializeToString(), key="not-the-assessor")
    good = scored_group("good-1")
    assessor.publish(ROLLOUTS_SCORED, good.SerializeToString(), key="good-1")
    # a signature does not survive a change of the payload (a forged reward on a signed group)
    tampered_from = scored_group("tampered")
    captured = MemoryBus()
    secure_bus(captured, "assessor", replace(settings, message_keys_dir=keys)).producer().publish(
        ROLLOUTS_SCORED, tampered_from.SerializeToString(), key="tampered")
    record_headers = captured.consumer([ROLLOUTS_SCORED], "c").poll(1, 10)[0].headers
    tampered_from.rollouts[1].reward.total = 99.0
    raw.publish(ROLLOUTS_SCORED, tampered_from.SerializeToString(), key="tampered", headers=record_headers)
    assert any(name == HEADER_SIGNATURE for name, _ in record_headers)

    consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], loop.group_id)
    for _ in range(8):
        loop.poll_once(consumer)
    letters = {d.key.decode(): d for d in letters_from(bus, "trainer", "dl")}
    assert set(letters) == {"unsigned", "forged", "not-the-assessor", "tampered"}
    assert all(d.error_class == "Unauthenticated" for d in letters.values())
    assert "unsigned" in letters["unsigned"].reason and "bad signature" in letters["forged"].reason
    assert "does not write this topic" in letters["not-the-assessor"].reason
    assert "bad signature" in letters["tampered"].reason
    assert loop.fates == {}, "refused groups are not disposed of: they took no slot and keep no id"
    assert [p.group.group_id for p in loop._buffer] == ["good-1"]
    assert REGISTRY.get_sample_value("medserl_auth_refused_total",
                                     {"service": "trainer", "channel": "bus", "reason": "signature"}) >= 2

    good2 = scored_group("good-2")
    assessor.publish(ROLLOUTS_SCORED, good2.SerializeToString(), key="good-2")
    for _ in range(2):
        loop.poll_once(consumer)
    assert holder[0].trained_group_ids == ["good-1", "good-2"], "one step, on signed groups only"


def test_token_ids_outside_the_vocabulary_and_absurd_rewards_never_reach_a_step(tmp_path):
    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED, DEAD_LETTER], partitions=1)
    settings = TrainerSettings(model="tiny", checkpoint_dir=str(tmp_path / "rl"), lora=False, rollouts_per_update=4,
                               poll_timeout_s=0.01, max_batch=1, accounting_interval_s=0.0, starve_after_s=1e9,
                               metrics_port=-1)
    holder: list = []
    loop = LearnerLoop(settings, bus, learner_factory=recording_factory(holder))
    assert loop.vocab_size == VOCAB
    producer = bus.producer()
    hostile = {
        "huge-id": scored_group("huge-id", completion=(10, 1_000_000_000, 12)),
        "negative-id": scored_group("negative-id", completion=(10, -5, 12)),
        "at-vocab": scored_group("at-vocab", completion=(10, VOCAB, 12)),
        "huge-reward": scored_group("huge-reward", reward=1e30),
        "nan-reward": scored_group("nan-reward", reward=math.nan),
        "long-id": scored_group("x" * 1000),
        "oversized": scored_group("y" * 600_000),  # 2.4 MB: over max_message_bytes, never decoded
    }
    hostile["positive-logprob"] = scored_group("positive-logprob")
    hostile["positive-logprob"].rollouts[0].behaviour_logprobs[0] = 3.0
    for key, group in hostile.items():
        producer.publish(ROLLOUTS_SCORED, group.SerializeToString(), key=key[:50])
    big_key = scored_group("big-key", completion=(10, VOCAB + 1, 12))
    producer.publish(ROLLOUTS_SCORED, big_key.SerializeToString(), key="k" * 300_000)  # the dead letter's key is cut
    for gid in ("ok-1", "ok-2"):
        producer.publish(ROLLOUTS_SCORED, scored_group(gid).SerializeToString(), key=gid)
    consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], loop.group_id)
    for _ in range(40):  # max_batch=1, and the loop also reads the dead letters it writes
        loop.poll_once(consumer)
    letters = {d.key.decode(): d for d in letters_from(bus, "trainer", "dl")}
    assert loop.error is None
    for key in ("huge-id", "negative-id", "at-vocab"):
        assert letters[key].error_class == "InvalidInput" and "outside the vocabulary" in letters[key].reason
    assert "beyond" in letters["huge-reward"].reason and "positive" in letters["positive-logprob"].reason
    assert letters["nan-reward"].error_class == "NonFinite", "non-finite values are the learner's quarantine"
    assert "characters (limit" in letters["long-id"].reason
    assert letters["oversized"].error_class == "TooLarge" and letters["oversized"].ByteSize() < LIMIT
    assert "outside the vocabulary" in letters["k" * 512].reason
    assert holder[0].trained_group_ids == ["ok-1", "ok-2"]
    assert all(math.isfinite(float(p.detach().sum())) for p in holder[0].policy.parameters())
    assert all(len(gid) <= 256 for gid in loop._remembered), "an over-long id is never remembered"


# --------------------------------------------------------------------------------------------
# the injector: forged, replayed and hash-mismatched policy updates


def injector_settings(**overrides) -> InjectorSettings:
    return InjectorSettings(**{**COMMON, "model": "scripted", "group_size": 2, "learner_batch_rollouts": 4,
                               "max_staleness": 1, **overrides})


def _adapter(tmp_path, name: str):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(name.encode() * 100)
    return folder


def _updates_worker(service: InjectorService) -> StreamWorker:
    return next(w for w in service.workers() if POLICY_UPDATES in w.topics)


def test_forged_replayed_and_hash_mismatched_updates_are_refused_and_the_version_kept(tmp_path):
    bus = MemoryBus()
    settings = injector_settings()
    service = InjectorService(settings, bus, backend=ScriptedBackend())
    bus.ensure_topics(list(service.topics()))
    worker = _updates_worker(service)
    producer = bus.producer()
    real = _adapter(tmp_path, "real")
    evil = _adapter(tmp_path, "evil")
    refused_before = REGISTRY.get_sample_value("medserl_policy_updates_refused_total", {"reason": "forged"}) or 0

    # a forged version far past the learner, pointing at the attacker's adapter with ITS OWN hash
    forged = pb.PolicyUpdate(version=1_000_000_000_001, checkpoint_uri=str(evil), kind="lora",
                             checkpoint_sha256=checkpoint_sha256(evil), groups_consumed=10**12, rollouts_wanted=10**9)
    producer.publish(POLICY_UPDATES, forged.SerializeToString(), key="policy")
    # the attacker's files under the real update's version and hash: the hash does not match
    mismatch = pb.PolicyUpdate(version=1, checkpoint_uri=str(evil), kind="lora", checkpoint_sha256=checkpoint_sha256(real))
    producer.publish(POLICY_UPDATES, mismatch.SerializeToString(), key="policy")
    drain(worker)
    assert service.policy.version == 0 and service.backend.loaded == []
    assert service.policy.learner_version == 1, "the forged version did not move the learner's sequence"
    assert service.policy.groups_consumed == 0 and service.policy.credit <= service.policy.window
    letters = letters_from(bus, "injector", "dl1")
    assert any("jumps more than max_version_jump" in d.reason for d in letters)
    assert any("do not match its checkpoint_sha256" in d.reason for d in letters)
    assert REGISTRY.get_sample_value("medserl_policy_updates_refused_total", {"reason": "forged"}) > refused_before

    # the real learner's next version is loaded (it is not masked by the forged one)
    producer.publish(POLICY_UPDATES, pb.PolicyUpdate(version=2, checkpoint_uri=str(real), kind="lora",
                                                     checkpoint_sha256=checkpoint_sha256(real)).SerializeToString(),
                     key="policy")
    drain(worker)
    assert service.policy.version == 2 and service.backend.loaded[-1][0] == 2

    # a restarted injector replays the topic from the start: the forgery is refused again
    worker.close()
    service.close()
    restarted = InjectorService(settings, bus, backend=ScriptedBackend())
    drain(_updates_worker(restarted))
    assert restarted.policy.version == 2 and [v for v, *_ in restarted.backend.loaded] == [2]


def test_with_message_keys_only_the_learners_signed_updates_are_loaded(tmp_path):
    keys = _keys(tmp_path, "trainer", "injector")
    bus = MemoryBus()
    settings = injector_settings(message_keys_dir=keys)
    service = InjectorService(settings, bus, backend=ScriptedBackend())
    bus.ensure_topics(list(service.topics()))
    worker = _updates_worker(service)
    real = _adapter(tmp_path, "real")
    update = pb.PolicyUpdate(version=1, checkpoint_uri=str(real), kind="lora", checkpoint_sha256=checkpoint_sha256(real),
                             groups_consumed=10**9)
    bus.producer().publish(POLICY_UPDATES, update.SerializeToString(), key="policy")  # unsigned
    learner = secure_bus(bus, "trainer", TrainerSettings(message_keys_dir=keys, metrics_port=-1)).producer()
    signed = pb.PolicyUpdate(version=3, checkpoint_uri=str(real), kind="lora", checkpoint_sha256=checkpoint_sha256(real))
    learner.publish(POLICY_UPDATES, signed.SerializeToString(), key="policy")
    drain(worker)
    assert service.policy.version == 3, "a signed update may jump (the learner resumed from a later version)"
    assert service.policy.groups_consumed == 0, "the unsigned update was not accounted"
    (letter,) = letters_from(bus, "injector", "dl")
    assert letter.error_class == "Unauthenticated" and "unsigned" in letter.reason


def test_an_oversized_seed_id_is_dead_lettered_and_the_injector_goes_on():
    """One seed with a 300 KB note_id crash-looped the injector (its group outgrew the producer)."""
    bus = MemoryBus()
    service = InjectorService(injector_settings(learner_batch_rollouts=0), bus, backend=ScriptedBackend())
    bus.ensure_topics(list(service.topics()))
    seeds = next(w for w in service.workers() if NOTES_SEED in w.topics)
    producer = bus.producer()
    text = "She has a cough. It started yesterday."
    producer.publish(NOTES_SEED, pb.Note(note_id="n" * 300_000, text=text).SerializeToString(), key="huge")
    producer.publish(NOTES_SEED, pb.Note(note_id="fine", text=text).SerializeToString(), key="fine")
    drain(seeds)
    (letter,) = letters_from(bus, "injector", "dl")
    assert letter.error_class == "InvalidInput" and "note_id has 300000 characters" in letter.reason
    groups = read_all(bus, ROLLOUTS_GENERATED, "g", pb.RolloutGroup)
    assert [g.seed_note_id for g in groups] == ["fine"]


@pytest.mark.kafka
def test_poison_beyond_the_producer_limit_on_a_real_broker(kafka_bootstrap, unique, monkeypatch):
    """A real Kafka 4.x broker: a 1.04 MB message (under the broker's message.max.bytes, over the
    producer's limit) and random garbage on rollouts.generated end as bounded dead letters."""
    from kafka import KafkaProducer

    from services.common.kafka_bus import KafkaBus

    generated, dead = f"{ROLLOUTS_GENERATED}.{unique}", f"{DEAD_LETTER}.{unique}"
    bus = KafkaBus(kafka_bootstrap)
    settings = VerifierSettings(**{**COMMON, "poll_timeout_s": 0.2}, bus="kafka", kafka_bootstrap=kafka_bootstrap,
                                topic_suffix=f".{unique}", group_id=f"verifier-{unique}")
    runtime = ServiceRuntime(VerifierService(settings, bus)).start()
    raw = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=1_048_000)
    rng = random.Random(12)
    try:
        raw.send(generated, key=b"over", value=rng.randbytes(1_040_000)).get(timeout=30)
        for i in range(5):
            raw.send(generated, key=f"junk-{i}".encode(), value=rng.randbytes(rng.randint(1, 5000))).get(timeout=30)
        raw.send(generated, key=b"ok", value=valid_group(f"ok-{unique}").SerializeToString()).get(timeout=30)
        consumer = bus.consumer([dead], f"dl-{unique}")
        letters: dict[str, pb.DeadLetter] = {}
        deadline = time.monotonic() + 90
        while len(letters) < 6 and time.monotonic() < deadline:
            for r in consumer.poll(0.5, 100):
                letter = pb.DeadLetter.FromString(r.value)
                letters[letter.key.decode()] = letter
        consumer.close()
        assert not runtime.failed
    finally:
        raw.close()
        runtime.shutdown()
        bus.close()
    assert letters["over"].error_class == "TooLarge" and letters["over"].ByteSize() < LIMIT
    assert {f"junk-{i}" for i in range(5)} <= set(letters)
    assert all(d.reason for d in letters.values())
