"""The RL data plane end to end on the in-memory bus, with the real services:
injector -> verifier -> assessor -> learner, rollout groups as the unit.

1. Groups whose rollouts fail different gates (unparseable, an invalid multi-sentence edit of a MEDEC
   note, caught, fooled, an assessor answer that never parses) reach the learner whole, each rollout
   with the reward the configured (non-default) weights give, centred on its own group.
2. More than max_staleness x batch rollouts are dead-lettered on the way (an assessor that rejects
   some groups, poison on rollouts.generated) and the injector is restarted with every seed
   redelivered: the redelivered seeds give the same group ids, the learner counts them as
   duplicates (trained once), and the loop still reaches its target version.

Everything waits on bus messages (policy updates), never on sleeps; timeouts only guard against hangs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from medec.prepare import read_medec_csv
from medserl.v1 import messages_pb2 as pb
from services.assessor.service import AssessorService, AssessorSettings
from services.common import formats
from services.common.bus import MemoryBus
from services.common.reward import CAUGHT, EXCLUDED, FOOLED, INVALID, UNPARSEABLE
from services.common.runtime import ServiceRuntime
from services.common.topics import DEAD_LETTER, NOTES_SEED, ROLLOUTS_GENERATED
from services.common.worker import InvalidInput
from services.injector.service import InjectorService, InjectorSettings
from services.verifier.service import VerifierService, VerifierSettings
from tests.rl_fakes import (
    GARBAGE,
    ScriptedBackend,
    ScriptedDetector,
    edited,
    group,
    note,
    read_all,
    recording_factory,
    rollout,
    wait_for_update,
)
from trainer.service import TrainerService, TrainerSettings

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
COMMON = dict(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1, poll_timeout_s=0.05)
# not the defaults (1, -1, -1.5, -2): the test proves the configured weights are the ones applied
WEIGHTS = dict(reward_fooled=2.0, reward_caught=-0.5, verifier_penalty=-1.25, format_penalty=-3.0)


@pytest.fixture(scope="module")
def medec_notes(medec_path):
    notes, _ = read_medec_csv(medec_path / VALIDATION)
    return {n.note_id: n for n in notes}


class Services:
    """Runtimes started in order, shut down in reverse (also when the test fails)."""

    def __init__(self):
        self.runtimes: list[ServiceRuntime] = []

    def start(self, service) -> ServiceRuntime:
        runtime = ServiceRuntime(service).start()
        self.runtimes.append(runtime)
        return runtime

    def stop(self, runtime: ServiceRuntime) -> None:
        runtime.shutdown()
        self.runtimes.remove(runtime)

    def close(self) -> None:
        failed = [r.service.name for r in self.runtimes if r.failed]
        for runtime in reversed(self.runtimes):
            runtime.shutdown()
        self.runtimes.clear()
        assert not failed, f"a worker died: {failed}"


def _verdict(flag: bool, sentence_id: int = -1) -> formats.AssessorOutput:
    return formats.AssessorOutput(flag, sentence_id if flag else -1, "Corrected." if flag else None)


def test_every_rollout_reaches_the_learner_inside_its_whole_group_with_the_configured_reward(medec_notes, tmp_path):
    seed = [(int(i), t) for i, t in medec_notes["ms-val-5"].sentences]  # 7: "Chlamydia trachomatis is the ..."
    seed_note = note("ms-val-5", seed)
    caught = edited(seed, {7: "Neisseria gonorrhoeae is the causal pathogen."})
    fooled = edited(seed, {7: "Treponema pallidum is the causal pathogen."})
    two_sentences = edited(seed, {7: "Neisseria gonorrhoeae is the causal pathogen.",
                                  2: "He works at a hospital for abandoned pets."})
    flagged = edited(seed, {7: "The causal pathogen is Chlamydia trachomatis."})
    clean = edited(seed, {2: "He is employed at an animal shelter for abandoned pets."})
    garbled = edited(seed, {3: "He is sexually active with several male partners and does not use condoms."})
    inject_id, para_id = "ms-val-5~inject", "ms-val-5~para"
    sent = {
        inject_id: group(inject_id, pb.MODE_INJECT, seed_note, version=0, rollouts=[
            rollout(inject_id, 0, pb.MODE_INJECT, parse_error="no sentence_id line"),
            rollout(inject_id, 1, pb.MODE_INJECT, modified=two_sentences, changed=7, error_type="causalOrganism"),
            rollout(inject_id, 2, pb.MODE_INJECT, modified=caught, changed=7, error_type="causalOrganism"),
            rollout(inject_id, 3, pb.MODE_INJECT, modified=fooled, changed=7, error_type="causalOrganism"),
        ]),
        para_id: group(para_id, pb.MODE_PARAPHRASE, seed_note, version=0, rollouts=[
            rollout(para_id, 0, pb.MODE_PARAPHRASE, modified=flagged, changed=7),
            rollout(para_id, 1, pb.MODE_PARAPHRASE, modified=clean, changed=2),
            rollout(para_id, 2, pb.MODE_PARAPHRASE, modified=garbled, changed=3),
            rollout(para_id, 3, pb.MODE_PARAPHRASE, parse_error="sentence_id 99 is not in the note"),
        ]),
    }
    detector = ScriptedDetector({tuple(caught): [_verdict(True, 7)], tuple(fooled): [_verdict(False)],
                                 tuple(flagged): [_verdict(True, 7)], tuple(clean): [_verdict(False)],
                                 tuple(garbled): [GARBAGE, GARBAGE]})  # never parses, even when judged again
    # (outcome, total, format, verifier, game) per rollout, from WEIGHTS
    expected = {
        inject_id: [(UNPARSEABLE, -3.0, -3.0, 0, 0), (INVALID, -1.25, 0, -1.25, 0), (CAUGHT, -0.5, 0, 0, -0.5),
                    (FOOLED, 2.0, 0, 0, 2.0)],
        para_id: [(FOOLED, 2.0, 0, 0, 2.0), (CAUGHT, -0.5, 0, 0, -0.5), (EXCLUDED, 0.0, 0, 0, 0),
                  (UNPARSEABLE, -3.0, -3.0, 0, 0)],
    }
    # the learner's baseline, by hand: inject mean (-3 - 1.25 - 0.5 + 2) / 4 = -0.6875; paraphrase mean
    # over the three judged rollouts (2 - 0.5 - 3) / 3 = -0.5, the excluded one centred to 0
    centred = {inject_id: [-2.3125, -0.5625, 0.1875, 2.6875], para_id: [2.5, 0.0, 0.0, -2.5]}

    bus = MemoryBus()
    holder: list = []
    services = Services()
    try:
        services.start(VerifierService(VerifierSettings(**COMMON), bus))
        services.start(AssessorService(AssessorSettings(**COMMON, **WEIGHTS), bus, detector=detector))
        trainer = TrainerService(TrainerSettings(**COMMON, model="tiny", checkpoint_dir=str(tmp_path / "rl"),
                                                 lora=False, rollouts_per_update=8, starve_after_s=1e9), bus,
                                 learner_factory=recording_factory(holder))
        services.start(trainer)
        producer = bus.producer()
        for g in sent.values():
            producer.publish(ROLLOUTS_GENERATED, g.SerializeToString(), key=g.group_id)
        update = wait_for_update(bus, "watch", lambda u: u.version >= 1)
    finally:
        services.close()

    assert update.version == 1 and sorted(update.step_group_ids) == sorted(sent)
    assert (update.groups_consumed, update.rollouts_consumed) == (2, 8)
    assert trainer.loop.fates == {"trained": 2}
    (step,) = holder[0].steps
    assert sorted(g.group_id for g in step) == sorted(sent), "one step, on both whole groups"
    for g in step:
        original = sent[g.group_id]
        assert [r.rollout_id for r in g.rollouts] == [r.rollout_id for r in original.rollouts]
        assert g.seed_note == seed_note and all(r.completion_token_ids for r in g.rollouts)
        for r, (outcome, total, fmt, verifier, game) in zip(g.rollouts, expected[g.group_id], strict=True):
            assert r.reward == pb.RewardParts(outcome=outcome, total=total, format=fmt, verifier=verifier, game=game,
                                              excluded=outcome == EXCLUDED), r.rollout_id
            assert r.HasField("verification") == (outcome != UNPARSEABLE)
            assert r.HasField("verdict") == (outcome in (CAUGHT, FOOLED, EXCLUDED))
        assert [holder[0].centred[0][r.rollout_id] for r in g.rollouts] == pytest.approx(centred[g.group_id])
    invalid = step[[g.group_id for g in step].index(inject_id)].rollouts[1]
    assert {"exactly_one_changed"} <= {c.name for c in invalid.verification.checks if not c.passed}
    assert len([c for c in detector.calls if tuple(c) == tuple(garbled)]) == 2, "judged once more, then excluded"
    assert tuple(two_sentences) not in {tuple(c) for c in detector.calls}, "an invalid edit never reaches the model"
    assert read_all(bus, DEAD_LETTER, "dl", pb.DeadLetter) == []


class LosingAssessor(AssessorService):
    """Rejects every group of a ``lose-`` seed note as InvalidInput: dead-lettered, never scored."""

    def score_groups(self, groups: list[pb.RolloutGroup]) -> list:
        kept = iter(super().score_groups([g for g in groups if not g.seed_note_id.startswith("lose-")]))
        return [InvalidInput(f"group {g.group_id!r} rejected by the test") if g.seed_note_id.startswith("lose-")
                else next(kept) for g in groups]


def _seeds(medec_notes, tag: str, start: int, count: int) -> list[pb.Note]:
    correct = [n for n in medec_notes.values() if not n.error_flag][start:start + count]
    return [note(f"{tag}-{n.note_id}", [(int(i), t) for i, t in n.sentences]) for n in correct]


def test_losses_and_an_injector_restart_never_stall_the_loop_and_redelivered_seeds_train_once(medec_notes,
                                                                                               tmp_path):
    batch, staleness, group_size, target = 4, 1, 2, 3
    bus = MemoryBus()
    producer = bus.producer()
    lose = _seeds(medec_notes, "lose", 0, 6)  # 6 groups x 2 = 12 rollouts lost > staleness x batch = 4
    for i in range(3):  # poison: undecodable, takes 3 of the window's 4 slots until the learner counts it lost
        producer.publish(ROLLOUTS_GENERATED, b"\xff\xff\xff", key=f"poison-{i}")
    for n in lose:
        producer.publish(NOTES_SEED, n.SerializeToString(), key=n.note_id)

    injector_settings = InjectorSettings(**COMMON, group_size=group_size, learner_batch_rollouts=batch,
                                         max_staleness=staleness, group_id="injector", seed=1)
    holder: list = []
    services = Services()
    try:
        services.start(VerifierService(VerifierSettings(**COMMON), bus))
        services.start(LosingAssessor(AssessorSettings(**COMMON), bus, detector=ScriptedDetector()))
        trainer = TrainerService(TrainerSettings(**COMMON, model="tiny", checkpoint_dir=str(tmp_path / "rl"),
                                                 lora=False, rollouts_per_update=batch, max_staleness=staleness,
                                                 max_updates=target, starve_after_s=0.3, accounting_interval_s=0.05),
                                 bus, learner_factory=recording_factory(holder))
        services.start(trainer)
        first = InjectorService(injector_settings, bus, backend=ScriptedBackend())
        assert first.policy.window == 4
        injector = services.start(first)

        lost = wait_for_update(bus, "w1", lambda u: u.groups_consumed >= 9)  # 6 rejected groups + 3 poison
        assert lost.version == 0 and trainer.loop.fates == {"lost": 9}

        good = _seeds(medec_notes, "good", 6, 2)
        for n in good:
            producer.publish(NOTES_SEED, n.SerializeToString(), key=n.note_id)
        v1 = wait_for_update(bus, "w2", lambda u: u.version >= 1 and bool(u.checkpoint_uri))

        # restart mid-run; the new seed consumer group has no offsets, so every seed is redelivered
        services.stop(injector)
        backend = ScriptedBackend()
        restarted = InjectorService(replace(injector_settings, group_id="injector-new"), bus, backend=backend)
        services.start(restarted)
        # 11 disposed of before the restart, then the 8 redelivered copies: all duplicates, none trained
        wait_for_update(bus, "w3", lambda u: u.groups_consumed >= 11 + 8)
        assert trainer.loop.fates == {"lost": 9, "trained": 2, "duplicate": 8}

        for n in _seeds(medec_notes, "late", 8, 10):
            producer.publish(NOTES_SEED, n.SerializeToString(), key=n.note_id)
        final = wait_for_update(bus, "w4", lambda u: u.version >= target and bool(u.checkpoint_uri))
    finally:
        services.close()

    assert final.version == target == trainer.loop.version, "the loop reached its target version"
    assert v1.version == 1 and backend.loaded and backend.loaded[0][0] >= 1, "the restarted injector follows the learner"
    trained = holder[0].trained_group_ids
    assert len(trained) == len(set(trained)), "every group trained at most once"
    assert sum(len(g.rollouts) for step in holder[0].steps for g in step) >= target * batch

    generated = [pb.RolloutGroup.FromString(r.value) for r in bus.consumer([ROLLOUTS_GENERATED], "all").poll(1, 10_000)
                 if r.value != b"\xff\xff\xff"]
    copies: dict[str, list[pb.RolloutGroup]] = {}
    for g in generated:
        copies.setdefault(g.group_id, []).append(g)
    redelivered = {gid for gid, gs in copies.items() if len(gs) == 2}
    assert {g.seed_note_id for gid in redelivered for g in copies[gid]} == {n.note_id for n in lose + good}
    assert all(len(gs) <= 2 for gs in copies.values()), "one group id per seed message"
    assert all(copies[gid][1].policy_version >= 1 for gid in redelivered), "copies stamped with the loaded version"
    assert set(trained[:2]) == {gid for gid in redelivered if gid.startswith("good-")}, "trained once, in v1"
    letters = read_all(bus, DEAD_LETTER, "dl", pb.DeadLetter)
    assert sum(d.service == "assessor" for d in letters) == 12 and sum(d.service == "verifier" for d in letters) == 3
