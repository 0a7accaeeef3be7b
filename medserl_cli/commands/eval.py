"""``medserl eval``: MEDIQA-CORR metrics, exactly as the official 2024 scorer computes them.

Two uses:

* ``medserl eval --reference CSV --run RUN [--json]`` scores an existing run file.
* ``medserl eval --reference CSV --assessor CONFIG --out RUN`` runs an assessor backend over every
  note of the CSV (the model sees only the numbered sentences, never ids or neighbouring notes),
  writes the run file, and prints its metrics beside the trivial baselines (always "no error";
  always the last sentence) and its flag rate.
* ``medserl eval --injector POLICY --assessor CONFIG --seeds FILE [--compare SFT_POLICY]`` evaluates
  an injector: a fixed held-out set of seed notes, fixed sampling seeds, the frozen assessor;
  valid-edit rate, fool rate among valid edits (by mode and error type), and which sentence
  positions and error types the policy prefers, beside ``--compare`` on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="MEDIQA-CORR metrics for a run file, or run an assessor over a MEDEC CSV",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--reference", help="MEDEC CSV with ground truth (blank rows are dropped)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", help="run file to score: '<text-id> <flag> <sentence-id> <correction|NA>' lines")
    source.add_argument("--assessor", metavar="CONFIG",
                        help="assessor settings (YAML/JSON; e.g. backend, model, base_url) to run over the CSV")
    p.add_argument("--injector", metavar="POLICY", help="evaluate this injector policy folder (with --assessor, --seeds)")
    p.add_argument("--seeds", help="with --injector: held-out seed notes, a pairs JSONL (e.g. eval.jsonl)")
    p.add_argument("--compare", metavar="POLICY", help="with --injector: a second policy on the same seeds (the SFT one)")
    p.add_argument("--seed-notes", type=int, default=24, help="with --injector: how many seed notes (default: 24)")
    p.add_argument("--samples", type=int, default=4, help="with --injector: edits per seed note (default: 4)")
    p.add_argument("--out", help="with --assessor: where to write the run file (required)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --assessor: override a setting")
    p.add_argument("--limit", type=int, help="with --assessor: only the first N notes (a quick look)")
    p.add_argument("--batch-size", type=int, default=8, help="with --assessor: notes per generate call")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --run: score a run that covers only some reference texts, on those texts only "
                        "(otherwise that is an error: the official scorer would count the rest as wrong)")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(columns: dict[str, dict]) -> str:
    """Metric rows, one column per scored run."""
    from medec.mediqa_eval import METRIC_LABELS

    names = list(columns)
    width = max(len(label) for _, label in METRIC_LABELS) + 2
    lines = [f"{'metric':<{width}}" + "".join(f"{n:>16}" for n in names)]
    lines.append("-" * (width + 16 * len(names)))
    for key, label in METRIC_LABELS:
        lines.append(f"{label:<{width}}" + "".join(f"{_fmt(columns[n].get(key)):>16}" for n in names))
    extra = [("flag_rate", "Flag rate"), ("correction_pairs", "Correction pairs scored"),
             ("run_texts_missing", "Texts missing from run"), ("run_invalid_lines", "Invalid run lines")]
    for key, label in extra:
        if any(key in columns[n] for n in names):
            lines.append(f"{label:<{width}}" + "".join(f"{_fmt(columns[n].get(key)):>16}" for n in names))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from medec import mediqa_eval as me
    from medserl_cli.cli import CliError

    if args.injector:
        return _run_injector(args)
    if not args.reference or not (args.run or args.assessor):
        raise CliError("give --reference CSV with --run RUN or --assessor CONFIG (or --injector POLICY "
                       "--assessor CONFIG --seeds FILE to evaluate an injector)")
    try:
        reference = me.load_reference(args.reference)
        if args.run:
            for flag in ("out", "set", "limit"):
                if getattr(args, flag):
                    raise CliError(f"--{flag} only goes with --assessor")
            run_file = me.load_run(args.run)
            reference = _covered(reference, run_file, args)
            results = me.score(reference, run_file)
            if run_file.invalid_lines:
                shown = ", ".join(map(str, run_file.invalid_lines[:10]))
                print(f"warning: {len(run_file.invalid_lines)} invalid run line(s) counted as wrong "
                      f"(line {shown}{'...' if len(run_file.invalid_lines) > 10 else ''})", file=sys.stderr)
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                print(format_table({Path(args.run).name[:15]: results}))
            return 0
        if not args.out:
            raise CliError("--assessor needs --out RUN (where to write the run file)")
        if args.allow_partial:
            raise CliError("--allow-partial only goes with --run (an assessor run covers what it is given)")
        return _run_assessor(args, reference)
    except me.EvalInputError as exc:
        raise CliError(str(exc)) from exc


def _covered(reference: list, run_file, args: argparse.Namespace) -> list:
    """The reference rows to score. A run that shares no text id with the reference, or (without
    --allow-partial) misses some of its texts, is an error: its numbers would not mean what was asked."""
    from medserl_cli.cli import CliError

    ids = {row.text_id for row in reference}
    covered = ids & set(run_file.flags)
    if not covered:
        raise CliError(f"no text id of the run {args.run} is in the reference {args.reference} "
                       f"({len(run_file.flags)} run ids, e.g. {next(iter(run_file.flags), 'none')!r}): pass the "
                       "reference CSV the run was made from (a validation run needs the validation CSV)")
    missing = len(ids) - len(covered)
    if missing and not args.allow_partial:
        raise CliError(f"the run covers {len(covered)} of the reference's {len(ids)} texts ({missing} missing, "
                       "which the official scorer counts as wrong): score it against the reference it was made "
                       f"from, or pass --allow-partial to score the {len(covered)} covered texts only")
    if missing:
        print(f"note: scoring the {len(covered)} of {len(ids)} reference texts that the run covers "
              "(--allow-partial)", file=sys.stderr)
        return [row for row in reference if row.text_id in covered]
    return reference


def _run_assessor(args: argparse.Namespace, reference) -> int:
    from medec import mediqa_eval as me
    from medserl_cli.cli import CliError
    from services.assessor.evaluate import assess_reference
    from services.common.settings import SettingsError, parse_set_flags

    try:
        overrides = parse_set_flags(args.set)
        outcome = assess_reference(reference, args.assessor, overrides, out_path=Path(args.out),
                                   limit=args.limit, batch_size=args.batch_size, progress=not args.json)
    except (SettingsError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    scored_ref = outcome.reference
    columns = {
        "assessor": {**me.score(scored_ref, outcome.run), "flag_rate": outcome.flag_rate},
        "no-error": me.score(scored_ref, me.baseline_run(scored_ref, None)),
        "last-sentence": me.score(scored_ref, me.baseline_run(scored_ref, outcome.last_sentence_ids)),
    }
    columns["no-error"]["flag_rate"] = 0.0
    columns["last-sentence"]["flag_rate"] = 1.0
    if args.json:
        print(json.dumps({"run_file": str(args.out), "notes": len(scored_ref), "unparsed": outcome.unparsed,
                          "results": columns}, indent=2))
    else:
        print(f"wrote {args.out} ({len(scored_ref)} notes, {outcome.unparsed} unparsed verdicts)")
        print(format_table(columns))
    return 0


def _run_injector(args: argparse.Namespace) -> int:
    from medec.prepare import MedecFormatError, load_pairs_jsonl
    from medserl.v1 import messages_pb2 as pb
    from medserl_cli.cli import CliError
    from medserl_cli.commands.selfplay import _assessor_model
    from medserl_cli.selfplay import evaluate_injector

    if not args.assessor or not args.seeds:
        raise CliError("--injector needs --assessor CONFIG_OR_MODEL (the frozen judge) and --seeds FILE")
    for policy in filter(None, (args.injector, args.compare)):
        if not Path(policy).is_dir():
            raise CliError(f"{policy}: no such policy folder")
    try:
        pairs = load_pairs_jsonl(args.seeds)[: args.seed_notes]
    except (OSError, MedecFormatError) as exc:
        raise CliError(f"--seeds {args.seeds}: {exc}") from exc
    seeds = [pb.Note(note_id=p.note_id, text=p.correct_note, split=p.split,
                     sentences=[pb.Sentence(id=i, text=s) for i, s in p.correct_sentences]) for p in pairs]
    if not seeds:
        raise CliError(f"--seeds {args.seeds}: no seed notes")
    judge = _assessor_model(args.assessor)
    results = {}
    for label, policy in (("compare", args.compare), ("injector", args.injector)):
        if policy:
            results[f"{label}: {policy}"] = evaluate_injector(policy, judge, seeds, samples=args.samples, seed=1000,
                                                              label=label)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    keys = ("rollouts", "parseable_rate", "valid_rate", "valid_rate_inject", "valid_rate_paraphrase", "fool_rate",
            "fool_rate_inject", "fool_rate_paraphrase", "mean_reward")
    print(f"{'':24}" + "".join(f"{label.split(':')[0]:>12}" for label in results))
    for key in keys:
        print(f"{key:24}" + "".join(f"{_fmt(r[key]):>12}" for r in results.values()))
    for label, r in results.items():
        print(f"{label}: positions {r['positions']}; error types {r['error_types']}; "
              f"fool rate by error type {r['fool_rate_by_error_type']}")
    return 0

