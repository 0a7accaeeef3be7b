"""The frozen assessor: verdicts, P(error), the reward of every rollout of a group (the only place it is
computed), unparsed answers re-judged then excluded, gRPC, Kafka round trip with the tiny model."""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from medec.prepare import read_medec_csv
from medserl.v1 import assessor_pb2, assessor_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.assessor.detector import BaselineDetector, FrozenAssessorError, flag_probability
from services.assessor.service import AssessorService, AssessorSettings
from services.common import formats, reward
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.common.topics import DEAD_LETTER, ROLLOUTS_SCORED, ROLLOUTS_VERIFIED
from services.inference import checkpoint_sha256
from tests.conftest import ROOT
from tests.rl_fakes import GARBAGE, ScriptedDetector

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


@pytest.fixture(scope="module")
def medec_notes(medec_path):
    notes, _ = read_medec_csv(medec_path / VALIDATION)
    return notes


def as_note(note_id: str, sentences) -> pb.Note:
    return pb.Note(note_id=note_id, sentences=[pb.Sentence(id=int(i), text=s) for i, s in sentences])


def verified_rollouts(medec_notes, prefix: str, count: int) -> list[pb.Rollout]:
    """Verified inject rollouts from MEDEC's own errors and paraphrase rollouts from correct notes."""
    out = []
    for note in medec_notes:
        rid = f"{prefix}-{note.note_id}"
        sentences = [(int(i), s) for i, s in note.sentences]
        if note.error_flag and note.error_sentence_id >= 0:
            mode, changed = pb.MODE_INJECT, note.error_sentence_id
        else:
            mode, changed = pb.MODE_PARAPHRASE, sentences[0][0]
        rollout = pb.Rollout(rollout_id=rid, seed_note_id=note.note_id, group_id=f"g-{rid}", mode=mode,
                             modified_note=as_note(rid, sentences), changed_sentence_id=changed,
                             verification=pb.VerificationReport(subject_id=rid, mode=mode, passed=True,
                                                                changed_sentence_ids=[changed]))
        out.append(rollout)
        if len(out) == count:
            break
    return out


def as_groups(rollouts: list[pb.Rollout]) -> list[pb.RolloutGroup]:
    """One group per rollout, as the verifier forwards them (its mode, its seed note id)."""
    return [pb.RolloutGroup(group_id=r.group_id, seed_note_id=r.seed_note_id, mode=r.mode,
                            rollouts=[pb.Rollout.FromString(r.SerializeToString())]) for r in rollouts]


def scored_of(results) -> list[pb.Rollout]:
    """The rollouts of each scored group (every result must be one Output to rollouts.scored)."""
    out = []
    for result in results:
        (output,) = result
        assert output.topic == ROLLOUTS_SCORED and output.key == output.message.group_id
        out.extend(output.message.rollouts)
    return out


def drain(bus, topic: str, group: str, want: int, timeout_s: float = 60) -> list:
    consumer = bus.consumer([topic], group)
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            got.extend(consumer.poll(0.3, 500))
    finally:
        consumer.close()
    return got


# --------------------------------------------------------------------------------------------------
# P(error) from log-probs
# --------------------------------------------------------------------------------------------------


def test_flag_probability_from_alternatives_split_or_merged_tokens():
    tokens = ["error", "_flag", ":", " 1", "\n", "error_sentence_id: 3"]
    lps = [-0.1, -0.1, -0.1, math.log(0.6), -0.1, -0.1]
    tops = [{}, {}, {}, {" 1": math.log(0.6), " 0": math.log(0.2), " x": math.log(0.1)}, {}, {}]
    assert flag_probability(tokens, lps, tops, True) == pytest.approx(0.75)
    # only one digit among the alternatives: its own probability (not a 1.0 from normalising one value)
    only_one = [{}, {}, {}, {" 1": math.log(0.6), " x": math.log(0.3)}, {}, {}]
    assert flag_probability(tokens, lps, only_one, True) == pytest.approx(0.6)
    # without alternatives: p of the sampled digit, or its complement
    assert flag_probability(tokens, lps, None, True) == pytest.approx(0.6)
    zero = ["error_flag: 0", "\n"]
    assert flag_probability(zero, [math.log(0.9), 0.0], None, False) == pytest.approx(0.1)
    # the digit inside a merged token: alternatives are read in context
    merged = ["error_flag:", " 1\n"]
    tops = [{}, {" 1\n": math.log(0.3), " 0\n": math.log(0.6)}]
    assert flag_probability(merged, [0.0, math.log(0.3)], tops, True) == pytest.approx(1 / 3)
    # nothing to read: the parsed flag
    assert flag_probability([], [], None, True) == 1.0
    assert flag_probability(["garbage"], [-1.0], None, None) == 0.0


# --------------------------------------------------------------------------------------------------
# the service on the in-memory bus (no model: the baselines)
# --------------------------------------------------------------------------------------------------


def make_service(bus, backend: str = "baseline_last_sentence", **overrides) -> AssessorService:
    settings = AssessorSettings(bus="memory", grpc_port=0, metrics_port=-1, poll_timeout_s=0.1,
                                backend=backend, group_id=f"assessor-{time.monotonic_ns()}", **overrides)
    return AssessorService(settings, bus)


def test_scores_rollouts_with_the_shared_reward(medec_notes):
    bus = MemoryBus()
    service = make_service(bus)
    rollouts = verified_rollouts(medec_notes, "mem", 40)
    results = service.score_groups(as_groups(rollouts))
    last_hits = inject = flags_on_safe = safe = 0
    for original, scored in zip(rollouts, scored_of(results), strict=True):
        assert scored.rollout_id == original.rollout_id and scored.modified_note == original.modified_note
        verdict = scored.verdict
        last_id = max(s.id for s in original.modified_note.sentences)
        assert verdict.parsed and verdict.error_flag and verdict.error_sentence_id == last_id
        assert verdict.assessor_checkpoint_hash == "baseline_last_sentence" and verdict.flag_probability == 1.0
        assert scored.reward == reward.score_rollout(scored, verdict)
        if original.mode == pb.MODE_INJECT:
            inject += 1
            caught = original.changed_sentence_id == last_id
            last_hits += caught
            assert (scored.reward.outcome, scored.reward.total) == ((reward.CAUGHT, -1.0) if caught else
                                                                   (reward.FOOLED, 1.0))
        else:
            safe += 1
            flags_on_safe += 1
            assert (scored.reward.outcome, scored.reward.total) == (reward.FOOLED, 1.0)  # it flags every safe note
    assert inject and safe
    assert REGISTRY.get_sample_value("medserl_detection_rate") == pytest.approx(last_hits / inject)
    assert REGISTRY.get_sample_value("medserl_false_flag_rate") == pytest.approx(flags_on_safe / safe)


def gated_group(medec_notes, prefix: str) -> tuple[pb.RolloutGroup, list[pb.Rollout]]:
    """One inject group: a verified edit, one the verifier rejected, one that did not parse."""
    good, rejected, unparseable = (pb.Rollout.FromString(r.SerializeToString())
                                   for r in verified_rollouts([n for n in medec_notes if n.error_flag], prefix, 3))
    rejected.verification.passed = False
    unparseable.ClearField("verification")
    unparseable.ClearField("modified_note")
    unparseable.changed_sentence_id = -1
    unparseable.parse_error = "no sentence_id line"
    rollouts = [good, rejected, unparseable]
    for i, r in enumerate(rollouts):
        r.group_id, r.rollout_id = f"{prefix}-g", f"{prefix}-g-{i}"
    return pb.RolloutGroup(group_id=f"{prefix}-g", mode=pb.MODE_INJECT, rollouts=rollouts), rollouts


def test_gates_are_scored_without_the_model_and_bad_groups_are_invalid_input(medec_notes):
    detector = ScriptedDetector()
    service = AssessorService(AssessorSettings(metrics_port=-1), MemoryBus(), detector=detector)
    whole, (good, _, _) = gated_group(medec_notes, "gate")
    unverified, empty, medec_mode = as_groups(verified_rollouts(medec_notes, "bad", 3))
    unverified.rollouts[0].ClearField("verification")
    empty.rollouts[0].ClearField("modified_note")
    medec_mode.mode = pb.MODE_MEDEC_INCORRECT
    results = service.score_groups([whole, unverified, empty, medec_mode, pb.RolloutGroup(group_id="none")])
    judged, rejected, unparseable = scored_of(results[:1])
    assert judged.reward.outcome == reward.FOOLED and judged.verdict.parsed  # the script says "no error"
    assert (rejected.reward.outcome, rejected.reward.total, rejected.reward.verifier) == (reward.INVALID, -1.5, -1.5)
    assert (unparseable.reward.outcome, unparseable.reward.total, unparseable.reward.format) == \
        (reward.UNPARSEABLE, -2.0, -2.0)
    assert not rejected.HasField("verdict") and not unparseable.HasField("verdict")
    assert detector.calls == [[(s.id, s.text) for s in good.modified_note.sentences]], "gates never reach the model"
    assert "without a verification report" in str(results[1])
    assert "modified note" in str(results[2])
    assert "has no game reward" in str(results[3])
    assert "without rollouts" in str(results[4])


def test_reward_weights_are_configurable_gates_included(medec_notes):
    service = make_service(MemoryBus(), backend="baseline_no_error", reward_fooled=2.0, reward_caught=-0.5,
                           verifier_penalty=-0.75, format_penalty=-3.0)
    rollouts = verified_rollouts(medec_notes, "w", 10)
    for rollout, scored in zip(rollouts, scored_of(service.score_groups(as_groups(rollouts))), strict=True):
        assert scored.reward.total == (2.0 if rollout.mode == pb.MODE_INJECT else -0.5)  # "no error" misses them all
    whole, _ = gated_group(medec_notes, "wg")
    assert [r.reward.total for r in scored_of(service.score_groups([whole]))] == [2.0, -0.75, -3.0]


def test_an_unparsed_answer_is_judged_once_more_then_excluded(medec_notes):
    first, second, third = verified_rollouts([n for n in medec_notes if n.error_flag], "rejudge", 3)
    key = [tuple((s.id, s.text) for s in r.modified_note.sentences) for r in (first, second, third)]
    flag_it = formats.AssessorOutput(True, first.changed_sentence_id, "Fixed.")
    script = {key[0]: [GARBAGE, flag_it], key[1]: [GARBAGE, GARBAGE]}  # third: "no error" at once
    before = REGISTRY.get_sample_value("medserl_assessor_unparsed_total") or 0.0
    detector = ScriptedDetector(script)
    service = AssessorService(AssessorSettings(metrics_port=-1), MemoryBus(), detector=detector)
    group = pb.RolloutGroup(group_id="rejudge-g", mode=pb.MODE_INJECT, rollouts=[first, second, third])
    caught, excluded, fooled = scored_of(service.score_groups([group]))
    assert caught.verdict.parsed and (caught.reward.outcome, caught.reward.total) == (reward.CAUGHT, -1.0)
    assert not excluded.verdict.parsed and excluded.verdict.parse_error
    assert excluded.reward == pb.RewardParts(total=0.0, outcome=reward.EXCLUDED, excluded=True), "never a win"
    assert fooled.reward.outcome == reward.FOOLED
    assert detector.calls == [list(key[0]), list(key[1]), list(key[2]), list(key[0]), list(key[1])]
    assert REGISTRY.get_sample_value("medserl_assessor_unparsed_total") == before + 1

    once = ScriptedDetector(script)
    service = AssessorService(AssessorSettings(metrics_port=-1, rejudge_unparsed=False), MemoryBus(), detector=once)
    outcomes = [r.reward.outcome for r in scored_of(service.score_groups([group]))]
    assert outcomes == [reward.EXCLUDED, reward.EXCLUDED, reward.FOOLED] and len(once.calls) == 3


def test_the_assessor_is_frozen(tiny_model_dir):
    service = make_service(MemoryBus(), backend="transformers", model=str(tiny_model_dir), max_new_tokens=4)
    recorded = service.checkpoint_hash
    assert recorded == checkpoint_sha256(tiny_model_dir)
    with pytest.raises(FrozenAssessorError, match="frozen"):
        service.load_policy(7, str(tiny_model_dir), "full")
    assert service.checkpoint_hash == recorded == service.detector.checkpoint_hash
    assert all("policy" not in t for w in service.workers() for t in w.topics), "no policy-update consumer"


# --------------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------------


def test_grpc_assess_and_assess_many_reject_bad_notes_and_keep_serving(medec_notes, tiny_model_dir):
    bus = MemoryBus()
    service = make_service(bus, backend="transformers", model=str(tiny_model_dir), max_new_tokens=24)
    runtime = ServiceRuntime(service).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = assessor_pb2_grpc.AssessorStub(channel)
            good = as_note("should-not-matter", medec_notes[0].sentences)
            verdict = stub.Assess(assessor_pb2.AssessRequest(note=good), timeout=60)
            assert verdict.assessor_checkpoint_hash == checkpoint_sha256(tiny_model_dir)
            assert 0.0 <= verdict.flag_probability <= 1.0 and verdict.latency_ms > 0
            assert verdict.parsed or verdict.parse_error
            for bad in (pb.Note(note_id="empty"), pb.Note(sentences=[pb.Sentence(id=1, text="a"), pb.Sentence(id=1, text="b")]),
                        pb.Note(text="x" * 50_000)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Assess(assessor_pb2.AssessRequest(note=bad), timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "invalid note" in err.value.details()
            # text without sentence ids is segmented by the service
            by_text = stub.Assess(assessor_pb2.AssessRequest(note=pb.Note(text=medec_notes[1].text)), timeout=60)
            assert by_text.assessor_checkpoint_hash
            many = list(stub.AssessMany(iter([assessor_pb2.AssessRequest(note=as_note("", n.sentences))
                                              for n in medec_notes[:3]]), timeout=120))
            assert len(many) == 3
            stream = stub.AssessMany(iter([assessor_pb2.AssessRequest(note=good),
                                           assessor_pb2.AssessRequest(note=pb.Note())]), timeout=60)
            first = next(stream)
            assert first.assessor_checkpoint_hash
            with pytest.raises(grpc.RpcError) as err:
                next(stream)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "#1" in err.value.details()
            assert stub.Assess(assessor_pb2.AssessRequest(note=good), timeout=60).assessor_checkpoint_hash
    finally:
        runtime.shutdown()
    assert REGISTRY.get_sample_value("medserl_grpc_requests_total",
                                     {"service": "assessor", "method": "Assess", "code": "INVALID_ARGUMENT"}) >= 3
    assert REGISTRY.get_sample_value("medserl_generated_tokens_total", {"service": "assessor"}) > 0


def test_the_model_never_sees_ids_or_neighbours(medec_notes):
    seen: list = []

    class Recording(BaselineDetector):
        def detect(self, notes):
            seen.extend(notes)
            return super().detect(notes)

    service = AssessorService(AssessorSettings(backend="baseline_no_error", metrics_port=-1), MemoryBus(),
                              detector=Recording("baseline_no_error"))
    rollouts = verified_rollouts(medec_notes, "ids", 3)
    service.score_groups(as_groups(rollouts))
    assert len(seen) == 3
    for note, rollout in zip(seen, rollouts, strict=True):
        assert note == [(s.id, s.text) for s in rollout.modified_note.sentences]
        prompt = formats.assessor_messages(note)
        assert rollout.rollout_id not in str(prompt) and rollout.seed_note_id not in str(prompt)


# --------------------------------------------------------------------------------------------------
# processes and Kafka
# --------------------------------------------------------------------------------------------------


def test_serve_assessor_with_a_baseline_needs_no_model(medec_notes):
    """``medserl serve assessor --set backend=baseline_last_sentence`` starts, answers and stops cleanly."""
    cmd = [sys.executable, "-m", "medserl_cli", "serve", "assessor", "--bus", "memory", "--grpc-port", "0",
           "--metrics-port", "0", "--set", "backend=baseline_last_sentence"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=60)
        assert line.startswith("READY"), line
        port = int(dict(p.split("=") for p in line.split()[1:])["grpc_port"])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            verdict = assessor_pb2_grpc.AssessorStub(channel).Assess(
                assessor_pb2.AssessRequest(note=as_note("n", medec_notes[0].sentences)), timeout=30)
        assert verdict.error_flag and verdict.error_sentence_id == max(int(i) for i, _ in medec_notes[0].sentences)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.kafka
def test_kafka_round_trip_with_the_tiny_model(kafka_bootstrap, tiny_model_dir, medec_notes, unique, monkeypatch):
    from services.assessor import service as assessor_module
    from services.common.kafka_bus import KafkaBus

    # topics of this test only, so no other test's assessor scores these rollouts (or we theirs)
    verified_topic, scored_topic = f"{ROLLOUTS_VERIFIED}.{unique}", f"{ROLLOUTS_SCORED}.{unique}"
    monkeypatch.setattr(assessor_module, "ROLLOUTS_VERIFIED", verified_topic)
    monkeypatch.setattr(assessor_module, "ROLLOUTS_SCORED", scored_topic)
    dead_topic = f"{DEAD_LETTER}.{unique}"
    monkeypatch.setattr(assessor_module, "DEAD_LETTER", dead_topic)
    bus = KafkaBus(kafka_bootstrap)
    settings = AssessorSettings(bus="kafka", kafka_bootstrap=kafka_bootstrap, grpc_port=0, metrics_port=-1,
                                group_id=f"assessor-{unique}", poll_timeout_s=0.2, backend="transformers",
                                model=str(tiny_model_dir), max_new_tokens=24)
    service = AssessorService(settings, bus)
    runtime = ServiceRuntime(service).start()
    rollouts = verified_rollouts(medec_notes, f"k-{unique}", 8)
    bad = pb.RolloutGroup(group_id=f"k-{unique}-bad", mode=pb.MODE_INJECT,  # no verification report
                          rollouts=[pb.Rollout(rollout_id=f"k-{unique}-bad-0", mode=pb.MODE_INJECT)])
    try:
        producer = bus.producer()
        for g in [*as_groups(rollouts), bad]:
            producer.publish(verified_topic, g.SerializeToString(), key=g.group_id)
        producer.publish(verified_topic, b"\xff\xfe not protobuf", key="junk")
        producer.flush()
        wanted = {r.rollout_id for r in rollouts}
        consumer = bus.consumer([scored_topic], f"check-{unique}")
        scored: dict[str, pb.Rollout] = {}
        deadline = time.monotonic() + 180
        while not wanted <= set(scored) and time.monotonic() < deadline:
            for record in consumer.poll(0.5, 500):
                for rollout in pb.RolloutGroup.FromString(record.value).rollouts:
                    if rollout.rollout_id in wanted:
                        scored[rollout.rollout_id] = rollout
        consumer.close()
        assert set(scored) == wanted
        letters = [pb.DeadLetter.FromString(r.value) for r in drain(bus, dead_topic, f"dl-{unique}", 2, 60)]
        reasons = {letter.reason for letter in letters if letter.service == "assessor"}
        assert any("without a verification report" in r for r in reasons)
        assert any("undecodable" in r for r in reasons)
    finally:
        runtime.shutdown()
        bus.close()
    expected_hash = checkpoint_sha256(tiny_model_dir)
    for original in rollouts:
        rollout = scored[original.rollout_id]
        verdict = rollout.verdict
        assert verdict.assessor_checkpoint_hash == expected_hash
        assert 0.0 <= verdict.flag_probability <= 1.0
        assert verdict.parsed or verdict.parse_error  # an untrained tiny model mostly writes garbage
        assert rollout.reward == reward.score_rollout(rollout, verdict)
        assert rollout.reward.excluded == (not verdict.parsed), "an unparsed answer is never a win"
        assert rollout.modified_note == original.modified_note


def test_flag_probability_finds_the_digit_in_the_tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for flag in (True, False):
        text = formats.render_assessor_output(formats.AssessorOutput(flag, 3 if flag else -1, "Fixed." if flag else None))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = [tokenizer.decode([i]) for i in ids]
        digit = next(i for i, tok in enumerate(tokens) if tok.strip() in ("0", "1"))
        lps = [-0.01] * len(tokens)
        lps[digit] = math.log(0.8)
        expected = 0.8 if flag else 0.2
        assert flag_probability(tokens, lps, None, flag) == pytest.approx(expected)


def test_assessor_on_the_vllm_backend(tiny_model_dir, medec_notes):
    """Verdicts from a scripted vLLM server: parsed, P(error) from the returned log-probs, hash recorded."""
    from tests.fake_vllm_server import FakeVllmServer

    def responder(prompt_ids, model, rng):
        return "error_flag: 1\nerror_sentence_id: 2\ncorrected_sentence: The corrected sentence."

    with FakeVllmServer(tiny_model_dir, served_name="assessor-base", responder=responder) as server:
        service = make_service(MemoryBus(), backend="vllm", base_url=server.base_url, model="assessor-base",
                               tokenizer=str(tiny_model_dir))
        assert service.checkpoint_hash == checkpoint_sha256(tiny_model_dir)
        rollouts = verified_rollouts(medec_notes, "vllm-assess", 4)
        scored = scored_of(service.score_groups(as_groups(rollouts)))
        (call,) = server.state.completions()
    assert call.body["temperature"] == 0.0 and call.body["logprobs"] == 5 and len(call.body["prompt"]) == 4
    for original, rollout, choice in zip(rollouts, scored, call.response["choices"], strict=True):
        verdict = rollout.verdict
        assert verdict.parsed and verdict.error_flag and verdict.error_sentence_id == 2
        assert verdict.corrected_sentence == "The corrected sentence."
        tokens = [server.state.tokenizer.decode([t]) for t in choice["token_ids"]]
        digit = next(i for i, tok in enumerate(tokens) if tok.strip() == "1")
        assert verdict.flag_probability == pytest.approx(math.exp(choice["logprobs"]["token_logprobs"][digit]))
        assert rollout.reward == reward.score_rollout(original, verdict)
