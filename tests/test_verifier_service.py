"""The verifier service end to end: a real gRPC server on a free port (any example, SFT or rollout), and a
Kafka round trip of rollouts with the service's own worker against a real broker (SFT examples never reach
the verifier over Kafka: the generator verifies them with a library call). Bad input is INVALID_ARGUMENT /
a dead letter with a reason, and the service keeps serving afterwards."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import REGISTRY

from medec.prepare import pair_from_note, read_medec_csv
from medserl.v1 import messages_pb2 as pb
from medserl.v1 import verifier_pb2, verifier_pb2_grpc
from services.common import topics
from services.common.bus import MemoryBus
from services.common.reward import INVALID, UNPARSEABLE, gate_reward
from services.common.runtime import ServiceRuntime
from services.verifier.service import VerifierService, VerifierSettings

VAL = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


def note(sentences, note_id="n") -> pb.Note:
    return pb.Note(note_id=note_id, sentences=[pb.Sentence(id=i, text=t) for i, t in sentences])


@pytest.fixture(scope="module")
def val(medec_path):
    notes, _ = read_medec_csv(medec_path / VAL)
    return {n.note_id: n for n in notes}


def edit(sentences, sid, text):
    return [(i, text if i == sid else s) for i, s in sentences]


@pytest.fixture(scope="module")
def server():
    settings = VerifierSettings(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1)
    runtime = ServiceRuntime(VerifierService(settings, MemoryBus())).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield verifier_pb2_grpc.VerifierStub(channel), channel
    channel.close()
    runtime.shutdown()


def _sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_grpc_verify_passes_a_paraphrase_and_rejects_a_drug_swap(server, val):
    stub, _ = server
    original = val["ms-val-11"].sentences
    before = (_sample("medserl_verifications_total", {"mode": "paraphrase", "passed": "false"}),
              _sample("medserl_verifier_check_failures_total", {"mode": "paraphrase", "check": "drug_preserved"}))
    ok = stub.Verify(verifier_pb2.VerifyRequest(
        id="p1", mode=pb.MODE_PARAPHRASE, original=note(original),
        modified=note(edit(original, 3, "His current medications are glucosamine, amlodipine, and meloxicam."))))
    assert ok.passed and ok.subject_id == "p1" and list(ok.changed_sentence_ids) == [3]
    bad = stub.Verify(verifier_pb2.VerifyRequest(
        id="p2", mode=pb.MODE_PARAPHRASE, original=note(original),
        modified=note(edit(original, 3, "Current medications include glucosamine, amlodipine, and ibuprofen."))))
    assert not bad.passed
    assert "drug_preserved" in {c.name for c in bad.checks if not c.passed}
    after = (_sample("medserl_verifications_total", {"mode": "paraphrase", "passed": "false"}),
             _sample("medserl_verifier_check_failures_total", {"mode": "paraphrase", "check": "drug_preserved"}))
    assert after == (before[0] + 1, before[1] + 1)
    assert _sample("medserl_verify_seconds_count", {"mode": "paraphrase"}) >= 2


def test_grpc_verify_segments_plain_text_notes(server):
    stub, _ = server
    report = stub.Verify(verifier_pb2.VerifyRequest(
        id="t", mode=pb.MODE_INJECT, claimed_error_type="pharmacotherapy",
        original=pb.Note(text="She has asthma. She uses albuterol daily. Her pulse is 80/min."),
        modified=pb.Note(text="She has asthma. She uses propranolol daily. Her pulse is 80/min.")))
    assert report.passed and list(report.changed_sentence_ids) == [1]


def test_grpc_verify_many_streams_reports_in_order(server, val):
    stub, _ = server
    pairs = [pair_from_note(n) for n in list(val.values()) if n.error_flag][:20]
    requests = [verifier_pb2.VerifyRequest(id=p.pair_id, mode=pb.MODE_MEDEC_INCORRECT, original=note(p.correct_sentences),
                                           modified=note(p.incorrect_sentences), error_sentence_id=p.error_sentence_id)
                for p in pairs]
    reports = list(stub.VerifyMany(iter(requests)))
    assert [r.subject_id for r in reports] == [p.pair_id for p in pairs]
    assert all(r.passed for r in reports)


def _raw_request_with_invalid_utf8() -> bytes:
    request = verifier_pb2.VerifyRequest(id="utf8", mode=pb.MODE_PARAPHRASE, original=pb.Note(text="QQQQ okay."),
                                         modified=pb.Note(text="Fine."))
    raw = request.SerializeToString()
    assert b"QQQQ" in raw
    return raw.replace(b"QQQQ", b"\xff\xfe\xc3\x28")


@pytest.mark.parametrize("case", ["empty", "huge", "no_sentences", "id_out_of_range", "unspecified_mode",
                                  "bad_reasoning", "negative_ids"])
def test_grpc_bad_input_is_invalid_argument_and_the_server_keeps_serving(server, val, case):
    stub, _ = server
    original = val["ms-val-0"].sentences
    pair = pair_from_note(val["ms-val-0"])
    requests = {
        "empty": verifier_pb2.VerifyRequest(id="e", mode=pb.MODE_PARAPHRASE, original=pb.Note(), modified=pb.Note()),
        "huge": verifier_pb2.VerifyRequest(id="h", mode=pb.MODE_PARAPHRASE, original=pb.Note(text="Pain. " * 180_000),
                                           modified=note(original)),
        "no_sentences": verifier_pb2.VerifyRequest(id="s", mode=pb.MODE_INJECT, original=pb.Note(text=" \n \n "),
                                                   modified=note(original)),
        "id_out_of_range": verifier_pb2.VerifyRequest(id="r", mode=pb.MODE_MEDEC_INCORRECT,
                                                      original=note(pair.correct_sentences),
                                                      modified=note(pair.incorrect_sentences), error_sentence_id=77),
        "unspecified_mode": verifier_pb2.VerifyRequest(id="m", original=note(original), modified=note(original)),
        "bad_reasoning": verifier_pb2.VerifyRequest(id="j", mode=pb.MODE_MEDEC_INCORRECT, original=note(pair.correct_sentences),
                                                    modified=note(pair.incorrect_sentences),
                                                    error_sentence_id=pair.error_sentence_id, reasoning_json="{not json"),
        "negative_ids": verifier_pb2.VerifyRequest(id="n", mode=pb.MODE_PARAPHRASE, original=note([(-3, "A.")]),
                                                   modified=note([(-3, "B.")])),
    }
    with pytest.raises(grpc.RpcError) as info:
        stub.Verify(requests[case])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()
    assert "Pain. Pain." not in info.value.details()  # never echoes note text
    # still serving
    assert stub.Verify(verifier_pb2.VerifyRequest(
        id="after", mode=pb.MODE_MEDEC_INCORRECT, original=note(pair.correct_sentences),
        modified=note(pair.incorrect_sentences), error_sentence_id=pair.error_sentence_id)).passed


def test_grpc_invalid_utf8_bytes_are_invalid_argument(server):
    stub, channel = server
    call = channel.unary_unary("/medserl.v1.Verifier/Verify", request_serializer=lambda raw: raw,
                               response_deserializer=pb.VerificationReport.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(_raw_request_with_invalid_utf8())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable" in info.value.details()
    assert stub.Verify(verifier_pb2.VerifyRequest(id="ok", mode=pb.MODE_PARAPHRASE,
                                                  original=pb.Note(text="She has asthma. She is well."),
                                                  modified=pb.Note(text="She has asthma. She feels well."))).passed


# ---------------------------------------------------------------------------------------------
# Kafka round trip
# ---------------------------------------------------------------------------------------------

def _drain(bus, topic, group, want, message_type, timeout_s=60.0):
    consumer = bus.consumer([topic], group)
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for record in consumer.poll(0.5, 100):
                message = message_type()
                message.ParseFromString(record.value)
                got.append(message)
    finally:
        consumer.close()
    return got


def _rollouts(val):
    seed = val["ms-val-5"].sentences  # sentence 7: "Chlamydia trachomatis is the causal pathogen."
    seed_note = note(seed, "ms-val-5")
    good = pb.Rollout(rollout_id="r-good", seed_note_id="ms-val-5", mode=pb.MODE_INJECT, seed_note=seed_note,
                      modified_note=note(edit(seed, 7, "Neisseria gonorrhoeae is the causal pathogen.")),
                      changed_sentence_id=7, claimed_error_type="causalOrganism", policy_version=3)
    no_fact = pb.Rollout(rollout_id="r-nofact", seed_note_id="ms-val-5", mode=pb.MODE_INJECT, seed_note=seed_note,
                         modified_note=note(edit(seed, 7, "Chlamydia trachomatis is thought to be the causal pathogen.")),
                         changed_sentence_id=7, claimed_error_type="causalOrganism", policy_version=3)
    paraphrase = pb.Rollout(rollout_id="r-para", seed_note_id="ms-val-5", mode=pb.MODE_PARAPHRASE, seed_note=seed_note,
                            modified_note=note(edit(seed, 7, "The causal pathogen is Chlamydia trachomatis.")),
                            changed_sentence_id=7, policy_version=3)
    unparseable = pb.Rollout(rollout_id="r-unparsed", seed_note_id="ms-val-5", mode=pb.MODE_INJECT, seed_note=seed_note,
                             completion_text="garbage", reward=gate_reward(parsed=False, verified=True))
    empty = pb.Rollout(rollout_id="r-empty", seed_note_id="ms-val-5", mode=pb.MODE_INJECT, seed_note=pb.Note(),
                       modified_note=pb.Note(), claimed_error_type="diagnosis")
    huge = pb.Rollout(rollout_id="r-huge", seed_note_id="ms-val-5", mode=pb.MODE_INJECT,
                      seed_note=pb.Note(text="Pain. " * 100_000), modified_note=seed_note,
                      claimed_error_type="diagnosis")  # 600 kB: over the verifier's limit, under Kafka's
    blank = pb.Rollout(rollout_id="r-blank", seed_note_id="ms-val-5", mode=pb.MODE_PARAPHRASE, seed_note=seed_note,
                       modified_note=pb.Note(text=" \n\n  "))
    return good, no_fact, paraphrase, unparseable, empty, huge, blank


@pytest.mark.kafka
def test_kafka_round_trip(kafka_bootstrap, unique, val):
    from services.common.kafka_bus import KafkaBus

    bus = KafkaBus(kafka_bootstrap)
    settings = VerifierSettings(bus="kafka", kafka_bootstrap=kafka_bootstrap, grpc_port=0, grpc_host="127.0.0.1",
                                metrics_port=-1, topic_suffix=f".{unique}", group_id=f"verifier-{unique}",
                                poll_timeout_s=0.2)
    service = VerifierService(settings, bus)
    runtime = ServiceRuntime(service).start()
    try:
        producer = bus.producer()
        good, no_fact, paraphrase, unparseable, empty, huge, blank = _rollouts(val)
        for rollout in (good, no_fact, paraphrase, unparseable, empty, huge, blank):
            producer.publish(service.topic(topics.ROLLOUTS_GENERATED), rollout.SerializeToString(), key=rollout.rollout_id)
        # the bytes path: a payload protobuf rejects (field 1, a string, holding invalid UTF-8)
        producer.publish(service.topic(topics.ROLLOUTS_GENERATED), b"\x0a\x04\xff\xfe\xc3\x28", key="r-utf8")
        producer.flush()

        verified = _drain(bus, service.topic(topics.ROLLOUTS_VERIFIED), f"t1-{unique}", 2, pb.Rollout)
        scored = _drain(bus, service.topic(topics.ROLLOUTS_SCORED), f"t2-{unique}", 2, pb.ScoredRollout)
        letters = _drain(bus, service.topic(topics.DEAD_LETTER), f"t5-{unique}", 4, pb.DeadLetter)

        assert sorted(r.rollout_id for r in verified) == ["r-good", "r-para"]
        assert all(r.verification.passed and r.verification.subject_id == r.rollout_id for r in verified)
        assert {r.rollout_id: r.policy_version for r in verified} == {"r-good": 3, "r-para": 3}

        by_id = {s.rollout.rollout_id: s.rollout for s in scored}
        assert sorted(by_id) == ["r-nofact", "r-unparsed"]
        assert by_id["r-unparsed"] == unparseable  # forwarded unchanged
        assert by_id["r-unparsed"].reward.outcome == UNPARSEABLE
        rejected = by_id["r-nofact"]
        assert rejected.reward.outcome == INVALID and rejected.reward.total == -1.0
        assert not rejected.verification.passed
        assert "clinical_entity_changed" in {c.name for c in rejected.verification.checks if not c.passed}

        reasons = {letter.key.decode(): letter.reason for letter in letters}
        assert set(reasons) == {"r-empty", "r-huge", "r-blank", "r-utf8"}
        assert "empty" in reasons["r-empty"]
        assert "600000 characters (limit" in reasons["r-huge"] and "Pain." not in reasons["r-huge"]
        assert "modified note is empty" in reasons["r-blank"]
        assert "undecodable" in reasons["r-utf8"]
        assert all(letter.service == "verifier" for letter in letters)
        assert not runtime.failed

        # and it keeps serving after the bad ones
        follow = pb.Rollout()
        follow.CopyFrom(good)
        follow.rollout_id = "r-after"
        producer.publish(service.topic(topics.ROLLOUTS_GENERATED), follow.SerializeToString(), key="r-after")
        producer.flush()
        after = _drain(bus, service.topic(topics.ROLLOUTS_VERIFIED), f"t6-{unique}", 3, pb.Rollout)
        assert "r-after" in {r.rollout_id for r in after}
    finally:
        runtime.shutdown()
        bus.close()


def test_memory_bus_workers_gate_rollouts_like_kafka(val):
    """Embedded mode: the same workers on the in-memory bus (fast, no broker)."""
    bus = MemoryBus()
    settings = VerifierSettings(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1, poll_timeout_s=0.05)
    service = VerifierService(settings, bus)
    bus.ensure_topics(list(service.topics()))
    producer = bus.producer()
    for rollout in _rollouts(val):
        producer.publish(topics.ROLLOUTS_GENERATED, rollout.SerializeToString(), key=rollout.rollout_id)
    (worker,) = service.workers()
    while worker.run_once():
        pass
    verified = _drain(bus, topics.ROLLOUTS_VERIFIED, "m1", 2, pb.Rollout, timeout_s=2)
    scored = _drain(bus, topics.ROLLOUTS_SCORED, "m2", 2, pb.ScoredRollout, timeout_s=2)
    letters = _drain(bus, topics.DEAD_LETTER, "m3", 3, pb.DeadLetter, timeout_s=2)
    assert sorted(r.rollout_id for r in verified) == ["r-good", "r-para"]
    assert sorted(s.rollout.rollout_id for s in scored) == ["r-nofact", "r-unparsed"]
    assert sorted(letter.key for letter in letters) == [b"r-blank", b"r-empty", b"r-huge"]
    reasons = {letter.key: letter.reason for letter in letters}
    assert "original note is empty" in reasons[b"r-empty"]
