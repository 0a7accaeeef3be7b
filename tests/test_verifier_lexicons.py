"""The lexicons come from maintained packages (not hand lists), load once, and match what they should."""

from __future__ import annotations

from services.verifier import lexicons
from services.verifier.entities import entity_counts


def test_lexicons_are_package_data_of_real_size():
    lexicon = lexicons.get_lexicon()
    assert lexicon is lexicons.get_lexicon()  # loaded once per process
    assert "drug-named-entity-recognition==" in lexicon.sources["drug"]
    assert "simple-icd-10-cm==" in lexicon.sources["disease"]
    assert lexicon.sizes["drug_terms"] > 50_000
    assert lexicon.sizes["disease_terms"] > 30_000
    assert lexicon.sizes["medical_words"] > 20_000


def test_drug_names_resolve_brand_to_generic():
    assert entity_counts("She takes Tylenol.")["drug"] == entity_counts("She takes acetaminophen.")["drug"]
    assert set(entity_counts("Started on Zestril and Lipitor.")["drug"]) == {"lisinopril", "atorvastatin"}
    # lab analytes and English words from the drug dictionary are not medications
    assert not entity_counts("Alkaline phosphatase is 120 U/L and she drinks one beer.")["drug"]


def test_icd10cm_diseases_abbreviations_and_organisms():
    diseases = entity_counts("He has essential hypertension, COPD and community-acquired pneumonia.")["disease"]
    assert {"essential hypertension", "chronic obstructive pulmonary disease", "pneumonia"} <= set(diseases)
    assert set(entity_counts("She has hypertension.")["disease"]) == {"hypertension"}  # longest match wins above
    assert not entity_counts("Examination of the abdomen and pelvic area is normal.")["disease"]
    organisms = entity_counts("Cultures grew Escherichia coli, S. aureus and a herpesvirus; Candida was absent.")["organism"]
    assert {"e. coli", "s. aureus", "herpesvirus", "candida"} <= set(organisms)
    assert entity_counts("Streptococcus pneumoniae")["organism"] == entity_counts("pneumococcus")["organism"]


def test_negation_scope_and_laterality():
    counts = entity_counts("She denies fever or cough but reports dysuria in the left flank.")
    assert {"neg:disease:fever", "neg:disease:cough"} <= set(counts["negation"])
    assert "neg:disease:dysuria" not in counts["negation"]
    assert counts["laterality"] == {"left": 1}
    assert entity_counts("Both knees are swollen bilaterally.")["laterality"] == {"bilateral": 1}
