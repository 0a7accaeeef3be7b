"""Fuzzing every consumed topic (issue 12): each consumer's real handler, on the in-memory bus.

Consumers: the verifier (rollouts.generated), the assessor (rollouts.verified), the injector (notes.seed
and policy.updates), the learner (rollouts.scored and the dead-letter topic). Each gets random bytes
(also real messages cut short or bit-flipped), well-formed messages with any field values (real MEDEC
notes mixed in, and real messages with a few fields bent), another type's messages, strings that are
not UTF-8, messages past the producer's 1 MB limit (up to the broker's 8 MB) and messages just under
it whose output would outgrow it.

For every message, one at a time: the worker stays alive, and the message ends as exactly one
output or one dead letter with a reason, an error class of the worker's own (a handler's stray
exception, e.g. a ValueError, is a finding) and a size under the producer's limit, whose reason never
quotes a note. Messages that can only be refused (oversized, not UTF-8, another type's) always end as
a dead letter. Policy updates never load anything or jump the learner's version past
``max_version_jump``; the learner never trains on non-finite values (its weights stay finite) and
never dead-letters a dead letter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medserl.v1 import messages_pb2 as pb
from services.assessor.service import AssessorService, AssessorSettings
from services.common.bus import MemoryBus
from services.common.topics import (
    DEAD_LETTER,
    NOTES_SEED,
    POLICY_UPDATES,
    ROLLOUTS_GENERATED,
    ROLLOUTS_SCORED,
    ROLLOUTS_VERIFIED,
)
from services.common.worker import StreamWorker
from services.injector.service import InjectorService, InjectorSettings
from services.verifier.service import VerifierService, VerifierSettings
from tests.reliability import fuzzing
from tests.reliability.fuzzing import count, fuzz
from tests.rl_fakes import VOCAB, ScriptedBackend, ScriptedDetector, recording_factory
from trainer.service import LearnerLoop, TrainerSettings

SUITE = "bus"
LIMIT = 1_000_000  # max_message_bytes: the producer's limit, and what a worker reads
BROKER_LIMIT = 8 * 1024 * 1024  # the broker's message.max.bytes in the deployment
MIN_CASES = 150  # per consumer, all kinds together
OWN_CLASSES = {"DecodeError", "WrongType", "TooLarge", "InvalidInput", "OutputTooLarge", "OutputRefused", "Poison",
               "Unauthenticated", "NonFinite"}
COMMON = dict(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1, poll_timeout_s=0.0, max_attempts=2,
              retry_for_s=0.01, max_message_bytes=LIMIT)
TYPES = {ROLLOUTS_GENERATED: pb.RolloutGroup, ROLLOUTS_VERIFIED: pb.RolloutGroup, NOTES_SEED: pb.Note,
         POLICY_UPDATES: pb.PolicyUpdate, ROLLOUTS_SCORED: pb.RolloutGroup, DEAD_LETTER: pb.DeadLetter}
KINDS = ("bytes", "fields", "bent", "wrong_type", "utf8", "oversized", "near_limit")
MUST_REFUSE = {"wrong_type", "utf8", "oversized"}
INPUT_HEADER = "fuzz-input"  # marks what the fuzzer published (the dead-letter topic is itself fuzzed)


@dataclass
class Consumer:
    """One consumed topic of one service: publish into it, drain it, see what came out."""

    name: str
    topic: str
    bus: MemoryBus
    outputs: list[str]  # topics its handler writes
    drain: object  # () -> None
    service: str
    alive: object  # () -> bool
    observers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.producer = self.bus.producer()
        self.observers = {t: self.bus.consumer([t], f"fuzz-observer-{self.name}-{t}")
                          for t in [DEAD_LETTER, *self.outputs]}

    def seen(self, topic: str) -> list:
        """What the services wrote to ``topic`` since the last look (the fuzz inputs themselves excluded)."""
        out = []
        while batch := self.observers[topic].poll(0.0, 10_000):
            out.extend(r for r in batch if (INPUT_HEADER, b"1") not in r.headers)
        return out


def caught_up(bus: MemoryBus, group_id: str, topic: str) -> bool:
    committed = bus._groups[group_id].committed
    return all(committed.get((topic, p), 0) >= end for p, end in enumerate(bus.end_offsets(topic)))


def stream_drain(bus: MemoryBus, worker: StreamWorker):
    def drain() -> None:
        for _ in range(3 * (worker.max_deliveries + 2)):  # a record that failed outside its handler comes back
            worker.run_once()
            if caught_up(bus, worker.group_id, worker.topics[0]):
                return
        raise AssertionError(f"{worker.service} did not get through {worker.topics[0]}")

    return drain


def fast(worker: StreamWorker, settings) -> StreamWorker:
    worker.configure(settings)
    worker.retry_backoff_s = worker.retry_max_backoff_s = 0.0005
    return worker


@pytest.fixture(scope="module")
def medec(medec_path):
    return fuzzing.medec_notes(str(medec_path))


@pytest.fixture(scope="module")
def consumers(tmp_path_factory):
    out: dict[str, Consumer] = {}

    bus = MemoryBus()
    settings = VerifierSettings(**COMMON)
    verifier = VerifierService(settings, bus)
    bus.ensure_topics(list(verifier.topics()), partitions=1)
    (worker,) = [fast(w, settings) for w in verifier.workers()]
    out["verifier"] = Consumer("verifier", ROLLOUTS_GENERATED, bus, [ROLLOUTS_VERIFIED], stream_drain(bus, worker),
                               "verifier", lambda w=worker: w.error is None)

    bus = MemoryBus()
    settings = AssessorSettings(**COMMON)
    assessor = AssessorService(settings, bus, detector=ScriptedDetector())
    bus.ensure_topics(list(assessor.topics()), partitions=1)
    (worker,) = [fast(w, settings) for w in assessor.workers()]
    out["assessor"] = Consumer("assessor", ROLLOUTS_VERIFIED, bus, [ROLLOUTS_SCORED], stream_drain(bus, worker),
                               "assessor", lambda w=worker: w.error is None)

    bus = MemoryBus()
    settings = InjectorSettings(**COMMON, model="scripted", group_size=2, learner_batch_rollouts=0)
    injector = InjectorService(settings, bus, backend=ScriptedBackend())
    bus.ensure_topics(list(injector.topics()), partitions=1)
    workers = {w.topics[0]: fast(w, settings) for w in injector.workers()}
    out["injector-seeds"] = Consumer("injector-seeds", NOTES_SEED, bus, [ROLLOUTS_GENERATED],
                                     stream_drain(bus, workers[NOTES_SEED]), "injector",
                                     lambda w=workers[NOTES_SEED]: w.error is None)
    updates = Consumer("injector-updates", POLICY_UPDATES, bus, [], stream_drain(bus, workers[POLICY_UPDATES]),
                       "injector", lambda w=workers[POLICY_UPDATES]: w.error is None)
    updates.injector = injector
    out["injector-updates"] = updates

    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED, DEAD_LETTER, POLICY_UPDATES], partitions=1)
    settings = TrainerSettings(**COMMON, model="tiny", checkpoint_dir=str(tmp_path_factory.mktemp("fuzz-rl")), lora=False,
                               rollouts_per_update=4, max_batch=4, accounting_interval_s=1e9, starve_after_s=1e9,
                               keep_versions=1)
    holder: list = []
    loop = LearnerLoop(settings, bus, learner_factory=recording_factory(holder))
    learner_consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], loop.group_id)

    def learner_drain() -> None:
        for _ in range(50):
            loop.poll_once(learner_consumer)
            positions = learner_consumer._positions
            if all(positions.get((t, 0), 0) >= bus.end_offsets(t)[0] for t in (ROLLOUTS_SCORED, DEAD_LETTER)):
                return
        raise AssertionError("the learner did not get through its topics")

    for name, topic in (("trainer-scored", ROLLOUTS_SCORED), ("trainer-deadletters", DEAD_LETTER)):
        consumer = Consumer(name, topic, bus, [POLICY_UPDATES], learner_drain, "trainer",
                            lambda: loop.error is None)
        consumer.loop, consumer.learners = loop, holder
        out[name] = consumer
    return out


# --------------------------------------------------------------------------------------------
# real messages for each topic (built around the case key, so every valid one is new)


def edited(note: pb.Note, rollout_id: str, which: int) -> pb.Note:
    out = pb.Note(note_id=rollout_id, sentences=[pb.Sentence(id=s.id, text=s.text) for s in note.sentences])
    if out.sentences:
        sentence = out.sentences[which % len(out.sentences)]
        sentence.text = sentence.text.rstrip(".") + ", as documented."
    return out


def real_group(source, key: str, stage: str) -> pb.RolloutGroup:
    """A two-rollout group as the stage's producer writes it: one edit, one unparseable completion."""
    seed = fuzzing.pb_note(source)
    seed.note_id = f"{source.note_id}-{key}"
    gid = f"{seed.note_id}~{key}"
    mode = pb.MODE_INJECT if len(key) % 2 else pb.MODE_PARAPHRASE
    group = pb.RolloutGroup(group_id=gid, seed_note_id=seed.note_id, mode=mode, policy_version=0, seed_note=seed)
    for i in range(2):
        rollout = pb.Rollout(rollout_id=f"{gid}-{i}", group_id=gid, seed_note_id=seed.note_id, mode=mode,
                             prompt_token_ids=[1, 2, 3], completion_token_ids=[4 + i, 5, 6],
                             behaviour_logprobs=[-0.5, -1.0, -0.25], completion_text="scripted",
                             changed_sentence_id=-1)
        if i == 0:
            rollout.changed_sentence_id = 1 % max(1, len(seed.sentences))
            rollout.modified_note.CopyFrom(edited(seed, rollout.rollout_id, rollout.changed_sentence_id))
            rollout.claimed_error_type = "diagnosis" if mode == pb.MODE_INJECT else ""
            if stage in ("verified", "scored"):
                rollout.verification.CopyFrom(pb.VerificationReport(subject_id=rollout.rollout_id, mode=mode,
                                                                    passed=True))
        else:
            rollout.parse_error = "no sentence_id line"
        if stage == "scored":
            reward = 1.0 if i == 0 else -1.0
            rollout.reward.CopyFrom(pb.RewardParts(total=reward, game=reward, outcome="fooled" if i == 0 else "unparseable"))
        group.rollouts.append(rollout)
    return group


def real_message(topic: str, source, key: str):
    if topic == ROLLOUTS_GENERATED:
        return real_group(source, key, "generated")
    if topic == ROLLOUTS_VERIFIED:
        return real_group(source, key, "verified")
    if topic == ROLLOUTS_SCORED:
        return real_group(source, key, "scored")
    if topic == NOTES_SEED:
        note = fuzzing.pb_note(source)
        note.note_id = f"{source.note_id}-{key}"
        return note
    if topic == POLICY_UPDATES:
        return pb.PolicyUpdate(version=1, checkpoint_uri=f"/nonexistent/policy-{key}", kind="lora",
                               checkpoint_sha256="0" * 64, groups_consumed=1, rollouts_consumed=2)
    lost = real_group(source, key, "generated")
    return pb.DeadLetter(source_topic=ROLLOUTS_GENERATED, key=lost.group_id.encode(), payload=lost.SerializeToString(),
                         reason="fuzz", error_class="InvalidInput", service="verifier", attempts=1)


def other_type_message(topic: str, source, key: str, choice: int):
    """A real message of another type than ``topic`` carries, every field set."""
    note = fuzzing.pb_note(source)
    candidates = [real_group(source, key, "scored"), note,
                  pb.PolicyUpdate(version=5, checkpoint_uri="/x", kind="lora", base_model="m", checkpoint_sha256="ab" * 32,
                                  learner_step=5, created_unix_ms=1, groups_consumed=3, rollouts_consumed=6,
                                  step_group_ids=["g"], rollouts_wanted=2),
                  pb.DeadLetter(source_topic="t", source_partition=1, source_offset=2, key=b"k", payload=b"p", reason="r",
                                error_class="c", service="s", failed_unix_ms=1, attempts=1),
                  pb.SftExample(example_id="e", pair_id="p", kind="CORRECT", mode=pb.MODE_PARAPHRASE, original=note,
                                modified=note, changed_sentence_id=1, original_sentence="a", new_sentence="b"),
                  real_group(source, key, "scored").rollouts[0]]
    expected = TYPES[topic]
    others = [m for m in candidates if type(m) is not expected]
    return others[choice % len(others)]


# --------------------------------------------------------------------------------------------
# payloads


@dataclass
class Payload:
    kind: str
    value: bytes


@st.composite
def payloads(draw, topic: str, medec, key: str, kind: str) -> Payload:
    source = draw(st.sampled_from(medec))
    message_type = TYPES[topic]
    real = real_message(topic, source, key)
    if kind == "bytes":
        how = draw(st.sampled_from(("garbage", "truncated", "flipped")))
        data = bytearray(real.SerializeToString())
        if how == "garbage":
            return Payload(kind, draw(st.binary(max_size=2_000)))
        if how == "truncated":
            return Payload(kind, bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))]))
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return Payload(kind, bytes(data))
    special = fuzzing.medec_special(medec)
    if kind == "fields":
        return Payload(kind, draw(fuzzing.messages(message_type, special=special)).SerializeToString())
    if kind == "bent":  # a real message, a few fields replaced or extended with any value
        bent = draw(fuzzing.messages(message_type, depth=2, special=special, max_repeated=2))
        real.MergeFrom(bent)
        return Payload(kind, real.SerializeToString())
    if kind == "wrong_type":
        return Payload(kind, other_type_message(topic, source, key, draw(st.integers(0, 10))).SerializeToString())
    if kind == "utf8":
        path = draw(st.sampled_from(fuzzing.string_paths(message_type.DESCRIPTOR)))
        return Payload(kind, fuzzing.with_raw_string(real.SerializeToString(), path, draw(fuzzing.invalid_utf8())))
    if kind == "oversized":  # past the producer's limit, up to the broker's
        size = draw(st.sampled_from((LIMIT + 1, 1_040_000, 2_000_000, BROKER_LIMIT)))
        if draw(st.booleans()):
            return Payload(kind, fuzzing.rng_bytes(draw(st.integers(0, 2**32)), size))
        path = draw(st.sampled_from(fuzzing.string_paths(message_type.DESCRIPTOR, depth=1)))
        fuzzing.set_path(real, path, "x" * size)
        return Payload(kind, real.SerializeToString())
    # near_limit: a message just under the limit (its output, a copy plus more, may not fit)
    path = draw(st.sampled_from(fuzzing.string_paths(message_type.DESCRIPTOR, depth=2)))
    fuzzing.set_path(real, path, "y" * (LIMIT - real.ByteSize() - draw(st.integers(200, 6_000))))
    return Payload(kind, real.SerializeToString())


# --------------------------------------------------------------------------------------------
# one case


CASE_IDS = itertools.count()


def feed(consumer: Consumer, payload: Payload, key: str, sentences) -> tuple[list[pb.DeadLetter], list]:
    for topic in consumer.observers:  # only what this case makes counts
        consumer.seen(topic)
    consumer.producer.publish(consumer.topic, payload.value, key=key, headers=[(INPUT_HEADER, b"1")])
    consumer.drain()
    assert consumer.alive(), f"{consumer.name}: the worker died on a {payload.kind} message"
    letters = [pb.DeadLetter.FromString(r.value) for r in consumer.seen(DEAD_LETTER)]
    letters = [d for d in letters if d.service == consumer.service]
    outputs = [r for t in consumer.outputs for r in consumer.seen(t)]
    for letter in letters:
        assert letter.reason and letter.error_class, (consumer.name, payload.kind)
        assert letter.error_class in OWN_CLASSES, (consumer.name, payload.kind, letter.error_class, letter.reason[:300])
        assert letter.ByteSize() < LIMIT, (consumer.name, payload.kind, "the dead letter must fit the producer")
        assert not fuzzing.quotes_a_note(letter.reason, sentences), (consumer.name, "a reason quotes a note")
        assert letter.source_topic == consumer.topic or letter.error_class == "NonFinite"
    for record in outputs:
        assert len(record.value) + len(record.key or b"") <= LIMIT, (consumer.name, payload.kind, "an output too large")
    return letters, outputs


def record_outcome(consumer: Consumer, payload: Payload, letters: list, outputs: list) -> None:
    outcome = letters[0].error_class if letters else ("output" if outputs else "accepted")
    count(SUITE, f"{consumer.service}:{consumer.topic}", payload.kind, outcome)


def feed_drawn(consumer, medec, medec_path, kind: str, data):
    """One drawn case of ``kind`` through ``consumer``: (payload, key, dead letters, outputs)."""
    key = f"case-{next(CASE_IDS)}"
    payload = data.draw(payloads(consumer.topic, medec, key, kind))
    letters, outputs = feed(consumer, payload, key, fuzzing.medec_sentences(str(medec_path)))
    return payload, key, letters, outputs


# --------------------------------------------------------------------------------------------
# the fuzz tests, one per consumer family


@pytest.mark.parametrize("name", ["verifier", "assessor", "injector-seeds"])
@pytest.mark.parametrize("kind", KINDS)
@fuzz(25)
@given(data=st.data())
def test_a_stream_consumer_turns_every_message_into_one_output_or_one_dead_letter(consumers, medec, medec_path, name,
                                                                                 kind, data):
    consumer = consumers[name]
    payload, key, letters, outputs = feed_drawn(consumer, medec, medec_path, kind, data)
    assert len(letters) + len(outputs) == 1, (name, kind, [d.error_class for d in letters], len(outputs))
    if letters:
        assert letters[0].key == key.encode(), (name, kind)
    if kind in MUST_REFUSE:
        assert letters, (name, kind, "must be refused")
    record_outcome(consumer, payload, letters, outputs)


@pytest.mark.parametrize("kind", KINDS)
@fuzz(25)
@given(data=st.data())
def test_policy_updates_never_load_anything_or_jump_the_learners_version(consumers, medec, medec_path, kind, data):
    consumer = consumers["injector-updates"]
    injector = consumer.injector
    policy = injector.policy
    before = policy.learner_version
    payload, key, letters, outputs = feed_drawn(consumer, medec, medec_path, kind, data)
    assert len(letters) <= 1 and not outputs
    assert injector.backend.loaded == [] and policy.version == 0, "no update names a real, matching checkpoint"
    assert policy.learner_version <= before + injector.settings.max_version_jump, "an unsigned update jumped"
    assert policy.credit <= (policy.window or policy.credit), "a grant is never larger than a window"
    if kind in MUST_REFUSE:
        assert letters, (kind, "must be refused")
    record_outcome(consumer, payload, letters, outputs)


def finite_weights(learners) -> bool:
    return all(math.isfinite(float(p.detach().abs().sum())) for learner in learners for p in learner.policy.parameters())


@pytest.mark.parametrize("kind", KINDS)
@fuzz(25)
@given(data=st.data())
def test_the_learner_accounts_for_every_scored_group_and_trains_only_on_sound_ones(consumers, medec, medec_path, kind,
                                                                                   data):
    consumer = consumers["trainer-scored"]
    loop = consumer.loop
    before = (loop.groups_consumed, len(loop._buffer), sum(loop.fates.values()), loop.version)
    payload, key, letters, _updates = feed_drawn(consumer, medec, medec_path, kind, data)
    after = (loop.groups_consumed, len(loop._buffer), sum(loop.fates.values()), loop.version)
    assert letters or after != before, (kind, "a scored group neither refused nor accounted for")
    assert finite_weights(consumer.learners), "a non-finite value reached an optimizer step"
    for learner in consumer.learners:
        for step in learner.steps:
            for group in step:
                for rollout in group.rollouts:
                    assert all(0 <= t < VOCAB for t in rollout.completion_token_ids), "a token id outside the vocabulary"
                    assert math.isfinite(rollout.reward.total) and abs(rollout.reward.total) <= 100
    if kind in MUST_REFUSE:
        assert letters, (kind, "must be refused")
    record_outcome(consumer, payload, letters, [])


@pytest.mark.parametrize("kind", KINDS)
@fuzz(25)
@given(data=st.data())
def test_the_learner_reads_any_dead_letter_without_writing_one_or_miscounting(consumers, medec, medec_path, kind, data):
    consumer = consumers["trainer-deadletters"]
    loop = consumer.loop
    before = loop.groups_consumed
    payload, key, letters, _updates = feed_drawn(consumer, medec, medec_path, kind, data)
    assert not letters, "a dead letter is never dead-lettered (that would loop)"
    try:
        letter = pb.DeadLetter.FromString(payload.value)
    except Exception:  # noqa: BLE001 - undecodable: it must not count
        letter = None
    if letter is None or letter.service == "trainer":
        assert loop.groups_consumed == before, (kind, "an unreadable or own dead letter changed the accounting")
    else:
        assert loop.groups_consumed - before <= 1, "one dead letter disposes of at most one group"
    count(SUITE, f"{consumer.service}:{consumer.topic}", payload.kind,
          "counted lost" if loop.groups_consumed > before else "ignored")


def test_every_consumer_still_handles_a_real_message(consumers, medec, medec_path):
    """After all of the above, a real message on each topic still goes through (file order: last but one)."""
    sentences = fuzzing.medec_sentences(str(medec_path))
    for name in ("verifier", "assessor", "injector-seeds"):
        consumer = consumers[name]
        key = f"final-{name}"
        letters, outputs = feed(consumer, Payload("real", real_message(consumer.topic, medec[7], key)
                                                  .SerializeToString()), key, sentences)
        assert not letters and len(outputs) == 1, (name, [d.reason for d in letters])
    loop = consumers["trainer-scored"].loop
    before = loop.groups_consumed + len(loop._buffer)
    feed(consumers["trainer-scored"], Payload("real", real_message(ROLLOUTS_SCORED, medec[7], "final").SerializeToString()),
         "final", sentences)
    assert loop.groups_consumed + len(loop._buffer) > before or loop.fates


def test_every_consumed_topic_was_fuzzed(consumers):
    """Runs after the fuzz tests above (file order): each consumer got its cases, and the learner did
    take optimizer steps (on the sound groups), so "never on non-finite values" was put to the test."""
    assert sum(len(learner.steps) for learner in consumers["trainer-scored"].learners) >= 3
    cases = fuzzing.totals(SUITE)
    for target in (f"verifier:{ROLLOUTS_GENERATED}", f"assessor:{ROLLOUTS_VERIFIED}", f"injector:{NOTES_SEED}",
                   f"injector:{POLICY_UPDATES}", f"trainer:{ROLLOUTS_SCORED}", f"trainer:{DEAD_LETTER}"):
        assert cases[target] >= MIN_CASES, (target, dict(cases))
