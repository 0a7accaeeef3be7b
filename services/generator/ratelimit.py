"""Client-side rate limiting driven by the provider's ``x-ratelimit-*`` headers.

Two token buckets (requests and tokens per minute) that refill continuously, like the provider's.
Limits come from ``x-ratelimit-limit-*`` (or a configured fallback); every response re-syncs the
buckets to the provider's ``x-ratelimit-remaining-*``, which already counts our requests in flight.
A 429 pauses every sender until its ``retry-after``. A request is charged its expected prompt
tokens plus ``max_completion_tokens``, which is how the provider counts it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """'1s', '6m0s', '120ms', '0.5' -> seconds; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms`` wins over ``retry-after``)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


class _Bucket:
    def __init__(self, limit: float | None):
        self.limit = limit  # per minute; None = unknown (no client-side limit yet)
        self.level = limit or 0.0
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        if self.limit:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is)."""
        if not self.limit:
            return 0.0
        amount = min(amount, self.limit)  # a request larger than the bucket waits for a full bucket
        if self.level >= amount:
            return 0.0
        return (amount - self.level) * 60.0 / self.limit

    def take(self, amount: float) -> None:
        if self.limit:
            self.level -= min(amount, self.limit)

    def sync(self, limit: float | None, remaining: float | None, now: float) -> None:
        if limit:
            if self.limit is None:
                self.level = limit
            self.limit = limit
        if remaining is not None and self.limit:
            self.refill(now)
            self.level = min(self.limit, remaining)


class RateLimiter:
    """Paces requests so that bursts stay under the provider's per-minute request and token limits."""

    def __init__(self, requests_per_min: float | None = None, tokens_per_min: float | None = None):
        self.requests = _Bucket(requests_per_min)
        self.tokens = _Bucket(tokens_per_min)
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        # FIFO: one waiter at a time takes capacity, so a large request is not starved by small ones
        async with self._lock:
            while True:
                now = time.monotonic()
                self.requests.refill(now)
                self.tokens.refill(now)
                wait = max(self.paused_until - now, self.requests.wait_for(1), self.tokens.wait_for(tokens))
                if wait <= 0:
                    self.requests.take(1)
                    self.tokens.take(tokens)
                    return
                await asyncio.sleep(min(wait, 5.0))

    def update(self, headers: Mapping[str, str] | None) -> None:
        if not headers:
            return
        now = time.monotonic()
        self.requests.sync(_number(headers.get("x-ratelimit-limit-requests")),
                           _number(headers.get("x-ratelimit-remaining-requests")), now)
        self.tokens.sync(_number(headers.get("x-ratelimit-limit-tokens")),
                         _number(headers.get("x-ratelimit-remaining-tokens")), now)

    def pause(self, seconds: float) -> None:
        """After a 429: nobody sends until ``seconds`` from now."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
