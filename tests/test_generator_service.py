"""The generator service: gRPC jobs (submit, status, stream) and Kafka (sft.candidates -> verifier -> back)."""

from __future__ import annotations

import time

import grpc
import pytest

from medec.prepare import PairRecord, load_pairs_jsonl
from medserl.v1 import generator_pb2, generator_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.common.settings import load_settings
from services.common.topics import SFT_CANDIDATES
from services.generator.service import GeneratorService, GeneratorSettings


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


def test_grpc_job_streams_a_balanced_verified_set_and_publishes_candidates(tmp_path, monkeypatch, medec_pairs):
    bus = MemoryBus()
    runtime, channel, stub = start(bus, tmp_path, monkeypatch)
    try:
        ref = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:5]],
                                                                add_reasoning=True, seed=3))
        examples = list(stub.StreamExamples(ref, timeout=60))
        status = wait_done(stub, ref.job_id)
        assert status.state == "done" and status.pairs_total == 5 and status.examples_accepted == 10
        assert sorted(e.kind for e in examples) == ["CORRECT"] * 5 + ["INCORRECT"] * 5
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
        # every accepted example went out on sft.candidates for the verifier service
        consumer = bus.consumer([SFT_CANDIDATES], "test-candidates")
        published = []
        for record in consumer.poll(1.0, 100):
            example = pb.SftExample()
            example.ParseFromString(record.value)
            published.append(example.example_id)
        assert sorted(published) == sorted(e.example_id for e in examples)
    finally:
        channel.close()
        runtime.shutdown()


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
def test_kafka_candidates_are_verified_by_the_verifier_service_and_collected(tmp_path, monkeypatch, medec_pairs,
                                                                             kafka_bootstrap, unique):
    from services.common.kafka_bus import KafkaBus
    from services.verifier.service import VerifierService, VerifierSettings

    suffix = f".{unique}"
    gen_bus, ver_bus = KafkaBus(kafka_bootstrap), KafkaBus(kafka_bootstrap)
    verifier = ServiceRuntime(VerifierService(load_settings(VerifierSettings, overrides={
        "grpc_port": 0, "metrics_port": -1, "grpc_host": "127.0.0.1", "topic_suffix": suffix, "poll_timeout_s": 0.1,
        "group_id": f"verifier-{unique}"}, env={}), ver_bus)).start()
    runtime, channel, stub = start(gen_bus, tmp_path, monkeypatch, topic_suffix=suffix, group_id=f"generator-{unique}")
    try:
        ref = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:3]],
                                                                add_reasoning=True))
        assert wait_done(stub, ref.job_id).examples_accepted == 6
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            status = stub.GetJobStatus(ref)
            if "verifier: 6 verified, 0 rejected" in status.message:
                break
            time.sleep(0.2)
        assert status is not None and "verifier: 6 verified, 0 rejected" in status.message, status.message
    finally:
        channel.close()
        runtime.shutdown()
        verifier.shutdown()
        gen_bus.close()
        ver_bus.close()
