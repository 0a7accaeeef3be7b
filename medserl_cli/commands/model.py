"""``medserl model``: build and inspect local models (``medserl model tiny --out models/tiny``)."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="build or inspect local models", description=__doc__)
    model_sub = p.add_subparsers(dest="model_command", metavar="<action>")

    tiny = model_sub.add_parser(
        "tiny",
        help="build the tiny offline Qwen3-architecture model (own BPE tokenizer, chat template)",
        description="Train a byte-level BPE tokenizer on clinical notes, init a tiny Qwen3ForCausalLM "
        "(random weights) and save both with save_pretrained. Offline; well under a minute on a CPU. "
        "Notes: MEDEC validation notes from --medec-dir (or MEDSERL_MEDEC_DIR), else the project's demo set.",
    )
    tiny.add_argument("--out", default="models/tiny", help="output folder (default: models/tiny)")
    tiny.add_argument("--medec-dir", help="MEDEC folder whose validation notes train the tokenizer")
    tiny.add_argument("--seed", type=int, default=0, help="weight init seed (default: 0)")
    tiny.set_defaults(func=run_tiny)

    info = model_sub.add_parser("info", help="print parameters, vocab size and MB of a saved model folder")
    info.add_argument("path", help="model folder (save_pretrained layout)")
    info.set_defaults(func=run_info)

    p.set_defaults(func=lambda args: _missing_action(p))


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_tiny(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from trainer.tiny_model import build_tiny_model, medec_texts, model_size

    medec_dir = args.medec_dir or os.environ.get("MEDSERL_MEDEC_DIR")
    try:
        texts = medec_texts(medec_dir) if medec_dir else None
        out = build_tiny_model(args.out, texts=texts, seed=args.seed)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    size = model_size(out)
    source = f"MEDEC validation notes in {medec_dir}" if medec_dir else "the demo set"
    print(
        f"tiny model written to {out}: {size['parameters']:,} parameters, vocab {size['vocab_size']}, "
        f"{size['weights_mb']} MB (tokenizer trained on {source})"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from trainer.tiny_model import model_size

    try:
        size = model_size(args.path)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read a model from {args.path}: {exc}") from exc
    print(
        f"{args.path}: parameters {size['parameters']}, vocab {size['vocab_size']}, {size['weights_mb']} MB"
    )
    return 0
