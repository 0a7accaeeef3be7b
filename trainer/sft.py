"""SFT phase: teach the policy the task formats of both roles with TRL's ``SFTTrainer``.

Data: the generator's SFT records (``sft_combined_safe.jsonl``; one JSON object per line, see
DESIGN.md / interface 5). Each record becomes one chat per trained role, built by
``services.common.formats.sft_messages`` (so training, inference and the reward read the same
format), as a TRL *prompt-completion* example: the loss covers the assistant turn only.

Recipe defaults (``SFTRunConfig``) are the strategy's: Qwen/Qwen3-4B, 3 epochs, batch 4, lr 5e-5.
bf16 on a GPU, fp32 on a CPU; full fine-tuning or LoRA; gradient accumulation; a held-out eval split
(by pair, so both roles of one MEDEC pair land on the same side) with eval loss; checkpoints in
``save_path/checkpoint-N`` and ``resume`` from the last one (optimizer, scheduler, RNG and data
position included, so a resumed run reproduces the uninterrupted loss curve); seeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common import formats

log = logging.getLogger(__name__)

QWEN3_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROLE_CHOICES = ("assessor", "injector", "both")
RUN_INFO_FILE = "medserl_sft.json"
METRICS_FILE = "metrics.jsonl"
REQUIRED_FIELDS = (
    "kind",
    "note_sentences",
    "source_sentences",
    "changed_sentence_id",
    "original_sentence",
    "new_sentence",
)


class SFTError(ValueError):
    """A problem the user can fix (bad data, bad config, a model that cannot be loaded)."""


@dataclass
class SFTRunConfig:
    """One SFT run. Defaults are the production recipe (Qwen3-4B, 3 epochs, batch 4, lr 5e-5)."""

    model: str = "Qwen/Qwen3-4B"  # hub name or local model folder (save_pretrained layout)
    train_data: str = "data/sft_production/sft_combined_safe.jsonl"  # SFT records, JSONL (the generator's output)
    save_path: str = "outputs/qwen3_4b_sft"  # output folder: model, checkpoints, metrics.jsonl
    num_epochs: float = 3.0  # epochs over the training chats
    batch_size: int = 4  # per-device batch size
    learning_rate: float = 5e-5  # peak learning rate
    role: str = "both"  # which role's chats to train: assessor | injector | both (one model, two prompts)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    lora: bool = False  # train LoRA adapters (peft) instead of all weights
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA alpha (scale = alpha / r)
    lora_dropout: float = 0.05  # LoRA dropout
    lora_target_modules: tuple[str, ...] = QWEN3_LORA_TARGETS  # module names to adapt, comma-separated
    max_length: int = 2048  # max chat tokens; longer chats are dropped (truncating would cut the answer off)
    eval_fraction: float = 0.05  # held-out share of pairs; 0 disables evaluation
    eval_steps: int | None = None  # evaluate every N steps (none: at the end of each epoch)
    save_steps: int | None = None  # checkpoint every N steps (none: at the end of each epoch)
    save_total_limit: int | None = 2  # checkpoints kept (none: all)
    logging_steps: int = 10  # log the loss every N optimizer steps
    warmup_steps: float = 0.03  # warmup steps, or a ratio of all steps if < 1
    lr_scheduler_type: str = "linear"  # transformers scheduler name (linear, cosine, constant, ...)
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping norm
    gradient_checkpointing: bool = False  # recompute activations: less memory, about 30% slower
    seed: int = 42  # seed for init, data order and the eval split
    resume: bool = False  # continue from the last checkpoint in save_path
    metrics_port: int | None = None  # serve Prometheus /metrics on this port (0: a free one; none: off)
    device: str = "auto"  # auto | cpu | cuda
    max_examples: int | None = None  # use only the first N records (smoke runs)
    stop_after_steps: int | None = None  # checkpoint and stop at this step (resume later with resume)
    progress: bool = True  # tqdm progress bar

    @classmethod
    def for_tiny_model(cls, model: str, train_data: str, save_path: str, **overrides) -> SFTRunConfig:
        """Hyperparameters for the randomly initialised tiny model (``trainer.tiny_model``) on a CPU:
        it needs a far larger learning rate than a pretrained 4B model, and short chats."""
        values = dict(
            model=model,
            train_data=train_data,
            save_path=save_path,
            learning_rate=3e-3,
            batch_size=8,
            warmup_steps=0,
            logging_steps=1,
            max_length=1024,
            eval_fraction=0.15,
            device="cpu",
        )
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        if self.role not in ROLE_CHOICES:
            raise SFTError(f"--role must be one of {ROLE_CHOICES}, got {self.role!r}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise SFTError(f"{name} must be at least 1")
        if self.num_epochs <= 0 or self.learning_rate <= 0:
            raise SFTError("num_epochs and learning_rate must be positive")
        if not 0 <= self.eval_fraction < 1:
            raise SFTError("eval_fraction must be in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SFTError("device must be auto, cpu or cuda")
        if self.lora and (self.lora_r < 1 or not self.lora_target_modules):
            raise SFTError("LoRA needs lora_r >= 1 and at least one target module")


@dataclass
class SFTResult:
    save_path: str
    loss_curve: list[tuple[int, float]]  # (optimizer step, training loss)
    eval_curve: list[tuple[int, float]]  # (optimizer step, eval loss)
    global_step: int
    train_seconds: float
    num_train_examples: int
    num_eval_examples: int
    dropped_too_long: int
    interrupted: bool  # stopped by stop_after_steps (a checkpoint was written; resume continues it)
    device: str
    dtype: str
    metrics_file: str
    metrics_port: int | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# data


def load_sft_records(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """SFT records from a JSONL file; a malformed line is an error that names the line."""
    file = Path(path)
    if not file.is_file():
        raise SFTError(f"training data not found: {file}")
    from services.common.fileio import JsonlError, read_jsonl

    records: list[dict] = []
    try:
        for line_no, record in read_jsonl(file):
            problem = record_problem(record)
            if problem:
                raise SFTError(f"{file}:{line_no}: {problem}")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    except JsonlError as exc:
        raise SFTError(str(exc)) from None
    if not records:
        raise SFTError(f"no SFT records in {file}")
    return records


def record_problem(record) -> str | None:
    """Why a record cannot train, or None."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return f"missing fields {missing}"
    if record["kind"] not in ("CORRECT", "INCORRECT"):
        return f"kind must be CORRECT or INCORRECT, got {record['kind']!r}"
    try:
        ids = {int(sid) for sid, _ in record["note_sentences"]}
        {int(sid) for sid, _ in record["source_sentences"]}
        changed = int(record["changed_sentence_id"])
    except (TypeError, ValueError):
        return "sentence lists must be [[id, text], ...] and changed_sentence_id an int"
    if changed not in ids:
        return f"changed_sentence_id {changed} is not a sentence of note_sentences"
    return None


def split_records(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out split by pair (stable: a pair's side depends only on its id and the seed)."""
    if eval_fraction <= 0:
        return list(records), []
    keys = sorted({str(r.get("pair_id") or r.get("id")) for r in records})
    if len(keys) < 2:
        return list(records), []
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_eval = max(1, round(len(keys) * eval_fraction))
    eval_keys = set(ranked[:n_eval])
    train = [r for r in records if str(r.get("pair_id") or r.get("id")) not in eval_keys]
    held = [r for r in records if str(r.get("pair_id") or r.get("id")) in eval_keys]
    return train, held


def roles_for(role: str) -> tuple[str, ...]:
    return formats.ROLES if role == "both" else (role,)


def sft_examples(records: list[dict], role: str) -> list[dict]:
    """TRL prompt-completion examples (conversational) for the chosen role(s)."""
    examples = []
    for record in records:
        for one_role in roles_for(role):
            messages = formats.sft_messages(record, one_role)
            examples.append(
                {
                    "prompt": messages[:-1],
                    "completion": messages[-1:],
                    "chat_template_kwargs": dict(formats.CHAT_TEMPLATE_KWARGS),
                }
            )
    return examples


def chat_length(tokenizer, example: dict) -> int:
    encoded = tokenizer.apply_chat_template(
        example["prompt"] + example["completion"],
        tokenize=True,
        return_dict=True,
        **example["chat_template_kwargs"],
    )
    return len(encoded["input_ids"])


def drop_too_long(tokenizer, examples: list[dict], max_length: int) -> tuple[list[dict], int, int]:
    """(kept examples, how many were dropped, longest kept chat in tokens)."""
    lengths = [chat_length(tokenizer, ex) for ex in examples]
    kept = [ex for ex, n in zip(examples, lengths, strict=True) if n <= max_length]
    longest = max((n for n in lengths if n <= max_length), default=0)
    return kept, len(examples) - len(kept), longest


def warn_if_gpu_too_small(config: SFTRunConfig, model_config, longest_chat: int) -> None:
    """Log the memory estimate for the real batch shape, and a warning when it exceeds the GPU."""
    import torch

    from trainer.memory import estimate_training_memory

    estimate = estimate_training_memory(
        model_config,
        batch_size=config.batch_size,
        seq_len=max(1, longest_chat),
        lora=config.lora,
        lora_r=config.lora_r,
        lora_targets=tuple(config.lora_target_modules),
        gradient_checkpointing=config.gradient_checkpointing,
    )
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    extra = {"estimate_gib": estimate.total_gib, "gpu_gib": round(gpu_gib, 1), "longest_chat": longest_chat}
    if estimate.total_gib > gpu_gib:
        log.warning(
            "estimated training memory exceeds the GPU: use --gradient-checkpointing, --lora or a smaller batch",
            extra=extra,
        )
    else:
        log.info("estimated training memory fits the GPU", extra=extra)


# ---------------------------------------------------------------------------------------------
# model + trainer


def resolve_device(device: str) -> tuple[str, str]:
    """(device, precision): "bfloat16" (bf16 weights) on a GPU that has it; "float16" (fp32 weights
    under fp16 autocast: pure fp16 training is unstable) on an older GPU; "float32" on a CPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SFTError("--device cuda was asked for but no CUDA GPU is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "cpu", "float32"


def load_model_and_tokenizer(model_name: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise SFTError(
            f"cannot load model {model_name!r}: {exc}. Pass a local folder (save_pretrained layout) "
            "or a hub name that is cached or reachable."
        ) from exc
    if tokenizer.chat_template is None:
        raise SFTError(f"the tokenizer of {model_name!r} has no chat template")
    return model, tokenizer


def lora_config(config: SFTRunConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


@dataclass
class PreparedRun:
    trainer: object  # trl.SFTTrainer
    tokenizer: object
    device: str
    dtype: str
    num_train_examples: int
    num_eval_examples: int
    dropped_too_long: int
    metrics_file: Path
    stopper: object | None


def build_trainer(config: SFTRunConfig, extra_callbacks: list | None = None) -> PreparedRun:
    """Everything up to ``trainer.train()``: data, model, TRL config, callbacks."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainer.telemetry import StopAfterSteps, TelemetryCallback

    config.validate()
    records = load_sft_records(config.train_data, config.max_examples)
    train_records, eval_records = split_records(records, config.eval_fraction, config.seed)
    device, dtype = resolve_device(config.device)
    model, tokenizer = load_model_and_tokenizer(
        config.model, "bfloat16" if dtype == "bfloat16" else "float32"
    )

    train_examples, dropped, longest = drop_too_long(
        tokenizer, sft_examples(train_records, config.role), config.max_length
    )
    eval_examples, dropped_eval, _ = drop_too_long(
        tokenizer, sft_examples(eval_records, config.role), config.max_length
    )
    dropped += dropped_eval
    if dropped:
        log.warning(
            "dropped chats longer than max_length",
            extra={"dropped": dropped, "max_length": config.max_length},
        )
    if not train_examples:
        raise SFTError(f"no training chat fits max_length={config.max_length} tokens")

    if device == "cuda":
        warn_if_gpu_too_small(config, model.config, longest)
    save_path = Path(config.save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    has_eval = bool(eval_examples)
    on_cpu = device == "cpu"
    args = SFTConfig(
        output_dir=str(save_path),
        num_train_epochs=config.num_epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        **_checkpointing_arg(SFTConfig, config.gradient_checkpointing),
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=on_cpu,
        seed=config.seed,
        data_seed=config.seed,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if config.eval_steps else "epoch") if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        report_to="none",
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        dataset_num_proc=None,
    )
    metrics_file = save_path / METRICS_FILE
    callbacks = [TelemetryCallback(metrics_file, phase="sft"), *(extra_callbacks or [])]
    stopper = None
    if config.stop_after_steps:
        stopper = StopAfterSteps(config.stop_after_steps)
        callbacks.append(stopper)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(eval_examples) if has_eval else None,
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.lora else None,
        callbacks=callbacks,
    )
    return PreparedRun(
        trainer,
        tokenizer,
        device,
        dtype,
        len(train_examples),
        len(eval_examples),
        dropped,
        metrics_file,
        stopper,
    )


def _checkpointing_arg(config_cls, enabled: bool) -> dict:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing``."""
    from dataclasses import fields as dataclass_fields

    names = {f.name for f in dataclass_fields(config_cls)}
    return {
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing": enabled
    }


def last_checkpoint(save_path: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(save_path)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


def run_sft(config: SFTRunConfig, extra_callbacks: list | None = None) -> SFTResult:
    """Train (or resume), save the model/adapter to ``save_path``, return the loss curves.

    ``extra_callbacks``: more ``transformers.TrainerCallback``s (e.g. a pipeline's own progress).
    """
    from trainer.telemetry import start_metrics_server

    prepared = build_trainer(config, extra_callbacks)
    trainer = prepared.trainer
    resume_from = None
    if config.resume:
        resume_from = last_checkpoint(config.save_path)
        if resume_from is None:
            log.warning(
                "resume asked for but no checkpoint found; starting fresh",
                extra={"save_path": config.save_path},
            )
        else:
            log.info("resuming", extra={"checkpoint": resume_from})
    server, port = start_metrics_server(config.metrics_port)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if server is not None:
            server.shutdown()
    train_seconds = time.perf_counter() - started
    interrupted = bool(prepared.stopper and prepared.stopper.stopped)
    if not interrupted:
        trainer.save_model(config.save_path)
        prepared.tokenizer.save_pretrained(config.save_path)
    history = trainer.state.log_history
    result = SFTResult(
        save_path=str(config.save_path),
        loss_curve=[
            (int(h["step"]), float(h["loss"])) for h in history if "loss" in h and math.isfinite(h["loss"])
        ],
        eval_curve=[(int(h["step"]), float(h["eval_loss"])) for h in history if "eval_loss" in h],
        global_step=int(trainer.state.global_step),
        train_seconds=train_seconds,
        num_train_examples=prepared.num_train_examples,
        num_eval_examples=prepared.num_eval_examples,
        dropped_too_long=prepared.dropped_too_long,
        interrupted=interrupted,
        device=prepared.device,
        dtype=prepared.dtype,
        metrics_file=str(prepared.metrics_file),
        metrics_port=port,
        extra={"resumed_from": resume_from},
    )
    info = {
        "config": _jsonable(asdict(config)),
        "format_version": formats.FORMAT_VERSION,
        "result": asdict(result),
    }
    (Path(config.save_path) / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return result


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
