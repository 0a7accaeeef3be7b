"""``medserl eval --assessor CONFIG --out RUN``: any assessor backend -> official run file -> metrics."""

from __future__ import annotations

import json

from medec import mediqa_eval as me
from medserl_cli.cli import main as cli_main
from services.assessor.detector import BaselineDetector
from services.assessor.evaluate import assess_reference

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


def test_baseline_assessor_run_equals_the_trivial_baseline(medec_path, tmp_path, capsys):
    config = tmp_path / "assessor.yaml"
    config.write_text("backend: baseline_last_sentence\n")
    out = tmp_path / "runs" / "last.txt"
    code = cli_main(["eval", "--reference", str(medec_path / VALIDATION), "--assessor", str(config),
                     "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    reference = me.load_reference(medec_path / VALIDATION)
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [r.text_id for r in reference]
    assert report["notes"] == 574 and report["unparsed"] == 0
    results = report["results"]
    assert results["assessor"]["error_flag_accuracy"] == results["last-sentence"]["error_flag_accuracy"]
    assert results["assessor"]["error_sentence_accuracy"] == results["last-sentence"]["error_sentence_accuracy"]
    assert results["assessor"]["flag_rate"] == 1.0
    # the run file scores the same through the file path
    assert me.score(reference, me.load_run(out))["error_sentence_accuracy"] == results["assessor"]["error_sentence_accuracy"]


def test_tiny_model_assessor_writes_a_valid_run_and_sees_only_sentences(medec_path, tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(f"backend: transformers\nmodel: {tiny_model_dir}\nmax_new_tokens: 16\n")
    out = tmp_path / "tiny.txt"
    code = cli_main(["eval", "--reference", str(medec_path / VALIDATION), "--assessor", str(config),
                     "--out", str(out), "--limit", "4", "--batch-size", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no-error" in printed and "last-sentence" in printed and "Flag rate" in printed
    run = me.load_run(out)
    assert not run.invalid_lines and len(run.flags) == 4


def test_detector_input_has_no_ids_or_neighbours(medec_path, tmp_path):
    seen = []

    class Recording(BaselineDetector):
        def detect(self, notes):
            seen.append(list(notes))
            return super().detect(notes)

    reference = me.load_reference(medec_path / VALIDATION)[:6]
    outcome = assess_reference(reference, None, out_path=tmp_path / "r.txt", batch_size=1, progress=False,
                               detector=Recording("baseline_no_error"))
    assert outcome.flag_rate == 0.0 and len(seen) == 6
    for batch, row in zip(seen, reference, strict=True):
        (note,) = batch  # one note per call: no neighbour in the same prompt
        assert note == me.parse_medec_sentences(row.sentences)
        assert row.text_id not in repr(note)


def test_bad_assessor_config_is_a_clear_cli_error(medec_path, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("backend: transformers\nmodle: typo\n")
    assert cli_main(["eval", "--reference", str(medec_path / VALIDATION), "--assessor", str(config),
                     "--out", str(tmp_path / "x.txt")]) == 2
    assert "unknown setting 'modle'" in capsys.readouterr().err
    config.write_text("backend: transformers\n")
    assert cli_main(["eval", "--reference", str(medec_path / VALIDATION), "--assessor", str(config),
                     "--out", str(tmp_path / "x.txt")]) == 2
    assert "needs model=" in capsys.readouterr().err
