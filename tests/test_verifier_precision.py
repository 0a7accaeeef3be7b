"""Verifier precision on safe paraphrases (issue 15): on our labelled edits of MEDEC-MS validation notes
(tests/data/verifier_precision_edits.jsonl) safe paraphrases are rejected < 2% of the time and no unsafe
edit is accepted; real MEDEC errors still pass; and the context rules behind that hold one by one."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from medec.prepare import load_pairs_jsonl, pair_from_note, read_medec_csv
from services.verifier.checks import verify
from services.verifier.entities import entity_diff, near_clinical_word

DATA = Path(__file__).parent / "data"
EDITS = [json.loads(line) for line in
         (DATA / "verifier_precision_edits.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
SAFE_CATEGORIES = {"copula_nominalisation", "voice", "clause_reordering", "opener", "negation_cue",
                   "number_words", "abbreviation"}
UNSAFE_CATEGORIES = {"drug", "dose", "number", "unit", "laterality", "negation", "diagnosis", "organism"}


@pytest.fixture(scope="module")
def val_notes(medec_path):
    notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    return {n.note_id: n for n in notes}


def _verify(edit: dict, notes: dict, mode: str = "paraphrase"):
    original = list(notes[edit["note_id"]].sentences)
    modified = [(i, edit["after"] if i == edit["sentence_id"] else s) for i, s in original]
    claimed = edit.get("error_type") if mode == "inject" else None
    return verify(mode, original, modified, claimed_error_type=claimed)


def test_the_edit_set_is_big_labelled_and_from_validation_notes_only():
    safe = [e for e in EDITS if e["label"] == "safe"]
    unsafe = [e for e in EDITS if e["label"] == "unsafe"]
    assert len(safe) >= 150 and len(unsafe) >= 150
    assert SAFE_CATEGORIES <= {e["category"] for e in safe}
    assert UNSAFE_CATEGORIES <= {e["category"] for e in unsafe}
    assert all(e["note_id"].startswith("ms-val-") for e in EDITS)  # never the test CSV
    assert all(e["reason"].strip() and e["before"] != e["after"] for e in EDITS)
    assert all(e["expect_check"].endswith("_preserved") and e["error_type"] for e in unsafe)
    assert len({e["id"] for e in EDITS}) == len(EDITS)
    openers = [e for e in safe if e["category"] == "opener"]
    assert any(e["after"].startswith("Of note,") for e in openers) and any(e["after"].startswith("Notably,")
                                                                          for e in openers)


def test_the_edit_set_is_what_its_builder_writes(medec_path):
    spec = importlib.util.spec_from_file_location("build", DATA / "verifier_precision_build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.build(medec_path) == EDITS


def test_safe_paraphrases_pass_and_unsafe_edits_are_caught(val_notes):
    rejected, accepted, missed_by_own_check = [], [], []
    for edit in EDITS:
        note = val_notes[edit["note_id"]]
        assert dict(note.sentences)[edit["sentence_id"]] == edit["before"], f"{edit['id']} no longer lines up"
        result = _verify(edit, val_notes)
        failed = {c.name for c in result.failed_checks()}
        if edit["label"] == "safe" and failed:
            rejected.append((edit["id"], sorted(failed)))
        elif edit["label"] == "unsafe":
            if result.passed:
                accepted.append(edit["id"])
            elif edit["expect_check"] not in failed:
                missed_by_own_check.append(edit["id"])
    safe_n = sum(e["label"] == "safe" for e in EDITS)
    assert len(rejected) / safe_n < 0.02, rejected
    assert accepted == []
    assert len(missed_by_own_check) <= 2, missed_by_own_check


def test_inject_mode_on_the_same_edits(val_notes):
    """An unsafe edit with its claimed type is a valid injected error; a safe paraphrase injects nothing."""
    unsafe = [e for e in EDITS if e["label"] == "unsafe"]
    safe = [e for e in EDITS if e["label"] == "safe"]
    assert sum(_verify(e, val_notes, "inject").passed for e in unsafe) / len(unsafe) >= 0.98
    assert sum(_verify(e, val_notes, "inject").passed for e in safe) / len(safe) <= 0.02


def test_every_real_medec_error_passes_medec_incorrect_and_nearly_all_pass_inject(medec_path):
    pairs = []
    for name in ("MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv",
                 "MEDEC-MS-TestSet-with-GroundTruth-and-ErrorType.csv"):
        notes, _ = read_medec_csv(medec_path / name)
        pairs += [pair_from_note(n) for n in notes if n.error_flag]
    train = medec_path / "train-pairs" / "medec_ms_train_pairs.jsonl"
    if train.exists():
        pairs += load_pairs_jsonl(train)
    assert len(pairs) > 600
    failures: Counter = Counter()
    injected = 0
    for p in pairs:
        incorrect = verify("medec_incorrect", p.correct_sentences, p.incorrect_sentences,
                           error_sentence_id=p.error_sentence_id, medec_reference=p.incorrect_sentences)
        assert incorrect.passed, (p.note_id, [c.to_dict() for c in incorrect.failed_checks()])
        result = verify("inject", p.correct_sentences, p.incorrect_sentences, claimed_error_type=p.error_type)
        injected += result.passed
        failures.update(c.name for c in result.failed_checks())
    assert injected / len(pairs) >= 0.995, failures


def _paraphrase_ok(before: str, after: str) -> bool:
    return verify("paraphrase", [(0, before)], [(0, after)]).passed


def _inject_ok(before: str, after: str, error_type: str) -> bool:
    return verify("inject", [(0, before)], [(0, after)], claimed_error_type=error_type).passed


def test_common_english_vocabulary_words_count_only_with_a_clinical_change():
    before = "Examination of the groin shows numerous tender nodules."
    assert _paraphrase_ok(before, "Examination of the groin shows the presence of numerous tender nodules.")
    diff = entity_diff(before, "Examination of the groin shows the presence of numerous tender cysts.")
    assert "~presence" in diff["term"][1]  # it counts once a clinical entity changes as well
    assert not _inject_ok("The rash started on the trunk.", "The rash had its onset on the trunk.",
                          "diagnosis")


def test_eponym_rule_skips_the_word_after_a_sentence_opener():
    assert _paraphrase_ok("Physical examination shows no abnormalities.",
                          "Of note, Physical examination shows no abnormalities.")
    assert _paraphrase_ok("Gram stain shows neutrophils.", "Notably, Gram stain shows neutrophils.")
    assert not _paraphrase_ok("The patient has Crohn disease.", "The patient has Behcet disease.")


def test_word_forms_and_procedure_names_are_not_changes():
    assert _paraphrase_ok("His spleen is significantly enlarged.",
                          "There is significant enlargement of his spleen.")
    assert _paraphrase_ok("The patient is intubated and mechanically ventilated.",
                          "The patient undergoes intubation and mechanical ventilation.")
    assert _paraphrase_ok("EKG shows diffuse ST-elevations.",
                          "Electrocardiogram shows diffuse ST-elevations.")
    assert _paraphrase_ok("A CT scan of the chest is performed.",
                          "A computed tomography scan of the chest is performed.")
    assert entity_diff("She has hypertension and gastroesophageal reflux disease.",
                       "She has HTN and GERD.") == {}
    # a fact stated twice in place of once is still a change
    assert not _paraphrase_ok("A cyst is seen in the liver.",
                              "A cyst is seen in the liver and a cyst in the spleen.")


def test_negation_scope_and_predicates():
    assert _paraphrase_ok("An electrocardiogram shows no abnormalities.",
                          "No abnormalities are shown on an electrocardiogram.")
    assert not _paraphrase_ok("The lesions are not painful and he does not have any urinary complaints.",
                              "The lesions are painful and he does not have any urinary complaints.")
    assert _inject_ok("DTaP vaccine was administered as scheduled.",
                      "Recommended to refrain from administering DTaP vaccine.", "management")


def test_descriptors_prefixes_and_quantity_parsing():
    assert not _paraphrase_ok("Examination shows punctate, non-blanching macules on the chest.",
                              "Examination shows punctate, blanching macules on the chest.")
    assert not _paraphrase_ok("Ultrasonography shows a 2-cm hypoechoic testicular mass.",
                              "Ultrasonography shows a 2-cm hyperechoic testicular mass.")
    assert not _paraphrase_ok("Examination shows sunken eyes and dry mucous membranes.",
                              "Examination shows sunken eyes and moist mucous membranes.")
    assert _paraphrase_ok("He describes the pain as 10 out of 10 in intensity.",
                          "He rates the intensity of the pain as 10 out of 10.")  # no "10 in" (inches)
    assert _paraphrase_ok("Over the past 3 months, he has had a 5.6-kg (12-lb) weight loss.",
                          "He has had a 5.6-kg (12-lb) weight loss over the past three months.")


def test_laterality_swapped_between_findings_is_a_change():
    before = "The direct pupillary reflex is brisk in the left eye and absent in the right eye."
    swapped = "The direct pupillary reflex is brisk in the right eye and absent in the left eye."
    reordered = "The direct pupillary reflex is absent in the right eye and brisk in the left eye."
    assert not _paraphrase_ok(before, swapped)
    assert _paraphrase_ok(before, reordered)


@pytest.mark.parametrize("before,after,error_type", [
    ("Patient was diagnosed with an ovarian fibroma.", "Patient was diagnosed with an ovarian thecoma.",
     "diagnosis"),
    ("Anti-D IgG was administered.", "Anti-D IgM was administered.", "pharmacotherapy"),
    ("Herpes simplex virus type 2 is the causative agent.",
     "Herpes simplex virus type 1 is the causative agent.", "causalOrganism"),
    ("Patient is diagnosed with a second branchial cleft cyst.",
     "Patient is diagnosed with a first branchial cleft cyst.", "diagnosis"),
    ("The physician encouraged a family meeting.", "The hospital ethics committee was consulted.",
     "management"),
    ("Heparin and wafarin is started.", "Heparin is started.", "treatment"),
    ("Interferon injections are given weekly.", "Interferon injections are given daily.", "pharmacotherapy"),
])
def test_inject_fallback_for_clinical_terms_outside_icd(before, after, error_type):
    assert _inject_ok(before, after, error_type)
    assert not _paraphrase_ok(before, after)


def test_the_misspelling_fallback_does_not_take_english_for_a_drug():
    assert near_clinical_word("wafarin") and near_clinical_word("plasmapharesis")
    for word in ("causes", "increases", "undergoes", "diagnosis", "symptoms", "authorities", "warfarin"):
        assert not near_clinical_word(word), word
