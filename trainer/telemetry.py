"""Training telemetry: Prometheus gauges, a JSONL log, an optional /metrics server.

One ``TrainerCallback`` feeds all of them from the Trainer's own log events, so what Grafana shows,
what ``metrics.jsonl`` holds and what the progress bar prints are the same numbers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from services.common import metrics

log = logging.getLogger(__name__)


def start_metrics_server(port: int | None):
    """Serve Prometheus ``/metrics`` on ``port`` (0: a free one; None or negative: off).

    Returns ``(server, bound_port)`` or ``(None, None)``; call ``server.shutdown()`` when done.
    """
    if port is None or port < 0:
        return None, None
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr="0.0.0.0")
    return server, server.server_port


class TelemetryCallback(TrainerCallback):
    """Mirrors every Trainer log event to the TRAIN_* gauges and a JSONL file (appended on resume)."""

    def __init__(self, jsonl_path: str | Path, phase: str = "sft"):
        self.jsonl_path = Path(jsonl_path)
        self.phase = phase
        self._last_tokens: float | None = None
        self._last_time: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._last_tokens, self._last_time = None, time.perf_counter()
        self._write({"event": "train_begin", "step": state.global_step, "max_steps": state.max_steps})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        record = {"event": "log", "step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                record[key] = value
        tokens_per_second = self._tokens_per_second(logs.get("num_tokens"))
        if tokens_per_second is not None:
            record["tokens_per_second"] = tokens_per_second
            metrics.TRAIN_TOKENS_PER_SECOND.labels(self.phase).set(tokens_per_second)
        if "loss" in record:
            metrics.TRAIN_LOSS.labels(self.phase).set(record["loss"])
        if "learning_rate" in record:
            metrics.TRAIN_LEARNING_RATE.labels(self.phase).set(record["learning_rate"])
        metrics.TRAIN_STEP.labels(self.phase).set(state.global_step)
        self._write(record)

    def on_train_end(self, args, state, control, **kwargs):
        self._write({"event": "train_end", "step": state.global_step})

    def _tokens_per_second(self, total_tokens) -> float | None:
        now = time.perf_counter()
        if not isinstance(total_tokens, (int, float)):
            return None
        rate = None
        if (
            self._last_tokens is not None
            and self._last_time is not None
            and total_tokens >= self._last_tokens
        ):
            elapsed = now - self._last_time
            if elapsed > 0:
                rate = (total_tokens - self._last_tokens) / elapsed
        self._last_tokens, self._last_time = float(total_tokens), now
        return rate

    def _write(self, record: dict) -> None:
        record = {"time": time.time(), "phase": self.phase, **record}
        with self.jsonl_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class StopAfterSteps(TrainerCallback):
    """Checkpoint and stop at optimizer step ``n`` (a controlled interruption: time boxes, tests)."""

    def __init__(self, n: int):
        self.n = n
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.n:
            control.should_save = True
            control.should_training_stop = True
            self.stopped = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # the Trainer closes the cut-short epoch as if it had finished; an interruption must not add
        # an evaluation the uninterrupted run would not have (the resumed curve must match it)
        if self.stopped:
            control.should_evaluate = False
        return control
