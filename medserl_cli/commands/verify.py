"""``medserl verify``: run the verifier's checks offline.

``medserl verify batch --input F.jsonl --output G.jsonl``
    Input lines: ``{"id", "mode", "original", "modified", "error_sentence_id"?, "claimed_error_type"?,
    "reasoning"?}`` where mode is paraphrase | inject | medec_incorrect and a note is either
    ``[[id, sentence], ...]`` (MEDEC ids) or plain text (segmented). Output lines:
    ``{"id", "passed", "checks": [{"name", "passed", "detail"}], "changed_sentence_ids"}``; a line that
    cannot be verified gets ``"passed": false`` and an ``"error"`` with the reason (never dropped).

``medserl verify report --input sft_combined_safe.jsonl``
    Pass rate per check over a whole SFT dataset (generator records are re-verified from their
    ``source_sentences``/``note_sentences``; ``--stored`` uses their stored ``verifier`` field), or over
    a ``verify batch`` output file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify edits offline (batch) and summarise SFT data (report)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vsub = p.add_subparsers(dest="verify_command", metavar="<action>")
    batch = vsub.add_parser("batch", help="verify every line of a JSONL file", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("--input", required=True, help="JSONL of {id, mode, original, modified, ...}")
    batch.add_argument("--output", required=True, help="JSONL of {id, passed, checks}")
    batch.set_defaults(func=batch_command)
    report = vsub.add_parser("report", help="pass rate per check over an SFT dataset", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--input", required=True, action="append",
                        help="SFT JSONL (generator records) or a verify-batch output; repeatable")
    report.add_argument("--stored", action="store_true", help="use the records' stored verifier results")
    report.add_argument("--json", help="also write the report as JSON to this file")
    report.set_defaults(func=report_command)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _sentences(value, what: str) -> list[tuple[int, str]]:
    from services.common.segment import number_sentences
    from services.verifier.checks import VerifyInputError

    if isinstance(value, str):
        return number_sentences(value)
    if isinstance(value, list):
        out = []
        for item in value:
            if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], int)
                    and isinstance(item[1], str)):
                raise VerifyInputError(f"{what}: each sentence must be [id, text]")
            out.append((item[0], item[1]))
        return out
    raise VerifyInputError(f"{what}: expected text or a list of [id, sentence]")


def verify_line(row: dict):
    """One batch line -> VerificationResult (raises VerifyInputError for an unusable line)."""
    from services.verifier.checks import VerifyInputError, verify

    if not isinstance(row, dict):
        raise VerifyInputError("a line must be a JSON object")
    for key in ("mode", "original", "modified"):
        if key not in row:
            raise VerifyInputError(f"missing field {key!r}")
    esid = row.get("error_sentence_id")
    if esid is not None and (not isinstance(esid, int) or isinstance(esid, bool)):
        raise VerifyInputError("error_sentence_id must be an integer")
    reasoning = row.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip():
        try:
            reasoning = json.loads(reasoning)
        except json.JSONDecodeError as exc:
            raise VerifyInputError(f"reasoning is not JSON: {exc.msg}") from None
    return verify(str(row["mode"]), _sentences(row["original"], "original"), _sentences(row["modified"], "modified"),
                  error_sentence_id=esid, claimed_error_type=row.get("claimed_error_type"),
                  reasoning=reasoning or None)


def batch_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medserl_cli.cli import CliError
    from services.verifier.checks import VerifyInputError

    source = Path(args.input)
    if not source.is_file():
        raise CliError(f"--input {source} not found")
    lines = source.read_text(encoding="utf-8").splitlines()
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    passed = failed = errors = 0
    with out_path.open("w", encoding="utf-8") as out:
        for number, line in enumerate(tqdm(lines, desc="verifying", unit="line"), start=1):
            if not line.strip():
                continue
            row_id = f"line-{number}"
            try:
                row = json.loads(line)
                row_id = str(row.get("id", row_id)) if isinstance(row, dict) else row_id
                result = verify_line(row)
            except (json.JSONDecodeError, VerifyInputError) as exc:
                errors += 1
                reason = f"invalid JSON: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                out.write(json.dumps({"id": row_id, "passed": False, "checks": [], "error": f"line {number}: {reason}"}) + "\n")
                continue
            passed += result.passed
            failed += not result.passed
            out.write(json.dumps({"id": row_id, "passed": result.passed,
                                  "checks": [c.to_dict() for c in result.checks],
                                  "changed_sentence_ids": result.changed_sentence_ids}, ensure_ascii=False) + "\n")
    print(f"{passed} passed, {failed} failed, {errors} could not be verified -> {out_path}", file=sys.stderr)
    return 0


def _record_checks(record: dict, stored: bool) -> tuple[str, list[dict]] | None:
    """(mode, checks) of one SFT record or batch-output line."""
    from services.verifier.checks import verify

    if "checks" in record and "source_sentences" not in record:
        return str(record.get("mode", "batch")), record["checks"]
    if stored and isinstance(record.get("verifier"), dict):
        return str(record["verifier"].get("mode", "stored")), record["verifier"].get("checks", [])
    kind = str(record.get("kind", "")).upper()
    mode = {"CORRECT": "paraphrase", "INCORRECT": "medec_incorrect"}.get(kind)
    if mode is None:
        return None
    result = verify(mode, _sentences(record["source_sentences"], "source_sentences"),
                    _sentences(record["note_sentences"], "note_sentences"),
                    error_sentence_id=record.get("changed_sentence_id"),
                    reasoning=record.get("reasoning") if mode == "medec_incorrect" else None)
    return mode, [c.to_dict() for c in result.checks]


def report_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medserl_cli.cli import CliError
    from services.verifier.checks import VerifyInputError

    per_check: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    per_mode: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    unusable: list[str] = []
    for name in args.input:
        path = Path(name)
        if not path.is_file():
            raise CliError(f"--input {path} not found")
        for number, line in enumerate(tqdm(path.read_text(encoding="utf-8").splitlines(), desc=path.name), start=1):
            if not line.strip():
                continue
            try:
                got = _record_checks(json.loads(line), args.stored)
            except (json.JSONDecodeError, VerifyInputError, KeyError, TypeError) as exc:
                unusable.append(f"{path}:{number}: {exc}")
                continue
            if got is None:
                unusable.append(f"{path}:{number}: no kind CORRECT/INCORRECT and no checks")
                continue
            mode, checks = got
            ok = bool(checks) and all(c.get("passed") for c in checks)
            per_mode[mode][0] += ok
            per_mode[mode][1] += 1
            for check in checks:
                counts = per_check[(mode, str(check.get("name")))]
                counts[0] += bool(check.get("passed"))
                counts[1] += 1
    if not per_mode:
        raise CliError("no verifiable records in the input")
    print(f"{'mode':<16} {'check':<28} {'passed':>8} {'total':>7} {'rate':>7}")
    for (mode, check), (ok, total) in sorted(per_check.items()):
        print(f"{mode:<16} {check:<28} {ok:>8} {total:>7} {ok / total:>7.1%}")
    for mode, (ok, total) in sorted(per_mode.items()):
        print(f"{mode:<16} {'ALL CHECKS':<28} {ok:>8} {total:>7} {ok / total:>7.1%}")
    for problem in unusable[:20]:
        print(f"unusable: {problem}", file=sys.stderr)
    if len(unusable) > 20:
        print(f"... and {len(unusable) - 20} more unusable lines", file=sys.stderr)
    if args.json:
        report = {"modes": {m: {"passed": ok, "total": t} for m, (ok, t) in per_mode.items()},
                  "checks": [{"mode": m, "check": c, "passed": ok, "total": t} for (m, c), (ok, t) in sorted(per_check.items())],
                  "unusable": unusable}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
