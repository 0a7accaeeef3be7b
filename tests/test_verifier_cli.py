"""``medserl verify batch`` and ``medserl verify report`` on real MEDEC notes."""

from __future__ import annotations

import json

import pytest

from medec.prepare import pair_from_note, read_medec_csv
from medserl_cli.cli import main


@pytest.fixture(scope="module")
def val(medec_path):
    notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    return {n.note_id: n for n in notes}


def _swap(sentences, sid, text):
    return [[i, text if i == sid else s] for i, s in sentences]


def test_batch_writes_one_result_per_line_and_never_drops_a_bad_one(val, tmp_path, capsys):
    original = val["ms-val-11"].sentences
    pair = pair_from_note(val["ms-val-0"])
    lines = [
        {"id": "safe", "mode": "paraphrase", "original": [[i, s] for i, s in original],
         "modified": _swap(original, 3, "His current medications are glucosamine, amlodipine, and meloxicam.")},
        {"id": "unsafe", "mode": "paraphrase", "original": [[i, s] for i, s in original],
         "modified": _swap(original, 3, "Current medications include glucosamine and meloxicam.")},
        {"id": "text", "mode": "inject", "claimed_error_type": "pharmacotherapy",
         "original": "She has asthma. She uses albuterol daily.", "modified": "She has asthma. She uses propranolol daily."},
        {"id": "medec", "mode": "medec_incorrect", "error_sentence_id": pair.error_sentence_id,
         "original": [[i, s] for i, s in pair.correct_sentences], "modified": [[i, s] for i, s in pair.incorrect_sentences],
         "reasoning": json.dumps({"wrong_finding": "Neisseria gonorrhoeae", "right_finding": "Trichomonas vaginalis",
                                  "key_clues": ["facial flushing and profuse sweating"],
                                  "clinical_impact": "the wrong organism means the wrong antimicrobial treatment"})},
        {"id": "no-mode", "original": "A.", "modified": "B."},
        {"id": "empty", "mode": "paraphrase", "original": [], "modified": []},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken json\n")
    out = tmp_path / "out.jsonl"
    assert main(["verify", "batch", "--input", str(source), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["safe", "unsafe", "text", "medec", "no-mode", "empty", "line-7"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["safe"]["passed"] and by_id["text"]["passed"] and by_id["medec"]["passed"]
    assert not by_id["unsafe"]["passed"]
    assert {"name": "drug_preserved", "passed": False}.items() <= next(
        c for c in by_id["unsafe"]["checks"] if c["name"] == "drug_preserved").items()
    assert "missing field 'mode'" in by_id["no-mode"]["error"]
    assert "no sentences" in by_id["empty"]["error"]
    assert "invalid JSON" in by_id["line-7"]["error"]
    assert "3 passed, 1 failed, 3 could not be verified" in capsys.readouterr().err


def test_report_gives_pass_rate_per_check_for_an_sft_dataset(val, tmp_path, capsys):
    records = []
    for note_id in ("ms-val-0", "ms-val-2"):
        pair = pair_from_note(val[note_id])
        records.append({"id": f"inc-{note_id}", "pair_id": pair.pair_id, "kind": "INCORRECT",
                        "source_sentences": [[i, s] for i, s in pair.correct_sentences],
                        "note_sentences": [[i, s] for i, s in pair.incorrect_sentences],
                        "changed_sentence_id": pair.error_sentence_id, "error_type": pair.error_type,
                        "reasoning": None})
    original = val["ms-val-11"].sentences
    records.append({"id": "ok", "kind": "CORRECT", "source_sentences": [[i, s] for i, s in original],
                    "note_sentences": _swap(original, 3, "His current medications are glucosamine, amlodipine, and meloxicam."),
                    "changed_sentence_id": 3})
    records.append({"id": "bad", "kind": "CORRECT", "source_sentences": [[i, s] for i, s in original],
                    "note_sentences": _swap(original, 3, "Current medications include glucosamine and meloxicam."),
                    "changed_sentence_id": 3,
                    "verifier": {"mode": "paraphrase", "passed": True, "checks": [{"name": "x", "passed": True}]}})
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = tmp_path / "report.json"
    assert main(["verify", "report", "--input", str(data), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "drug_preserved" in printed and "ALL CHECKS" in printed
    summary = json.loads(report.read_text())
    assert summary["modes"]["paraphrase"] == {"passed": 1, "total": 2}  # re-verified, not the stored "passed"
    assert summary["modes"]["medec_incorrect"] == {"passed": 2, "total": 2}
    drug = next(c for c in summary["checks"] if c["check"] == "drug_preserved")
    assert (drug["passed"], drug["total"]) == (1, 2)
    assert main(["verify", "report", "--input", str(data), "--stored"]) == 0


def test_report_without_usable_records_is_a_cli_error(tmp_path, capsys):
    empty = tmp_path / "nothing.jsonl"
    empty.write_text('{"foo": 1}\n')
    assert main(["verify", "report", "--input", str(empty)]) == 2
    assert "no verifiable records" in capsys.readouterr().err
    assert main(["verify", "batch", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 2
