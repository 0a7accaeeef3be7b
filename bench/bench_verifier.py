"""Verifier throughput on one core over every MEDEC-MS validation pair, with time per check.

    python bench/bench_verifier.py [--medec-dir DIR] [--repeat 3]

Each of the 319 validation pairs is verified three ways (what the pipeline does with it):

* ``medec_incorrect``: the INCORRECT SFT example (corrected note vs the MEDEC note, with reasoning);
* ``inject``: the doctor-written error as if a rollout had injected it (claimed MEDEC error type);
* ``paraphrase``: the same edit checked as a would-be paraphrase (runs every preservation check).

Cold = the entity cache is cleared before each pass (every sentence extracted afresh: the honest
number for new rollouts); warm = sentences seen before (the cache a long-running service builds up
for seed notes). Times are CPU seconds of this single-threaded process (``time.process_time``), so
other work on a shared machine does not inflate them; the process is pinned to one core. The goal is
>= 2,000 pair verifications per second on one core. Also prints the
lexicon sizes and the segmenter's agreement with MEDEC's own sentence boundaries.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medec.prepare import pair_from_note, read_medec_csv  # noqa: E402
from services.common.segment import medec_agreement  # noqa: E402
from services.verifier import checks, entities  # noqa: E402
from services.verifier.lexicons import get_lexicon  # noqa: E402


def reasoning_for(pair) -> dict:
    """Reasoning shaped like the generator's: findings from the pair, a clue from the note."""
    return {"wrong_finding": pair.error_sentence, "right_finding": pair.corrected_sentence,
            "key_clues": [pair.incorrect_sentences[0][1]],
            "clinical_impact": "the wrong finding leads to the wrong treatment plan for this patient"}


def find_medec(flag: str | None) -> Path:
    for candidate in (flag, os.environ.get("MEDSERL_MEDEC_DIR"), ROOT.parent / "shared" / "medec"):
        if candidate and (Path(candidate) / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv").exists():
            return Path(candidate)
    sys.exit("MEDEC-MS validation CSV not found: pass --medec-dir or set MEDSERL_MEDEC_DIR")


def timed_pass(pairs, mode: str, cold: bool) -> tuple[float, int]:
    """Verify every pair once in ``mode``; returns (seconds, passed)."""
    if cold:
        entities.extract_entities.cache_clear()
        entities._counts.cache_clear()
    passed = 0
    started = time.process_time()
    for p in pairs:
        if mode == "medec_incorrect":
            result = checks.verify(mode, p.correct_sentences, p.incorrect_sentences,
                                   error_sentence_id=p.error_sentence_id, reasoning=reasoning_for(p),
                                   medec_reference=p.incorrect_sentences)
        else:
            result = checks.verify(mode, p.correct_sentences, p.incorrect_sentences, claimed_error_type=p.error_type)
        passed += result.passed
    return time.process_time() - started, passed


def stage_profile(pairs) -> list[tuple[str, float]]:
    """Microseconds per pair for each stage of a cold inject/paraphrase verification."""
    extract = entities.extract_entities.__wrapped__
    changed = [(dict(p.correct_sentences)[p.error_sentence_id], dict(p.incorrect_sentences)[p.error_sentence_id])
               for p in pairs]
    rows = []

    def clock(name, fn, repeat=3):
        best = float("inf")
        for _ in range(repeat):
            entities.extract_entities.cache_clear()
            entities._counts.cache_clear()
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        rows.append((name, best / len(pairs) * 1e6))

    clock("validate_sentences (both notes)", lambda: [
        (checks.validate_sentences(p.correct_sentences, "o"), checks.validate_sentences(p.incorrect_sentences, "m"))
        for p in pairs])
    clock("sentence diff checks (ids, one changed, others identical)",
          lambda: [checks._diff_checks(p.correct_sentences, p.incorrect_sentences, []) for p in pairs])
    clock("entity extraction, 2 sentences, uncached", lambda: [(extract(a), extract(b)) for a, b in changed])
    lexicon = get_lexicon()
    clock("  organisms (binomials, genera, viruses)",
          lambda: [entities._organisms(s, entities._tokens(s), lexicon.genera) for pair in changed for s in pair])
    clock("  drug/disease/organism lexicon match", lambda: [
        entities._lexicon_entities(entities._tokens(s), lexicon.terms, lexicon.prefixes) for pair in changed for s in pair])
    clock("  quantities (numbers, units, ratios, ages, durations)",
          lambda: [entities._quantities(s) for pair in changed for s in pair])
    clock("entity extraction + diff, cold", lambda: [entities.entity_diff(a, b) for a, b in changed])
    clock("medec_incorrect checks incl. reasoning", lambda: [
        checks._medec_checks(p.correct_sentences, p.incorrect_sentences, p.error_sentence_id, reasoning_for(p),
                             p.incorrect_sentences, checks.VerificationResult("medec_incorrect")) for p in pairs])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medec-dir")
    parser.add_argument("--repeat", type=int, default=3, help="passes per row; the best is reported")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    medec = find_medec(args.medec_dir)
    started = time.perf_counter()
    lexicon = get_lexicon()
    load_s = time.perf_counter() - started
    notes, _ = read_medec_csv(medec / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    pairs = [pair_from_note(n) for n in notes if n.error_flag]

    print(f"lexicons ({load_s:.2f} s to load, cached on disk after the first build):")
    for kind, source in lexicon.sources.items():
        print(f"  {kind:<9} {source}")
    print("  sizes:   " + ", ".join(f"{k}={v:,}" for k, v in lexicon.sizes.items()))
    real, hit = medec_agreement([n for n in notes if not n.error_flag])
    print(f"segmentation agreement with MEDEC on unedited validation notes: {hit}/{real} = {hit / real:.2%}")
    print()
    print(f"{len(pairs)} MEDEC-MS validation pairs, one core, CPU time, best of {args.repeat}")
    print(f"{'mode':<16} {'cache':<6} {'pairs/s':>10} {'us/pair':>9} {'passed':>8}")
    print("-" * 53)
    for mode in ("medec_incorrect", "inject", "paraphrase"):
        for cold in (True, False):
            best = float("inf")
            passed = 0
            for _ in range(args.repeat):
                seconds, passed = timed_pass(pairs, mode, cold)
                best = min(best, seconds)
            print(f"{mode:<16} {'cold' if cold else 'warm':<6} {len(pairs) / best:>10,.0f} {best / len(pairs) * 1e6:>9.1f} "
                  f"{passed:>4}/{len(pairs)}")
    print()
    print(f"{'stage (cold inject/paraphrase path)':<58} {'us/pair':>9}")
    print("-" * 68)
    for name, micros in stage_profile(pairs):
        print(f"{name:<58} {micros:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
