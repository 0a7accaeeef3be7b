"""MEDEC loading, pairing and splitting on the real files, plus the CLI and malformed input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from medec.prepare import (
    CSV_COLUMNS,
    SPLITS,
    MedecFormatError,
    PairRecord,
    demo_csv_path,
    find_medec_files,
    load_notes_jsonl,
    load_pairs_jsonl,
    pair_from_note,
    prepare,
    read_medec_csv,
    write_prepared,
)
from medserl_cli.cli import main
from services.verifier.checks import verify

VAL = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
TEST = "MEDEC-MS-TestSet-with-GroundTruth-and-ErrorType.csv"


@pytest.fixture(scope="module")
def prepared(medec_path):
    csvs, jsonls = find_medec_files(medec_path)
    return prepare(csvs + jsonls, seed=13)


def test_validation_csv_keeps_medec_ids_and_pairs_every_error_note(medec_path):
    notes, blank = read_medec_csv(medec_path / VAL)
    assert len(notes) == 574 and blank == 0
    errors = [n for n in notes if n.error_flag]
    assert len(errors) == 319
    for note in errors:
        pair = pair_from_note(note)
        differing = [i for (i, a), (_, b) in zip(pair.incorrect_sentences, pair.correct_sentences, strict=True) if a != b]
        assert differing == [pair.error_sentence_id]
        assert dict(pair.correct_sentences)[pair.error_sentence_id] == note.corrected_sentence
    # MEDEC's own ids, noisy lines included: ms-val-0 splits "mm" / "Hg." like MEDEC does
    first = next(n for n in notes if n.note_id == "ms-val-0")
    assert dict(first.sentences)[8] == "Hg." and first.error_sentence_id == 5


def test_test_csv_blank_rows_are_skipped_and_floats_read_as_ints(medec_path, tmp_path):
    notes, blank = read_medec_csv(medec_path / TEST)
    assert blank == 328 and len(notes) == 597
    assert sum(n.error_flag for n in notes) == 311
    # the same file as pandas would round-trip it (ids and flags as floats) still reads
    src = medec_path / TEST
    rows = list(csv.DictReader(src.open(encoding="utf-8")))
    for row in rows:
        if row["Error Flag"]:
            row["Error Flag"] = f"{float(row['Error Flag'])}"
            row["Error Sentence ID"] = f"{float(row['Error Sentence ID'])}"
    floaty = tmp_path / "MEDEC-MS-TestSet-floats.csv"
    with floaty.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    again, _ = read_medec_csv(floaty)
    assert [(n.note_id, n.error_sentence_id) for n in again] == [(n.note_id, n.error_sentence_id) for n in notes]


def test_raw_train_pairs_get_the_error_sentence_as_one_sentence(medec_path):
    pairs = load_pairs_jsonl(medec_path / "train-pairs" / "medec_ms_train_pairs.jsonl")
    assert len(pairs) == 1219
    assert {p.error_type for p in pairs} <= {"diagnosis", "management", "treatment", "pharmacotherapy", "causalOrganism"}
    for p in pairs:
        assert dict(p.incorrect_sentences)[p.error_sentence_id] == p.error_sentence
        result = verify("medec_incorrect", p.correct_sentences, p.incorrect_sentences, error_sentence_id=p.error_sentence_id)
        assert result.passed, p.note_id


def test_twins_share_a_split_and_test_notes_only_go_to_eval(prepared):
    by_id = {n.note_id: n for n in prepared.notes}
    twins = [n for n in prepared.notes if n.twin_of]
    assert len(twins) > 400
    for twin in twins:
        assert twin.split == by_id[twin.twin_of].split
        assert twin.note_id.rsplit("-", 1)[0] == twin.twin_of.rsplit("-", 1)[0]
    assert all(n.split == "eval" for n in prepared.notes if "-test-" in n.note_id)
    assert all(p.split == "eval" for p in prepared.pairs if p.source == "medec-ms-test")
    val_splits = {p.split for p in prepared.pairs if p.source in ("medec-ms-val", "medec-ms-train")}
    assert val_splits == set(SPLITS)


def test_splits_are_deterministic_and_seeded(medec_path, prepared):
    csvs, jsonls = find_medec_files(medec_path)
    again = prepare(list(reversed(csvs + jsonls)), seed=13)
    assert {p.pair_id: p.split for p in again.pairs} == {p.pair_id: p.split for p in prepared.pairs}
    other = prepare(csvs + jsonls, seed=14)
    assert {p.pair_id: p.split for p in other.pairs} != {p.pair_id: p.split for p in prepared.pairs}


def test_prepared_files_round_trip(prepared, tmp_path):
    paths = write_prepared(prepared, tmp_path)
    pairs = load_pairs_jsonl(paths["pairs"])
    assert len(pairs) == len(prepared.pairs)
    first = json.loads(paths["pairs"].read_text().splitlines()[0])
    assert set(first) == {f for f in PairRecord.__dataclass_fields__}
    assert isinstance(first["incorrect_sentences"][0], list)
    assert sum(len(load_pairs_jsonl(paths[s])) for s in SPLITS) == len(pairs)
    assert {p.pair_id: p for p in pairs}[prepared.pairs[0].pair_id] == prepared.pairs[0]
    assert len(load_notes_jsonl(paths["notes"])) == len(prepared.notes)


def _write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("column, value, problem", [
    ("Error Sentence ID", "99", "not a sentence id"),
    ("Error Flag", "yes", "not an integer"),
    ("Error Type", "spelling", "unknown error type"),
    ("Error Sentence", "Something the note never says.", "does not match"),
    ("Sentences", "", "no '<id> <sentence>' lines"),
])
def test_a_malformed_row_names_file_row_and_column(medec_path, tmp_path, column, value, problem):
    rows = list(csv.DictReader((medec_path / VAL).open(encoding="utf-8")))[:3]
    rows[2][column] = value  # ms-val-2, an error note, is spreadsheet row 4
    bad = tmp_path / "bad.csv"
    _write_csv(bad, rows)
    with pytest.raises(MedecFormatError) as info:
        read_medec_csv(bad)
    assert info.value.row == 4 and info.value.column == column and problem in str(info.value)
    assert str(bad) in str(info.value)
    skipped = prepare([bad], skip_malformed=True)
    assert len(skipped.skipped) == 1 and "row 4" in skipped.skipped[0]
    assert {n.note_id for n in skipped.notes} == {"ms-val-0", "ms-val-1"}


def test_malformed_pair_jsonl_line_is_named(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"note_id": "x-1", "incorrect_note": "A. B.", "correct_note": "A. C.",
                               "error_type": "diagnosis", "error_sentence": "Z.", "corrected_sentence": "C."}) + "\n")
    with pytest.raises(MedecFormatError, match=r"row 1, column 'error_sentence'"):
        load_pairs_jsonl(bad)


def test_demo_set_is_our_own_and_loads(tmp_path):
    notes, _ = read_medec_csv(demo_csv_path())
    assert len(notes) == 24 and sum(n.error_flag for n in notes) == 12
    assert {n.source for n in notes} == {"demo"}
    result = prepare([demo_csv_path()])
    assert len(result.pairs) == 12 and all(n.twin_of for n in result.notes if not n.error_flag)


def test_cli_prepare_writes_splits_and_prints_a_summary(medec_path, tmp_path, capsys):
    data = tmp_path / "medec"
    data.mkdir()
    shutil.copy(medec_path / VAL, data / VAL)
    out = tmp_path / "out"
    assert main(["data", "prepare", "--medec-dir", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "319 pairs" in printed and "sft_train" in printed and "management" in printed
    for split in SPLITS:
        assert (out / "train_val_split" / f"{split}.jsonl").exists()


def test_cli_prepare_reports_bad_input_with_exit_code_2(medec_path, tmp_path, capsys):
    rows = list(csv.DictReader((medec_path / VAL).open(encoding="utf-8")))[:3]
    rows[2]["Error Sentence ID"] = "oops"
    data = tmp_path / "medec"
    data.mkdir()
    _write_csv(data / "broken.csv", rows)
    assert main(["data", "prepare", "--medec-dir", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "broken.csv: row 4, column 'Error Sentence ID'" in err
    assert main(["data", "prepare", "--medec-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
