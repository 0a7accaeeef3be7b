"""Token counting, the price table and the hard budget.

The budget is a hard cap: before a request is sent its worst-case cost (an upper bound on prompt
tokens plus ``max_completion_tokens`` at output price) is reserved; a request that does not fit is
not sent. A request whose outcome is unknown (timeout, dropped connection, unreadable body) may have
been billed, so its reservation is kept as spent. Hence the provider's bill <= our spend <= budget.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """US dollars per 1M tokens."""

    input: float
    cached_input: float
    output: float


# OpenAI list prices (USD per 1M tokens); the Batch API bills half of these.
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
}
BATCH_DISCOUNT = 0.5
# chat format overhead per message and per reply (OpenAI's documented counting rule), plus a margin
# for the schema that Structured Outputs adds to the prompt
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
SCHEMA_OVERHEAD = 64


def price_for(model: str, table: dict[str, Price] | None = None) -> Price:
    """Exact model name, else the longest known prefix (gpt-4o-2024-08-06 -> gpt-4o), else gpt-4o."""
    table = table or PRICES
    if model in table:
        return table[model]
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name + "-"):
            return table[name]
    log.warning("no price for model; using gpt-4o prices", extra={"model": model})
    return table.get("gpt-4o", PRICES["gpt-4o"])


def cost_usd(prompt: int, cached: int, completion: int, price: Price, batch: bool = False) -> float:
    factor = BATCH_DISCOUNT if batch else 1.0
    uncached = max(0, prompt - cached)
    return factor * (uncached * price.input + cached * price.cached_input + completion * price.output) / 1e6


def price_table(price: Price, model: str, batch: bool) -> dict:
    return {"model": model, "usd_per_1m_tokens": asdict(price), "batch": batch,
            "batch_discount": BATCH_DISCOUNT, "source": "OpenAI list prices (gpt-4o: $2.50 in, $1.25 cached, $10 out)"}


_ENCODING_CACHE: dict[str, object] = {}


def _load_encoding(model: str):
    """tiktoken's encoding for ``model``, or None when it cannot be loaded (offline, no cached file)."""
    if os.environ.get("MEDSERL_TIKTOKEN", "1") == "0":
        return None
    if model in _ENCODING_CACHE:
        return _ENCODING_CACHE[model]
    encoding = None
    try:
        import tiktoken

        try:
            encoding = tiktoken.encoding_for_model(model)
        except KeyError:
            encoding = tiktoken.get_encoding("o200k_base")
    except Exception as exc:  # noqa: BLE001 - no network and no cached BPE file: fall back to bounds
        log.info("tiktoken encoding unavailable; using byte-count bounds", extra={"model": model, "error": type(exc).__name__})
    _ENCODING_CACHE[model] = encoding
    return encoding


class TokenCounter:
    """``expected`` tokens (for rate limiting and estimates) and an ``upper`` bound (for the budget).

    With tiktoken's encoding both are exact counts (upper adds 5%). Without it, expected is
    chars/4 and upper is the UTF-8 byte count, a true bound for byte-level BPE (a token covers >= 1 byte).
    """

    def __init__(self, model: str):
        self.encoding = _load_encoding(model)
        self.name = f"tiktoken:{self.encoding.name}" if self.encoding is not None else "bytes-bound (tiktoken data unavailable)"

    def expected(self, text: str) -> int:
        if self.encoding is not None:
            return len(self.encoding.encode(text, disallowed_special=()))
        return math.ceil(len(text) / 4)

    def upper(self, text: str) -> int:
        if self.encoding is not None:
            return math.ceil(len(self.encoding.encode(text, disallowed_special=())) * 1.05) + 8
        return len(text.encode("utf-8"))

    def messages(self, messages: list[dict], schema: dict | None, bound: bool) -> int:
        count = self.upper if bound else self.expected
        total = TOKENS_PER_REPLY
        for message in messages:
            total += TOKENS_PER_MESSAGE + count(str(message.get("content") or "")) + count(message.get("role", ""))
        if schema is not None:
            total += SCHEMA_OVERHEAD + count(json.dumps(schema, separators=(",", ":")))
        return total


class BudgetExhausted(RuntimeError):
    """The next request could cost more than what is left of the budget: it was not sent."""


@dataclass
class Reservation:
    amount: float
    open: bool = True


class Budget:
    """Thread-safe spend tracker with reservations; ``max_usd`` None means unlimited."""

    def __init__(self, max_usd: float | None):
        self.max_usd = max_usd
        self.spent = 0.0  # settled actual costs this run
        self.possibly_billed = 0.0  # reservations kept for requests of unknown outcome
        self.reserved = 0.0
        self.exhausted = False
        self._lock = threading.Lock()

    @property
    def committed(self) -> float:
        return self.spent + self.possibly_billed

    def remaining(self) -> float | None:
        if self.max_usd is None:
            return None
        with self._lock:
            return self.max_usd - self.committed - self.reserved

    def reserve(self, amount: float) -> Reservation:
        with self._lock:
            if self.max_usd is not None and self.committed + self.reserved + amount > self.max_usd + 1e-12:
                self.exhausted = True
                raise BudgetExhausted(f"budget ${self.max_usd:.4f}: ${self.committed:.4f} spent, "
                                      f"${self.reserved:.4f} in flight, next request may cost ${amount:.4f}")
            self.reserved += amount
            return Reservation(amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """The request was billed ``actual`` (known from its usage)."""
        with self._lock:
            if reservation.open:
                reservation.open = False
                self.reserved -= reservation.amount
            self.spent += actual

    def release(self, reservation: Reservation) -> None:
        """The request was certainly not billed (HTTP error answer)."""
        with self._lock:
            if reservation.open:
                reservation.open = False
                self.reserved -= reservation.amount

    def forfeit(self, reservation: Reservation) -> None:
        """Outcome unknown: the provider may have billed it, so the reservation counts as spent."""
        with self._lock:
            if reservation.open:
                reservation.open = False
                self.reserved -= reservation.amount
                self.possibly_billed += reservation.amount

    def charge_recovered(self, actual: float) -> None:
        """A response recovered from an earlier (killed) run: already billed, count it once."""
        with self._lock:
            self.spent += actual
