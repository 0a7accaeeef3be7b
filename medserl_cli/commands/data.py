"""``medserl data prepare``: MEDEC CSVs / pair JSONL -> pairs.jsonl + deterministic splits.

Reads every MEDEC CSV (MS validation/test, the full MS training CSV, the UW CSVs: same columns) and
pair JSONL (``train-pairs/``) under ``--medec-dir`` (and any ``--input`` files), keeps MEDEC's
sentence ids, pairs each error note with its corrected note, and writes::

    OUT/pairs.jsonl                       every pair (PairRecord, one JSON per line)
    OUT/notes.jsonl                       every CSV note, clean twins included, with its split
    OUT/train_val_split/sft_train.jsonl   \\
    OUT/train_val_split/rl_train.jsonl     > the pairs of each split
    OUT/train_val_split/eval.jsonl        /
    OUT/summary.json

Splits are by case (an error note and its clean twin, the next Text ID, always share a split),
seeded and deterministic; test-set notes only ever go to ``eval``. A malformed row stops the run
with the file, row and column (``--skip-malformed`` lists and skips them instead).

Examples::

    medserl data prepare --medec-dir ../shared/medec --out data_processed/medec_paired
    medserl data prepare --demo --out /tmp/demo_pairs     # our own small demo set, no MEDEC needed
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare MEDEC data (pairs + splits)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    data_sub = p.add_subparsers(dest="data_command", metavar="<action>")
    prep = data_sub.add_parser("prepare", help="MEDEC CSV/JSONL -> pairs.jsonl + sft_train/rl_train/eval splits",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("--medec-dir", help="folder with MEDEC CSVs and/or pair JSONL (default: $MEDSERL_MEDEC_DIR)")
    prep.add_argument("--input", action="append", default=[], metavar="FILE",
                      help="an extra MEDEC CSV or pair JSONL file; repeatable")
    prep.add_argument("--demo", action="store_true", help="use the demo notes shipped with MedSeRL (not MEDEC)")
    prep.add_argument("--out", default="data_processed/medec_paired", help="output folder (default: %(default)s)")
    prep.add_argument("--seed", type=int, default=13, help="split seed (default: %(default)s)")
    prep.add_argument("--ratios", default="0.5,0.4,0.1",
                      help="sft_train,rl_train,eval shares of the non-test cases (default: %(default)s)")
    prep.add_argument("--skip-malformed", action="store_true",
                      help="list malformed rows and go on instead of stopping at the first")
    prep.set_defaults(func=prepare_command)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _inputs(args: argparse.Namespace) -> list[Path]:
    import os

    from medec.prepare import demo_csv_path, find_medec_files
    from medserl_cli.cli import CliError

    inputs: list[Path] = [Path(f) for f in args.input]
    if args.demo:
        inputs.append(demo_csv_path())
    env = os.environ.get("MEDSERL_MEDEC_DIR", "")
    source = "--medec-dir" if args.medec_dir else "MEDSERL_MEDEC_DIR"
    named = args.medec_dir or (None if inputs else env)
    if named:
        medec_dir = Path(named).expanduser()
        if not medec_dir.is_dir():
            raise CliError(f"{source} {medec_dir} is not a folder: point it at the folder with the MEDEC CSVs "
                           "(e.g. ../shared/medec), or pass --demo for our demo set")
        csvs, jsonls = find_medec_files(medec_dir)
        if not csvs and not jsonls:
            raise CliError(f"no MEDEC CSV or JSONL files under {medec_dir} ({source}): point it at the folder "
                           "with MEDEC-MS-*.csv, or pass --demo for our demo set")
        inputs.extend(csvs + jsonls)
    if not inputs:
        raise CliError("no MEDEC data: pass --medec-dir DIR (or set MEDSERL_MEDEC_DIR), --input FILE, or --demo")
    for path in inputs:
        if not path.is_file():
            raise CliError(f"input file not found: {path}")
        if path.suffix not in (".csv", ".jsonl"):
            raise CliError(f"{path}: expected a .csv (MEDEC) or .jsonl (pairs) file")
    return inputs


def prepare_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medec.prepare import SPLITS, MedecFormatError, prepare, write_prepared
    from medserl_cli.cli import CliError

    try:
        ratios = tuple(float(x) for x in args.ratios.split(","))
    except ValueError:
        raise CliError(f"--ratios expects three numbers like 0.5,0.4,0.1, got {args.ratios!r}") from None
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise CliError(f"--ratios expects three non-negative numbers (sft_train,rl_train,eval), got {args.ratios!r}")
    inputs = _inputs(args)
    with tqdm(total=len(inputs), desc="reading MEDEC", unit="file") as bar:
        try:
            result = prepare(inputs, seed=args.seed, ratios=ratios, skip_malformed=args.skip_malformed,
                             progress=lambda _path: bar.update(1))
        except MedecFormatError as exc:
            raise CliError(f"malformed MEDEC data: {exc} (fix it, or pass --skip-malformed)") from None
    if not result.pairs:
        raise CliError("no error notes found in the inputs: nothing to pair")
    paths = write_prepared(result, args.out)
    summary = result.summary()
    print(f"read {len(inputs)} file(s): {len(result.pairs)} pairs, {len(result.notes)} CSV notes, "
          f"{result.twins} twins kept with their error note, {result.blank_rows} blank rows skipped, "
          f"{result.duplicates_skipped} duplicate ids skipped")
    types = sorted({t for counts in summary["error_types_per_split"].values() for t in counts})
    header = f"{'split':<10} {'pairs':>6} " + " ".join(f"{t:>15}" for t in types)
    print(header)
    print("-" * len(header))
    for split in SPLITS:
        counts = summary["error_types_per_split"][split]
        print(f"{split:<10} {summary['pairs_per_split'].get(split, 0):>6} " + " ".join(f"{counts.get(t, 0):>15}" for t in types))
    for problem in result.skipped:
        print(f"skipped malformed: {problem}")
    print(f"wrote {paths['pairs']} and {paths['pairs'].parent / 'train_val_split'}/{{{','.join(SPLITS)}}}.jsonl")
    return 0
