"""The OpenAI-compatible chat client: Structured Outputs, retries, rate limits, budget, cache.

One code path for production and tests: the official ``openai`` package (``AsyncOpenAI``) pointed at
``base_url``. Its own retries are off (``max_retries=0``) because we need to see every attempt to
keep the budget, the ledger and the rate limiter right. Headers are read via ``with_raw_response``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field

import openai

from services.common import metrics
from services.generator.costs import Budget, Price, TokenCounter, cost_usd
from services.generator.ledger import Ledger
from services.generator.ratelimit import RateLimiter, retry_after_s

log = logging.getLogger(__name__)

METADATA_KEY = "medserl_key"


class RequestFailed(RuntimeError):
    """The request could not be completed (retries used up, or an error that retrying cannot fix)."""


@dataclass
class ChatRequest:
    """One chat completion with a strict JSON schema; ``key`` identifies it in the ledger/cache."""

    pair_id: str
    task: str  # paraphrase | reasoning
    attempt: int
    messages: list[dict]
    schema: dict  # json_schema object (name, strict, schema)
    model: str
    temperature: float
    max_completion_tokens: int
    seed: int
    prompt_hash: str
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            digest = hashlib.sha256(json.dumps(self.messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            ident = [self.pair_id, self.task, self.attempt, self.prompt_hash, self.model, self.params(), digest]
            self.key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def params(self) -> dict:
        return {"temperature": self.temperature, "max_completion_tokens": self.max_completion_tokens,
                "seed": self.seed, "schema": self.schema.get("name")}

    def body(self, store: bool) -> dict:
        """The JSON body of POST /v1/chat/completions (also a Batch API line's ``body``)."""
        body = {"model": self.model, "messages": self.messages, "temperature": self.temperature,
                "max_completion_tokens": self.max_completion_tokens, "seed": self.seed,
                "response_format": {"type": "json_schema", "json_schema": self.schema}}
        if store:
            body["store"] = True
            body["metadata"] = {METADATA_KEY: self.key, "task": self.task}
        return body


@dataclass
class ChatResult:
    content: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    model: str
    system_fingerprint: str
    via: str  # online | batch | recovered | cache:<via>


def usage_of(completion: dict) -> tuple[int, int, int]:
    usage = completion.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return int(usage.get("prompt_tokens") or 0), int(details.get("cached_tokens") or 0), int(usage.get("completion_tokens") or 0)


def result_from_completion(completion: dict, cost: float, via: str) -> ChatResult:
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") or {}
    prompt, cached, out = usage_of(completion)
    return ChatResult(message.get("content"), message.get("refusal"), choices[0].get("finish_reason"), prompt, cached, out,
                      cost, str(completion.get("model") or ""), str(completion.get("system_fingerprint") or ""), via)


@dataclass
class CallStats:
    """What the report needs: every HTTP attempt, every outcome, tokens and dollars of this run."""

    http_requests: int = 0
    succeeded: int = 0
    retries: int = 0
    cache_hits: int = 0
    recovered: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    batches: int = 0

    def outcome(self, name: str, task: str) -> None:
        self.outcomes[name] = self.outcomes.get(name, 0) + 1
        metrics.GENERATOR_REQUESTS.labels(task, name).inc()

    def billed(self, prompt: int, cached: int, completion: int, cost: float) -> None:
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion
        self.cost_usd += cost
        metrics.GENERATOR_TOKENS.labels("prompt").inc(prompt)
        metrics.GENERATOR_TOKENS.labels("cached").inc(cached)
        metrics.GENERATOR_TOKENS.labels("completion").inc(completion)
        metrics.GENERATOR_COST_USD.inc(cost)


def make_openai_client(api_key: str | None, base_url: str | None, timeout_s: float) -> openai.AsyncOpenAI:
    """AsyncOpenAI with its own retries off; a local server without auth still needs some key string."""
    return openai.AsyncOpenAI(api_key=api_key or "not-needed", base_url=base_url, max_retries=0, timeout=timeout_s)


class OnlineExecutor:
    """Sends chat requests now, under bounded concurrency, the rate limiter and the hard budget."""

    def __init__(self, client: openai.AsyncOpenAI, ledger: Ledger, budget: Budget, counter: TokenCounter, price: Price,
                 *, concurrency: int = 16, max_retries: int = 6, timeout_s: float = 60.0, store: bool = True,
                 limiter: RateLimiter | None = None, backoff_base_s: float = 0.5, backoff_max_s: float = 30.0):
        self.client = client
        self.ledger = ledger
        self.budget = budget
        self.counter = counter
        self.price = price
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.store = store
        self.limiter = limiter or RateLimiter()
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stats = CallStats()
        self._semaphore = asyncio.Semaphore(max(1, concurrency))

    def worst_case_cost(self, req: ChatRequest) -> float:
        prompt = self.counter.messages(req.messages, req.schema, bound=True)
        return cost_usd(prompt, 0, req.max_completion_tokens, self.price)

    async def call(self, req: ChatRequest) -> ChatResult:
        hit = self.ledger.get(req.key)
        if hit is not None:
            self.stats.cache_hits += 1
            return result_from_completion(hit["completion"], hit["cost_usd"], f"cache:{hit['via']}")
        async with self._semaphore:
            if self.store and self.ledger.is_pending(req.key):
                recovered = await self._recover(req)
                if recovered is not None:
                    return recovered
            return await self._send(req)

    async def _recover(self, req: ChatRequest) -> ChatResult | None:
        """A request in flight when an earlier run died: fetch its stored completion instead of paying again."""
        try:
            page = await self.client.chat.completions.list(metadata={METADATA_KEY: req.key}, limit=1, timeout=self.timeout_s)
            items = list(page.data)
        except Exception as exc:  # noqa: BLE001 - the provider may not store completions: just send again
            log.info("could not look up a stored completion", extra={"error": type(exc).__name__})
            return None
        if not items:
            return None
        completion = items[0].model_dump()
        prompt, cached, out = usage_of(completion)
        cost = cost_usd(prompt, cached, out, self.price)
        self.budget.charge_recovered(cost)
        self.stats.recovered += 1
        self.stats.billed(prompt, cached, out, cost)
        self.stats.outcome("recovered", req.task)
        self._store(req, completion, cost, "recovered")
        return result_from_completion(completion, cost, "recovered")

    def _store(self, req: ChatRequest, completion: dict, cost: float, via: str) -> None:
        self.ledger.put(req.key, pair_id=req.pair_id, task=req.task, attempt=req.attempt, prompt_hash=req.prompt_hash,
                        model=req.model, params=req.params(), completion=completion, usage=usage_of(completion),
                        cost_usd=cost, via=via)

    def _backoff(self, n: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * (2 ** n)) * random.uniform(0.5, 1.0)

    async def _send(self, req: ChatRequest) -> ChatResult:
        body = req.body(self.store)
        worst = self.worst_case_cost(req)
        expected_tokens = self.counter.messages(req.messages, req.schema, bound=False) + req.max_completion_tokens
        last_error = "no attempt made"
        for n in range(self.max_retries + 1):
            reservation = self.budget.reserve(worst)  # raises BudgetExhausted: nothing is sent
            await self.limiter.acquire(expected_tokens)
            if n:
                self.stats.retries += 1
            self.stats.http_requests += 1
            started = time.time()
            self.ledger.mark_pending(req.key)
            status: int | None = None
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**body, timeout=self.timeout_s)
                status = raw.status_code
                self.limiter.update(raw.headers)
                completion = json.loads(raw.http_response.text)
                if not isinstance(completion, dict) or not completion.get("choices"):
                    raise ValueError("no choices in the response")
            except openai.APIStatusError as exc:
                # an error answer is not billed
                self.budget.release(reservation)
                self.ledger.clear_pending(req.key)
                status = exc.status_code
                self.limiter.update(exc.response.headers)
                retry_after = retry_after_s(exc.response.headers)
                if status == 429:
                    outcome, wait = "rate_limited", retry_after if retry_after is not None else self._backoff(n)
                    self.limiter.pause(wait)
                elif status >= 500 or status in (408, 409):
                    outcome, wait = "server_error", retry_after if retry_after is not None else self._backoff(n)
                else:
                    self.stats.outcome("client_error", req.task)
                    self.ledger.log_attempt(req.key, "client_error", status, str(exc), started)
                    raise RequestFailed(f"HTTP {status} from the API: {exc.message}") from exc
                last_error = f"HTTP {status}"
            except (TimeoutError, openai.APIConnectionError) as exc:
                # the server may have done (and billed) the work: keep the reservation as spent
                self.budget.forfeit(reservation)
                outcome, wait = ("timeout" if isinstance(exc, openai.APITimeoutError | TimeoutError)
                                 else "connection_error"), self._backoff(n)
                last_error = outcome
            except ValueError as exc:  # HTTP 200 with a body that is not a chat completion
                self.budget.forfeit(reservation)
                outcome, wait = "malformed_response", self._backoff(n)
                last_error = f"malformed response body ({exc.__class__.__name__})"
            else:
                prompt, cached, out = usage_of(completion)
                cost = cost_usd(prompt, cached, out, self.price)
                self.budget.settle(reservation, cost)
                self.stats.succeeded += 1
                self.stats.billed(prompt, cached, out, cost)
                self.stats.outcome("ok", req.task)
                self.ledger.log_attempt(req.key, "ok", status, "", started)
                self._store(req, completion, cost, "online")
                return result_from_completion(completion, cost, "online")
            self.stats.outcome(outcome, req.task)
            self.ledger.log_attempt(req.key, outcome, status, last_error, started)
            if n < self.max_retries:
                await asyncio.sleep(wait * random.uniform(1.0, 1.1) if outcome == "rate_limited" else wait)
        raise RequestFailed(f"gave up after {self.max_retries + 1} attempts: {last_error}")

    async def aclose(self) -> None:
        await self.client.close()
