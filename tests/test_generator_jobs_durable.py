"""The generator's job table survives a restart and is shared by replicas (services/generator/jobstore.py):
finished jobs keep their state and output paths, a job stopped mid-run is resumed by the next generator
(redoing no pair, paying nothing twice), a job whose replica died is taken over after its lease (at once
by the same instance), and with resume_interrupted off it is reported interrupted."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import grpc
import pytest

from medec.prepare import PairRecord, load_pairs_jsonl
from medserl.v1 import generator_pb2, generator_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.common.settings import load_settings
from services.common.topics import SFT_VERIFIED
from services.generator import service as service_module
from services.generator.jobstore import JobStore
from services.generator.ledger import Ledger
from services.generator.pipeline import GeneratorConfig, SftGenerator, generate_sft, read_jsonl
from services.generator.service import GeneratorService, GeneratorSettings
from tests.test_generator_service import note_pair


@pytest.fixture
def medec_pairs(medec_path) -> list[PairRecord]:
    return load_pairs_jsonl(medec_path / "train-pairs" / "medec_ms_train_pairs.jsonl")[:12]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def settings_for(tmp_path: Path, **overrides) -> GeneratorSettings:
    return load_settings(GeneratorSettings, overrides={
        "grpc_port": 0, "metrics_port": -1, "grpc_host": "127.0.0.1", "output_root": str(tmp_path / "jobs"),
        "state_dir": str(tmp_path / "state"), "instance_id": "generator-0", "job_lease_s": 1.0,
        "shutdown_grace_s": 20, **overrides}, env={})


def wait_state(get, job_id: str, states: tuple[str, ...], timeout_s: float = 60) -> generator_pb2.JobStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = get(job_id)
        if status.state in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {status.state}, not {states}")


def grpc_status(stub):
    return lambda job_id: stub.GetJobStatus(generator_pb2.JobRef(job_id=job_id), timeout=10)


def service_status(service: GeneratorService):
    return lambda job_id: service.status(service.lookup(job_id))


class SlowGenerator(SftGenerator):
    """The offline pipeline, a pair at a time and slowly enough to stop it in the middle."""

    async def _pair(self, pair, backend, files):
        await asyncio.sleep(0.15)
        return await super()._pair(pair, backend, files)


def combined_ids(out_dir: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(out_dir / "sft_combined_safe.jsonl")]


def verified_ids(bus: MemoryBus) -> list[str]:
    consumer = bus.consumer([SFT_VERIFIED], "t-verified")
    try:
        return [pb.SftExample.FromString(r.value).example_id for r in consumer.poll(0.5, 10_000)]
    finally:
        consumer.close()


def test_a_restart_keeps_finished_jobs_and_resumes_the_one_it_stopped(tmp_path, monkeypatch, medec_pairs):
    monkeypatch.setattr(service_module, "SftGenerator", SlowGenerator)
    bus = MemoryBus()
    first = ServiceRuntime(GeneratorService(settings_for(tmp_path, concurrency=1), bus)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{first.grpc_port}")
    stub = generator_pb2_grpc.GeneratorStub(channel)
    try:
        small = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:2]], seed=5))
        done = wait_state(grpc_status(stub), small.job_id, ("done",))
        assert done.examples_accepted == 4 and done.output_dir == str(tmp_path / "jobs" / small.job_id)
        big = stub.SubmitPairs(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs], seed=7))
        deadline = time.monotonic() + 30
        while stub.GetJobStatus(big, timeout=10).examples_accepted < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        channel.close()
        first.shutdown()  # stops the big job after the pair in hand
    stopped = first.service.status(first.service.jobs[big.job_id])
    assert stopped.state == "interrupted" and 4 <= stopped.examples_accepted < 2 * len(medec_pairs)
    record = JobStore(tmp_path / "state").load(big.job_id)
    assert record["state"] == "interrupted" and record["owner"] == "" and record["epoch"] == 0

    # a new generator on the same volume (another pod: a new instance id) answers for both before it runs anything
    second_service = GeneratorService(settings_for(tmp_path, instance_id="generator-1"), bus)
    assert [j.job_id for j in second_service.list_jobs()] == [small.job_id, big.job_id]
    assert service_status(second_service)(small.job_id).state == "done"
    assert service_status(second_service)(big.job_id).state == "interrupted"
    second = ServiceRuntime(second_service).start()  # its job keeper takes the interrupted job over
    channel = grpc.insecure_channel(f"127.0.0.1:{second.grpc_port}")
    stub = generator_pb2_grpc.GeneratorStub(channel)
    try:
        old = stub.GetJobStatus(small, timeout=10)
        assert (old.state, old.examples_accepted, old.output_dir) == ("done", 4, done.output_dir)
        assert len(list(stub.StreamExamples(small, timeout=30))) == 4  # from its output files
        resumed = wait_state(grpc_status(stub), big.job_id, ("done", "input_exhausted"))
        streamed = [e.example_id for e in stub.StreamExamples(big, timeout=30)]
    finally:
        channel.close()
        second.shutdown()
    out = Path(resumed.output_dir)
    # the resumed job made exactly what one uninterrupted run makes, and did no pair twice
    reference = tmp_path / "reference"
    generate_sft(GeneratorConfig(output_dir=str(reference), num_pairs=len(medec_pairs), seed=7, progress=False),
                 medec_pairs)
    assert combined_ids(out) == combined_ids(reference) and resumed.examples_accepted == len(combined_ids(out))
    assert sorted(streamed) == sorted(combined_ids(out)), "the stream has the examples of both runs"
    progress = [r["pair_id"] for r in read_jsonl(out / "progress.jsonl")]
    assert len(progress) == len(set(progress)) == len(medec_pairs)
    assert set(verified_ids(bus)) == set(combined_ids(out)) | set(combined_ids(Path(done.output_dir)))
    assert JobStore(tmp_path / "state").load(big.job_id)["epoch"] == 1


def test_a_job_whose_generator_died_is_taken_over_after_its_lease_and_the_old_owner_is_fenced(tmp_path, medec_pairs):
    bus = MemoryBus()
    crashed = GeneratorService(settings_for(tmp_path), bus)
    hung = []

    def hang(job, config, pairs):  # the process "dies" here: its thread never writes again
        with job.cond:
            job.state = "running"
        crashed._try_save(job)
        hung.append(job)

    crashed._run_job = hang
    job = crashed.submit(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:3]], seed=1))
    crashed.wait_idle(10)
    assert JobStore(tmp_path / "state").load(job.job_id)["state"] == "running"

    other = GeneratorService(settings_for(tmp_path, instance_id="generator-1", job_lease_s=1.5), bus)
    assert other.maintain() == 0, "its replica wrote a heartbeat less than a lease ago"
    assert service_status(other)(job.job_id).state == "running"
    time.sleep(1.6)
    assert other.maintain() == 1
    status = wait_state(service_status(other), job.job_id, ("done",))
    assert status.examples_accepted == 6 and other.maintain() == 0
    # the old owner wakes up: its next write finds a newer owner, and it stops writing for that job
    assert not crashed._try_save(hung[0]) and hung[0].fenced and hung[0].stop.is_set()
    assert JobStore(tmp_path / "state").load(job.job_id)["state"] == "done"
    other.close()


def test_the_same_instance_takes_its_own_jobs_back_at_once_after_a_crash(tmp_path, medec_pairs):
    crashed = GeneratorService(settings_for(tmp_path, job_lease_s=3600), MemoryBus())
    crashed._run_job = lambda job, config, pairs: None  # killed before the job's thread ran
    job = crashed.submit(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:2]]))
    restarted = ServiceRuntime(GeneratorService(settings_for(tmp_path, job_lease_s=3600), MemoryBus())).start()
    try:
        assert wait_state(service_status(restarted.service), job.job_id, ("done",)).examples_accepted == 4
    finally:
        restarted.shutdown()


def test_with_resume_off_an_abandoned_job_is_reported_interrupted(tmp_path, medec_pairs):
    crashed = GeneratorService(settings_for(tmp_path), MemoryBus())
    crashed._run_job = lambda job, config, pairs: None
    job = crashed.submit(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:2]]))
    restarted = GeneratorService(settings_for(tmp_path, resume_interrupted=False), MemoryBus())
    assert restarted.maintain() == 1 and restarted.maintain() == 0
    status = service_status(restarted)(job.job_id)
    assert status.state == "interrupted" and "resume_interrupted is off" in status.message
    assert not (tmp_path / "jobs" / job.job_id / "progress.jsonl").exists(), "nothing ran"
    assert not restarted.jobs[job.job_id].local


def test_a_resumed_paid_job_gets_only_what_is_left_of_its_budget(tmp_path, medec_pairs, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-000000000000000000")
    crashed = GeneratorService(settings_for(tmp_path), MemoryBus())
    crashed._run_job = lambda job, config, pairs: None
    job = crashed.submit(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:2]],
                                                          max_cost_usd=0.5))
    ledger = Ledger(Path(job.output_dir) / "ledger.sqlite")  # what the first run paid before it died
    ledger.put("k1", pair_id="p", task="paraphrase", attempt=0, prompt_hash="h", model="gpt-4o", params={},
               completion={}, usage=(10, 0, 5), cost_usd=0.5, via="online")
    ledger.close()
    restarted = GeneratorService(settings_for(tmp_path), MemoryBus())
    assert restarted._spent_by("anonymous") == 0.5, "the reservation is still held, in the job table"
    assert restarted.maintain() == 1
    status = service_status(restarted)(job.job_id)
    assert status.state == "budget_exhausted" and status.cost_usd == pytest.approx(0.5)
    assert restarted.spent == {"anonymous": pytest.approx(0.5)} and restarted._spent_by("anonymous") == 0.5


def test_the_job_table_names_only_its_own_files(tmp_path):
    store = JobStore(tmp_path / "state")
    for bad in ("../../etc/passwd", "nope", "0123456789abcdeg", "", "0123456789abcdef/../x"):
        assert store.load(bad) is None
        with pytest.raises(ValueError):
            store.save({"job_id": bad})
    store.save({"job_id": "0123456789abcdef", "state": "done", "created": 1.0})
    (tmp_path / "state" / "fedcba9876543210.json").write_text("{torn")  # a damaged record is skipped, not fatal
    assert [r["job_id"] for r in store.all()] == ["0123456789abcdef"]
    assert store.claim("0123456789abcdef", 1) and not store.claim("0123456789abcdef", 1)
    assert json.loads((tmp_path / "state" / "0123456789abcdef.json").read_text())["state"] == "done"
    store.save_pairs("0123456789abcdef", [])
    assert os.stat(tmp_path / "state" / "0123456789abcdef.pairs.jsonl").st_mode & 0o777 == 0o600, "pairs hold notes"


def test_replicas_share_one_spend_limit_per_caller_and_answer_for_each_others_jobs(tmp_path, medec_pairs,
                                                                                   monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-000000000000000000")
    limits = {"max_cost_per_job_usd": 8.0, "max_spend_per_caller_usd": 20.0, "max_jobs_per_caller": 10}
    a = GeneratorService(settings_for(tmp_path, instance_id="generator-a", **limits), MemoryBus())
    b = GeneratorService(settings_for(tmp_path, instance_id="generator-b", **limits), MemoryBus())
    for replica in (a, b):
        replica._run_job = lambda job, config, pairs: None  # paid jobs that hold their reservation
    request = generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:1]])
    a.submit(request)
    b.submit(request)
    with pytest.raises(service_module.LimitExceeded, match="spend limit of 20"):
        b.submit(generator_pb2.SubmitPairsRequest(pairs=request.pairs, max_cost_usd=5))  # 8 + 8 + 5 > 20
    assert b.spent == {"anonymous": 8.0}, "its own count alone would have let it pass"


def test_another_replica_reports_and_streams_a_job_it_does_not_run(tmp_path, medec_pairs, monkeypatch):
    monkeypatch.setattr(service_module, "SftGenerator", SlowGenerator)
    runner = GeneratorService(settings_for(tmp_path, instance_id="generator-a", concurrency=1), MemoryBus())
    reader = GeneratorService(settings_for(tmp_path, instance_id="generator-b", job_lease_s=60), MemoryBus())
    job = runner.submit(generator_pb2.SubmitPairsRequest(pairs=[note_pair(p) for p in medec_pairs[:4]]))
    wait_state(service_status(reader), job.job_id, ("running",))
    seen = reader.lookup(job.job_id)
    assert not seen.local and reader.maintain() == 0, "a live replica's job is not taken over"
    streamed = [e.example_id for e in reader.stream_from_files(seen, lambda: True)]  # until it ends
    assert runner.wait_idle(30)
    status = service_status(reader)(job.job_id)
    assert status.state == "done" and sorted(streamed) == sorted(combined_ids(Path(status.output_dir)))
    runner.close()
