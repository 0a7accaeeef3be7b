"""Parity of ``medserl eval`` with the official MEDIQA-CORR 2024 scorer.

``official_scores`` below follows the official evaluation notebook step by step (pandas reads the
reference, the run lines are parsed with its regex, ROUGE comes from the ``rouge`` 1.0.1 package it
imports). OFFICIAL_BASELINE_RUN_1 holds what that procedure printed for the shipped baseline run, so
the parity check also holds where the ``rouge`` package is not installed.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from medec import mediqa_eval as me
from medserl_cli.cli import main as cli_main

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
TEST = "MEDEC-MS-TestSet-with-GroundTruth-and-ErrorType.csv"

# printed by the official procedure (rouge==1.0.1) for official/baseline-run-1.txt vs the validation CSV
OFFICIAL_BASELINE_RUN_1 = {
    "error_flag_accuracy": 0.4895470383275261,
    "error_sentence_accuracy": 0.30662020905923343,
    "rouge1_subset": 0.41834537258990434,
    "rouge2_subset": 0.32118818327432086,
    "rougeL_subset": 0.415449052076309,
    "rouge1_composite": 0.22202644314239503,
    "rouge2_composite": 0.17734090659306745,
    "rougeL_composite": 0.2206943375403233,
}


def official_scores(reference_csv, run_lines: list[str]) -> dict:
    """The official notebook's procedure, written out independently of services.assessor."""
    import pandas as pd
    import rouge  # the library the official scorer uses (a pinned test dependency)
    df = pd.read_csv(reference_csv)
    ref_corr, ref_flag, ref_sid = {}, {}, {}
    for _, row in df.iterrows():
        corrected = row["Corrected Sentence"]
        if not isinstance(corrected, str):
            corrected = "NA" if math.isnan(corrected) else str(corrected).replace("\n", " ").replace("\r", " ").strip()
        ref_corr[row["Text ID"]] = corrected
        ref_flag[row["Text ID"]] = str(row["Error Flag"])
        ref_sid[row["Text ID"]] = str(row["Error Sentence ID"])
    cand_corr, cand_flag, cand_sid = {}, {}, {}
    for line in run_lines:
        line = line.strip()
        if not line or not re.fullmatch(r"[a-z0-9\-]+\s[0-9]+\s\-?[0-9]+\s.+", line):
            continue
        items = line.split()
        corrected = " ".join(items[3:]).strip()
        while corrected.startswith('"') and len(corrected) > 1:
            corrected = corrected[1:]
        while corrected.endswith('"') and len(corrected) > 1:
            corrected = corrected[:-1]
        cand_flag[items[0]], cand_sid[items[0]] = items[1], items[2]
        cand_corr[items[0]] = "NA" if items[1] == "0" else corrected
    flags = sum(1 for t in ref_flag if t in cand_flag and ref_flag[t] == cand_flag[t]) / len(ref_flag)
    sents = sum(1 for t in ref_sid if t in cand_sid and ref_sid[t] == cand_sid[t]) / len(ref_sid)
    refs, preds, correct_na = [], [], 0
    for t, ref in ref_corr.items():
        if t not in cand_corr:
            continue
        cand = cand_corr[t]
        if ref == "NA" and cand == "NA":
            correct_na += 1
        elif ref != "NA" and cand != "NA":
            refs.append(ref)
            preds.append(cand)
    scores = rouge.Rouge().get_scores(preds, refs)
    out = {"error_flag_accuracy": flags, "error_sentence_accuracy": sents}
    for key, name in (("rouge1", "rouge-1"), ("rouge2", "rouge-2"), ("rougeL", "rouge-l")):
        values = [s[name]["f"] for s in scores]
        out[f"{key}_subset"] = sum(values) / len(values)
        out[f"{key}_composite"] = (sum(values) + correct_na) / len(ref_corr)
    return out


def assert_close(ours: dict, theirs: dict) -> None:
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_baseline_run_matches_the_official_scorer(medec_path):
    ours = me.score(me.load_reference(medec_path / VALIDATION), me.load_run(medec_path / "official/baseline-run-1.txt"))
    assert_close(ours, OFFICIAL_BASELINE_RUN_1)
    assert ours["counters"]["total_texts"] == 574
    assert ours["aggregate_composite"] == ours["rouge1_composite"]


def test_baseline_run_matches_the_official_procedure_live(medec_path):
    lines = (medec_path / "official/baseline-run-1.txt").read_text().splitlines()
    theirs = official_scores(medec_path / VALIDATION, lines)
    assert_close(me.score(me.load_reference(medec_path / VALIDATION), me.parse_run_lines(lines)), theirs)


def test_perturbed_run_matches_the_official_procedure(medec_path):
    """Missing lines, invalid lines, flipped flags, quotes, repeated words: same numbers as official."""
    lines = (medec_path / "official/baseline-run-1.txt").read_text().splitlines()
    perturbed = []
    for i, line in enumerate(lines):
        tid, flag, sid, text = line.split(" ", 3)
        if i % 11 == 0:
            continue  # missing -> wrong
        if i % 13 == 0:
            perturbed.append(f"{tid.upper()} {flag} {sid} {text}")  # invalid id pattern -> skipped
        elif i % 7 == 0:
            perturbed.append(f"{tid} {1 - int(flag)} {sid} {text}")
        elif i % 5 == 0:
            perturbed.append(f'{tid}  {flag}\t{sid} "{text} {text.split(" ")[0]}. the the ."')
        else:
            perturbed.append(line)
    theirs = official_scores(medec_path / VALIDATION, perturbed)
    run = me.parse_run_lines(perturbed)
    assert run.invalid_lines, "upper-case ids must be rejected as the official pattern does"
    assert_close(me.score(me.load_reference(medec_path / VALIDATION), run), theirs)


@pytest.mark.parametrize("pred, ref", [
    ("The patient has pneumonia.", "The patient has pneumonia."),
    ("the the the cat", "the cat the cat sat"),
    ("A. B. . C", "A B C. ."),
    ("Start amoxicillin 500 mg. Monitor.", "Start amoxicillin 250 mg twice daily. Monitor renal function."),
    ("x y z", "a b c"),
    ("Dose: 5mg/kg  q8h . ", "dose: 5mg/kg q8h"),
])
def test_rouge_matches_the_rouge_package(pred, ref):
    import rouge  # the library the official scorer uses (a pinned test dependency)
    theirs = rouge.Rouge().get_scores([pred], [ref])[0]
    ours = me.rouge_f1(pred, ref)
    assert ours == pytest.approx((theirs["rouge-1"]["f"], theirs["rouge-2"]["f"], theirs["rouge-l"]["f"]), abs=1e-12)


def test_rouge_on_a_sentence_free_text_scores_zero_instead_of_crashing():
    assert me.rouge_f1("...", "Some correction.") == (0.0, 0.0, 0.0)


def test_test_csv_blank_rows_are_dropped_and_ids_cast_to_int(medec_path):
    reference = me.load_reference(medec_path / TEST)
    assert len(reference) == 597
    assert all(isinstance(r.error_flag, int) and isinstance(r.error_sentence_id, int) for r in reference)
    truth = me.RunFile()
    for r in reference:
        truth.flags[r.text_id] = str(r.error_flag)
        truth.sentence_ids[r.text_id] = str(r.error_sentence_id)
        truth.corrections[r.text_id] = r.corrected_sentence if r.error_flag else me.NA
    perfect = me.score(reference, truth)
    assert perfect["error_flag_accuracy"] == 1.0 and perfect["error_sentence_accuracy"] == 1.0
    assert perfect["rouge1_composite"] == pytest.approx(1.0, abs=1e-6)


def test_trivial_baselines_on_validation(medec_path):
    reference = me.load_reference(medec_path / VALIDATION)
    no_error = me.score(reference, me.baseline_run(reference, None))
    errors = sum(r.error_flag for r in reference)
    assert no_error["error_flag_accuracy"] == pytest.approx((len(reference) - errors) / len(reference))
    last_ids = me.last_sentence_ids(reference)
    last = me.score(reference, me.baseline_run(reference, last_ids))
    assert last["error_flag_accuracy"] == pytest.approx(errors / len(reference))
    # the error is the last sentence in most error notes (README: 62% on validation)
    last_hits = sum(1 for r in reference if r.error_flag and r.error_sentence_id == last_ids[r.text_id])
    assert 0.5 < last_hits / errors < 0.75
    assert last["error_sentence_accuracy"] == pytest.approx(last_hits / len(reference))


def test_cli_scores_a_run_file_as_json(medec_path, capsys):
    code = cli_main(["eval", "--reference", str(medec_path / VALIDATION),
                     "--run", str(medec_path / "official/baseline-run-1.txt"), "--json"])
    assert code == 0
    assert_close(json.loads(capsys.readouterr().out), OFFICIAL_BASELINE_RUN_1)


def test_cli_errors_are_clear(tmp_path, medec_path, capsys):
    assert cli_main(["eval", "--reference", str(tmp_path / "nope.csv"), "--run", "x"]) == 2
    assert "reference CSV not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert cli_main(["eval", "--reference", str(bad), "--run", "x"]) == 2
    assert "missing column" in capsys.readouterr().err
    assert cli_main(["eval", "--reference", str(medec_path / VALIDATION), "--assessor", "x.yaml"]) == 2
    assert "--out" in capsys.readouterr().err
