"""The SFT data pipeline: MEDEC pairs in, verified 50/50 CORRECT/INCORRECT examples out.

Per pair, two tasks run concurrently:

* CORRECT: the model (Structured Outputs) names ONE sentence of the correct note and its paraphrase;
  the note is rebuilt with only that sentence replaced and the verifier (paraphrase mode) must pass;
  a failure is retried with the failed checks as feedback, up to ``max_tries``.
* INCORRECT: the MEDEC incorrect note as is, its error sentence id and type; with ``add_reasoning``
  a structured explanation checked by the verifier (medec_incorrect mode), retried the same way.

Verification is a library call (:func:`services.verifier.checks.verify`): the retry loop needs the
verdict at once, and the 50/50 balance needs both verdicts of a pair before either is kept.

A pair is written only when both sides pass (otherwise both go to ``rejected.jsonl`` with reasons),
so ``sft_correct.jsonl`` and ``sft_incorrect.jsonl`` always have the same pairs and
``sft_combined_safe.jsonl`` is exactly 50/50. Outputs are append-only and fsynced per pair; with the
ledger's response cache a run killed at any point resumes where it stopped and pays nothing twice.

Python API: :func:`generate_sft` (used by ``make run``, the CLI and the generator service).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medec.prepare import PairRecord, load_pairs_jsonl, normalize_error_type
from services.common import metrics
from services.common.fileio import open_private, write_atomic
from services.common.formats import InjectorEdit, ParseFailure, apply_edit, sft_messages
from services.generator.client import (
    ChatRequest,
    ChatResult,
    OnlineExecutor,
    RequestFailed,
    make_openai_client,
)
from services.generator.costs import Budget, BudgetExhausted, TokenCounter, cost_usd, price_for, price_table
from services.generator.ledger import Ledger
from services.generator.offline import OFFLINE_MODEL, offline_paraphrase, offline_reasoning
from services.generator.prompts import PromptSet, load_prompts
from services.generator.ratelimit import RateLimiter

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"
LEDGER_FILE = "ledger.sqlite"
RUN_FILE = "run.json"


class GeneratorError(ValueError):
    """A configuration or input problem the user must fix (the message says what)."""


@dataclass
class GeneratorConfig:
    """Everything a run needs; the CLI flags map one to one onto these fields."""

    input_jsonl: str | None = None
    output_dir: str = "data/sft_production"
    prompt_file: str | None = None
    num_pairs: int | None = None  # accepted pairs wanted (each gives 2 examples); None = every pair
    add_reasoning: bool = False
    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o"
    concurrency: int = 16
    max_cost_usd: float | None = None
    seed: int = 0
    batch: bool = False
    dry_run: bool = False
    max_tries: int = 3  # model answers per task (first try + feedback retries)
    max_retries: int = 6  # HTTP retries per request (429, 5xx, timeouts)
    request_timeout_s: float = 60.0
    store: bool = True  # store completions at the provider so a killed run can recover in-flight answers
    progress: bool = True
    offline: bool | None = None  # None: offline when neither api_key nor base_url is set
    requests_per_min: float | None = None  # client-side limits before the first headers arrive
    tokens_per_min: float | None = None
    backoff_base_s: float = 0.5
    batch_poll_s: float = 5.0
    batch_max_rounds: int = 5  # Batch API resubmissions of lines that failed

    def use_offline(self) -> bool:
        if self.offline is not None:
            return self.offline
        return not self.api_key and not self.base_url

    def fingerprint(self, prompts: PromptSet) -> dict:
        """What must not change between a run and its resumption."""
        return {"model": OFFLINE_MODEL if self.use_offline() else self.model, "prompt_hash": prompts.hash,
                "add_reasoning": self.add_reasoning, "seed": self.seed, "max_tries": self.max_tries}

    def public(self) -> dict:
        """The config for the report: never the API key."""
        d = asdict(self)
        d["api_key"] = "<set>" if self.api_key else None
        return d


# ------------------------------------------------------------------------------------------------
# backends: the model (any OpenAI-compatible endpoint) or the offline rules


@dataclass
class Answer:
    """One model answer to one task, parsed; ``failure`` says why it is unusable."""

    data: dict | None
    failure: str | None
    tokens: tuple[int, int, int] = (0, 0, 0)  # prompt, cached, completion
    cost_usd: float = 0.0
    model: str = ""
    system_fingerprint: str = ""
    model_written: bool = True


def _validate_paraphrase(data: object) -> str | None:
    if not isinstance(data, dict):
        return "the answer is not a JSON object"
    sid = data.get("sentence_id")
    if not isinstance(sid, int) or isinstance(sid, bool):
        return "sentence_id is not an integer"
    if not isinstance(data.get("paraphrase"), str) or not data["paraphrase"].strip():
        return "paraphrase is empty"
    return None


def _validate_reasoning(data: object) -> str | None:
    if not isinstance(data, dict):
        return "the answer is not a JSON object"
    for key in ("why_wrong", "clinical_impact", "wrong_finding", "right_finding"):
        if not isinstance(data.get(key), str):
            return f"{key} is missing or not text"
    clues = data.get("key_clues")
    if not isinstance(clues, list) or not all(isinstance(c, str) for c in clues):
        return "key_clues is not a list of strings"
    return None


def answer_from_result(result: ChatResult, validate: Callable[[object], str | None]) -> Answer:
    """Parse a Structured Outputs answer; refusals, truncation and bad JSON become failures."""
    tokens = (result.prompt_tokens, result.cached_tokens, result.completion_tokens)
    common = {"tokens": tokens, "cost_usd": result.cost_usd, "model": result.model,
              "system_fingerprint": result.system_fingerprint}
    if result.refusal:
        return Answer(None, "the model refused", **common)
    if result.finish_reason == "length":
        return Answer(None, "the answer was cut off at max_completion_tokens", **common)
    try:
        data = json.loads(result.content or "")
    except (ValueError, TypeError):
        return Answer(None, "the answer is not valid JSON", **common)
    problem = validate(data)
    return Answer(None if problem else data, problem, **common)


class ModelBackend:
    """Asks an OpenAI-compatible chat model (online or through the Batch API executor)."""

    model_written = True

    def __init__(self, executor, prompts: PromptSet, model: str, seed: int, counter: TokenCounter):
        self.executor = executor
        self.prompts = prompts
        self.model = model
        self.seed = seed
        self.counter = counter

    def _paraphrase_max_tokens(self, sentences: list[tuple[int, str]]) -> int:
        # the answer is one sentence in a small JSON object: cap it near twice the longest sentence,
        # which keeps the rate-limit charge (prompt + max tokens) and the worst-case budget small
        longest = max((self.counter.expected(text) for _, text in sentences), default=32)
        return min(self.prompts.paraphrase.max_completion_tokens, 48 + 2 * longest)

    def paraphrase_request(self, pair: PairRecord, attempt: int, feedback: str | None) -> ChatRequest:
        p = self.prompts.paraphrase
        return ChatRequest(pair.pair_id, "paraphrase", attempt,
                           self.prompts.paraphrase_messages(pair.correct_sentences, feedback), p.schema, self.model,
                           p.temperature, self._paraphrase_max_tokens(pair.correct_sentences), self.seed,
                           self.prompts.hash)

    def reasoning_request(self, pair: PairRecord, attempt: int, feedback: str | None) -> ChatRequest:
        r = self.prompts.reasoning
        messages = self.prompts.reasoning_messages(pair.incorrect_sentences, pair.error_sentence_id,
                                                   _error_type(pair), pair.error_sentence, pair.corrected_sentence,
                                                   feedback)
        return ChatRequest(pair.pair_id, "reasoning", attempt, messages, r.schema, self.model, r.temperature,
                           r.max_completion_tokens, self.seed, self.prompts.hash)

    async def paraphrase(self, pair: PairRecord, attempt: int, feedback: str | None) -> Answer:
        result = await self.executor.call(self.paraphrase_request(pair, attempt, feedback))
        return answer_from_result(result, _validate_paraphrase)

    async def reasoning(self, pair: PairRecord, attempt: int, feedback: str | None) -> Answer:
        result = await self.executor.call(self.reasoning_request(pair, attempt, feedback))
        return answer_from_result(result, _validate_reasoning)


class OfflineBackend:
    """Deterministic rules, no network, no cost; records say ``model_written: false``."""

    model_written = False
    model = OFFLINE_MODEL

    async def paraphrase(self, pair: PairRecord, attempt: int, feedback: str | None) -> Answer:
        choice = offline_paraphrase(pair.correct_sentences, pair.pair_id, attempt)
        if choice is None:
            return Answer(None, "the offline rules have no (further) sentence to rewrite", model=OFFLINE_MODEL,
                          model_written=False)
        return Answer({"sentence_id": choice[0], "paraphrase": choice[1]}, None, model=OFFLINE_MODEL,
                      model_written=False)

    async def reasoning(self, pair: PairRecord, attempt: int, feedback: str | None) -> Answer:
        if attempt > 0:
            return Answer(None, "the offline rules write one explanation only", model=OFFLINE_MODEL, model_written=False)
        data = offline_reasoning(pair.incorrect_sentences, pair.error_sentence_id, _error_type(pair),
                                 pair.error_sentence, pair.corrected_sentence)
        return Answer(data, None, model=OFFLINE_MODEL, model_written=False)


def _error_type(pair: PairRecord) -> str:
    return normalize_error_type(pair.error_type) or pair.error_type


# ------------------------------------------------------------------------------------------------
# durable outputs


class JsonlAppender:
    """Append-only JSONL, fsynced per write. A torn last line (kill -9 mid-write) is cut on open."""

    def __init__(self, path: Path):
        self.path = path
        self.ids: set[str] = set()
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with path.open("r+b") as fh:
                    fh.truncate(keep)
                data = data[:keep]
            for line in data.decode("utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                self.ids.add(str(row.get("id") or row.get("pair_id")))
        self._fh = open_private(path, "a")  # SFT records and rejections hold notes: 0600

    def write(self, rows: list[dict]) -> None:
        fresh = [r for r in rows if str(r.get("id") or r.get("pair_id")) not in self.ids]
        if not fresh:
            return
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.ids.update(str(r.get("id") or r.get("pair_id")) for r in fresh)

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def write_combined(out_dir: Path, seed: int) -> dict:
    """sft_combined_safe.jsonl: every complete pair, both kinds, shuffled by ``seed`` (exactly 50/50)."""
    correct = {r["pair_id"]: r for r in read_jsonl(out_dir / "sft_correct.jsonl")}
    incorrect = {r["pair_id"]: r for r in read_jsonl(out_dir / "sft_incorrect.jsonl")}
    pairs = sorted(set(correct) & set(incorrect))
    rows = [correct[p] for p in pairs] + [incorrect[p] for p in pairs]
    random.Random(seed).shuffle(rows)
    write_atomic(out_dir / "sft_combined_safe.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                 private=True)
    return {"pairs": len(pairs), "correct": len(pairs), "incorrect": len(pairs), "total": len(rows)}


# ------------------------------------------------------------------------------------------------
# the run


@dataclass
class TaskOutcome:
    record: dict | None
    rejection: dict | None


@dataclass
class RunState:
    pairs_target: int = 0
    pairs_done_before: int = 0
    pairs_accepted: int = 0
    pairs_rejected: int = 0
    pairs_started: int = 0
    tasks: Counter = field(default_factory=Counter)  # "<kind>:accepted" / "<kind>:rejected"
    first_try: Counter = field(default_factory=Counter)
    checks: dict[str, Counter] = field(default_factory=dict)  # check name -> passed/failed
    failures: Counter = field(default_factory=Counter)  # non-verifier failure reasons
    state: str = "running"
    message: str = ""


class SftGenerator:
    """One run over the input pairs; :meth:`run` returns the report (also written to report.json)."""

    def __init__(self, config: GeneratorConfig, pairs: list[PairRecord] | None = None,
                 on_example: Callable[[dict], None] | None = None, stop: threading.Event | None = None,
                 on_rejected: Callable[[dict], None] | None = None):
        self.config = config
        self.out_dir = Path(config.output_dir)
        self.prompts = load_prompts(config.prompt_file)
        self.pairs = pairs
        self.on_example = on_example  # each kept record, once written
        self.on_rejected = on_rejected  # each rejected.jsonl row, once written
        self.stop = stop or threading.Event()
        self.state = RunState()
        self.model_name = OFFLINE_MODEL if config.use_offline() else config.model
        self.counter = TokenCounter(config.model)
        self.price = price_for(config.model)
        self.budget = Budget(config.max_cost_usd)
        self.executor = None
        self._lock = threading.Lock()

    # --- inputs -------------------------------------------------------------------------------------
    def load_pairs(self) -> list[PairRecord]:
        if self.pairs is not None:
            return list(self.pairs)
        if not self.config.input_jsonl:
            raise GeneratorError("no input: give --input-jsonl (a prepared split file or a MEDEC pair JSONL)")
        path = Path(self.config.input_jsonl)
        if not path.is_file():
            raise GeneratorError(f"input file not found: {path}")
        try:
            pairs = load_pairs_jsonl(path)
        except ValueError as exc:
            raise GeneratorError(str(exc)) from exc
        if not pairs:
            raise GeneratorError(f"{path} holds no pairs")
        return pairs

    def _check_config(self) -> None:
        c = self.config
        if c.num_pairs is not None and c.num_pairs < 1:
            raise GeneratorError("--num-pairs must be at least 1")
        if c.concurrency < 1:
            raise GeneratorError("--concurrency must be at least 1")
        if c.max_cost_usd is not None and c.max_cost_usd <= 0:
            raise GeneratorError("--max-cost-usd must be positive")
        if c.max_tries < 1:
            raise GeneratorError("--max-tries must be at least 1")
        if c.batch and c.use_offline():
            raise GeneratorError("--batch needs the OpenAI API: set OPENAI_API_KEY (or --openai-api-key-file) or --base-url")

    # --- entry point --------------------------------------------------------------------------------
    def run(self) -> dict:
        self._check_config()
        pairs = self.load_pairs()
        if self.config.dry_run:
            return self.dry_run(pairs)
        return asyncio.run(self._run(pairs))

    def _open_outputs(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        run_file = self.out_dir / RUN_FILE
        fingerprint = self.config.fingerprint(self.prompts)
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            if previous != fingerprint:
                changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
                raise GeneratorError(f"{self.out_dir} holds a run with other settings ({', '.join(changed)} differ); "
                                     "use a new --output-dir or the same settings to resume")
        else:
            write_atomic(run_file, json.dumps(fingerprint, indent=2))
        return {name: JsonlAppender(self.out_dir / name)
                for name in ("sft_correct.jsonl", "sft_incorrect.jsonl", "rejected.jsonl", PROGRESS_FILE)}

    def _make_backend(self, ledger: Ledger):
        c = self.config
        if c.use_offline():
            return OfflineBackend()
        client = make_openai_client(c.api_key, c.base_url, c.request_timeout_s)
        if c.batch:
            from services.generator.batch import BatchExecutor

            self.executor = BatchExecutor(client, ledger, self.budget, self.counter, self.price,
                                          poll_s=c.batch_poll_s, max_rounds=c.batch_max_rounds)
        else:
            self.executor = OnlineExecutor(client, ledger, self.budget, self.counter, self.price,
                                           concurrency=c.concurrency, max_retries=c.max_retries,
                                           timeout_s=c.request_timeout_s, store=c.store,
                                           limiter=RateLimiter(c.requests_per_min, c.tokens_per_min),
                                           backoff_base_s=c.backoff_base_s)
        return ModelBackend(self.executor, self.prompts, c.model, c.seed, self.counter)

    async def _run(self, pairs: list[PairRecord]) -> dict:
        started = time.time()
        files = self._open_outputs()
        ledger = Ledger(self.out_dir / LEDGER_FILE)
        backend = self._make_backend(ledger)
        done = {r["pair_id"]: r["status"] for r in read_jsonl(self.out_dir / PROGRESS_FILE)}
        st = self.state
        st.pairs_done_before = sum(1 for s in done.values() if s == "accepted")
        st.pairs_accepted = st.pairs_done_before
        st.pairs_target = min(self.config.num_pairs or len(pairs), len(pairs))
        todo = [p for p in pairs if p.pair_id not in done]
        if self.executor is not None and hasattr(self.executor, "resume"):
            await self.executor.resume()
        window = max(self.config.concurrency, 1) if not self.config.batch else max(st.pairs_target, 1)
        bar = _progress_bar(self.config.progress, st.pairs_target, st.pairs_accepted)
        queue = iter(todo)
        running: set[asyncio.Task] = set()
        stopping = False
        try:
            while True:
                while (not stopping and not self.stop.is_set() and len(running) < window
                       and st.pairs_accepted + len(running) < st.pairs_target):
                    pair = next(queue, None)
                    if pair is None:
                        break
                    st.pairs_started += 1
                    running.add(asyncio.create_task(self._pair(pair, backend, files)))
                if not running:
                    break
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    status = task.result()
                    if status == "budget":
                        stopping = True
                    self._update_bar(bar)
        finally:
            for task in running:
                task.cancel()
            if bar is not None:
                bar.close()
            if self.executor is not None:
                await self.executor.aclose()
            for f in files.values():
                f.close()
        if self.budget.exhausted:
            st.state = "budget_exhausted"
            st.message = (f"stopped cleanly: the next request could exceed --max-cost-usd ${self.config.max_cost_usd}; "
                          f"{st.pairs_accepted} of {st.pairs_target} pairs done; rerun with a higher budget to resume")
        elif self.stop.is_set():
            st.state, st.message = "stopped", "stopped on request; rerun to resume"
        elif st.pairs_accepted < st.pairs_target:
            st.state, st.message = "input_exhausted", (f"only {st.pairs_accepted} of {st.pairs_target} pairs passed "
                                                       "verification: the input has no more pairs")
        else:
            st.state, st.message = "done", f"{st.pairs_accepted} pairs -> {2 * st.pairs_accepted} examples"
        combined = write_combined(self.out_dir, self.config.seed)
        report = self.report(combined, time.time() - started, ledger)
        ledger.close()
        write_atomic(self.out_dir / "report.json", json.dumps(report, indent=2))
        log.info("generation finished", extra={"state": st.state, "pairs": st.pairs_accepted,
                                               "cost_usd": round(report["cost_usd"], 6)})
        return report

    def _update_bar(self, bar) -> None:
        if bar is None:
            return
        st = self.state
        bar.n = st.pairs_accepted
        tried = st.pairs_accepted + st.pairs_rejected - st.pairs_done_before
        acc = (st.pairs_accepted - st.pairs_done_before) / tried if tried else 0.0
        spent = self.budget.committed
        bar.set_postfix_str(f"cost=${spent:.4f} accept={acc:.0%} rejected={st.pairs_rejected}", refresh=False)
        bar.update(0)  # redraws at most every mininterval

    # --- one pair -----------------------------------------------------------------------------------
    async def _pair(self, pair: PairRecord, backend, files: dict) -> str:
        results = await asyncio.gather(self._correct(pair, backend), self._incorrect(pair, backend),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BudgetExhausted):
                return "budget"  # not marked done: a resumed run finishes it from the cache
            if isinstance(r, asyncio.CancelledError):
                raise r
        outcomes: list[TaskOutcome] = []
        for kind, r in zip(("CORRECT", "INCORRECT"), results, strict=True):
            if isinstance(r, BaseException):
                reason = f"request failed: {r}" if isinstance(r, RequestFailed) else f"{type(r).__name__}: {r}"
                if not isinstance(r, RequestFailed):
                    log.error("task crashed", extra={"pair_id": pair.pair_id, "kind": kind, "error": reason})
                self.state.failures["request_failed" if isinstance(r, RequestFailed) else "internal_error"] += 1
                r = TaskOutcome(None, {"id": f"{pair.pair_id}:{kind.lower()}", "pair_id": pair.pair_id, "kind": kind,
                                       "reason": reason, "attempts": []})
            outcomes.append(r)
        correct, incorrect = outcomes
        for kind, o in (("CORRECT", correct), ("INCORRECT", incorrect)):
            self.state.tasks[f"{kind}:{'accepted' if o.record else 'rejected'}"] += 1
        if correct.record and incorrect.record:
            files["sft_correct.jsonl"].write([correct.record])
            files["sft_incorrect.jsonl"].write([incorrect.record])
            files[PROGRESS_FILE].write([{"pair_id": pair.pair_id, "status": "accepted", "ts": time.time()}])
            with self._lock:
                self.state.pairs_accepted += 1
            for record in (correct.record, incorrect.record):
                metrics.GENERATOR_EXAMPLES.labels(record["kind"], "true").inc()
                if self.on_example is not None:
                    self.on_example(record)
            return "accepted"
        rejected = []
        for o, partner in ((correct, incorrect), (incorrect, correct)):
            if o.rejection is not None:
                rejected.append(o.rejection)
            else:  # passed, but its partner failed: dropped with the pair to keep the 50/50 balance
                rejected.append({"id": o.record["id"], "pair_id": pair.pair_id, "kind": o.record["kind"],
                                 "reason": f"dropped with its pair: the {partner.rejection['kind']} side failed",
                                 "dropped_with_pair": True, "record": o.record})
            metrics.GENERATOR_EXAMPLES.labels(rejected[-1]["kind"], "false").inc()
        files["rejected.jsonl"].write(rejected)
        files[PROGRESS_FILE].write([{"pair_id": pair.pair_id, "status": "rejected", "ts": time.time()}])
        with self._lock:
            self.state.pairs_rejected += 1
        if self.on_rejected is not None:
            for row in rejected:
                self.on_rejected(row)
        return "rejected"

    def _count_checks(self, verification: dict) -> None:
        for check in verification.get("checks", []):
            self.state.checks.setdefault(check["name"], Counter())["passed" if check["passed"] else "failed"] += 1

    def _verify(self, mode: str, original, modified, **kwargs) -> dict:
        from services.verifier.checks import VerifyInputError, verify

        try:
            result = verify(mode, original, modified, **kwargs)
        except VerifyInputError as exc:
            return {"mode": mode, "passed": False, "checks": [{"name": "verifier_input", "passed": False,
                                                               "detail": str(exc)}], "changed_sentence_ids": []}
        d = result.to_dict()
        self._count_checks(d)
        return d

    def _base_record(self, pair: PairRecord, kind: str) -> dict:
        return {"id": f"{pair.pair_id}:{kind.lower()}", "pair_id": pair.pair_id, "kind": kind,
                "prompt_version": self.prompts.version, "prompt_hash": self.prompts.hash}

    def _finish(self, record: dict, answers: list[Answer], model_written: bool) -> dict:
        prompt = sum(a.tokens[0] for a in answers)
        cached = sum(a.tokens[1] for a in answers)
        completion = sum(a.tokens[2] for a in answers)
        last = answers[-1] if answers else None
        record.update({
            "model": (last.model if last and last.model else self.model_name) if answers else None,
            "system_fingerprint": last.system_fingerprint if last else "",
            "model_written": model_written,
            "tokens": {"prompt": prompt, "cached": cached, "completion": completion},
            "cost_usd": round(sum(a.cost_usd for a in answers), 8),
            "tries": len(answers),
        })
        return record

    async def _correct(self, pair: PairRecord, backend) -> TaskOutcome:
        source = [(int(i), s) for i, s in pair.correct_sentences]
        answers: list[Answer] = []
        attempts: list[dict] = []
        feedback: str | None = None
        verification: dict | None = None
        for attempt in range(self.config.max_tries):
            verification = None
            answer = await backend.paraphrase(pair, attempt, feedback)
            answers.append(answer)
            if answer.failure:
                self.state.failures[answer.failure] += 1
                attempts.append({"try": attempt, "failure": answer.failure})
                if backend.model_written is False and answer.data is None:
                    break
                feedback = self.prompts.paraphrase_feedback("none", "none", [answer.failure])
                continue
            sid, new_sentence = int(answer.data["sentence_id"]), answer.data["paraphrase"].strip()
            modified = apply_edit(source, InjectorEdit(sid, new_sentence, None))
            if isinstance(modified, ParseFailure):
                failed = [f"sentence_id: {modified.reason}"]
            else:
                verification = self._verify("paraphrase", source, modified)
                failed = [f"{c['name']}: {c['detail']}" for c in verification["checks"] if not c["passed"]]
            if verification is not None and verification["passed"]:
                if attempt == 0:
                    self.state.first_try["CORRECT"] += 1
                original_sentence = dict(source)[sid]
                record = self._base_record(pair, "CORRECT")
                record.update({
                    "source_sentences": [[i, s] for i, s in source],
                    "note_sentences": [[i, s] for i, s in modified],
                    "note_text": _rebuild_text(pair.correct_note, original_sentence, new_sentence, modified),
                    "changed_sentence_id": sid, "original_sentence": original_sentence, "new_sentence": new_sentence,
                    "error_type": None, "reasoning": None, "verifier": verification,
                })
                record = self._finish(record, answers, backend.model_written)
                record["messages"] = sft_messages(record, "assessor")
                return TaskOutcome(record, None)
            attempts.append({"try": attempt, "sentence_id": sid, "candidate": new_sentence, "failed_checks": failed})
            feedback = self.prompts.paraphrase_feedback(sid, new_sentence, failed)
        rejection = self._base_record(pair, "CORRECT")
        last = attempts[-1] if attempts else {}
        reason = "; ".join(last.get("failed_checks") or [last.get("failure", "no answer")])
        rejection.update({"reason": f"failed after {len(answers)} tries: {reason}", "attempts": attempts,
                          "verifier": verification})
        return TaskOutcome(None, self._finish(rejection, answers, backend.model_written))

    async def _incorrect(self, pair: PairRecord, backend) -> TaskOutcome:
        correct = [(int(i), s) for i, s in pair.correct_sentences]
        incorrect = [(int(i), s) for i, s in pair.incorrect_sentences]
        error_type = _error_type(pair)
        answers: list[Answer] = []
        attempts: list[dict] = []
        reasoning: dict | None = None
        verification: dict | None = None
        feedback: str | None = None
        tries = self.config.max_tries if self.config.add_reasoning else 1
        for attempt in range(tries):
            verification = None
            if self.config.add_reasoning:
                answer = await backend.reasoning(pair, attempt, feedback)
                answers.append(answer)
                if answer.failure:
                    self.state.failures[answer.failure] += 1
                    attempts.append({"try": attempt, "failure": answer.failure})
                    if not backend.model_written:
                        break
                    feedback = self.prompts.reasoning_feedback([answer.failure])
                    continue
                reasoning = {k: answer.data[k] for k in ("why_wrong", "key_clues", "clinical_impact", "wrong_finding",
                                                          "right_finding")}
            verification = self._verify("medec_incorrect", correct, incorrect, error_sentence_id=pair.error_sentence_id,
                                        claimed_error_type=error_type, reasoning=reasoning,
                                        medec_reference=incorrect)
            if verification["passed"]:
                if attempt == 0:
                    self.state.first_try["INCORRECT"] += 1
                record = self._base_record(pair, "INCORRECT")
                record.update({
                    "source_sentences": [[i, s] for i, s in correct],
                    "note_sentences": [[i, s] for i, s in incorrect],
                    "note_text": pair.incorrect_note,
                    "changed_sentence_id": pair.error_sentence_id,
                    "original_sentence": pair.corrected_sentence, "new_sentence": pair.error_sentence,
                    "error_type": error_type, "reasoning": reasoning, "verifier": verification,
                })
                record = self._finish(record, answers, backend.model_written if answers else False)
                record["messages"] = sft_messages(record, "assessor")
                return TaskOutcome(record, None)
            failed = [f"{c['name']}: {c['detail']}" for c in verification["checks"] if not c["passed"]]
            attempts.append({"try": attempt, "failed_checks": failed, "reasoning": reasoning})
            if reasoning is None or any(not c["name"].startswith("reasoning_")
                                        for c in verification["checks"] if not c["passed"]):
                break  # the MEDEC pair itself fails: no new explanation can fix that
            feedback = self.prompts.reasoning_feedback(failed)
        rejection = self._base_record(pair, "INCORRECT")
        last = attempts[-1] if attempts else {}
        reason = "; ".join(last.get("failed_checks") or [last.get("failure", "no answer")])
        rejection.update({"reason": f"failed after {max(1, len(answers))} tries: {reason}", "attempts": attempts,
                          "verifier": verification})
        return TaskOutcome(None, self._finish(rejection, answers, backend.model_written if answers else False))

    # --- reporting ----------------------------------------------------------------------------------
    def report(self, combined: dict, wall_s: float, ledger: Ledger | None) -> dict:
        st = self.state
        stats = getattr(self.executor, "stats", None)
        c = self.config
        per_check = {name: {"passed": cnt["passed"], "failed": cnt["failed"],
                            "pass_rate": round(cnt["passed"] / max(1, cnt["passed"] + cnt["failed"]), 4)}
                     for name, cnt in sorted(st.checks.items())}
        accepted_c, rejected_c = st.tasks["CORRECT:accepted"], st.tasks["CORRECT:rejected"]
        accepted_i, rejected_i = st.tasks["INCORRECT:accepted"], st.tasks["INCORRECT:rejected"]
        return {
            "state": st.state,
            "message": st.message,
            "backend": "offline" if c.use_offline() else ("openai-batch" if c.batch else "openai"),
            "model": self.model_name,
            "base_url": c.base_url,
            "prompt": {"file": self.prompts.path, "version": self.prompts.version, "hash": self.prompts.hash},
            "pairs": {"target": st.pairs_target, "done_before_this_run": st.pairs_done_before,
                      "started_this_run": st.pairs_started, "accepted": st.pairs_accepted,
                      "rejected_this_run": st.pairs_rejected},
            "examples": combined,
            "requests": {
                "http_requests": stats.http_requests if stats else 0,
                "succeeded": stats.succeeded if stats else 0,
                "retries": stats.retries if stats else 0,
                "cache_hits": stats.cache_hits if stats else 0,
                "recovered_after_crash": stats.recovered if stats else 0,
                "batches": stats.batches if stats else 0,
                "outcomes": dict(stats.outcomes) if stats else {},
            },
            "tokens": {"prompt": stats.prompt_tokens if stats else 0, "cached": stats.cached_tokens if stats else 0,
                       "completion": stats.completion_tokens if stats else 0},
            "cost_usd": round(stats.cost_usd, 8) if stats else 0.0,
            "cost_usd_all_runs": round(self._cost_in_outputs(), 8),
            "cost_usd_possibly_billed": round(self.budget.possibly_billed, 8),
            "budget_usd": c.max_cost_usd,
            "price_table": price_table(self.price, c.model, c.batch),
            "acceptance": {
                "CORRECT": {"accepted": accepted_c, "rejected": rejected_c,
                            "rate": round(accepted_c / max(1, accepted_c + rejected_c), 4),
                            "first_try": st.first_try["CORRECT"]},
                "INCORRECT": {"accepted": accepted_i, "rejected": rejected_i,
                              "rate": round(accepted_i / max(1, accepted_i + rejected_i), 4),
                              "first_try": st.first_try["INCORRECT"]},
                "per_check": per_check,
                "answer_failures": dict(st.failures),
            },
            "token_estimator": self.counter.name,
            "wall_time_s": round(wall_s, 3),
            "config": c.public(),
        }

    def _cost_in_outputs(self) -> float:
        """What every answer behind the output files cost, this run and the runs it resumed."""
        rows = (read_jsonl(self.out_dir / "sft_correct.jsonl") + read_jsonl(self.out_dir / "sft_incorrect.jsonl")
                + [r.get("record", r) for r in read_jsonl(self.out_dir / "rejected.jsonl")])
        return sum(float(r.get("cost_usd") or 0.0) for r in rows)

    # --- dry run ------------------------------------------------------------------------------------
    def dry_run(self, pairs: list[PairRecord]) -> dict:
        """Tokens and cost of the first tries for the target pairs, counted locally; nothing is sent."""
        c = self.config
        target = min(c.num_pairs or len(pairs), len(pairs))
        backend = ModelBackend(None, self.prompts, c.model, c.seed, self.counter)
        requests, prompt_tokens, completion_est, worst = 0, 0, 0, 0.0
        cached_keys: set[str] = set()
        ledger_path = self.out_dir / LEDGER_FILE
        if ledger_path.exists():
            ledger = Ledger(ledger_path)
            cached_keys = ledger.cached_keys()
            ledger.close()
        already = 0
        for pair in pairs[:target]:
            reqs = [backend.paraphrase_request(pair, 0, None)]
            if c.add_reasoning:
                reqs.append(backend.reasoning_request(pair, 0, None))
            for req in reqs:
                if req.key in cached_keys:
                    already += 1
                    continue
                requests += 1
                p = self.counter.messages(req.messages, req.schema, bound=False)
                prompt_tokens += p
                # a paraphrase answer is about one sentence; a reasoning answer about 200 tokens
                sentence = self.counter.expected(max((s for _, s in pair.correct_sentences), key=len, default=""))
                completion_est += (sentence + 16) if req.task == "paraphrase" else 220
                worst += cost_usd(self.counter.messages(req.messages, req.schema, bound=True), 0,
                                  req.max_completion_tokens, self.price, c.batch)
        estimate = cost_usd(prompt_tokens, 0, completion_est, self.price, c.batch)
        report = {"state": "dry_run", "model": c.model, "batch": c.batch, "pairs": target,
                  "examples_if_all_pass": 2 * target, "requests_first_try": requests,
                  "requests_already_cached": already, "tokens_estimate": {"prompt": prompt_tokens,
                                                                          "completion": completion_est},
                  "cost_usd_estimate": round(estimate, 6), "cost_usd_worst_case_first_tries": round(worst, 6),
                  "note": "first tries only; verifier retries add roughly the failure rate on top",
                  "price_table": price_table(self.price, c.model, c.batch), "token_estimator": self.counter.name,
                  "prompt": {"version": self.prompts.version, "hash": self.prompts.hash}}
        return report


def _rebuild_text(note: str, original: str, new: str, sentences: list[tuple[int, str]]) -> str:
    """The note text with the one sentence replaced in place (whitespace kept); joined sentences if not found."""
    if original and note.count(original) == 1:
        return note.replace(original, new, 1)
    return " ".join(s for _, s in sentences)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="pair", desc="sft pairs", dynamic_ncols=True)


def generate_sft(config: GeneratorConfig | dict, pairs: list[PairRecord] | None = None,
                 on_example: Callable[[dict], None] | None = None, stop: threading.Event | None = None,
                 on_rejected: Callable[[dict], None] | None = None) -> dict:
    """Run the generator and return its report (``report.json``); a dict config is read as GeneratorConfig."""
    if isinstance(config, dict):
        config = GeneratorConfig(**config)
    return SftGenerator(config, pairs, on_example, stop, on_rejected).run()
