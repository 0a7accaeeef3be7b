"""The verifier service end to end: a real gRPC server on a free port (any example, SFT or rollout), and a
Kafka round trip of rollout groups with the service's own worker against a real broker (SFT examples never reach
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
from services.common.runtime import ServiceRuntime
from services.verifier.service import VerifierService, VerifierSettings
from tests.rl_fakes import group, read_all, rollout

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
# rollout groups over Kafka and on the in-memory bus
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


def _groups(val) -> dict[str, pb.RolloutGroup]:
    """A group of four inject rollouts (valid, no fact changed, unparsed, blank edit), a paraphrase
    group, and groups the verifier cannot use at all (empty / oversized seed, wrong mode, no rollouts)."""
    seed = val["ms-val-5"].sentences  # sentence 7: "Chlamydia trachomatis is the causal pathogen."
    seed_note = note(seed, "ms-val-5")
    inject = [
        rollout("g-inject", 0, pb.MODE_INJECT, modified=edit(seed, 7, "Neisseria gonorrhoeae is the causal pathogen."),
                changed=7, error_type="causalOrganism"),
        rollout("g-inject", 1, pb.MODE_INJECT, changed=7, error_type="causalOrganism",
                modified=edit(seed, 7, "Chlamydia trachomatis is thought to be the causal pathogen.")),
        rollout("g-inject", 2, pb.MODE_INJECT, parse_error="no sentence_id line"),
        rollout("g-inject", 3, pb.MODE_INJECT, modified=seed, changed=7, error_type="diagnosis"),
    ]
    inject[3].modified_note.CopyFrom(pb.Note(text=" \n\n  "))
    paraphrase = [rollout("g-para", 0, pb.MODE_PARAPHRASE, changed=7,
                          modified=edit(seed, 7, "The causal pathogen is Chlamydia trachomatis."))]
    unusable = [rollout("x", 0, pb.MODE_INJECT, modified=seed, changed=7, error_type="diagnosis")]
    return {
        "g-inject": group("g-inject", pb.MODE_INJECT, seed_note, inject, version=3),
        "g-para": group("g-para", pb.MODE_PARAPHRASE, seed_note, paraphrase, version=3),
        "g-empty": group("g-empty", pb.MODE_INJECT, pb.Note(), unusable),
        # 600 kB: over the verifier's note limit, under Kafka's message limit
        "g-huge": group("g-huge", pb.MODE_INJECT, pb.Note(text="Pain. " * 100_000), unusable),
        "g-mode": group("g-mode", pb.MODE_MEDEC_INCORRECT, seed_note, unusable),
        "g-none": group("g-none", pb.MODE_INJECT, seed_note, []),
    }


def _check_verified(verified: list[pb.RolloutGroup], sent: dict[str, pb.RolloutGroup]) -> None:
    """Both usable groups forwarded whole, each parsed rollout annotated, nothing scored."""
    by_id = {g.group_id: g for g in verified}
    assert sorted(by_id) == ["g-inject", "g-para"]
    for gid, g in by_id.items():
        original = sent[gid]
        assert [r.rollout_id for r in g.rollouts] == [r.rollout_id for r in original.rollouts], "the whole group"
        assert g.seed_note == original.seed_note and g.policy_version == 3
        assert all(r.policy_version == 3 and not r.HasField("reward") and not r.HasField("verdict")
                   for r in g.rollouts), "the verifier never scores"
    good, no_fact, unparsed, blank = by_id["g-inject"].rollouts
    assert good.verification.passed and good.verification.subject_id == good.rollout_id
    assert list(good.verification.changed_sentence_ids) == [7]
    assert not no_fact.verification.passed
    assert "clinical_entity_changed" in {c.name for c in no_fact.verification.checks if not c.passed}
    assert unparsed == sent["g-inject"].rollouts[2], "an unparsed rollout passes through untouched"
    assert not blank.verification.passed
    assert [(c.name, "modified note is empty" in c.detail) for c in blank.verification.checks] == [("verifier_input", True)]
    (para,) = by_id["g-para"].rollouts
    assert para.verification.passed and para.verification.mode == pb.MODE_PARAPHRASE


def _check_letters(letters: list[pb.DeadLetter]) -> None:
    reasons = {letter.key.decode(): letter.reason for letter in letters}
    assert set(reasons) == {"g-empty", "g-huge", "g-mode", "g-none", "g-utf8"}
    assert "original note is empty" in reasons["g-empty"]
    assert "600000 characters (limit" in reasons["g-huge"] and "Pain." not in reasons["g-huge"]
    assert "not inject or paraphrase" in reasons["g-mode"]
    assert "without rollouts" in reasons["g-none"]
    assert "undecodable" in reasons["g-utf8"]
    assert all(letter.service == "verifier" and letter.source_topic.startswith(topics.ROLLOUTS_GENERATED)
               for letter in letters)


# the bytes path: a payload protobuf rejects (field 1, a string, holding invalid UTF-8)
UNDECODABLE = b"\x0a\x04\xff\xfe\xc3\x28"


@pytest.mark.kafka
def test_kafka_round_trip(kafka_bootstrap, unique, val):
    from services.common.kafka_bus import KafkaBus

    bus = KafkaBus(kafka_bootstrap)
    settings = VerifierSettings(bus="kafka", kafka_bootstrap=kafka_bootstrap, grpc_port=0, grpc_host="127.0.0.1",
                                metrics_port=-1, topic_suffix=f".{unique}", group_id=f"verifier-{unique}",
                                poll_timeout_s=0.2)
    service = VerifierService(settings, bus)
    runtime = ServiceRuntime(service).start()
    sent = _groups(val)
    try:
        producer = bus.producer()
        for g in sent.values():
            producer.publish(service.topic(topics.ROLLOUTS_GENERATED), g.SerializeToString(), key=g.group_id)
        producer.publish(service.topic(topics.ROLLOUTS_GENERATED), UNDECODABLE, key="g-utf8")
        producer.flush()

        verified = _drain(bus, service.topic(topics.ROLLOUTS_VERIFIED), f"t1-{unique}", 2, pb.RolloutGroup)
        letters = _drain(bus, service.topic(topics.DEAD_LETTER), f"t5-{unique}", 5, pb.DeadLetter)
        _check_verified(verified, sent)
        _check_letters(letters)
        assert not _drain(bus, service.topic(topics.ROLLOUTS_SCORED), f"t2-{unique}", 1, pb.RolloutGroup, timeout_s=2)
        assert not runtime.failed

        # and it keeps serving after the bad ones
        follow = pb.RolloutGroup()
        follow.CopyFrom(sent["g-para"])
        follow.group_id = "g-after"
        producer.publish(service.topic(topics.ROLLOUTS_GENERATED), follow.SerializeToString(), key="g-after")
        producer.flush()
        after = _drain(bus, service.topic(topics.ROLLOUTS_VERIFIED), f"t6-{unique}", 3, pb.RolloutGroup)
        assert "g-after" in {g.group_id for g in after}
    finally:
        runtime.shutdown()
        bus.close()


def test_memory_bus_workers_gate_groups_like_kafka(val):
    """Embedded mode: the same worker on the in-memory bus (fast, no broker)."""
    bus = MemoryBus()
    settings = VerifierSettings(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1, poll_timeout_s=0.05)
    service = VerifierService(settings, bus)
    bus.ensure_topics(list(service.topics()))
    producer = bus.producer()
    sent = _groups(val)
    for g in sent.values():
        producer.publish(topics.ROLLOUTS_GENERATED, g.SerializeToString(), key=g.group_id)
    producer.publish(topics.ROLLOUTS_GENERATED, UNDECODABLE, key="g-utf8")
    (worker,) = service.workers()
    while worker.run_once():
        pass
    _check_verified(read_all(bus, topics.ROLLOUTS_VERIFIED, "m1", pb.RolloutGroup), sent)
    _check_letters(read_all(bus, topics.DEAD_LETTER, "m3", pb.DeadLetter))
    assert read_all(bus, topics.ROLLOUTS_SCORED, "m2", pb.RolloutGroup) == []
