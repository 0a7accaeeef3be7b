"""JSON logs that never carry clinical note text unless a user asks for it (``log_phi``).

Rule for every service: put note text only in ``extra={...}`` under one of PHI_FIELDS, never in
the message itself. The filter replaces those fields by their length unless PHI logging is on.
"""

from __future__ import annotations

import json
import logging
import sys
import time

PHI_FIELDS = frozenset(
    {"note", "text", "note_text", "sentence", "sentences", "original", "modified", "completion", "prompt",
     "reasoning", "new_sentence", "corrected_sentence"}
)
SECRET_FIELDS = frozenset({"api_key", "openai_api_key", "authorization", "token"})
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class RedactFilter(logging.Filter):
    """Replaces PHI fields by ``<redacted N chars>`` and secrets by ``<secret>``."""

    def __init__(self, log_phi: bool = False):
        super().__init__()
        self.log_phi = log_phi

    def filter(self, record: logging.LogRecord) -> bool:
        for key in list(vars(record)):
            if key in SECRET_FIELDS:
                setattr(record, key, "<secret>")
            elif key in PHI_FIELDS and not self.log_phi:
                value = getattr(record, key)
                setattr(record, key, f"<redacted {len(str(value))} chars>")
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def setup_logging(service: str, level: str = "INFO", json_logs: bool = True, log_phi: bool = False) -> None:
    """Configure the root logger once per process (stderr)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter(log_phi))
    handler.setFormatter(JsonFormatter(service) if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("kafka", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


THIRD_PARTY_LOGGERS = ("transformers", "datasets", "trl", "peft", "accelerate", "torch", "huggingface_hub",
                       "matplotlib", "PIL", "urllib3", "httpx", "filelock", "kafka", "grpc")
OUR_PACKAGES = ("medserl", "medserl_cli", "medec", "services", "trainer", "__main__")


def quiet_third_party() -> None:
    """Hide other libraries' progress bars, advice and warnings, so a terminal shows our stages.

    For a CLI run (``medserl run``; ``--verbose`` skips this): the environment switches work for
    libraries not yet imported, the calls for those that are. Our own warnings and progress stay.
    """
    import os
    import warnings

    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                        ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(name, value)
    ours = "|".join(OUR_PACKAGES)
    warnings.filterwarnings("ignore", module=rf"(?!(?:{ours})(?:\.|$))")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets.utils.logging as datasets_logging
        import huggingface_hub.utils as hub_utils
        import transformers.utils.logging as transformers_logging
        from transformers import trainer_callback
    except ImportError:
        return
    hub_utils.disable_progress_bars()
    datasets_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    # The Trainer prints every logged dict ({'loss': ...}) to stdout (metrics.jsonl and the report
    # have them) and nests an unlabelled bar per evaluation: keep one labelled bar with the loss.
    progress = trainer_callback.ProgressCallback
    bar_class = getattr(trainer_callback, "tqdm", None)

    def on_train_begin(self, args, state, control, **kwargs):  # the original, with a label and a unit
        if state.is_world_process_zero:
            self.training_bar = bar_class(total=state.max_steps, desc="training steps", unit="step",
                                          dynamic_ncols=True)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        bar = getattr(self, "training_bar", None)
        if bar is not None and isinstance((logs or {}).get("loss"), int | float):
            bar.set_postfix(loss=f"{logs['loss']:.3f}")

    def no_output(self, *args, **kwargs):
        return None

    if bar_class is not None and not getattr(progress, "_medserl_quiet", False):
        progress.on_train_begin, progress.on_log, progress.on_prediction_step = on_train_begin, on_log, no_output
        progress._medserl_quiet = True
    trainer_callback.PrinterCallback.on_log = no_output
