"""Builds tests/data/verifier_cases.jsonl: our own edits of real MEDEC-MS validation sentences.

Each case names a note (Text ID), the sentence id, an anchor that must occur in that sentence (so a
changed data file is noticed), the edit, the mode and what the verifier must say: "pass" or the
checks that must fail. Run from the repository root: python tests/data/verifier_cases_build.py
"""

import json

P, INJ, M = "paraphrase", "inject", "medec_incorrect"
cases = [
 # ---------------- safe: paraphrases that keep every fact ----------------
 ("drug-para-reword", P, "drug", "ms-val-11", 3, "glucosamine", "His current medications are glucosamine, amlodipine, and meloxicam.", None, "pass"),
 ("drug-para-restructure", P, "drug", "ms-val-23", 3, "hydroxyurea", "She currently takes hydroxyurea and acetaminophen for pain.", None, "pass"),
 ("drug-para-brand-generic", P, "drug", "ms-val-61", 5, "glyburide", "Her current medications include glyburide and Zestril.", None, "pass"),
 ("vitals-para-reorder", P, "vitals", "ms-val-23", 4, "112/min", "Her pulse is 112/min and her temperature is 38.4 C (101.2 F).", None, "pass"),
 ("vitals-para-partial-line", P, "vitals", "ms-val-11", 4, "97/min", "His temperature is 38.1 C (100.6 F), his pulse is 97/min, and", None, "pass"),
 ("age-duration-para", P, "age/duration", "ms-val-1", 0, "24-year-old", "A woman aged 24 years presents to the emergency department with a 4-hour history of headaches, nausea, and vomiting.", None, "pass"),
 ("duration-2-is-two", P, "duration", "ms-val-23", 0, "for 2 weeks", "A 6-year-old girl is brought to the physician for two weeks of intermittent fevers and painful swelling of the left ankle.", None, "pass"),
 ("count-one-is-1", P, "number", "ms-val-29", 2, "one pack", "He has a history of smoking 1 pack of cigarettes daily for 45 years.", None, "pass"),
 ("count-two-is-2", P, "number", "ms-val-21", 4, "two male partners", "She is sexually active with 2 male partners and uses a diaphragm for contraception.", None, "pass"),
 ("count-three-reword", P, "number", "ms-val-96", 2, "three children", "All three of her children were delivered by lower segment transverse cesarean section.", None, "pass"),
 ("negation-para-denies", P, "negation", "ms-val-1", 4, "no history", "She denies any history of major medical illness.", None, "pass"),
 ("negation-para-without", P, "negation/laterality", "ms-val-29", 4, "without guarding", "On abdominal examination, there is mild tenderness to palpation in the right lower quadrant without guarding or rebound.", None, "pass"),
 ("laterality-para-image", P, "laterality", "ms-val-13", 10, "right heel", "A photograph of the patient's right heel is shown.", None, "pass"),
 ("laterality-para-clonus", P, "laterality", "ms-val-17", 4, "right ankle", "On neurologic examination, a sustained clonus of the right ankle follows sudden passive dorsiflexion.", None, "pass"),
 ("organism-para-order", P, "organism", "ms-val-5", 7, "Chlamydia trachomatis", "The causal pathogen is Chlamydia trachomatis.", None, "pass"),
 ("organism-para-clause", P, "organism", "ms-val-7", 4, "Salmonella typhi", "Examination shows diffuse abdominal tenderness and mild hepatosplenomegaly, and a Salmonella typhi infection is confirmed.", None, "pass"),
 ("percent-para-spirometry", P, "percentage/ratio", "ms-val-41", 4, "FVC of 78%", "On spirometry, the FVC is 78% and the FEV1/FVC ratio is 95%.", None, "pass"),
 ("percent-para-oximetry", P, "percentage", "ms-val-89", 6, "saturation of 90%", "On room air, pulse oximetry shows an oxygen saturation of 90%.", None, "pass"),
 ("lab-para-thousands", P, "lab/percentage", "ms-val-57", 16, "1,350/mm3", "Synovial fluid analysis shows a leukocyte count of 1350/mm3 with 17% neutrophils.", None, "pass"),
 ("disease-para-order", P, "disease", "ms-val-1", 3, "genitourinary infection", "The patient was diagnosed with a genitourinary infection one week ago and started on antimicrobial therapy.", None, "pass"),
 ("disease-para-hiv", P, "disease", "ms-val-13", 0, "with HIV", "A 45-year-old man with HIV presents to the physician with multiple lesions on his lower extremity.", None, "pass"),
 # ---------------- safe: real injected errors that a valid rollout would carry ----------------
 ("inject-drug-swap", INJ, "drug", "ms-val-11", 3, "meloxicam", "Current medications include glucosamine, amlodipine, and naproxen.", "pharmacotherapy", "pass"),
 ("inject-organism-swap", INJ, "organism", "ms-val-5", 7, "Chlamydia trachomatis", "Neisseria gonorrhoeae is the causal pathogen.", "causalOrganism", "pass"),
 ("inject-disease-swap", INJ, "disease", "ms-val-2", 3, "osteoarthritis", "She has type 2 diabetes mellitus and rheumatoid arthritis of her left knee.", "diagnosis", "pass"),
 ("inject-dose-change", INJ, "number", "ms-val-29", 2, "one pack", "He has smoked three packs of cigarettes daily for 45 years.", "management", "pass"),
 ("medec-incorrect-with-reasoning", M, "organism", "ms-val-0", None, None, None, None, "pass"),
 # ---------------- unsafe: each must be caught by the named check ----------------
 ("drug-swapped", P, "drug", "ms-val-11", 3, "meloxicam", "Current medications include glucosamine, amlodipine, and ibuprofen.", None, ["drug_preserved"]),
 ("drug-dropped", P, "drug", "ms-val-23", 3, "hydroxyurea", "Current medications include hydroxyurea for pain.", None, ["drug_preserved"]),
 ("vital-value-changed", P, "vitals", "ms-val-23", 4, "112/min", "Her temperature is 38.4 C (101.2 F) and pulse is 122/min.", None, ["quantity_preserved", "measurement_preserved"]),
 ("vitals-swapped-between-labels", P, "vitals", "ms-val-9", 5, "130/min", "Hg, pulse is 12/min, and respirations are 130/min.", None, ["measurement_preserved"]),
 ("temperature-dropped", P, "vitals", "ms-val-23", 4, "38.4 C", "Her temperature is 38.4 C and pulse is 112/min.", None, ["quantity_preserved"]),
 ("lab-unit-changed", P, "lab", "ms-val-141", 22, "3.8 mEq/L", "3.8 mmol/L", None, ["quantity_preserved"]),
 ("age-changed", P, "age", "ms-val-1", 0, "24-year-old", "A 42-year-old woman comes to the emergency department because of a 4-hour history of headaches, nausea, and vomiting.", None, ["quantity_preserved"]),
 ("duration-unit-changed", P, "duration", "ms-val-9", 0, "for 3 days", "A previously healthy 24-year-old male is brought to the emergency department because of fevers, congestion, and chest pain for 3 weeks.", None, ["quantity_preserved"]),
 ("two-became-three", P, "number", "ms-val-21", 4, "two male partners", "She is sexually active with three male partners and uses a diaphragm for contraception.", None, ["quantity_preserved"]),
 ("percent-changed", P, "percentage", "ms-val-89", 6, "90%", "Pulse oximetry on room air shows an oxygen saturation of 96%.", None, ["quantity_preserved"]),
 ("ratio-changed", P, "ratio", "ms-val-41", 4, "FEV1/FVC", "Spirometry shows an FVC of 78% and an FEV1/FVC ratio of 59%.", None, ["quantity_preserved"]),
 ("disease-swapped", P, "disease", "ms-val-2", 3, "osteoarthritis", "She has type 2 diabetes mellitus and rheumatoid arthritis of her left knee.", None, ["disease_preserved"]),
 ("disease-type-changed", P, "disease", "ms-val-2", 3, "type 2 diabetes", "She has type 1 diabetes mellitus and osteoarthritis of her left knee.", None, ["disease_preserved", "quantity_preserved"]),
 ("organism-swapped", P, "organism", "ms-val-5", 7, "Chlamydia trachomatis", "Neisseria gonorrhoeae is the causal pathogen.", None, ["organism_preserved"]),
 ("organism-species-changed", P, "organism", "ms-val-11", 9, "Staphylococcus epidermidis", "Analysis of the synovial fluid confirmed septic arthritis and presence of Staphylococcus aureus, and the prosthesis was removed.", None, ["organism_preserved"]),
 ("negation-removed", P, "negation", "ms-val-1", 4, "no history", "She has a history of major medical illness.", None, ["negation_preserved"]),
 ("negation-removed-finding", P, "negation", "ms-val-31", 1, "no history of rash", "She has a history of rash.", None, ["negation_preserved"]),
 ("negation-added", P, "negation", "ms-val-9", 0, "chest pain", "A previously healthy 24-year-old male is brought to the emergency department because of fevers and congestion without chest pain for 3 days.", None, ["negation_preserved"]),
 ("laterality-flipped", P, "laterality", "ms-val-13", 10, "right heel", "An image of the patient's left heel is shown.", None, ["laterality_preserved"]),
 ("laterality-made-bilateral", P, "laterality", "ms-val-17", 4, "right ankle", "Neurologic examination shows a sustained clonus of both ankles bilaterally following sudden passive dorsiflexion.", None, ["laterality_preserved"]),
 ("term-anatomy-changed", P, "disease", "ms-val-1", 3, "genitourinary infection", "One week ago, the patient was diagnosed with a respiratory infection and started on antimicrobial therapy.", None, ["term_preserved"]),
 ("whitespace-only", P, "diff", "ms-val-1", 4, "no history", "She  has no history of major medical illness. ", None, ["real_change"]),
 ("paraphrase-too-long", P, "diff", "ms-val-31", 1, "no history of rash", "She has no history of rash, which she explained to the team at considerable length during the admission interview that took place this morning.", None, ["length_within_bounds"]),
 ("two-sentences-edited", P, "diff", "ms-val-1", [4, 1], "no history", ["She denies any history of major medical illness.", "During this time, she has also had recurring dizziness and palpitations."], None, ["exactly_one_changed", "others_byte_identical"]),
 ("inject-no-fact-changed", INJ, "diff", "ms-val-1", 4, "no history", "She has no history of any major medical illness.", "diagnosis", ["clinical_entity_changed"]),
 ("inject-elaboration-only", INJ, "term", "ms-val-2", 9, "clear to auscultation", "The lungs are clear to auscultation and percussion.", "management", ["clinical_entity_changed"]),
 ("inject-type-mismatch", INJ, "organism", "ms-val-5", 7, "Chlamydia trachomatis", "Neisseria gonorrhoeae is the causal pathogen.", "pharmacotherapy", ["error_type_fits"]),
 ("inject-organism-claim-on-laterality", INJ, "laterality", "ms-val-13", 10, "right heel", "An image of the patient's left heel is shown.", "causalOrganism", ["error_type_fits"]),
 ("medec-wrong-error-id", M, "diff", "ms-val-0", 3, None, None, None, ["error_sentence_is_the_diff"]),
 ("medec-reasoning-clue-not-in-note", M, "reasoning", "ms-val-0", None, "bad-clue", None, None, ["reasoning_cites_clue"]),
 ("medec-reasoning-no-impact", M, "reasoning", "ms-val-0", None, "no-impact", None, None, ["reasoning_states_impact"]),
 ("medec-reasoning-findings-swapped", M, "reasoning", "ms-val-0", None, "swapped", None, None, ["reasoning_names_findings"]),
]
good_reasoning = {"why_wrong": "Metronidazole-like reaction and trichomonad vaginitis fit, not gonorrhea.",
                  "key_clues": ["facial flushing and profuse sweating", "had one beer"],
                  "clinical_impact": "Wrong organism leads to the wrong antimicrobial and persistent infection in partners.",
                  "wrong_finding": "Neisseria gonorrhoeae", "right_finding": "Trichomonas vaginalis"}
bad_reasoning = dict(good_reasoning, key_clues=["recent travel to Brazil with bloody diarrhea"])
with open("tests/data/verifier_cases.jsonl", "w") as fh:
    for cid, mode, kind, note_id, sid, anchor, new, claim, expect in cases:
        row = {"id": cid, "mode": mode, "kind": kind, "note_id": note_id, "expect": expect}
        if mode == M:
            row["error_sentence_id"] = sid  # None: use MEDEC's
            row["reasoning"] = {"bad-clue": bad_reasoning, "no-impact": dict(good_reasoning, clinical_impact="bad"),
                                "swapped": dict(good_reasoning, wrong_finding="Trichomonas vaginalis",
                                                right_finding="Neisseria gonorrhoeae")}.get(anchor, good_reasoning)
        else:
            ids = sid if isinstance(sid, list) else [sid]
            news = new if isinstance(new, list) else [new]
            row["edits"] = [[i, t] for i, t in zip(ids, news, strict=True)]
            row["anchor"] = anchor
            if claim:
                row["claimed_error_type"] = claim
        fh.write(json.dumps(row) + "\n")
print(len(cases), sum(1 for c in cases if c[-1] == "pass"))
