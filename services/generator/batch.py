"""The Batch API executor: the same ``call(request)`` interface, half the price, hours of latency.

Requests are collected while the pipeline's tasks are producing them; once no new request has come
for ``idle_s`` they go out as one batch (JSONL file upload + ``POST /v1/batches``). The batch id is
written to the ledger before anything else, so a run killed while a batch is open resumes by polling
that batch instead of paying for a new one. When a batch ends, both the output file and the error
file are read; lines that failed (error file, or missing because the batch expired) are resubmitted
in a new batch, and only those, up to ``max_rounds`` times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import openai

from services.generator.client import (
    CallStats,
    ChatRequest,
    ChatResult,
    RequestFailed,
    result_from_completion,
    usage_of,
)
from services.generator.costs import Budget, BudgetExhausted, Price, Reservation, TokenCounter, cost_usd
from services.generator.ledger import Ledger

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchExecutor:
    def __init__(self, client: openai.AsyncOpenAI, ledger: Ledger, budget: Budget, counter: TokenCounter, price: Price,
                 *, poll_s: float = 5.0, max_rounds: int = 5, idle_s: float = 0.2, submit_retries: int = 5):
        self.client = client
        self.ledger = ledger
        self.budget = budget
        self.counter = counter
        self.price = price
        self.poll_s = poll_s
        self.max_rounds = max_rounds
        self.idle_s = idle_s
        self.submit_retries = submit_retries
        self.stats = CallStats()
        self._pending: list[tuple[ChatRequest, asyncio.Future]] = []
        self._last_enqueue = 0.0
        self._flusher: asyncio.Task | None = None

    # --- public interface ---------------------------------------------------------------------------
    async def call(self, req: ChatRequest) -> ChatResult:
        hit = self.ledger.get(req.key)
        if hit is not None:
            self.stats.cache_hits += 1
            return result_from_completion(hit["completion"], hit["cost_usd"], f"cache:{hit['via']}")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((req, future))
        self._last_enqueue = time.monotonic()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return await future

    async def resume(self) -> None:
        """Collect batches an earlier (killed) run left open; their answers land in the cache."""
        for file_id, batch_id, keys in self.ledger.open_batches():
            if batch_id is None:  # killed between upload and recording the batch: was it created?
                batch_id = await self._find_batch(file_id)
                if batch_id is None:
                    self.ledger.finish_batch(file_id, "never_created")
                    continue
                self.ledger.set_batch(file_id, batch_id)
            log.info("resuming an open batch", extra={"batch_id": batch_id, "requests": len(keys)})
            await self._collect(batch_id, file_id, {k: None for k in keys}, {})

    async def _find_batch(self, input_file_id: str, max_scan: int = 1000) -> str | None:
        scanned = 0
        async for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == input_file_id:
                return batch.id
            scanned += 1
            if scanned >= max_scan:
                break
        return None

    async def aclose(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        await self.client.close()

    # --- batching -----------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while self._pending:
            while time.monotonic() - self._last_enqueue < self.idle_s:
                await asyncio.sleep(self.idle_s / 2)
            items, self._pending = self._pending, []
            try:
                await self._round_trip(items)
            except Exception as exc:  # noqa: BLE001 - every waiting task must hear about it
                for _req, future in items:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, RequestFailed | BudgetExhausted)
                                             else RequestFailed(f"batch failed: {type(exc).__name__}: {exc}"))

    async def _round_trip(self, items: list[tuple[ChatRequest, asyncio.Future]]) -> None:
        waiting: dict[str, list[asyncio.Future]] = {}
        requests: dict[str, ChatRequest] = {}
        for req, future in items:
            waiting.setdefault(req.key, []).append(future)
            requests[req.key] = req
        todo = list(requests)
        last_error: dict[str, str] = {}
        for round_no in range(self.max_rounds + 1):
            reservations: dict[str, Reservation] = {}
            for key in todo:
                req = requests[key]
                worst = cost_usd(self.counter.messages(req.messages, req.schema, bound=True), 0,
                                 req.max_completion_tokens, self.price, batch=True)
                try:
                    reservations[key] = self.budget.reserve(worst)
                except BudgetExhausted as exc:
                    for future in waiting[key]:
                        if not future.done():
                            future.set_exception(exc)
            todo = list(reservations)
            if not todo:
                return
            if round_no:
                self.stats.retries += len(todo)
            file_id, batch_id = await self._submit([requests[k] for k in todo])
            ok, failed = await self._collect(batch_id, file_id, {k: requests[k] for k in todo}, reservations)
            for key, result in ok.items():
                for future in waiting[key]:
                    if not future.done():
                        future.set_result(result)
            last_error.update(failed)
            todo = list(failed)
            if not todo:
                return
            log.info("resubmitting failed batch lines", extra={"failed": len(todo), "round": round_no + 1})
        for key in todo:
            for future in waiting[key]:
                if not future.done():
                    future.set_exception(RequestFailed(f"batch line failed {self.max_rounds + 1} times: {last_error.get(key)}"))

    async def _with_retries(self, what: str, fn):
        for n in range(self.submit_retries + 1):
            try:
                return await fn()
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                if n == self.submit_retries:
                    raise RequestFailed(f"{what} failed: {type(exc).__name__}") from exc
                await asyncio.sleep(min(30.0, 0.5 * 2 ** n) * random.uniform(0.5, 1.0))
            except openai.APIStatusError as exc:
                raise RequestFailed(f"{what} failed: HTTP {exc.status_code}: {exc.message}") from exc
        raise RequestFailed(f"{what} failed")

    async def _submit(self, reqs: list[ChatRequest]) -> tuple[str, str]:
        lines = [{"custom_id": r.key, "method": "POST", "url": "/v1/chat/completions", "body": r.body(store=False)}
                 for r in reqs]
        data = ("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n").encode("utf-8")
        upload = await self._with_retries("batch file upload", lambda: self.client.files.create(
            file=("medserl-sft-batch.jsonl", data, "application/jsonl"), purpose="batch"))
        self.ledger.add_upload(upload.id, [r.key for r in reqs])
        batch = await self._with_retries("batch create", lambda: self.client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"source": "medserl-generate-sft"}))
        self.ledger.set_batch(upload.id, batch.id)
        self.stats.batches += 1
        self.stats.http_requests += len(reqs)
        log.info("batch submitted", extra={"batch_id": batch.id, "requests": len(reqs)})
        return upload.id, batch.id

    async def _read_file(self, file_id: str) -> list[dict]:
        content = await self._with_retries("batch file download", lambda: self.client.files.content(file_id))
        rows = []
        for line in content.text.splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    log.warning("unreadable line in a batch result file", extra={"file_id": file_id})
        return rows

    async def _collect(self, batch_id: str, file_id: str, reqs: dict[str, ChatRequest | None],
                       reservations: dict[str, Reservation]) -> tuple[dict[str, ChatResult], dict[str, str]]:
        """Wait for the batch, read output AND error files; returns (results by key, failures by key)."""
        while True:
            batch = await self._with_retries("batch status", lambda: self.client.batches.retrieve(batch_id))
            if batch.status in TERMINAL:
                break
            await asyncio.sleep(self.poll_s)
        ok: dict[str, ChatResult] = {}
        failed: dict[str, str] = {}
        if batch.output_file_id:
            for row in await self._read_file(batch.output_file_id):
                key, response = row.get("custom_id"), row.get("response") or {}
                if key not in reqs:
                    continue
                if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                    completion = response["body"]
                    prompt, cached, out = usage_of(completion)
                    cost = cost_usd(prompt, cached, out, self.price, batch=True)
                    if key in reservations:
                        self.budget.settle(reservations[key], cost)
                    else:
                        self.budget.charge_recovered(cost)
                    self.stats.succeeded += 1
                    self.stats.billed(prompt, cached, out, cost)
                    req = reqs[key]
                    self.stats.outcome("ok", req.task if req else "resumed")
                    self.ledger.put(key, pair_id=req.pair_id if req else "", task=req.task if req else "",
                                    attempt=req.attempt if req else -1, prompt_hash=req.prompt_hash if req else "",
                                    model=req.model if req else "", params=req.params() if req else {},
                                    completion=completion, usage=(prompt, cached, out), cost_usd=cost, via="batch")
                    ok[key] = result_from_completion(completion, cost, "batch")
                else:
                    failed[key] = f"HTTP {response.get('status_code')}"
        if batch.error_file_id:
            for row in await self._read_file(batch.error_file_id):
                key = row.get("custom_id")
                if key not in reqs or key in ok:
                    continue
                response = row.get("response") or {}
                error = row.get("error") or ((response.get("body") or {}).get("error") or {})
                failed[key] = f"HTTP {response.get('status_code')}: {error.get('message', '')}"[:300]
        for key in reqs:
            if key not in ok and key not in failed:
                failed[key] = f"no result (batch {batch.status})"
        for key in failed:
            if key in reservations:
                self.budget.release(reservations[key])  # failed lines are not billed
            req = reqs[key]
            self.stats.outcome("batch_line_failed", req.task if req else "resumed")
        self.ledger.finish_batch(file_id, batch.status)
        return ok, failed
