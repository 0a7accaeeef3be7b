"""Sentence segmentation: clinical units stay whole, boundaries are stable, MEDEC's are reproduced."""

from __future__ import annotations

import pytest

from medec.prepare import read_medec_csv
from services.common.segment import medec_agreement, number_sentences, split_sentences


@pytest.mark.parametrize("text, expected", [
    ("Her pulse is 106/min and blood pressure is 102/73 mm Hg. Physical examination shows flushing.",
     ["Her pulse is 106/min and blood pressure is 102/73 mm Hg.", "Physical examination shows flushing."]),
    ("Laboratory studies show:\nNa+: 135 mEq/L\nK+: 4.1 mEq/L\nCreatinine 0.9 mg/dL",
     ["Laboratory studies show:", "Na+: 135 mEq/L", "K+: 4.1 mEq/L", "Creatinine 0.9 mg/dL"]),
    ("She was seen by Dr. Smith yesterday. Her temperature is 38.1 C (100.6 F).",
     ["She was seen by Dr. Smith yesterday.", "Her temperature is 38.1 C (100.6 F)."]),
    ("Take 0.5 mg b.i.d. with food. Avoid NSAIDs, e.g. ibuprofen. Return in 2 weeks.",
     ["Take 0.5 mg b.i.d. with food.", "Avoid NSAIDs, e.g. ibuprofen.", "Return in 2 weeks."]),
    ('He says "I feel dizzy." Then he vomits.', ['He says "I feel dizzy."', "Then he vomits."]),
    ("E. coli was isolated. Is she pregnant? No.", ["E. coli was isolated.", "Is she pregnant?", "No."]),
    ("Pulse is 80/min. Respirations are 14/min.", ["Pulse is 80/min.", "Respirations are 14/min."]),
])
def test_clinical_units_stay_together(text, expected):
    assert split_sentences(text) == expected


def test_numbering_is_medec_style_and_blank_text_has_no_sentences():
    assert number_sentences("One. Two.") == [(0, "One."), (1, "Two.")]
    assert number_sentences("") == [] and number_sentences("  \n \n") == []


def test_editing_one_sentence_does_not_move_the_others(medec_path):
    notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    checked = 0
    for note in notes[:80]:
        sentences = split_sentences(note.text)
        if len(sentences) < 3:
            continue
        edited = list(sentences)
        edited[1] = "The patient was given 2 mg of lorazepam by Dr. Lee at 3 p.m. today."
        again = split_sentences(note.text.replace(sentences[1], edited[1], 1))
        assert again == edited, note.note_id
        checked += 1
    assert checked > 50


def test_reproduces_medec_boundaries_on_unedited_notes(medec_path):
    notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    real, hit = medec_agreement([n for n in notes if not n.error_flag])
    assert real > 2000
    assert hit / real >= 0.99, f"agreement {hit}/{real}"
