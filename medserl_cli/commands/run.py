"""``medserl run``: the whole pipeline in one process (embedded bus, offline, CPU) with a report."""

from __future__ import annotations

import argparse

from medserl_cli.pipeline import PipelineConfig


def register(sub: argparse._SubParsersAction) -> None:
    d = PipelineConfig()
    p = sub.add_parser("run", help="run the whole pipeline end to end (embedded, offline, CPU) and write a report",
                       description=__doc__ + "\n\nStages: data prepare, SFT set, tiny model, SFT, RL self-play, eval.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=d.out, help="output folder (report.md, summary.json, models, data)")
    p.add_argument("--medec-dir", default=d.medec_dir,
                   help="MEDEC CSVs / pair JSONL (default: $MEDSERL_MEDEC_DIR, else the bundled demo set)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sft-pairs", type=int, default=d.sft_pairs, help="MEDEC pairs for the SFT set (2 examples each)")
    p.add_argument("--sft-epochs", type=float, default=d.sft_epochs)
    p.add_argument("--max-note-chars", type=int, default=d.max_note_chars,
                   help="use notes up to this length (the CPU demo model learns short notes)")
    p.add_argument("--rl-seed-notes", type=int, default=d.rl_seed_notes)
    p.add_argument("--rl-updates", type=int, default=d.rl_updates, help="policy versions the learner publishes")
    p.add_argument("--rl-rollouts-per-update", type=int, default=d.rl_rollouts_per_update)
    p.add_argument("--rl-group-size", type=int, default=d.rl_group_size, help="edits sampled per seed note")
    p.add_argument("--eval-notes", type=int, default=d.eval_notes)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--verbose", action="store_true",
                   help="also show other libraries' progress bars, advice and warnings, and INFO logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from medserl_cli.pipeline import resolve_inputs, run_pipeline
    from services.common.logs import quiet_third_party, setup_logging

    setup_logging("pipeline", "INFO" if args.verbose else "WARNING", json_logs=False)
    for name in ("sft_pairs", "rl_seed_notes", "rl_updates", "rl_rollouts_per_update", "rl_group_size", "eval_notes", "max_note_chars"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    try:
        resolve_inputs(args.medec_dir)  # a wrong data folder fails now, not after a silent fallback
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    if not args.verbose:
        quiet_third_party()
    config = PipelineConfig(out=args.out, medec_dir=args.medec_dir, seed=args.seed, sft_pairs=args.sft_pairs,
                            sft_epochs=args.sft_epochs, max_note_chars=args.max_note_chars, rl_seed_notes=args.rl_seed_notes, rl_updates=args.rl_updates,
                            rl_rollouts_per_update=args.rl_rollouts_per_update, rl_group_size=args.rl_group_size,
                            eval_notes=args.eval_notes, progress=not args.no_progress)
    try:
        results = run_pipeline(config)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    return 1 if results["rl"].get("timed_out") else 0
