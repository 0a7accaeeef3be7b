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

Jobs survive a restart (``services.generator.jobstore``: one record per job under ``state_dir``, a
volume every replica shares). A finished job answers ``GetJobStatus`` and ``StreamExamples`` from its
record and its output files on any replica, after any restart. A job a stopped or crashed replica was
running is taken over (at once by the same ``instance_id``, after ``job_lease_s`` without a heartbeat
by any other replica) and run again on its saved pairs: its ledger and progress files make the re-run
redo no finished pair and pay for no answer twice, and its kept examples are published again
(at-least-once; consumers deduplicate by example id). With ``resume_interrupted`` off it is reported
``interrupted`` instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from services.generator.jobstore import JobStore
from services.generator.ledger import Ledger
from services.generator.pipeline import (
    LEDGER_FILE,
    PROGRESS_FILE,
    GeneratorConfig,
    GeneratorError,
    SftGenerator,
    read_jsonl,
)

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
    # durable jobs: the job table survives a restart and is shared by every replica
    state_dir: str = ""  # the job table (a volume every replica shares, like output_root); empty: <output_root>/.jobs
    instance_id: str = ""  # this replica's name in the job table; empty: the host name (the pod's name)
    job_lease_s: float = 60.0  # a job whose replica has not written for this long is taken over by another one
    resume_interrupted: bool = True  # run jobs a stopped or crashed replica left again (false: report them interrupted)


class AccessDenied(Exception):
    """The caller may not do this (PERMISSION_DENIED)."""


class LimitExceeded(Exception):
    """A per-caller or per-service limit is reached (RESOURCE_EXHAUSTED)."""


ACTIVE_STATES = ("queued", "running")
INTERRUPTED = "interrupted"  # a replica stopped or crashed while running it; resumable (resume_interrupted)
# what a job's record holds (its examples are in its output files, its pairs beside the record)
RECORD_FIELDS = ("job_id", "pairs_total", "caller", "caller_authenticated", "reserved_usd", "state", "message",
                 "accepted", "rejected", "cost_usd", "output_dir", "add_reasoning", "seed", "budget_usd", "paid",
                 "created", "epoch")


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
    output_dir: str = ""  # output_root/<job id>: sft_combined_safe.jsonl, report.json, the ledger
    add_reasoning: bool = False
    seed: int = 0
    budget_usd: float | None = None  # the job's spending cap over all its runs (None: none)
    paid: bool = False  # submitted while the service used the paid API
    created: float = field(default_factory=time.time)
    epoch: int = 0  # ownership generation in the job table: every takeover adds one
    local: bool = True  # run by this process; else a snapshot of the job table (refreshed on each look-up)
    fenced: bool = False  # another replica took it over: this process writes nothing more for it
    base_rejected: int = 0  # a resumed job: examples rejected and USD spent by its earlier runs
    base_cost: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        """Not running anywhere now: done, failed, budget_exhausted, stopped, input_exhausted or interrupted."""
        return self.state not in ACTIVE_STATES

    def record(self, owner: str, heartbeat: float) -> dict:
        with self.cond:
            out = {name: getattr(self, name) for name in RECORD_FIELDS}
        return {**out, "owner": owner, "heartbeat": heartbeat, "updated": time.time()}

    @classmethod
    def from_record(cls, record: dict) -> Job:
        job = cls(job_id=record["job_id"], pairs_total=int(record.get("pairs_total", 0)), local=False)
        job.refresh(record)
        return job

    def refresh(self, record: dict) -> None:
        with self.cond:
            for name in RECORD_FIELDS[1:]:
                if name in record:
                    setattr(self, name, record[name])
            self.cond.notify_all()


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


def kept_records(output_dir: str | os.PathLike) -> list[dict]:
    """The kept SFT records in a job's output files, pair by pair (CORRECT, then INCORRECT)."""
    out = Path(output_dir)
    accepted = dict.fromkeys(r["pair_id"] for r in read_jsonl(out / PROGRESS_FILE) if r.get("status") == "accepted")
    if not accepted:
        return []
    correct = {r["pair_id"]: r for r in read_jsonl(out / "sft_correct.jsonl")}
    incorrect = {r["pair_id"]: r for r in read_jsonl(out / "sft_incorrect.jsonl")}
    return [r for pair_id in accepted for r in (correct.get(pair_id), incorrect.get(pair_id)) if r is not None]


def paid_so_far(output_dir: str | os.PathLike) -> float:
    """What every answer in a job's ledger cost (all its runs): a resumed job's budget is what is left."""
    path = Path(output_dir) / LEDGER_FILE
    if not path.exists():
        return 0.0
    ledger = Ledger(path)
    try:
        return ledger.total_cost_usd()
    finally:
        ledger.close()


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
        except OSError as exc:  # the job table cannot be written (a full or missing volume): nothing started
            metrics.GRPC_REQUESTS.labels("generator", "SubmitPairs", "UNAVAILABLE").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the job table cannot be written ({type(exc).__name__}); "
                                                       "retry later")
        metrics.GRPC_REQUESTS.labels("generator", "SubmitPairs", "OK").inc()
        return generator_pb2.JobRef(job_id=job.job_id)

    def _job(self, request, context, method: str) -> Job:
        job = self.service.lookup(request.job_id)
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
        if not job.local:  # finished before a restart, or run by another replica: its output files
            yield from self.service.stream_from_files(job, context.is_active)
            return
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


class JobKeeper:
    """The job table's upkeep beside the gRPC server, shaped like a stream worker so ServiceRuntime
    starts, watches and joins it: heartbeats for this replica's jobs, takeovers of abandoned ones."""

    def __init__(self, service: GeneratorService, interval_s: float):
        self.service = service
        self.interval_s = interval_s
        self.error: BaseException | None = None
        self.processed = 0
        self._thread: threading.Thread | None = None

    def start(self, stop_event: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(stop_event,), name="generator-jobs", daemon=True)
        self._thread.start()

    def _run(self, stop_event: threading.Event) -> None:
        while not self.service.stop_event.is_set():
            try:
                self.processed += self.service.maintain()
            except Exception:  # noqa: BLE001 - one bad round (a volume hiccup) must not stop the service
                log.exception("job table upkeep failed")
            if stop_event.wait(self.interval_s):
                return

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class GeneratorService(Service):
    name = "generator"
    settings_cls = GeneratorSettings

    def __init__(self, settings: GeneratorSettings, bus: Bus):
        super().__init__(settings, bus)
        self.instance_id = settings.instance_id or socket.gethostname()
        self.store = JobStore(settings.state_dir or os.path.join(settings.output_root, ".jobs"))
        self.jobs: dict[str, Job] = {}
        self.producer = self.bus.producer()  # signs as the generator when keys are configured
        # caller -> budget reserved or spent by this process's jobs; the job table has every replica's
        self.spent: dict[str, float] = {}
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        for record in self.store.all():  # what earlier runs of the service (and the other replicas) left
            job = Job.from_record(record)
            self.jobs[job.job_id] = job

    def topics(self) -> Sequence[str]:
        return [self.topic(topics.SFT_VERIFIED), self.topic(topics.SFT_REJECTED)]

    def grpc_bindings(self) -> Sequence[GrpcBinding]:
        return [GrpcBinding(generator_pb2_grpc.add_GeneratorServicer_to_server, GeneratorServicer(self), SERVICE_NAME)]

    def workers(self) -> Sequence[JobKeeper]:
        return [JobKeeper(self, max(0.2, min(5.0, self.settings.job_lease_s / 4)))]

    # --- the job table ------------------------------------------------------------------------------
    def _held(self, job: Job) -> bool:
        """Does the job still hold its reservation (it runs, or will run again)?"""
        return job.state in ACTIVE_STATES or (job.state == INTERRUPTED and self.settings.resume_interrupted)

    def _settle(self, job: Job, cost: float) -> None:
        """The reservation becomes what the job really spent."""
        with self._lock:
            self.spent[job.caller] = self.spent.get(job.caller, 0.0) - job.reserved_usd + (cost or 0.0)

    def _save(self, job: Job, release: bool = False) -> bool:
        """Write the job's record (OSError propagates); False when another replica has taken the job over.
        ``release``: no owner and no heartbeat, so any replica may take it over at once."""
        if job.fenced:
            return False
        with self._save_lock:
            current = self.store.load(job.job_id)
            if current is not None and int(current.get("epoch", 0)) > job.epoch:
                job.fenced, job.local = True, False
                job.stop.set()
                log.warning("job taken over by another replica", extra={"job_id": job.job_id,
                                                                        "owner": str(current.get("owner"))[:100]})
                return False
            self.store.save(job.record("" if release else self.instance_id, 0.0 if release else time.time()))
        return True

    def _try_save(self, job: Job, release: bool = False) -> bool:
        try:
            return self._save(job, release)
        except OSError as exc:
            log.error("job record not written", extra={"job_id": job.job_id, "error": f"{type(exc).__name__}: {exc}"})
            return False

    def lookup(self, job_id: str) -> Job | None:
        """The job: this process's own, else its record in the job table (another replica's, or a job
        from before a restart), refreshed on every call."""
        with self._lock:
            job = self.jobs.get(job_id)
        if job is not None and job.local:
            return job
        record = self.store.load(job_id)
        if record is None:
            return job
        if job is None:
            with self._lock:
                job = self.jobs.setdefault(job_id, Job.from_record(record))
            if job.local:
                return job
        job.refresh(record)
        return job

    def list_jobs(self) -> list[Job]:
        """Every job in the job table, oldest first."""
        return [job for job in (self.lookup(r["job_id"]) for r in self.store.all()) if job is not None]

    def maintain(self) -> int:
        """One round of upkeep: heartbeat this replica's running jobs; take over the jobs a stopped or
        crashed replica left (``resume_interrupted``: run them again; else report them interrupted).
        Returns how many jobs this round took over."""
        with self._lock:
            mine = [j for j in self.jobs.values() if j.local and not j.finished]
        for job in mine:
            self._try_save(job)
        taken = 0
        now = time.time()
        for record in self.store.all():
            if self.stop_event.is_set():
                break
            with self._lock:
                known = self.jobs.get(record["job_id"])
            if known is not None and known.local:
                continue
            if self._abandoned(record, now):
                taken += self._take_over(record)
            elif known is not None:
                known.refresh(record)
        return taken

    def _abandoned(self, record: dict, now: float) -> bool:
        state = record.get("state")
        if state in ACTIVE_STATES:  # its replica is gone: this one in an earlier life, or silent for a lease
            owner = str(record.get("owner") or "")
            return owner in ("", self.instance_id) or now - float(record.get("heartbeat") or 0.0) > self.settings.job_lease_s
        return state == INTERRUPTED and self.settings.resume_interrupted and not record.get("owner")

    def _take_over(self, record: dict) -> int:
        s = self.settings
        job_id = record["job_id"]
        if s.resume_interrupted:
            with self._lock:
                running = sum(1 for j in self.jobs.values() if j.local and not j.finished)
            if running >= s.max_jobs:
                return 0  # no slot here now: a later round, or another replica, takes it
        epoch = int(record.get("epoch", 0)) + 1
        if not self.store.claim(job_id, epoch):
            return 0  # another replica was first
        job = Job.from_record(record)
        job.epoch, job.local = epoch, True
        with self._lock:  # this process holds the job, and its reservation, now
            self.jobs[job_id] = job
            self.spent[job.caller] = self.spent.get(job.caller, 0.0) + job.reserved_usd
        was = job.state

        def end(state: str, message: str) -> int:
            with job.cond:
                job.state, job.message = state, message
            if state != INTERRUPTED or not s.resume_interrupted:
                self._settle(job, job.cost_usd)
            self._try_save(job, release=state == INTERRUPTED)
            log.info("job interrupted", extra={"job_id": job_id, "was": was, "state": state})
            return 1

        if not s.resume_interrupted:
            job.local = False  # reported, not run: later look-ups read the table
            return end(INTERRUPTED, "its generator stopped before the job finished; resubmit it to finish it "
                                    "(resume_interrupted is off)")
        pairs = self.store.load_pairs(job_id)
        if pairs is None:
            return end("failed", "cannot be resumed after an interruption: its saved pairs are missing; resubmit it")
        api_key = os.environ.get("OPENAI_API_KEY") or None
        if job.paid and api_key is None:
            return end("failed", "cannot be resumed after an interruption: it ran on the paid API and this "
                                 "generator has no OPENAI_API_KEY")
        paid = paid_so_far(job.output_dir)
        remaining = None if job.budget_usd is None else float(job.budget_usd) - paid
        with job.cond:
            job.base_cost = job.cost_usd = paid
            job.examples = []
        if remaining is not None and remaining <= 0:
            return end("budget_exhausted", f"its budget of {job.budget_usd:g} USD was spent before the interruption")
        with job.cond:
            job.state, job.message = "queued", f"resumed by {self.instance_id[:100]} after an interruption"
        self._try_save(job)
        self._start(job, self._config(job, remaining), pairs, resumed=True)
        log.info("job resumed", extra={"job_id": job_id, "was": was, "epoch": epoch, "paid_usd": round(paid, 6)})
        return 1

    # --- jobs ---------------------------------------------------------------------------------------
    def _admit(self, caller: Caller, paid: bool, budget: float | None) -> float | None:
        """The job's budget once the caller may start it; AccessDenied / LimitExceeded say why not."""
        s = self.settings
        if paid and not caller.authenticated and not s.allow_anonymous_spend and not is_loopback(s.grpc_host):
            raise AccessDenied("jobs on the paid API need an authenticated caller (a bearer token); "
                               "the operator can set allow_anonymous_spend")
        running = [j for j in self.jobs.values() if j.local and not j.finished]  # this replica's threads
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
        if budget is not None:
            spent = self._spent_by(caller.name)
            if spent + budget > s.max_spend_per_caller_usd:
                raise LimitExceeded(f"this caller's spend limit of {s.max_spend_per_caller_usd:g} USD would be "
                                    f"passed ({spent:.2f} USD used or reserved)")
        return budget

    def _spent_by(self, caller: str) -> float:
        """What the caller has reserved or spent: the job table's count (every replica, every earlier run;
        a job holds its reservation until it ends, then counts what it cost) or this process's, whichever
        is larger, so more replicas or a restart never mean a larger spend limit."""
        table = 0.0
        for record in self.store.all():
            if record.get("caller") == caller:
                held = self._held(Job.from_record(record))
                table += float(record.get("reserved_usd" if held else "cost_usd") or 0.0)
        return max(self.spent.get(caller, 0.0), table)

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
            job_id = uuid.uuid4().hex[:16]
            job = Job(job_id=job_id, pairs_total=len(pairs), caller=caller.name,
                      caller_authenticated=caller.authenticated, reserved_usd=budget or 0.0,
                      output_dir=os.path.join(s.output_root, job_id), add_reasoning=bool(request.add_reasoning),
                      seed=int(request.seed), budget_usd=budget, paid=api_key is not None)
            self.spent[caller.name] = self.spent.get(caller.name, 0.0) + job.reserved_usd
            self.jobs[job.job_id] = job
        try:  # durable before it starts: the pairs (to run it again after a crash), then its record
            self.store.save_pairs(job.job_id, pairs)
            self._save(job)
        except OSError:
            with self._lock:  # never started: nothing is held
                self.jobs.pop(job.job_id, None)
                self.spent[caller.name] = self.spent.get(caller.name, 0.0) - job.reserved_usd
            log.error("job table not writable", extra={"state_dir": str(self.store.dir)})
            raise
        self._start(job, self._config(job, budget), pairs)
        log.info("job submitted", extra={"job_id": job.job_id, "pairs": len(pairs), "caller": caller.name,
                                         "budget_usd": budget})
        return job

    def _config(self, job: Job, budget: float | None) -> GeneratorConfig:
        s = self.settings
        return GeneratorConfig(output_dir=job.output_dir, prompt_file=s.prompt_file or None, num_pairs=job.pairs_total,
                               add_reasoning=job.add_reasoning, api_key=os.environ.get("OPENAI_API_KEY") or None,
                               base_url=s.openai_base_url or None, model=s.model, concurrency=s.concurrency,
                               max_cost_usd=budget, seed=job.seed, max_tries=s.max_tries,
                               request_timeout_s=s.request_timeout_s, progress=False)

    def _start(self, job: Job, config: GeneratorConfig, pairs: list[PairRecord], resumed: bool = False) -> None:
        thread = threading.Thread(target=self._resume_job if resumed else self._run_job, args=(job, config, pairs),
                                  name=f"generator-job-{job.job_id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _publish(self, topic: str, example: pb.SftExample) -> None:
        self.producer.publish(topic, example.SerializeToString(), key=example.pair_id)
        metrics.MESSAGES_PRODUCED.labels(self.name, topic).inc()

    def _resume_job(self, job: Job, config: GeneratorConfig, pairs: list[PairRecord]) -> None:
        """A taken-over job: what it kept before is streamed and published again (at-least-once: the
        record may have been written but not yet published when its replica died), then the pipeline
        runs on; its progress file and ledger skip every finished pair and every paid answer."""
        out = Path(job.output_dir)
        progress = {r["pair_id"]: r.get("status") for r in read_jsonl(out / PROGRESS_FILE) if "pair_id" in r}
        rejected_pairs = {p for p, status in progress.items() if status == "rejected"}
        examples = [record_to_proto(r) for r in kept_records(out)]
        try:
            verified, rejected_topic = self.topic(topics.SFT_VERIFIED), self.topic(topics.SFT_REJECTED)
            for example in examples:
                self._publish(verified, example)
            for row in read_jsonl(out / "rejected.jsonl"):
                if row.get("pair_id") in rejected_pairs:
                    self._publish(rejected_topic, rejection_to_proto(row))
        except Exception:  # noqa: BLE001 - the files keep them; the run itself reports a bus that is down
            log.exception("republishing a resumed job's examples failed", extra={"job_id": job.job_id})
        with job.cond:
            job.examples = examples
            job.accepted = len(examples)
            job.base_rejected = job.rejected = 2 * len(rejected_pairs)
            job.cond.notify_all()
        self._run_job(job, config, pairs)

    def _run_job(self, job: Job, config: GeneratorConfig, pairs: list[PairRecord]) -> None:
        verified, rejected_topic = self.topic(topics.SFT_VERIFIED), self.topic(topics.SFT_REJECTED)

        def on_example(record: dict) -> None:
            example = record_to_proto(record)
            self._publish(verified, example)
            with job.cond:
                job.examples.append(example)
                job.accepted += 1
                job.cost_usd += example.cost_usd
                job.cond.notify_all()

        with job.cond:
            job.state = "running"
        self._try_save(job)
        try:
            generator = SftGenerator(config, pairs, on_example, job.stop,
                                     on_rejected=lambda row: self._publish(rejected_topic, rejection_to_proto(row)))
            report = generator.run()
            self.producer.flush()
            state, message = report["state"], report["message"]
            rejected = job.base_rejected + report["pairs"]["rejected_this_run"] * 2
            cost = job.base_cost + report["cost_usd"]
        except (GeneratorError, ValueError) as exc:
            state, message, rejected, cost = "failed", str(exc), job.rejected, job.cost_usd
        except Exception as exc:  # noqa: BLE001 - a job failure must not take the service down
            log.exception("job failed", extra={"job_id": job.job_id})
            state, message, rejected, cost = "failed", f"{type(exc).__name__}: {exc}", job.rejected, job.cost_usd
        if job.fenced:  # another replica runs it now and owns its record and its reservation
            log.info("job handed over", extra={"job_id": job.job_id})
            return
        if state == "stopped":  # only a shutdown stops a job: it is resumable, not finished
            state = INTERRUPTED
            message = ("the generator stopped before the job finished; "
                       + ("a generator resumes it" if self.settings.resume_interrupted
                          else "resubmit it to finish it (resume_interrupted is off)"))
        if state != INTERRUPTED or not self.settings.resume_interrupted:
            self._settle(job, cost)
        with job.cond:
            job.state, job.message, job.rejected, job.cost_usd = state, redact(message), rejected, cost
            job.cond.notify_all()
        self._try_save(job, release=state == INTERRUPTED)
        log.info("job finished", extra={"job_id": job.job_id, "state": state, "accepted": job.accepted})

    def stream_from_files(self, job: Job, active) -> Iterator[pb.SftExample]:
        """The kept examples of a job this process does not run, from its output files, until it ends."""
        sent: set[str] = set()
        while active():
            job = self.lookup(job.job_id) or job
            finished = job.finished  # read before the files: once finished, the files are complete
            for record in kept_records(job.output_dir):
                if record["id"] not in sent:
                    sent.add(record["id"])
                    yield record_to_proto(record)
            if finished:
                return
            time.sleep(0.5)

    def status(self, job: Job) -> generator_pb2.JobStatus:
        with job.cond:
            return generator_pb2.JobStatus(job_id=job.job_id, state=job.state, pairs_total=job.pairs_total,
                                           examples_accepted=job.accepted, examples_rejected=job.rejected,
                                           cost_usd=job.cost_usd, message=job.message, output_dir=job.output_dir)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """For tests and shutdown: wait until every job thread has finished."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return all(not t.is_alive() for t in self._threads)

    def close(self) -> None:
        self.stop_event.set()
        with self._lock:
            running = list(self.jobs.values())
        for job in running:  # each stops after the pair in hand and is recorded interrupted (resumable)
            job.stop.set()
        self.wait_idle(self.settings.shutdown_grace_s)
        self.producer.flush()
