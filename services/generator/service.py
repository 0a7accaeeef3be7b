"""The generator service: gRPC ``medserl.v1.Generator``; publishes to Kafka, consumes nothing.

* ``SubmitPairs`` starts a job (the SFT pipeline over the given pairs, in a background thread) and
  returns its id; ``GetJobStatus`` reports state, counts and spend; ``StreamExamples`` streams the
  accepted examples (those already made, then the new ones) until the job ends.
* SFT verification is a library call inside the pipeline (``services.verifier.checks.verify``). Each
  kept example is published to ``sft.verified`` (SftExample with its passing report), each dropped one
  to ``sft.rejected`` (``verification.passed`` false, the failed checks in ``verification.checks``).

Backend: the OpenAI-compatible API when OPENAI_API_KEY or ``openai_base_url`` is set, else the
offline rule-based paraphraser. Each job keeps its outputs, ledger and report under
``output_root/<job id>``. Bad requests are INVALID_ARGUMENT with the reason; the service keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from medec.prepare import PairRecord, normalize_error_type
from medserl.v1 import generator_pb2, generator_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import metrics, topics
from services.common.auth import Caller, redact
from services.common.bus import Bus
from services.common.formats import ERROR_TYPES
from services.common.guard import ANONYMOUS, current_caller
from services.common.notes import MAX_NOTE_CHARS
from services.common.runtime import GrpcBinding, Service, is_loopback
from services.common.settings import ServiceSettings
from services.generator.pipeline import GeneratorConfig, GeneratorError, SftGenerator

log = logging.getLogger(__name__)
SERVICE_NAME = "medserl.v1.Generator"
MAX_PAIRS_PER_JOB = 10_000


@dataclass
class GeneratorSettings(ServiceSettings):
    grpc_port: int = 50055
    metrics_port: int = 9105
    output_root: str = "data/generator_jobs"
    openai_base_url: str = ""  # empty + no OPENAI_API_KEY: the offline backend
    model: str = "gpt-4o"
    prompt_file: str = ""
    concurrency: int = 16
    max_tries: int = 3
    request_timeout_s: float = 60.0
    default_max_cost_usd: float = 0.0  # 0: no budget unless the request sets one (then max_cost_per_job_usd)
    # access control on the operator's API key (issue 12: 60 anonymous jobs -> 125 threads, 600 paid calls)
    max_jobs: int = 4  # jobs running at once, all callers together (each runs `concurrency` threads)
    max_jobs_per_caller: int = 2  # jobs one caller may have running at once
    max_cost_per_job_usd: float = 50.0  # hard cap on one job's budget when the paid API is used
    max_spend_per_caller_usd: float = 200.0  # budget one caller may reserve over the service's life
    allow_anonymous_spend: bool = False  # let callers without a token start paid jobs (off a loopback bind)


class AccessDenied(Exception):
    """The caller may not do this (PERMISSION_DENIED)."""


class LimitExceeded(Exception):
    """A per-caller or per-service limit is reached (RESOURCE_EXHAUSTED)."""


@dataclass
class Job:
    job_id: str
    pairs_total: int
    caller: str = "anonymous"
    caller_authenticated: bool = False
    reserved_usd: float = 0.0  # the budget held against the caller's spend limit until the job ends
    state: str = "queued"
    message: str = ""
    examples: list[pb.SftExample] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    cost_usd: float = 0.0
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "budget_exhausted", "stopped", "input_exhausted")


def _note(note_id: str, sentences: list, text: str = "", source: str = "generator") -> pb.Note:
    return pb.Note(note_id=note_id, text=text, source=source,
                   sentences=[pb.Sentence(id=int(i), text=str(s)) for i, s in sentences])


def verification_proto(d: dict, subject_id: str, mode: int) -> pb.VerificationReport:
    return pb.VerificationReport(subject_id=subject_id, mode=mode, passed=bool(d.get("passed")),
                                 checks=[pb.Check(name=c["name"], passed=c["passed"], detail=c.get("detail", ""))
                                         for c in d.get("checks", [])],
                                 changed_sentence_ids=list(d.get("changed_sentence_ids", [])),
                                 latency_ms=float(d.get("latency_ms", 0.0)))


def _mode(kind: str) -> int:
    return pb.MODE_PARAPHRASE if kind == "CORRECT" else pb.MODE_MEDEC_INCORRECT


def record_to_proto(record: dict) -> pb.SftExample:
    """An SFT record (interface 5) as the SftExample that crosses Kafka and gRPC."""
    mode = _mode(record["kind"])
    tokens = record.get("tokens") or {}
    return pb.SftExample(
        example_id=record["id"], pair_id=record["pair_id"], kind=record["kind"], mode=mode,
        original=_note(record["pair_id"], record["source_sentences"]),
        modified=_note(record["pair_id"], record["note_sentences"], record.get("note_text", "")),
        changed_sentence_id=int(record["changed_sentence_id"]), original_sentence=record["original_sentence"],
        new_sentence=record["new_sentence"], error_type=record.get("error_type") or "",
        reasoning_json=json.dumps(record["reasoning"]) if record.get("reasoning") else "",
        prompt_version=record.get("prompt_version", ""), prompt_hash=record.get("prompt_hash", ""),
        model=record.get("model") or "", system_fingerprint=record.get("system_fingerprint") or "",
        model_written=bool(record.get("model_written")), prompt_tokens=int(tokens.get("prompt", 0)),
        cached_tokens=int(tokens.get("cached", 0)), completion_tokens=int(tokens.get("completion", 0)),
        cost_usd=float(record.get("cost_usd") or 0.0),
        verification=verification_proto(record.get("verifier") or {}, record["id"], mode))


def rejection_to_proto(row: dict) -> pb.SftExample:
    """A rejected.jsonl row as the SftExample for ``sft.rejected``: ``verification.passed`` is false and
    the failed checks say why (``pair_complete`` when it passed but its pair's other side failed)."""
    if row.get("record"):  # passed, dropped with its pair to keep the 50/50 balance
        example = record_to_proto(row["record"])
        failed = pb.Check(name="pair_complete", passed=False, detail=row["reason"])
    else:
        tokens = row.get("tokens") or {}
        example = pb.SftExample(
            example_id=row["id"], pair_id=row["pair_id"], kind=row["kind"], mode=_mode(row["kind"]),
            changed_sentence_id=-1, prompt_version=row.get("prompt_version", ""),
            prompt_hash=row.get("prompt_hash", ""), model=row.get("model") or "",
            system_fingerprint=row.get("system_fingerprint") or "", model_written=bool(row.get("model_written")),
            prompt_tokens=int(tokens.get("prompt", 0)), cached_tokens=int(tokens.get("cached", 0)),
            completion_tokens=int(tokens.get("completion", 0)), cost_usd=float(row.get("cost_usd") or 0.0),
            verification=verification_proto(row.get("verifier") or {}, row["id"], _mode(row["kind"])))
        # no verifier report (no usable answer, a failed request) or none that failed: the reason is the check
        failed = None if any(not c.passed for c in example.verification.checks) else pb.Check(
            name="generation", passed=False, detail=row.get("reason", ""))
    example.verification.passed = False
    if failed is not None:
        example.verification.checks.append(failed)
    return example


def pair_from_proto(pair: pb.NotePair, index: int) -> PairRecord:
    """Validate one NotePair; ValueError says what is wrong (never quoting note text)."""
    where = f"pairs[{index}]"
    if not pair.pair_id.strip():
        raise ValueError(f"{where}: pair_id is empty")
    where = f"pair {pair.pair_id!r}"
    incorrect = [(s.id, s.text) for s in pair.incorrect.sentences]
    correct = [(s.id, s.text) for s in pair.correct.sentences]
    if not incorrect or not correct:
        raise ValueError(f"{where}: both notes need numbered sentences (incorrect.sentences and correct.sentences)")
    for name, sentences in (("incorrect", incorrect), ("correct", correct)):
        ids = [i for i, _ in sentences]
        if len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"{where}: {name} note has duplicate or negative sentence ids")
        if sum(len(t) for _, t in sentences) > MAX_NOTE_CHARS:
            raise ValueError(f"{where}: {name} note is longer than {MAX_NOTE_CHARS} characters")
        if any(not t.strip() for _, t in sentences):
            raise ValueError(f"{where}: {name} note has an empty sentence")
    if [i for i, _ in incorrect] != [i for i, _ in correct]:
        raise ValueError(f"{where}: the two notes must have the same sentence ids")
    if pair.error_sentence_id not in dict(incorrect):
        raise ValueError(f"{where}: error_sentence_id {pair.error_sentence_id} is not a sentence of the note")
    error_type = normalize_error_type(pair.error_type)
    if error_type is None:
        raise ValueError(f"{where}: error_type must be one of {', '.join(ERROR_TYPES)}")
    error_sentence = pair.error_sentence or dict(incorrect)[pair.error_sentence_id]
    corrected = pair.corrected_sentence or dict(correct)[pair.error_sentence_id]
    return PairRecord(pair_id=pair.pair_id, note_id=pair.pair_id, split=pair.split, error_type=error_type,
                      error_sentence_id=pair.error_sentence_id, error_sentence=error_sentence,
                      corrected_sentence=corrected,
                      incorrect_note=pair.incorrect.text or " ".join(t for _, t in incorrect),
                      correct_note=pair.correct.text or " ".join(t for _, t in correct),
                      incorrect_sentences=incorrect, correct_sentences=correct, source=pair.incorrect.source or "grpc")


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, service: GeneratorService):
        self.service = service

    def SubmitPairs(self, request, context):
        try:
            job = self.service.submit(request, current_caller())
        except ValueError as exc:
            metrics.GRPC_REQUESTS.labels("generator", "SubmitPairs", "INVALID_ARGUMENT").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except AccessDenied as exc:
            metrics.GRPC_REQUESTS.labels("generator", "SubmitPairs", "PERMISSION_DENIED").inc()
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except LimitExceeded as exc:
            metrics.GRPC_REQUESTS.labels("generator", "SubmitPairs", "RESOURCE_EXHAUSTED").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        metrics.GRPC_REQUESTS.labels("generator", "SubmitPairs", "OK").inc()
        return generator_pb2.JobRef(job_id=job.job_id)

    def _job(self, request, context, method: str) -> Job:
        job = self.service.jobs.get(request.job_id)
        caller = current_caller()
        if job is None or (job.caller_authenticated and (caller.name, caller.authenticated) != (job.caller, True)):
            # another caller's job is answered like a missing one: ids are not for probing
            metrics.GRPC_REQUESTS.labels("generator", method, "NOT_FOUND").inc()
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id[:64]!r}")
        metrics.GRPC_REQUESTS.labels("generator", method, "OK").inc()
        return job

    def GetJobStatus(self, request, context):
        return self.service.status(self._job(request, context, "GetJobStatus"))

    def StreamExamples(self, request, context) -> Iterator[pb.SftExample]:
        job = self._job(request, context, "StreamExamples")
        sent = 0
        while context.is_active():
            with job.cond:
                while sent >= len(job.examples) and not job.finished and context.is_active():
                    job.cond.wait(0.5)
                fresh = job.examples[sent:]
                finished = job.finished
            yield from fresh
            sent += len(fresh)
            if finished and sent >= len(job.examples):
                return


class GeneratorService(Service):
    name = "generator"
    settings_cls = GeneratorSettings

    def __init__(self, settings: GeneratorSettings, bus: Bus):
        super().__init__(settings, bus)
        self.jobs: dict[str, Job] = {}
        self.producer = self.bus.producer()  # signs as the generator when keys are configured
        self.spent: dict[str, float] = {}  # caller -> budget reserved or spent (max_spend_per_caller_usd)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def topics(self) -> Sequence[str]:
        return [self.topic(topics.SFT_VERIFIED), self.topic(topics.SFT_REJECTED)]

    def grpc_bindings(self) -> Sequence[GrpcBinding]:
        return [GrpcBinding(generator_pb2_grpc.add_GeneratorServicer_to_server, GeneratorServicer(self), SERVICE_NAME)]

    # --- jobs ---------------------------------------------------------------------------------------
    def _admit(self, caller: Caller, paid: bool, budget: float | None) -> float | None:
        """The job's budget once the caller may start it; AccessDenied / LimitExceeded say why not."""
        s = self.settings
        if paid and not caller.authenticated and not s.allow_anonymous_spend and not is_loopback(s.grpc_host):
            raise AccessDenied("jobs on the paid API need an authenticated caller (a bearer token); "
                               "the operator can set allow_anonymous_spend")
        running = [j for j in self.jobs.values() if not j.finished]
        if len(running) >= s.max_jobs:
            raise LimitExceeded(f"{len(running)} jobs are running (max_jobs {s.max_jobs}); retry later")
        mine = sum(j.caller == caller.name for j in running)
        if mine >= s.max_jobs_per_caller:
            raise LimitExceeded(f"this caller has {mine} jobs running (max_jobs_per_caller {s.max_jobs_per_caller})")
        if not paid:
            return budget
        cap = s.max_cost_per_job_usd
        if cap > 0:
            if budget is not None and budget > cap:
                raise LimitExceeded(f"max_cost_usd {budget:g} is above the per-job limit of {cap:g} USD")
            budget = cap if budget is None else budget
        if budget is not None and self.spent.get(caller.name, 0.0) + budget > s.max_spend_per_caller_usd:
            raise LimitExceeded(f"this caller's spend limit of {s.max_spend_per_caller_usd:g} USD would be passed "
                                f"({self.spent.get(caller.name, 0.0):.2f} USD used or reserved)")
        return budget

    def submit(self, request: generator_pb2.SubmitPairsRequest, caller: Caller = ANONYMOUS) -> Job:
        if not request.pairs:
            raise ValueError("pairs is empty: send at least one NotePair")
        if len(request.pairs) > MAX_PAIRS_PER_JOB:
            raise ValueError(f"{len(request.pairs)} pairs in one job; the limit is {MAX_PAIRS_PER_JOB}")
        if request.max_cost_usd < 0:
            raise ValueError("max_cost_usd must not be negative (0 means the service default)")
        pairs = [pair_from_proto(p, i) for i, p in enumerate(request.pairs)]
        if len({p.pair_id for p in pairs}) != len(pairs):
            raise ValueError("pair_id values must be unique within a job")
        s = self.settings
        api_key = os.environ.get("OPENAI_API_KEY") or None
        with self._lock:  # admission and reservation together: two calls cannot both take the last slot
            budget = self._admit(caller, api_key is not None, request.max_cost_usd or s.default_max_cost_usd or None)
            job = Job(job_id=uuid.uuid4().hex[:16], pairs_total=len(pairs), caller=caller.name,
                      caller_authenticated=caller.authenticated, reserved_usd=budget or 0.0)
            self.spent[caller.name] = self.spent.get(caller.name, 0.0) + job.reserved_usd
            self.jobs[job.job_id] = job
        config = GeneratorConfig(output_dir=os.path.join(s.output_root, job.job_id), prompt_file=s.prompt_file or None,
                                 num_pairs=len(pairs), add_reasoning=request.add_reasoning, api_key=api_key,
                                 base_url=s.openai_base_url or None, model=s.model, concurrency=s.concurrency,
                                 max_cost_usd=budget, seed=int(request.seed), max_tries=s.max_tries,
                                 request_timeout_s=s.request_timeout_s, progress=False)
        thread = threading.Thread(target=self._run_job, args=(job, config, pairs), name=f"generator-job-{job.job_id}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()
        log.info("job submitted", extra={"job_id": job.job_id, "pairs": len(pairs), "caller": caller.name,
                                         "budget_usd": budget})
        return job

    def _run_job(self, job: Job, config: GeneratorConfig, pairs: list[PairRecord]) -> None:
        verified, rejected_topic = self.topic(topics.SFT_VERIFIED), self.topic(topics.SFT_REJECTED)

        def publish(topic: str, example: pb.SftExample) -> None:
            self.producer.publish(topic, example.SerializeToString(), key=example.pair_id)
            metrics.MESSAGES_PRODUCED.labels(self.name, topic).inc()

        def on_example(record: dict) -> None:
            example = record_to_proto(record)
            publish(verified, example)
            with job.cond:
                job.examples.append(example)
                job.accepted += 1
                job.cost_usd += example.cost_usd
                job.cond.notify_all()

        with job.cond:
            job.state = "running"
        try:
            generator = SftGenerator(config, pairs, on_example, self.stop_event,
                                     on_rejected=lambda row: publish(rejected_topic, rejection_to_proto(row)))
            report = generator.run()
            self.producer.flush()
            state, message = report["state"], report["message"]
            rejected = report["pairs"]["rejected_this_run"] * 2
            cost = report["cost_usd"]
        except (GeneratorError, ValueError) as exc:
            state, message, rejected, cost = "failed", str(exc), 0, job.cost_usd
        except Exception as exc:  # noqa: BLE001 - a job failure must not take the service down
            log.exception("job failed", extra={"job_id": job.job_id})
            state, message, rejected, cost = "failed", f"{type(exc).__name__}: {exc}", 0, job.cost_usd
        with self._lock:  # the reservation becomes what the job really spent
            self.spent[job.caller] = self.spent.get(job.caller, 0.0) - job.reserved_usd + (cost or 0.0)
        with job.cond:
            job.state, job.message, job.rejected, job.cost_usd = state, redact(message), rejected, cost
            job.cond.notify_all()
        log.info("job finished", extra={"job_id": job.job_id, "state": state, "accepted": job.accepted})

    def status(self, job: Job) -> generator_pb2.JobStatus:
        with job.cond:
            return generator_pb2.JobStatus(job_id=job.job_id, state=job.state, pairs_total=job.pairs_total,
                                           examples_accepted=job.accepted, examples_rejected=job.rejected,
                                           cost_usd=job.cost_usd, message=job.message)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """For tests and shutdown: wait until every job thread has finished."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return all(not t.is_alive() for t in self._threads)

    def close(self) -> None:
        self.stop_event.set()
        self.wait_idle(self.settings.shutdown_grace_s)
        self.producer.flush()
