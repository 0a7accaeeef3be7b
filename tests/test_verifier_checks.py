"""The verifier's named checks on real MEDEC validation notes: safe edits pass, unsafe ones are caught
by the check named for their kind. Cases live in tests/data/verifier_cases.jsonl (ours, written for
these tests: each names a MEDEC note, a sentence, an anchor that must be in it, and the edit)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medec.prepare import pair_from_note, read_medec_csv
from services.verifier.checks import VerifyInputError, verify
from services.verifier.entities import entity_counts, entity_diff

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "verifier_cases.jsonl").read_text().splitlines()
         if line.strip()]


@pytest.fixture(scope="module")
def val_notes(medec_path):
    notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    return {n.note_id: n for n in notes}


def test_the_case_set_is_balanced_and_covers_every_kind():
    safe = [c for c in CASES if c["expect"] == "pass"]
    unsafe = [c for c in CASES if c["expect"] != "pass"]
    assert len(CASES) >= 40 and len(safe) >= 20 and len(unsafe) >= 20
    kinds = {k for c in CASES for k in c["kind"].split("/")}
    assert {"drug", "vitals", "lab", "age", "duration", "number", "percentage", "ratio", "disease", "organism",
            "negation", "laterality"} <= kinds
    failing = {name for c in unsafe for name in c["expect"]}
    for kind in ("drug", "quantity", "measurement", "disease", "organism", "negation", "laterality"):
        assert f"{kind}_preserved" in failing, f"no unsafe case for {kind}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case, val_notes):
    note = val_notes[case["note_id"]]
    if case["mode"] == "medec_incorrect":
        pair = pair_from_note(note)
        eid = pair.error_sentence_id if case["error_sentence_id"] is None else case["error_sentence_id"]
        result = verify("medec_incorrect", pair.correct_sentences, pair.incorrect_sentences, error_sentence_id=eid,
                        reasoning=case["reasoning"], medec_reference=pair.incorrect_sentences)
    else:
        original = list(note.sentences)
        modified = dict(original)
        first_id = case["edits"][0][0]
        assert case["anchor"] in modified[first_id], "the case no longer lines up with the MEDEC note"
        for sid, text in case["edits"]:
            modified[sid] = text
        result = verify(case["mode"], original, list(modified.items()),
                        claimed_error_type=case.get("claimed_error_type"))
        if len(case["edits"]) == 1:
            assert result.changed_sentence_ids == [first_id]
    failed = {c.name for c in result.failed_checks()}
    if case["expect"] == "pass":
        assert result.passed, f"safe edit rejected: {[c.to_dict() for c in result.failed_checks()]}"
    else:
        assert not result.passed
        missing = set(case["expect"]) - failed
        assert not missing, f"expected {missing} to fail; failed: {[c.to_dict() for c in result.failed_checks()]}"


def test_unchanged_note_fails_paraphrase_and_inject(val_notes):
    sentences = val_notes["ms-val-1"].sentences
    for mode in ("paraphrase", "inject"):
        result = verify(mode, sentences, sentences, claimed_error_type="diagnosis")
        assert not result.passed
        assert "exactly_one_changed" in {c.name for c in result.failed_checks()}


def test_every_real_medec_error_pairs_as_medec_incorrect(val_notes):
    pairs = [pair_from_note(n) for n in val_notes.values() if n.error_flag]
    results = [verify("medec_incorrect", p.correct_sentences, p.incorrect_sentences,
                      error_sentence_id=p.error_sentence_id, medec_reference=p.incorrect_sentences) for p in pairs]
    assert all(r.passed for r in results)


def test_real_medec_errors_pass_inject_mode(val_notes):
    """Doctor-written MEDEC errors are what a valid injected error looks like: nearly all must pass."""
    pairs = [pair_from_note(n) for n in val_notes.values() if n.error_flag]
    failures = Counter()
    for p in pairs:
        result = verify("inject", p.correct_sentences, p.incorrect_sentences, claimed_error_type=p.error_type)
        failures.update(c.name for c in result.failed_checks())
    passed = sum(1 for p in pairs if verify("inject", p.correct_sentences, p.incorrect_sentences,
                                            claimed_error_type=p.error_type).passed)
    assert passed / len(pairs) >= 0.95, failures


def test_medec_reference_mismatch_is_caught(val_notes):
    pair = pair_from_note(val_notes["ms-val-0"])
    tampered = [(i, s + " " if i == 0 else s) for i, s in pair.incorrect_sentences]
    result = verify("medec_incorrect", pair.correct_sentences, tampered, error_sentence_id=pair.error_sentence_id,
                    medec_reference=pair.incorrect_sentences)
    assert {"matches_medec_note", "error_sentence_is_the_diff"} <= {c.name for c in result.failed_checks()}


def test_claimed_changed_id_must_be_the_changed_sentence(val_notes):
    original = val_notes["ms-val-5"].sentences
    modified = [(i, "Neisseria gonorrhoeae is the causal pathogen." if i == 7 else s) for i, s in original]
    ok = verify("inject", original, modified, error_sentence_id=7, claimed_error_type="causalOrganism")
    assert ok.passed
    wrong = verify("inject", original, modified, error_sentence_id=6, claimed_error_type="causalOrganism")
    assert [c.name for c in wrong.failed_checks()] == ["changed_id_matches_claim"]


@pytest.mark.parametrize("bad", [
    ("paraphrase", [], [(0, "x")], "original note has no sentences"),
    ("paraphrase", [(0, "   ")], [(0, "a")], "empty"),
    ("paraphrase", [(0, "A" * 300_000)], [(0, "B")], "characters"),
    ("paraphrase", [(-1, "A.")], [(-1, "B.")], "non-negative"),
    ("paraphrase", [(0, "A."), (0, "B.")], [(0, "A.")], "duplicate"),
    ("summarise", [(0, "A.")], [(0, "B.")], "unknown mode"),
])
def test_unusable_requests_raise_a_clear_error(bad):
    mode, original, modified, words = bad
    with pytest.raises(VerifyInputError, match=words):
        verify(mode, original, modified)


def test_out_of_range_ids_are_input_errors(val_notes):
    pair = pair_from_note(val_notes["ms-val-0"])
    with pytest.raises(VerifyInputError, match="not in the note"):
        verify("medec_incorrect", pair.correct_sentences, pair.incorrect_sentences, error_sentence_id=999)
    with pytest.raises(VerifyInputError, match="not in the note"):
        verify("inject", pair.correct_sentences, pair.incorrect_sentences, error_sentence_id=999,
               claimed_error_type="causalOrganism")


def test_entity_kinds_on_a_real_sentence(val_notes):
    counts = entity_counts(dict(val_notes["ms-val-23"].sentences)[4])  # temperature and pulse
    assert counts["quantity"]["38.4 c"] == 1 and counts["quantity"]["101.2 f"] == 1
    assert counts["measurement"]["pulse=112 /min"] == 1 and counts["measurement"]["temp=38.4 c"] == 1
    assert counts["drug"] == Counter() and counts["laterality"] == Counter()
    assert entity_diff("Her pulse is 2/min.", "Her pulse is two/min.") == {}
    assert entity_diff("Started on Tylenol.", "Started on acetaminophen.").keys() <= {"term"}
    assert "drug" not in entity_diff("Started on Tylenol.", "Started on acetaminophen.")
