"""Verifier precision and recall per check on our labelled edit set (issue 15).

    python bench/bench_verifier_precision.py [--medec-dir DIR] [--edits FILE] [--errors] [--medec-rates]

The set (``tests/data/verifier_precision_edits.jsonl``, built by ``tests/data/verifier_precision_build.py``)
holds one-sentence edits of MEDEC-MS validation notes: ``safe`` paraphrases that keep every fact and
``unsafe`` edits that change one (drug, dose, number, unit, laterality, negation, diagnosis, organism).
Each edit is verified in ``paraphrase`` mode against its whole MEDEC note. A check "rejects" an edit
when it fails on it; for each check:

* precision = unsafe edits it rejects / all edits it rejects (a false rejection punishes a correct edit
  in RL, so this is the number the issue is about);
* own recall = the unsafe edits whose fact is that check's job (``expect_check``) that it rejects;
* any recall = all unsafe edits it rejects.

Then the two rates the issue sets limits on (safe edits rejected < 2%, unsafe edits accepted = 0), the
same per category, and ``inject`` mode on the same edits: an unsafe edit with its claimed MEDEC type
is what a valid injected error looks like (should pass), a safe paraphrase changes no fact (should
fail). ``--medec-rates`` adds the pass rates of every real MEDEC error note (validation and test CSVs,
train pairs) in ``medec_incorrect`` and ``inject`` mode. ``--errors`` lists each misjudged edit's id
and failed checks (ids and check details only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medec.prepare import load_pairs_jsonl, pair_from_note, read_medec_csv  # noqa: E402
from services.verifier.checks import verify  # noqa: E402

EDITS = ROOT / "tests" / "data" / "verifier_precision_edits.jsonl"
VALIDATION_CSV = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
TEST_CSV = "MEDEC-MS-TestSet-with-GroundTruth-and-ErrorType.csv"
TRAIN_PAIRS = Path("train-pairs") / "medec_ms_train_pairs.jsonl"


def find_medec(flag: str | None) -> Path:
    for candidate in (flag, os.environ.get("MEDSERL_MEDEC_DIR"), ROOT.parent / "shared" / "medec"):
        if candidate and (Path(candidate) / VALIDATION_CSV).exists():
            return Path(candidate)
    sys.exit("MEDEC-MS validation CSV not found: pass --medec-dir or set MEDSERL_MEDEC_DIR")


def load_edits(path: Path = EDITS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_edit(edit: dict, notes: dict[str, list[tuple[int, str]]], mode: str = "paraphrase"):
    """Verify one labelled edit against its whole MEDEC note; the note must still hold ``before``."""
    original = notes[edit["note_id"]]
    sid = edit["sentence_id"]
    if dict(original).get(sid) != edit["before"]:
        raise ValueError(f"{edit['id']}: sentence {sid} of {edit['note_id']} no longer matches 'before'")
    modified = [(i, edit["after"] if i == sid else s) for i, s in original]
    claimed = edit.get("error_type") or "diagnosis"
    return verify(mode, original, modified, claimed_error_type=claimed if mode == "inject" else None)


def evaluate(edits: list[dict], notes: dict[str, list[tuple[int, str]]]) -> dict:
    """Every number the report prints, from one paraphrase and one inject pass over the edits."""
    rejects: dict[str, Counter] = defaultdict(Counter)  # check -> Counter(safe=, unsafe=)
    own_total: Counter = Counter()
    own_hit: Counter = Counter()
    by_category: dict[tuple[str, str], Counter] = defaultdict(Counter)
    misjudged: list[tuple[str, list[str]]] = []
    inject = Counter()
    for edit in edits:
        result = run_edit(edit, notes)
        failed = {c.name: c.detail for c in result.failed_checks()}
        label = edit["label"]
        for name in failed:
            rejects[name][label] += 1
        row = by_category[(label, edit["category"])]
        row["n"] += 1
        wrong = (label == "safe") == bool(failed)
        row["wrong"] += wrong
        if wrong:
            misjudged.append((edit["id"], [f"{n}: {d}" for n, d in failed.items()] or ["accepted"]))
        if label == "unsafe":
            own_total[edit["expect_check"]] += 1
            own_hit[edit["expect_check"]] += edit["expect_check"] in failed
        injected = run_edit(edit, notes, mode="inject")
        inject[f"{label}_n"] += 1
        inject[f"{label}_passed"] += injected.passed
    safe_n = sum(1 for e in edits if e["label"] == "safe")
    unsafe_n = len(edits) - safe_n
    safe_rejected = sum(c["wrong"] for (label, _), c in by_category.items() if label == "safe")
    unsafe_accepted = sum(c["wrong"] for (label, _), c in by_category.items() if label == "unsafe")
    return {"rejects": rejects, "own_total": own_total, "own_hit": own_hit, "by_category": by_category,
            "misjudged": misjudged, "inject": inject, "safe_n": safe_n, "unsafe_n": unsafe_n,
            "safe_rejected": safe_rejected, "unsafe_accepted": unsafe_accepted}


def _pct(num: int, den: int) -> str:
    return f"{num / den:7.1%}" if den else "    n/a"


def report(stats: dict) -> str:
    lines = [f"{'check':<26} {'rej safe':>8} {'rej unsafe':>10} {'precision':>9} {'own recall':>14} "
             f"{'any recall':>10}", "-" * 82]
    names = sorted(set(stats["rejects"]) | set(stats["own_total"]))
    for name in names:
        fp, tp = stats["rejects"][name]["safe"], stats["rejects"][name]["unsafe"]
        own_n, own_hit = stats["own_total"][name], stats["own_hit"][name]
        own = f"{own_hit:>3}/{own_n:<3} {_pct(own_hit, own_n)}" if own_n else f"{'-':>14}"
        any_recall = _pct(tp, stats["unsafe_n"])
        lines.append(f"{name:<26} {fp:>8} {tp:>10} {_pct(tp, tp + fp):>9} {own:>14} {any_recall:>10}")
    lines.append("")
    lines.append(f"safe paraphrases falsely rejected: {stats['safe_rejected']}/{stats['safe_n']} = "
                 f"{_pct(stats['safe_rejected'], stats['safe_n']).strip()}   (limit < 2%)")
    lines.append(f"unsafe edits accepted as safe:     {stats['unsafe_accepted']}/{stats['unsafe_n']} = "
                 f"{_pct(stats['unsafe_accepted'], stats['unsafe_n']).strip()}   (limit 0)")
    lines.append("")
    lines.append(f"{'label':<7} {'category':<22} {'n':>4} {'misjudged':>9}")
    for (label, category), c in sorted(stats["by_category"].items()):
        lines.append(f"{label:<7} {category:<22} {c['n']:>4} {c['wrong']:>9}")
    inj = stats["inject"]
    lines.append("")
    lines.append(f"inject mode: unsafe edits accepted as injected errors {inj['unsafe_passed']}/"
                 f"{inj['unsafe_n']}; safe paraphrases accepted as errors "
                 f"{inj['safe_passed']}/{inj['safe_n']}")
    return "\n".join(lines)


def medec_rates(medec: Path) -> str:
    """Pass rates of every real MEDEC error note: medec_incorrect must be 100%, inject >= 99.5%."""
    sets = {}
    for name, csv in (("validation", VALIDATION_CSV), ("test", TEST_CSV)):
        if (medec / csv).exists():
            notes, _ = read_medec_csv(medec / csv)
            sets[name] = [pair_from_note(n) for n in notes if n.error_flag]
    if (medec / TRAIN_PAIRS).exists():
        sets["train-pairs"] = load_pairs_jsonl(medec / TRAIN_PAIRS)
    lines = [f"{'MEDEC error notes':<18} {'n':>5} {'medec_incorrect':>16} {'inject':>16}", "-" * 58]
    total = Counter()
    for name, pairs in sets.items():
        mi = sum(verify("medec_incorrect", p.correct_sentences, p.incorrect_sentences,
                        error_sentence_id=p.error_sentence_id, medec_reference=p.incorrect_sentences).passed
                 for p in pairs)
        inj = sum(verify("inject", p.correct_sentences, p.incorrect_sentences,
                         claimed_error_type=p.error_type).passed for p in pairs)
        total.update(n=len(pairs), mi=mi, inj=inj)
        n = len(pairs)
        lines.append(f"{name:<18} {n:>5} {mi:>7} {_pct(mi, n)} {inj:>7} {_pct(inj, n)}")
    lines.append(f"{'all':<18} {total['n']:>5} {total['mi']:>7} {_pct(total['mi'], total['n'])} "
                 f"{total['inj']:>7} {_pct(total['inj'], total['n'])}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medec-dir")
    parser.add_argument("--edits", default=str(EDITS))
    parser.add_argument("--errors", action="store_true",
                        help="list each misjudged edit with its failed checks")
    parser.add_argument("--medec-rates", action="store_true", help="also verify every real MEDEC error note")
    args = parser.parse_args()
    medec = find_medec(args.medec_dir)
    notes, _ = read_medec_csv(medec / VALIDATION_CSV)
    by_id = {n.note_id: list(n.sentences) for n in notes}
    edits = load_edits(Path(args.edits))
    stats = evaluate(edits, by_id)
    print(f"{len(edits)} labelled edits of MEDEC-MS validation notes ({stats['safe_n']} safe, "
          f"{stats['unsafe_n']} unsafe), paraphrase mode")
    print()
    print(report(stats))
    if args.errors and stats["misjudged"]:
        print()
        for edit_id, failed in stats["misjudged"]:
            print(f"{edit_id}: {' | '.join(failed)}")
    if args.medec_rates:
        print()
        print(medec_rates(medec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
