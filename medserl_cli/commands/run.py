"""``medserl run``: the whole pipeline in one process (embedded bus, offline, CPU) with a report."""

from __future__ import annotations

import argparse

from medserl_cli.pipeline import PipelineConfig


def register(sub: argparse._SubParsersAction) -> None:
    from services.common.settings import add_dataclass_arguments

    p = sub.add_parser("run", help="run the whole pipeline end to end (embedded, offline, CPU) and write a report",
                       description=__doc__ + "\n\nStages: data prepare, SFT set, tiny model, SFT, RL self-play, "
                       "injector evaluation, MEDEC evaluation of the frozen assessor.")
    add_dataclass_arguments(p, PipelineConfig, exclude=("progress",))
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--verbose", action="store_true",
                   help="also show other libraries' progress bars, advice and warnings, and INFO logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from medserl_cli.pipeline import resolve_inputs, run_pipeline
    from services.common.logs import quiet_third_party, setup_logging
    from services.common.settings import dataclass_from_args

    setup_logging("pipeline", "INFO" if args.verbose else "WARNING", json_logs=False)
    for name in ("sft_pairs", "rl_seed_notes", "rl_updates", "rl_rollouts_per_update", "rl_group_size", "eval_notes",
                 "max_note_chars", "eval_seed_notes"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    try:
        resolve_inputs(args.medec_dir)  # a wrong data folder fails now, not after a silent fallback
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    if not args.verbose:
        quiet_third_party()
    config = dataclass_from_args(PipelineConfig, args)
    config.progress = not args.no_progress
    try:
        results = run_pipeline(config)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    return 1 if results["rl"].get("timed_out") else 0
