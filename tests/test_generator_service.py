"""The generator service: gRPC jobs (submit, status, stream); verification is a library call, kept examples
go to sft.verified and dropped ones to sft.rejected (in-memory bus and a real broker)."""

from __future__ import annotations

import time

import grpc
import pytest

from medec.prepare import PairRecord, load_pairs_jsonl
from medserl.v1 import generator_pb2, generator_pb2_grpc, verifier_pb2, verifier_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.common.settings import load_settings
from services.common.topics import ALL_TOPICS, SFT_REJECTED, SFT_VERIFIED
from services.generator.service import GeneratorService, GeneratorSettings
from services.verifier.service import VerifierService, VerifierSettings


def note_pair(p: PairRecord) -> pb.NotePair:
    def note(sentences, text):
        return pb.Note(note_id=p.pair_id, text=text, sentences=[pb.Sentence(id=i, text=s) for i, s in sentences])

    return pb.NotePair(pair_id=p.pair_id, incorrect=note(p.incorrect_sentences, p.incorrect_note),
                       correct=note(p.correct_sentences, p.correct_note), error_type=p.error_type,
                       error_sentence_id=p.error_sentence_id, error_sentence=p.error_sentence,
                       corrected_sentence=p.corrected_sentence)


@pytest.fixture
def medec_pairs(medec_path) -> list[PairRecord]:
    return load_pairs_jsonl(medec_path / "train-pairs" / "medec_ms_train_pairs.jsonl")[:40]


def start(bus, tmp_path, monkeypatch, **overrides):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings(GeneratorSettings, overrides={"grpc_port": 0, "metrics_port": -1, "grpc_host": "127.0.0.1",
                                                            "output_root": str(tmp_path / "jobs"), "poll_timeout_s": 0.1,
                                                            **overrides}, env={})
    runtime = ServiceRuntime(GeneratorService(settings, bus)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    return runtime, channel, generator_pb2_grpc.GeneratorStub(channel)


def wait_done(stub, job_id: str, timeout_s: float = 60) -> generator_pb2.JobStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = stub.GetJobStatus(generator_pb2.JobRef(job_id=job_id))
        if status.state not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def broken_pair(p: PairRecord) -> pb.NotePair:
    """A pair whose incorrect note differs in a second sentence: its INCORRECT side fails verification."""
    pair = note_pair(p)
    other = next(s for s in pair.incorrect.sentences if s.id != p.error_sentence_id)
    other.text += " Noted twice."
    pair.incorrect.text = " ".join(s.text for s in pair.incorrect.sentences)
    return pair


def drain(bus, topic: str, group: str, want: int, timeout_s: float = 60.0) -> list[pb.SftExample]:
    consumer = bus.consumer([topic], group)
    got: list[pb.SftExample] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for record in consumer.poll(0.5, 100):
                example = pb.SftExample()
                example.ParseFromString(record.value)
                got.append(example)
    finally:
        consumer.close()
    return got


def verify_request(e: pb.SftExample) -> verifier_pb2.VerifyRequest:
    return verifier_pb2.VerifyRequest(id=e.example_id, mode=e.mode, original=e.original, modified=e.modified,
                                      error_sentence_id=e.changed_sentence_id, reasoning_json=e.reasoning_json,
                                      claimed_error_type=e.error_type)


def test_grpc_job_streams_the_kept_examples_and_publishes_kept_and_rejected(tmp_path, monkeypatch, medec_pairs):
    """The one SFT verification path: a library call in the generator; kept -> sft.verified, dropped ->
    sft.rejected, nothing else on the bus; the verifier service's gRPC Verify agrees with every report."""
    bus = MemoryBus()
    runtime, channel, stub = start(bus, tmp_path, monkeypatch)
    verifier = ServiceRuntime(VerifierService(VerifierSettings(grpc_port=0, grpc_host="127.0.0.1", metrics_port=-1),
                                              bus)).start()
    verifier_channel = grpc.insecure_channel(f"127.0.0.1:{verifier.grpc_port}")
    try:
        bad = medec_pairs[5]
        pairs = [note_pair(p) for p in medec_pairs[:4]] + [broken_pair(bad)]
        ref = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=pairs, add_reasoning=True, seed=3))
        examples = list(stub.StreamExamples(ref, timeout=60))
        status = wait_done(stub, ref.job_id)
        assert status.state == "input_exhausted" and status.pairs_total == 5
        assert (status.examples_accepted, status.examples_rejected) == (8, 2)
        assert sorted(e.kind for e in examples) == ["CORRECT"] * 4 + ["INCORRECT"] * 4
        by_pair = {p.pair_id: p for p in medec_pairs}
        for e in examples:
            assert e.verification.passed and e.prompt_hash and not e.model_written
            pair = by_pair[e.pair_id]
            if e.kind == "INCORRECT":
                assert e.mode == pb.MODE_MEDEC_INCORRECT and e.modified.text == pair.incorrect_note
                assert e.changed_sentence_id == pair.error_sentence_id and e.reasoning_json
            else:
                assert e.mode == pb.MODE_PARAPHRASE
                changed = [a.id for a, b in zip(e.original.sentences, e.modified.sentences, strict=True) if a.text != b.text]
                assert changed == [e.changed_sentence_id]

        # exactly the kept examples on sft.verified, the two of the broken pair on sft.rejected, nothing else
        assert (sum(bus.end_offsets(SFT_VERIFIED)), sum(bus.end_offsets(SFT_REJECTED))) == (8, 2)
        assert all(sum(bus.end_offsets(t)) == 0 for t in ALL_TOPICS if t not in (SFT_VERIFIED, SFT_REJECTED))
        kept, rejected = drain(bus, SFT_VERIFIED, "t-kept", 8), drain(bus, SFT_REJECTED, "t-rejected", 2)
        assert sorted(e.example_id for e in kept) == sorted(e.example_id for e in examples)
        assert all(e.verification.passed and e.verification.subject_id == e.example_id for e in kept)
        assert sorted(e.example_id for e in rejected) == [f"{bad.pair_id}:correct", f"{bad.pair_id}:incorrect"]
        failed = {e.kind: {c.name for c in e.verification.checks if not c.passed} for e in rejected}
        assert not any(e.verification.passed for e in rejected)
        assert failed["CORRECT"] == {"pair_complete"}  # it passed; dropped with its pair for the 50/50 balance
        assert failed["INCORRECT"] and "pair_complete" not in failed["INCORRECT"]

        # the verifier service (gRPC) runs the same checks: it agrees with every published report
        verifier_stub = verifier_pb2_grpc.VerifierStub(verifier_channel)
        broken = broken_pair(bad)
        requests = [verify_request(e) for e in kept] + [verifier_pb2.VerifyRequest(
            id="broken", mode=pb.MODE_MEDEC_INCORRECT, original=broken.correct, modified=broken.incorrect,
            error_sentence_id=bad.error_sentence_id, claimed_error_type=bad.error_type)]
        reports = list(verifier_stub.VerifyMany(iter(requests), timeout=60))
        assert [r.passed for r in reports] == [True] * len(kept) + [False]
        assert {c.name for c in reports[-1].checks if not c.passed} == failed["INCORRECT"]
    finally:
        channel.close()
        verifier_channel.close()
        runtime.shutdown()
        verifier.shutdown()


def test_bad_requests_are_invalid_argument_and_the_service_keeps_serving(tmp_path, monkeypatch, medec_pairs):
    runtime, channel, stub = start(MemoryBus(), tmp_path, monkeypatch)
    try:
        good = note_pair(medec_pairs[0])
        mismatched = note_pair(medec_pairs[1])
        del mismatched.correct.sentences[-1]
        bad_type = note_pair(medec_pairs[2])
        bad_type.error_type = "astrology"
        bad_id = note_pair(medec_pairs[3])
        bad_id.error_sentence_id = 999
        cases = [
            (generator_pb2.SubmitPairsRequest(), "pairs is empty"),
            (generator_pb2.SubmitPairsRequest(pairs=[mismatched]), "same sentence ids"),
            (generator_pb2.SubmitPairsRequest(pairs=[bad_type]), "error_type must be one of"),
            (generator_pb2.SubmitPairsRequest(pairs=[bad_id]), "error_sentence_id 999"),
            (generator_pb2.SubmitPairsRequest(pairs=[good, good]), "unique"),
            (generator_pb2.SubmitPairsRequest(pairs=[good], max_cost_usd=-1), "max_cost_usd"),
        ]
        for request, reason in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitPairs(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJobStatus(generator_pb2.JobRef(job_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        ref = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=[good]))
        assert wait_done(stub, ref.job_id).examples_accepted == 2
    finally:
        channel.close()
        runtime.shutdown()


@pytest.mark.kafka
def test_kafka_job_publishes_kept_and_rejected_examples(tmp_path, monkeypatch, medec_pairs, kafka_bootstrap, unique):
    from services.common.kafka_bus import KafkaBus

    suffix = f".{unique}"
    bus = KafkaBus(kafka_bootstrap)
    runtime, channel, stub = start(bus, tmp_path, monkeypatch, topic_suffix=suffix)
    try:
        pairs = [note_pair(p) for p in medec_pairs[:2]] + [broken_pair(medec_pairs[5])]
        ref = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=pairs, add_reasoning=True))
        status = wait_done(stub, ref.job_id)
        assert (status.examples_accepted, status.examples_rejected) == (4, 2)
        kept = drain(bus, SFT_VERIFIED + suffix, f"kept-{unique}", 4)
        rejected = drain(bus, SFT_REJECTED + suffix, f"rejected-{unique}", 2)
        assert len(kept) == 4 and all(e.verification.passed for e in kept)
        assert {e.pair_id for e in kept} == {p.pair_id for p in medec_pairs[:2]}
        assert len(rejected) == 2 and not any(e.verification.passed for e in rejected)
        assert {e.pair_id for e in rejected} == {medec_pairs[5].pair_id}
    finally:
        channel.close()
        runtime.shutdown()
        bus.close()

