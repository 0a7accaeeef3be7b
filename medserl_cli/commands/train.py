"""``medserl train``: train the policy. ``--phase sft`` fine-tunes on the generator's SFT records with
TRL (loss on the assistant turn only; full or LoRA; checkpoints + ``--resume``).
``--estimate-memory`` prints the GPU memory a configuration needs and exits (no download).

Production recipe::

    medserl train --phase sft --model-name Qwen/Qwen3-4B \\
        --train-data data/sft_production/sft_combined_safe.jsonl \\
        --save-path outputs/qwen3_4b_sft --num-epochs 3 --batch-size 4 --learning-rate 5e-5
"""

from __future__ import annotations

import argparse
from dataclasses import fields

PHASES = ("sft",)


def register(sub: argparse._SubParsersAction) -> None:
    from trainer.sft import ROLE_CHOICES, SFTRunConfig

    d = {f.name: f.default for f in fields(SFTRunConfig)}
    p = sub.add_parser(
        "train",
        help="train the policy (SFT with TRL) or estimate its GPU memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--phase", choices=PHASES, default="sft", help="training phase (default: sft)")
    p.add_argument(
        "--model-name",
        default=d["model_name"],
        help=f"hub name or local model folder (default: {d['model_name']})",
    )
    p.add_argument("--train-data", default=d["train_data"], help="SFT records, JSONL (default: %(default)s)")
    p.add_argument(
        "--save-path",
        default=d["save_path"],
        help="output folder: model, checkpoints, metrics.jsonl (default: %(default)s)",
    )
    p.add_argument("--num-epochs", type=float, default=d["num_epochs"], help="epochs (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help="per-device batch size (default: %(default)s)"
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=d["learning_rate"],
        help="peak learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--role",
        choices=ROLE_CHOICES,
        default=d["role"],
        help="which role's chats to train (default: %(default)s)",
    )
    p.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=d["gradient_accumulation_steps"],
        help="(default: %(default)s)",
    )
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    p.add_argument("--lora-r", type=int, default=d["lora_r"], help="LoRA rank (default: %(default)s)")
    p.add_argument(
        "--lora-alpha", type=int, default=d["lora_alpha"], help="LoRA alpha (default: %(default)s)"
    )
    p.add_argument(
        "--lora-dropout", type=float, default=d["lora_dropout"], help="LoRA dropout (default: %(default)s)"
    )
    p.add_argument(
        "--lora-target-modules",
        default=",".join(d["lora_target_modules"]),
        help="comma-separated module names to adapt (default: %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=d["max_length"],
        help="max chat tokens; longer chats are dropped (default: %(default)s)",
    )
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=d["eval_fraction"],
        help="held-out share of pairs, 0 = no eval (default: %(default)s)",
    )
    p.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: each epoch)")
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps (default: each epoch)")
    p.add_argument(
        "--save-total-limit",
        type=int,
        default=d["save_total_limit"],
        help="checkpoints kept (default: %(default)s)",
    )
    p.add_argument(
        "--logging-steps",
        type=int,
        default=d["logging_steps"],
        help="log every N steps (default: %(default)s)",
    )
    p.add_argument(
        "--warmup-steps",
        type=float,
        default=d["warmup_steps"],
        help="warmup steps, or a ratio if < 1 (default: %(default)s)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations (less memory, ~30%% slower)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help="seed for init, data order and split (default: %(default)s)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --save-path")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (0: a free one; default: off)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    p.add_argument("--max-examples", type=int, help="use only the first N records (smoke runs)")
    p.add_argument(
        "--stop-after-steps", type=int, help="checkpoint and stop at this step (resume later with --resume)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--estimate-memory",
        action="store_true",
        help="print the GPU memory estimate (full vs LoRA, --batch-size x --max-length) and the LoRA modules, then exit",
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from trainer.sft import SFTRunConfig

    targets = tuple(t.strip() for t in args.lora_target_modules.split(",") if t.strip())
    return SFTRunConfig(
        model_name=args.model_name,
        train_data=args.train_data,
        save_path=args.save_path,
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        role=args.role,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=targets,
        max_length=args.max_length,
        eval_fraction=args.eval_fraction,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        warmup_steps=args.warmup_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        resume=args.resume,
        metrics_port=args.metrics_port,
        device=args.device,
        max_examples=args.max_examples,
        stop_after_steps=args.stop_after_steps,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from trainer.sft import SFTError, run_sft

    config = config_from_args(args)
    try:
        config.validate()
    except SFTError as exc:
        raise CliError(str(exc)) from exc
    if args.estimate_memory:
        return estimate(config)
    try:
        result = run_sft(config)
    except SFTError as exc:
        raise CliError(str(exc)) from exc
    first = result.loss_curve[0][1] if result.loss_curve else float("nan")
    last = result.loss_curve[-1][1] if result.loss_curve else float("nan")
    eval_loss = f", eval loss {result.eval_curve[-1][1]:.4f}" if result.eval_curve else ""
    state = (
        "stopped at a checkpoint (continue with --resume)"
        if result.interrupted
        else f"saved to {result.save_path}"
    )
    print(
        f"SFT {state}: {result.global_step} steps in {result.train_seconds:.1f}s on {result.device} ({result.dtype}), "
        f"{result.num_train_examples} train / {result.num_eval_examples} eval chats, "
        f"loss {first:.4f} -> {last:.4f}{eval_loss}; log {result.metrics_file}"
    )
    return 0


def estimate(config) -> int:
    from medserl_cli.cli import CliError
    from trainer.memory import attach_lora, memory_table, meta_model, resolve_config

    try:
        model_config = resolve_config(config.model_name)
    except (OSError, ValueError) as exc:
        raise CliError(
            f"no local config for {config.model_name!r} ({exc}); pass a local model folder or Qwen/Qwen3-4B"
        ) from exc
    chosen = ("lora" if config.lora else "full") + ("+ckpt" if config.gradient_checkpointing else "")
    print(f"model: {config.model_name} ({type(model_config).__name__}, built locally, nothing downloaded)")
    print(
        memory_table(
            model_config,
            batch_size=config.batch_size,
            seq_len=config.max_length,
            lora_r=config.lora_r,
            chosen=chosen,
        )
    )
    try:
        peft_model = attach_lora(
            meta_model(model_config),
            r=config.lora_r,
            alpha=config.lora_alpha,
            targets=config.lora_target_modules,
        )
    except ValueError as exc:
        raise CliError(f"cannot attach LoRA to {config.model_name!r}: {exc}") from exc
    adapted = sorted(
        {name.rsplit(".", 2)[-2] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    )
    count = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    print(
        f"LoRA r={config.lora_r}: {count} modules adapted ({', '.join(adapted)}), {trainable:,} trainable parameters"
    )
    return 0
