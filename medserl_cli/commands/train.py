"""``medserl train``: train the policy. ``--phase sft`` fine-tunes on the generator's SFT records with
TRL (loss on the assistant turn only; full or LoRA; checkpoints + ``--resume``). ``--phase rl`` runs
REINFORCE++ self-play (``medserl train --phase rl --help`` lists its own options).
``--estimate-memory`` prints the GPU memory a configuration needs and exits (no download).

Production recipe::

    medserl train --phase sft --model Qwen/Qwen3-4B \\
        --train-data data/sft_production/sft_combined_safe.jsonl \\
        --save-path outputs/qwen3_4b_sft --num-epochs 3 --batch-size 4 --learning-rate 5e-5

Every flag below is a field of ``trainer.sft.SFTRunConfig`` (the one definition of the recipe).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

PHASES = ("sft", "rl")
RL_MODULE = "medserl_cli.commands.selfplay"
# a hub name is "name" or "namespace/name"; anything else that is not a folder is a mistyped path
HUB_PROBE_TIMEOUT_S = 3.0


def register(sub: argparse._SubParsersAction) -> None:
    from services.common.settings import add_dataclass_arguments
    from trainer.sft import ROLE_CHOICES, SFTRunConfig

    p = sub.add_parser(
        "train",
        help="train the policy (SFT with TRL, RL self-play) or estimate its GPU memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--phase", choices=PHASES, default="sft", help="training phase (default: sft)")
    add_dataclass_arguments(
        p, SFTRunConfig, choices={"role": ROLE_CHOICES, "device": ("auto", "cpu", "cuda")}
    )
    p.add_argument(
        "--estimate-memory",
        action="store_true",
        help="print the GPU memory estimate (full vs LoRA, --batch-size x --max-length) and the LoRA "
        "modules, then exit",
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from services.common.settings import dataclass_from_args
    from trainer.sft import SFTRunConfig

    return dataclass_from_args(SFTRunConfig, args)


# ---------------------------------------------------------------------------------------------
# --phase rl: the self-play command parses its own options


def wants_rl(argv: list[str]) -> bool:
    """True when the arguments after ``train`` ask for ``--phase rl`` (any position)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--phase=rl" or (arg == "--phase" and argv[i + 1 : i + 2] == ["rl"]):
            return True
    return False


def _without_phase(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--phase=rl":
            continue
        if arg == "--phase" and argv[i + 1 : i + 2] == ["rl"]:
            skip = True
            continue
        out.append(arg)
    return out


def run_rl(argv: list[str]) -> int:
    """``medserl train --phase rl ...``: hand the rest of the command line to the self-play command."""
    import importlib

    from medserl_cli.cli import CliError, MedserlParser

    try:
        selfplay = importlib.import_module(RL_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != RL_MODULE:
            raise
        raise CliError(
            "--phase rl is not in this version yet: run RL self-play with `medserl run` (embedded, the "
            "whole pipeline) or the services, e.g. `medserl serve trainer --set model=outputs/qwen3_4b_sft` "
            "(README, step 4)"
        ) from None
    parser = MedserlParser(
        prog="medserl train --phase rl",
        description=(selfplay.__doc__ or "RL self-play (REINFORCE++).").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    selfplay.add_arguments(parser)
    return int(selfplay.run(parser.parse_args(_without_phase(argv))) or 0)


# ---------------------------------------------------------------------------------------------
# the model: a mistyped folder or an unreachable hub fails at once, with the fix


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``namespace/name``; a leading ``.``/``/``/``~``, a deeper path, or a first
    component that is a local folder means the user meant a folder."""
    if name.startswith((".", "/", "~")) or name.endswith("/") or os.sep != "/" and os.sep in name:
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _missing_folder_message(name: str) -> str:
    path = Path(name).expanduser()
    parent = path.parent
    hint = ""
    if parent == path.parent and parent.is_dir():  # only the last part is wrong: suggest a sibling
        import difflib

        siblings = [p.name for p in parent.iterdir() if p.is_dir()]
        close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean {str(parent / close[0])!r}?"
    return f"--model {name}: no such folder{hint} (pass an existing model folder, or a hub name like Qwen/Qwen3-4B)"


def _hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(proxy) and url.scheme == "https":
            url = urlparse(os.environ[proxy])
            break
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _is_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # a malformed repo id: transformers will say so
        return False
    return isinstance(found, str)


def check_model(name: str, download: bool = True) -> None:
    """Fail in well under a second for a folder that is not there or a hub model that cannot come:
    transformers would otherwise say "Repo id must be in the form ..." or retry for about a minute."""
    from medserl_cli.cli import CliError

    if Path(name).expanduser().is_dir():
        return
    if _looks_like_path(name):
        raise CliError(_missing_folder_message(name))
    if not download or _is_cached(name):
        return
    flags = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
             if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    offline = bool(flags)
    reason = f"{flags[0] if flags else 'HF_HUB_OFFLINE'} is set"
    if not offline:
        host, port = _hub_endpoint()
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            return
        except OSError as exc:
            reason = f"the hub ({host}:{port}) cannot be reached: {exc.strerror or exc}"
    raise CliError(
        f"--model {name} is not in the local Hugging Face cache and {reason}: pass a local model folder "
        "(`medserl model tiny --out models/tiny` builds one offline) or download it first where there is a network"
    )


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from trainer.sft import SFTError, run_sft

    if args.phase == "rl":  # reached only through an abbreviation such as --ph rl
        return run_rl(_without_phase(list(getattr(args, "argv", None) or sys.argv[2:])))
    config = config_from_args(args)
    try:
        config.validate()
    except SFTError as exc:
        raise CliError(str(exc)) from exc
    if args.estimate_memory:
        check_model(config.model, download=False)
        return estimate(config)
    check_model(config.model)
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
        model_config = resolve_config(config.model)
    except (OSError, ValueError) as exc:
        raise CliError(
            f"no local config for {config.model!r} ({exc}); pass a local model folder or Qwen/Qwen3-4B"
        ) from exc
    chosen = ("lora" if config.lora else "full") + ("+ckpt" if config.gradient_checkpointing else "")
    print(f"model: {config.model} ({type(model_config).__name__}, built locally, nothing downloaded)")
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
        raise CliError(f"cannot attach LoRA to {config.model!r}: {exc}") from exc
    adapted = sorted(
        {name.rsplit(".", 2)[-2] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    )
    count = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    print(
        f"LoRA r={config.lora_r}: {count} modules adapted ({', '.join(adapted)}), {trainable:,} trainable parameters"
    )
    return 0
