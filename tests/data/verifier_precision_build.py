"""Builds tests/data/verifier_precision_edits.jsonl: a labelled set of one-sentence edits of MEDEC-MS
*validation* notes (never the test CSV), written by hand for issue 15 (verifier precision).

* ``safe``: a paraphrase that keeps every clinical fact (copula/nominalisation, voice, clause order,
  "Of note," / "Notably," openers, negation-cue changes that keep the meaning, number words vs digits
  within the verifier's policy, abbreviations expanded or contracted). The verifier must accept it in
  ``paraphrase`` mode.
* ``unsafe``: one clinical fact changed (drug, dose, number, unit, laterality, negation, diagnosis,
  organism). The verifier must reject it in ``paraphrase`` mode; ``expect_check`` names the check
  whose job it is, ``error_type`` the MEDEC error type an injector would claim for it.

Every row carries its reason. ``before`` is copied from the MEDEC note so the file reads on its own;
the tests check it still matches. Deterministic: the same MEDEC file gives the same JSONL.

    python tests/data/verifier_precision_build.py [--medec-dir ../shared/medec]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OUT = Path(__file__).with_name("verifier_precision_edits.jsonl")
VALIDATION_CSV = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


def opener(prefix: str, keep_case: bool = False):
    """An edit that puts a discourse opener before the sentence; ``keep_case`` keeps the capital of the
    first word (what careless writers do: "Of note, Physical examination ...")."""
    def edit(sentence: str) -> str:
        head = sentence if keep_case else sentence[:1].lower() + sentence[1:]
        return f"{prefix} {head}"
    return edit


# (note id, sentence id, new sentence or an edit function, reason). Rows from notes ms-val-201..298 were
# a second round and rows from ms-val-300..410 a third, each written blind after the previous round's
# fixes to see whether they generalise (round 2: 1/41 safe rejected, 5/42 unsafe accepted; round 3:
# 3/40 and 2/38); the misjudged ones led to the finding-descriptor, hypo-/hyper-, "non-" and
# predicate-negation rules and to two quantity-parser fixes ("10 in intensity", "weight loss").
SAFE: dict[str, list[tuple]] = {
    "copula_nominalisation": [
        ("ms-val-13", 1, "The lesions show an increase in size and are not painful or pruritic.",
         "'are increasing' -> 'show an increase': the same growth, nominalised"),
        ("ms-val-5", 5, "Examination of the groin shows the presence of numerous tender nodules with "
         "purulent discharge.", "'the presence of' adds no fact"),
        ("ms-val-7", 5, "A faint salmon-colored maculopapular rash is present on her trunk and abdomen.",
         "existential 'there is' -> copula 'is present'"),
        ("ms-val-9", 1, "Deep inspiration causes an exacerbation of the chest pain.",
         "'is exacerbated by' -> 'causes an exacerbation of'"),
        ("ms-val-9", 6, "He is weak and lethargic in appearance.", "'appears' -> 'is ... in appearance'"),
        ("ms-val-19", 1, "His history is notable for alcoholic cirrhosis.",
         "'has a history of' -> 'history is notable for'"),
        ("ms-val-23", 2, "Her history is significant for sickle cell disease.",
         "'has a history of' -> 'history is significant for'"),
        ("ms-val-25", 9, "The skin overlying the stump is warm and has good perfusion.",
         "'well-perfused' -> 'has good perfusion'"),
        ("ms-val-31", 9, "The uterus is soft and nontender, and its size is consistent with a 34-week "
         "gestation.", "'consistent in size with' -> 'its size is consistent with'"),
        ("ms-val-37", 17, "The optic disc has a normal appearance.",
         "'appears normal' -> 'has a normal appearance'"),
        ("ms-val-37", 19, "The appearance of the optic disc and macula is normal.",
         "'appear normal' -> 'the appearance ... is normal'"),
        ("ms-val-41", 3, "On auscultation of the lungs, breath sounds are decreased bilaterally.",
         "'shows decreased breath sounds' -> 'breath sounds are decreased'"),
        ("ms-val-49", 4, "Surgical excision of the mass is performed.",
         "'is surgically excised' -> 'surgical excision'"),
        ("ms-val-53", 3, "There is significant enlargement of his spleen.",
         "'is significantly enlarged' -> 'enlargement'"),
        ("ms-val-78", 1, "Her daughter's concern is that she has been forgetful and seems to be walking "
         "more slowly.", "'is concerned because' -> 'concern is that'"),
        ("ms-val-89", 8, "There is grunting with moderate subcostal retractions.",
         "'X and Y are present' -> 'there is X with Y'"),
        ("ms-val-100", 1, "The rash had its onset behind the ears and now has involvement of the trunk and "
         "extremities.", "'started' -> 'had its onset', 'involves' -> 'has involvement of'"),
        ("ms-val-104", 8, "There is tender cervical lymphadenopathy on the left.",
         "'is present' -> 'there is'"),
        ("ms-val-106", 10, "There is a decrease in visual acuity in both eyes.",
         "'is decreased' -> 'a decrease in'"),
        ("ms-val-115", 5, "She has an uncomfortable appearance.",
         "'appears uncomfortable' -> 'has an uncomfortable appearance'"),
        ("ms-val-115", 1, "She has right-sided chest pain that shows an increase on inspiration and has had "
         "a productive cough for the last 12 hours.", "'increases' -> 'shows an increase'"),
        ("ms-val-153", 21, "The patient undergoes intubation and mechanical ventilation.",
         "'is intubated and mechanically ventilated' -> 'undergoes intubation and mechanical ventilation'"),
        ("ms-val-166", 6, "Ultrasonography of the uterus shows an increase in amniotic fluid volume.",
         "'an increased volume' -> 'an increase in volume'"),
        ("ms-val-61", 3, "She reports symptom onset 8 years ago with gradual worsening over time.",
         "'symptoms began ... gotten worse' -> 'symptom onset ... worsening'"),
        ("ms-val-1", 3, "One week ago, the patient received a diagnosis of genitourinary infection and "
         "began antimicrobial therapy.", "'was diagnosed with' -> 'received a diagnosis of'"),
        ("ms-val-29", 9, "The diagnosis was Crohn disease.", "'was diagnosed with' -> 'the diagnosis was'"),
        ("ms-val-33", 12, "The patient received a diagnosis of frontotemporal dementia.",
         "'was diagnosed with' -> 'received a diagnosis of'"),
        ("ms-val-98", 4, "The result of a tuberculin skin test is negative.",
         "'a test is negative' -> 'the result ... is negative'"),
        ("ms-val-11", 2, "He is known to have hypertension and osteoarthritis.",
         "'has' -> 'is known to have'"),
        ("ms-val-143", 5, "Multiple papular elevations are present at the base of hair follicles, and the "
         "palmar and plantar creases are darkened.",
         "'there are X and darkening of Y' -> 'X are present, and Y are darkened'"),
        ("ms-val-57", 12, ", leukocyte count is 11,800/mm3, and the erythrocyte sedimentation rate is 58 "
         "mm/h.", "an article added before a lab name"),
        ("ms-val-120", 2, "She has a fear that the left knee may be unstable upon standing.",
         "'fears' -> 'has a fear that'"),
        ("ms-val-17", 5, "He has disorientation to place and time but recognizes his wife.",
         "'is disoriented to' -> 'has disorientation to'"),
        ("ms-val-201", 3, "Her history is significant for hypertension and hypercholesterolemia.",
         "'has a history of' -> 'history is significant for'"),
        ("ms-val-201", 6, "She takes hydrochlorothiazide and atorvastatin.",
         "'her medications include' -> 'she takes'"),
        ("ms-val-203", 4, "She is currently receiving hormonal replacement therapy for perimenopausal "
         "symptoms.", "'is on' -> 'is receiving'"),
        ("ms-val-210", 0, "A 27-year old woman comes to the physician for a rash with an onset 5 days ago.",
         "'began' -> 'with an onset'"),
        ("ms-val-222", 3, "The mother admits to smoking cigarettes daily.",
         "'admits that she smokes' -> 'admits to smoking'"),
        ("ms-val-239", 2, "The follow-up CT shows an increase in the size of the nodule to 2 cm.",
         "'has increased' -> 'an increase'"),
        ("ms-val-257", 5, "His older sibling was jaundiced in the neonatal period.",
         "'had jaundice' -> 'was jaundiced'"),
        ("ms-val-268", 9, "The uterus is of normal size, and there are no palpable adnexal masses.",
         "'no masses are palpated' -> 'no palpable masses'"),
        ("ms-val-308", 6, "She mentions plans for a backpacking trip through Europe in 2 months.",
         "'she is planning' -> 'plans for'"),
        ("ms-val-354", 8, "On pelvic examination, the cervical os was closed and the uterus was consistent "
         "in size with an 8-week gestation.",
         "'showed a closed os and a uterus consistent' -> 'the os was closed and the uterus was'"),
        ("ms-val-390", 14, "There is a large, tender effusion of the right knee, and the patella is "
         "displaced laterally.", "'the knee shows an effusion' -> 'there is an effusion of the knee'"),
        ("ms-val-394", 0, "A 7-year-old boy presents with a 2-day history of right hip pain.",
         "'pain for the past 2 days' -> 'a 2-day history of pain'"),
        ("ms-val-410", 6, "The delivery of the fetus is followed by retention of the placenta and heavy "
         "vaginal bleeding.", "'placental retention' -> 'retention of the placenta'"),
    ],
    "voice": [
        ("ms-val-1", 8, "Facial flushing and profuse sweating are shown on physical examination.",
         "active -> passive"),
        ("ms-val-1", 9, "Trichomonas vaginalis is indicated by culture tests.", "active -> passive"),
        ("ms-val-9", 11, "Diffuse ST-elevations with depressed PR interval are seen on EKG.",
         "active -> passive"),
        ("ms-val-9", 12, "Left ventricular chamber enlargement with contractile dysfunction is shown by an "
         "echocardiogram.", "active -> passive"),
        ("ms-val-13", 12, "Multiple spindle-shaped cells and leukocyte infiltration are seen on a skin "
         "biopsy.", "active -> passive"),
        ("ms-val-13", 13, "The causal organism was determined to be Human herpesvirus 8.",
         "subject and complement swapped"),
        ("ms-val-17", 7, "Monocytes with intracytoplasmic morulae are seen on a peripheral blood smear.",
         "active -> passive"),
        ("ms-val-19", 6, "Vibrio vulnificus is identified as the causal organism based on the blood "
         "cultures.", "copula -> passive 'is identified as'"),
        ("ms-val-19", 7, "Gram-negative bacilli that ferment lactose were grown from blood cultures.",
         "active -> passive"),
        ("ms-val-21", 9, "A malodorous gray vaginal discharge is seen on pelvic examination.",
         "active -> passive"),
        ("ms-val-23", 6, "Salmonella enterica was grown from a bone biopsy culture, confirming the "
         "diagnosis.", "active -> passive"),
        ("ms-val-29", 7, "A cobblestone mucosa is seen on colonoscopy.", "active -> passive"),
        ("ms-val-49", 3, "A 5 x 4 cm hyperechoic mass in the left lobe of the liver is shown on "
         "ultrasonography.", "active -> passive"),
        ("ms-val-49", 6, "A cavernous hemangioma is confirmed by the liver biopsy.", "active -> passive"),
        ("ms-val-51", 6, "Cerebrospinal fluid is negative on an India ink preparation.", "subject moved"),
        ("ms-val-98", 5, "A 2.1-cm well-circumscribed, calcified nodule in the periphery of the right lower "
         "lung field is shown on a CT scan of the chest.", "active -> passive"),
        ("ms-val-98", 6, "The lesion undergoes a CT-guided biopsy.", "passive -> active"),
        ("ms-val-112", 2, "The noise was heard by his wife, who found him unconscious on the floor.",
         "active -> passive"),
        ("ms-val-137", 15, "A slightly hyperdense mass is shown on a noncontrast head CT.",
         "active -> passive"),
        ("ms-val-168", 3, "Diffuse wheezing over both lung fields and tender subcutaneous nodules on both "
         "elbows are found on physical examination.", "active -> passive"),
        ("ms-val-170", 7, "Migraine headaches are diagnosed in the patient.",
         "patient-subject -> diagnosis-subject"),
        ("ms-val-5", 7, "The causal pathogen is Chlamydia trachomatis.", "subject and complement swapped"),
        ("ms-val-10", 10, "Staphylococcus aureus is the causal organism.", "subject and complement swapped"),
        ("ms-val-18", 7, "Pseudomonas aeruginosa is the causal organism.", "subject and complement swapped"),
        ("ms-val-46", 7, "A congenital cytomegalovirus infection was diagnosed in the patient.",
         "active -> passive"),
        ("ms-val-128", 9, "Bacterial vaginosis was diagnosed in the patient.", "active -> passive"),
        ("ms-val-330", 7, "E. coli (> 100,000 colony forming units/mL) is shown on urine culture.",
         "active -> passive"),
        ("ms-val-205", 8, "On physical examination, her lips and the area around the mouth show a bluish "
         "discoloration.", "existential -> subject-verb"),
        ("ms-val-220", 0, "A 2-cm hypoechoic, homogeneous testicular mass with sharp margins is seen on "
         "ultrasonography of the scrotum.", "active -> passive"),
        ("ms-val-224", 9, "There are no murmurs, rubs, or gallops on cardiac examination.",
         "active -> existential"),
        ("ms-val-228", 7, "The skin and nipple show no changes, and no palpable axillary adenopathy is "
         "present.", "existential -> subject-verb"),
        ("ms-val-228", 11, "A low-grade infiltrating ductal carcinoma is confirmed by core needle biopsy.",
         "active -> passive"),
        ("ms-val-235", 10, "No abnormalities are seen on transvaginal ultrasonography.", "active -> passive"),
        ("ms-val-237", 13, "Dry mucous membranes and diffuse abdominal tenderness are seen on examination.",
         "active -> passive"),
        ("ms-val-298", 6, "On examination there are sunken eyes and dry mucous membranes.",
         "active -> existential"),
        ("ms-val-306", 10, "A slight loss of cortical density and callus formation at the third metatarsal "
         "shaft are shown on an x-ray of the right foot.", "active -> passive"),
        ("ms-val-314", 9, "White plaques that bleed when scraped off are seen on his tongue and buccal "
         "mucosa on oral examination.", "active -> passive"),
        ("ms-val-320", 4, "Punctate, non-blanching macules are seen on the chest on examination.",
         "active -> passive"),
        ("ms-val-329", 15, "Extensive fibrosis and a few scattered plasma cells are seen on bone marrow "
         "aspiration.", "active -> passive"),
        ("ms-val-331", 6, "Leukocyte esterase and nitrite are positive on urine dipstick.",
         "subject and prepositional object swapped"),
        ("ms-val-343", 8, "Atypical squamous cells of undetermined significance are seen on a Pap test.",
         "active -> passive"),
        ("ms-val-350", 7, "On abdominal examination, an entrance wound was seen in the right upper quadrant "
         "above the umbilicus.", "active -> passive"),
        ("ms-val-358", 8, "On cardiac examination, there was a normal S1 and a split S2 during inspiration.",
         "'examination showed' -> 'on examination, there was'"),
    ],
    "clause_reordering": [
        ("ms-val-1", 0, "Because of a 4-hour history of headaches, nausea, and vomiting, a 24-year-old "
         "woman comes to the emergency department.", "reason clause moved to the front"),
        ("ms-val-1", 1, "She has also had recurrent dizziness and palpitations during this time.",
         "time adverbial moved"),
        ("ms-val-1", 2, "While she was at a friend's birthday party, where she had one beer, the symptoms "
         "started.", "temporal clause moved to the front"),
        ("ms-val-5", 1, "About 1 month ago, he had an atraumatic ulceration of his penis that was not "
         "painful and resolved on its own within 1 week.", "time adverbial moved to the front"),
        ("ms-val-7", 0, "Because of fever, chills, abdominal pain, and profuse non-bloody diarrhea, a "
         "14-year-old girl is brought to the physician by her father.", "reason clause moved to the front"),
        ("ms-val-7", 1, "One week ago, when she had several days of low-grade fever and constipation, her "
         "symptoms began.", "time clause moved to the front"),
        ("ms-val-7", 4, "When examination shows diffuse abdominal tenderness and mild hepatosplenomegaly, a "
         "Salmonella typhi infection is confirmed.", "subordinate clause moved to the front"),
        ("ms-val-9", 0, "Because of fevers, congestion, and chest pain for 3 days, a previously healthy "
         "24-year-old male is brought to the emergency department.", "reason clause moved to the front"),
        ("ms-val-9", 7, "When the patient leans forward, cardiac examination shows a scratchy sound best "
         "heard along the left sternal border.", "subordinate clause moved to the front"),
        ("ms-val-11", 0, "Because of excruciating left knee pain for 4 days, a 59-year-old man comes to the "
         "emergency department.", "reason clause moved to the front"),
        ("ms-val-15", 2, "Except for a rash following treatment with erythromycin 20 years ago, he has no "
         "history of serious illness.", "exception clause moved to the front"),
        ("ms-val-15", 5, "At the age of 24 years, his younger brother was diagnosed with Crohn disease.",
         "age adverbial moved to the front"),
        ("ms-val-19", 0, "Because of pain and swelling in his left leg that started after he cut his foot "
         "while swimming in the ocean, a 71-year-old man comes to the emergency department.",
         "reason clause moved to the front"),
        ("ms-val-25", 1, "He had an acute arterial embolism three weeks ago that could not be "
         "revascularized in time to save the leg.", "time adverbial moved"),
        ("ms-val-27", 1, "He occasionally wakes up because of difficulty breathing, and these episodes "
         "frequently occur before sleeping.", "coordinated clauses swapped"),
        ("ms-val-37", 0, "Because of sudden loss of vision in her right eye that occurred 50 minutes ago, a "
         "62-year-old woman is brought to the emergency department.", "reason clause moved to the front"),
        ("ms-val-37", 2, "In the past, she had several episodes of loss of vision, but her vision improved "
         "following treatment with glucocorticoids.", "time adverbial moved to the front"),
        ("ms-val-39", 1, "While playing football, the pain began when his finger got caught in the jersey "
         "of another player who forcefully pulled away.", "participle clause moved to the front"),
        ("ms-val-43", 3, "At the age of 39 years, his father died of colon cancer.",
         "age adverbial moved to the front"),
        ("ms-val-57", 2, "He had swelling and pain in his left ankle joint five days ago, which has since "
         "resolved.", "time adverbial moved"),
        ("ms-val-69", 3, "She states the pain improves throughout the day and is worse in the morning.",
         "coordinated predicates swapped"),
        ("ms-val-100", 4, "He was treated for tonsillitis two weeks ago, and it resolved with penicillin "
         "therapy.", "time adverbial moved, relative clause -> coordinate"),
        ("ms-val-104", 1, "He developed a rash on his trunk two days ago.",
         "time adverbial moved to the end"),
        ("ms-val-106", 4, "She was treated for an infection of her eyes one year ago.",
         "time adverbial moved to the end"),
        ("ms-val-112", 3, "After 30 seconds, he regained consciousness and was able to talk normally with "
         "his wife immediately.", "time adverbial moved to the front"),
        ("ms-val-115", 0, "An obese 57-year-old woman has fever, chills, and a headache three days after "
         "undergoing an open cholecystectomy.", "time clause moved to the end"),
        ("ms-val-160", 4, "After examination of the oral cavity shows a single ulcer near the vermillion "
         "border, squamous cell carcinoma is diagnosed.", "subordinate clause moved to the front"),
        ("ms-val-106", 14, "The abdomen is not distended and is soft.", "coordinated predicates swapped"),
        ("ms-val-37", 10, "The direct pupillary reflex is absent in the right eye and brisk in the left eye.",
         "coordinated predicates swapped; each side keeps its finding"),
        ("ms-val-47", 6, "In both eyes, slit lamp examination showed cloudy lenses.",
         "place adverbial moved to the front"),
        ("ms-val-201", 0, "Because of a 6-month history of fatigue, a 75-year-old woman comes to the "
         "physician.", "reason clause moved to the front"),
        ("ms-val-208", 1, "She was born to a 22-year-old woman at 39 weeks' gestation.",
         "adverbials swapped"),
        ("ms-val-208", 8, "Both eyes have mucopurulent discharge, and there is mild eyelid swelling.",
         "subject moved"),
        ("ms-val-247", 2, "He reports headache and dizziness, as well as occasional cough.",
         "list regrouped"),
        ("ms-val-262", 5, "The patient has been healthy and was born at term.",
         "coordinated predicates swapped"),
        ("ms-val-283", 1, "She was diagnosed with carcinoma of the left breast one month ago.",
         "time adverbial moved"),
        ("ms-val-292", 15, "Due to severe pain, he is unable to lie recumbent.", "reason moved to the front"),
        ("ms-val-300", 1, "She was diagnosed with asthma two months ago after a 1-year history of a chronic "
         "cough and dyspnea with exertion.", "time adverbial moved"),
        ("ms-val-314", 2, "Around 8 months ago, he was diagnosed with non-Hodgkin lymphoma.",
         "time adverbial moved to the front"),
        ("ms-val-329", 2, "He has had a 5.6-kg (12-lb) weight loss over the past three months.",
         "time adverbial moved to the end; '3' -> 'three'"),
        ("ms-val-335", 4, "Two years ago, she underwent a total left-sided knee arthroplasty because of "
         "osteoarthritis.", "time adverbial moved to the front; '2' -> 'Two'"),
        ("ms-val-337", 9, "The left scrotum is swollen, firm, and erythematous.",
         "list of findings reordered"),
        ("ms-val-339", 1, "The patient reports that the headache began while she was sitting at her desk.",
         "main and temporal clause swapped"),
        ("ms-val-352", 4, "Two years ago, he was diagnosed with hypertension and was started on "
         "hydrochlorothiazide.", "time adverbial moved to the front; '2' -> 'Two'"),
        ("ms-val-356", 13, "The abdomen is soft, nontender, and distended.", "list of findings reordered"),
        ("ms-val-363", 0, "Because of a 3-day history of generalized rash, a 4-year-old boy is brought to "
         "the physician by his father.", "reason clause moved to the front"),
        ("ms-val-365", 6, "Twelve years ago, her sister was diagnosed with antiphospholipid syndrome.",
         "time adverbial moved to the front; '12' -> 'Twelve'"),
        ("ms-val-384", 6, "Examination shows counting fingers at 5 feet in the right eye and visual acuity "
         "of 20/20 in the left eye.", "coordinated findings swapped; each eye keeps its finding"),
        ("ms-val-400", 2, "Three months ago, his younger sibling was treated for pediculosis capitis.",
         "time adverbial moved to the front; '3' -> 'Three'"),
        ("ms-val-402", 2, "He has had a runny nose, a cough, and red, crusty eyes over the past week.",
         "time adverbial moved to the end"),
        ("ms-val-404", 2, "Apart from an upper respiratory tract infection 6 months ago, he has been "
         "healthy.", "exception clause moved to the front"),
    ],
    "opener": [
        ("ms-val-1", 8, opener("Of note,", keep_case=True),
         "discourse opener; the capital of 'Physical' kept"),
        ("ms-val-5", 6, opener("Of note,"), "discourse opener"),
        ("ms-val-9", 8, opener("Notably,"), "discourse opener"),
        ("ms-val-9", 10, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-13", 3, opener("Notably,"), "discourse opener"),
        ("ms-val-15", 7, opener("Of note,"), "discourse opener"),
        ("ms-val-15", 13, opener("Notably,", keep_case=True), "discourse opener before the eponym 'Gram'"),
        ("ms-val-19", 4, opener("Of note,"), "discourse opener"),
        ("ms-val-21", 5, opener("Notably,"), "discourse opener"),
        ("ms-val-21", 10, opener("Of note,"), "discourse opener"),
        ("ms-val-25", 10, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-27", 4, opener("Of note,"), "discourse opener"),
        ("ms-val-27", 8, opener("Notably,"), "discourse opener"),
        ("ms-val-31", 2, opener("Of note,"), "discourse opener"),
        ("ms-val-33", 7, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-33", 11, opener("Notably,"), "discourse opener"),
        ("ms-val-37", 15, opener("Of note,"), "discourse opener"),
        ("ms-val-43", 6, opener("Notably,"), "discourse opener"),
        ("ms-val-47", 2, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-47", 7, opener("Of note,"), "discourse opener"),
        ("ms-val-51", 6, opener("Of note,"), "discourse opener before the eponym 'India'"),
        ("ms-val-57", 10, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-65", 9, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-83", 12, opener("Of note,"), "discourse opener"),
        ("ms-val-85", 4, opener("Notably,"), "discourse opener"),
        ("ms-val-85", 12, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-89", 9, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-96", 9, opener("Of note,"), "discourse opener"),
        ("ms-val-100", 6, opener("Notably,"), "discourse opener"),
        ("ms-val-102", 9, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-104", 12, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-106", 11, opener("In addition,"), "discourse opener"),
        ("ms-val-137", 10, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-147", 9, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-151", 11, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-162", 4, opener("Additionally,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-201", 12, opener("Of note,"), "discourse opener"),
        ("ms-val-216", 10, opener("Notably,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-224", 12, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-255", 7, opener("Notably,"), "discourse opener"),
        ("ms-val-318", 14, opener("Of note,", keep_case=True), "discourse opener; capital kept"),
        ("ms-val-326", 9, opener("Notably,"), "discourse opener"),
        ("ms-val-352", 14, opener("Of note,"), "discourse opener"),
    ],
    "negation_cue": [
        ("ms-val-98", 1, "He denies any history of major medical illness.",
         "'has no history' -> 'denies any history'"),
        ("ms-val-13", 2, "He has no lymphadenopathy.", "'does not have' -> 'has no'"),
        ("ms-val-15", 6, "The patient denies smoking.", "'does not smoke' -> 'denies smoking'"),
        ("ms-val-21", 1, "She denies pain or pruritus.", "'has no' -> 'denies'"),
        ("ms-val-21", 6, "She has no history of serious illness and does not take any medications.",
         "'takes no' -> 'does not take any'"),
        ("ms-val-23", 1, "There is no history of trauma to the ankle.", "'she has no' -> 'there is no'"),
        ("ms-val-27", 8, "An x-ray of the chest is without abnormalities.", "'shows no' -> 'is without'"),
        ("ms-val-35", 8, "She denies suicidal ideation.", "'has no' -> 'denies'"),
        ("ms-val-37", 1, "She has no eye pain.", "'does not have' -> 'has no'"),
        ("ms-val-45", 5, "She currently takes no medications.", "'is not taking any' -> 'takes no'"),
        ("ms-val-63", 5, "He denies use of illicit drugs or alcohol.", "'does not use' -> 'denies use of'"),
        ("ms-val-67", 4, "She has no personal or family history of serious illness.",
         "'there is no' -> 'she has no'"),
        ("ms-val-67", 5, "She denies smoking or drinking alcohol.", "'does not' -> 'denies'"),
        ("ms-val-71", 4, "He denies drinking alcohol.", "'does not' -> 'denies'"),
        ("ms-val-74", 3, "She has had no dental procedures in the past 5 years.",
         "'has not undergone any' -> 'has had no'"),
        ("ms-val-74", 10, "No cervical or submandibular lymphadenopathy is present.",
         "'there is no' -> 'no ... is present'"),
        ("ms-val-81", 2, "She denies fevers or weight loss.", "'has not had' -> 'denies'"),
        ("ms-val-112", 4, "He had no urinary incontinence.", "'there was no' -> 'he had no'"),
        ("ms-val-143", 3, "He has no associated itching, redness, or discharge.",
         "'there is no' -> 'he has no'"),
        ("ms-val-147", 1, "She denies any feeling of pain, pressure, or sensation of a foreign body in the "
         "right eye.", "'has no' -> 'denies any'"),
        ("ms-val-147", 4, "She neither smokes nor drinks alcohol.", "'does not ... or' -> 'neither ... nor'"),
        ("ms-val-147", 5, "She denies illicit drug use.", "'does not use' -> 'denies ... use'"),
        ("ms-val-151", 10, "He has no auditory, visual, or tactile hallucinations.", "'denies' -> 'has no'"),
        ("ms-val-158", 3, "She has no children.", "'does not have any' -> 'has no'"),
        ("ms-val-158", 5, "On exam, there are no palpable masses, and the patient has no erythema or "
         "induration.", "'does not have any' -> 'has no'"),
        ("ms-val-15", 13, "Gram stain of a urethral swab shows neutrophils without organisms.",
         "'but no' -> 'without'"),
        ("ms-val-96", 9, "The fetal heart rate is reactive without decelerations.", "'with no' -> 'without'"),
        ("ms-val-9", 2, "He does not take any medications.", "'takes no' -> 'does not take any'"),
        ("ms-val-15", 3, "The patient is not taking any medications.", "'takes no' -> 'is not taking any'"),
        ("ms-val-29", 4, "Abdominal examination shows mild tenderness to palpation in the right lower "
         "quadrant with no guarding or rebound.", "'without' -> 'with no'"),
        ("ms-val-112", 9, "No abnormalities are shown on an electrocardiogram.",
         "'shows no abnormalities' -> passive"),
        ("ms-val-210", 3, "She denies any personal history of serious illness.", "'has no' -> 'denies any'"),
        ("ms-val-212", 7, "She denies drinking, smoking, or using illicit drugs.", "'does not' -> 'denies'"),
        ("ms-val-271", 10, "The abdomen is soft and nontender without organomegaly.",
         "'with no' -> 'without'"),
        ("ms-val-288", 2, "He denies fever, hematuria, or burning pain on micturition.",
         "'has no' -> 'denies'"),
        ("ms-val-310", 6, "He denies alcohol or illicit drug use.",
         "'does not drink alcohol or use' -> 'denies alcohol or ... use'"),
        ("ms-val-368", 7, "He states that he has thought about ending his life, but he denies any specific "
         "plan.", "'has no' -> 'denies any'"),
        ("ms-val-394", 7, "On physical exam there is no swelling or warmth surrounding the joint.",
         "'reveals no' -> 'there is no'"),
    ],
    "number_words": [
        ("ms-val-1", 2, "The symptoms started while she was at a friend's birthday party, where she had 1 "
         "beer.", "'one' -> '1'"),
        ("ms-val-7", 1, "Her symptoms began 1 week ago, when she had several days of low-grade fever and "
         "constipation.", "'one' -> '1'"),
        ("ms-val-7", 2, "She returned from Indonesia two weeks ago, where she spent the summer with her "
         "grandparents.", "'2' -> 'two'"),
        ("ms-val-9", 0, "A previously healthy 24-year-old male is brought to the emergency department "
         "because of fevers, congestion, and chest pain for three days.", "'3' -> 'three'"),
        ("ms-val-11", 1, "He underwent a total knee arthroplasty of his left knee joint four months ago.",
         "'4' -> 'four'"),
        ("ms-val-13", 9, "There are 2 similar lesions on the chest.", "'two' -> '2'"),
        ("ms-val-15", 4, "He is sexually active with 1 male and 1 female partner; they use condoms "
         "inconsistently.", "'one' -> '1'"),
        ("ms-val-15", 7, "He drinks 1 to 2 beers on weekends.", "'one to two' -> '1 to 2'"),
        ("ms-val-17", 0, "A 32-year-old man is brought to the physician by his wife for a three-day history "
         "of fever, headaches, and myalgias.", "'3-day' -> 'three-day'"),
        ("ms-val-21", 3, "Her last menstrual period was two weeks ago.", "'2' -> 'two'"),
        ("ms-val-21", 5, "She had a normal pap smear three months ago.", "'3' -> 'three'"),
        ("ms-val-25", 4, "He has smoked 1 pack of cigarettes daily for the past thirty years.",
         "'one' -> '1', '30' -> 'thirty'"),
        ("ms-val-29", 1, "He returned from a two-week trip to the Dominican Republic two months ago.",
         "'2' -> 'two'"),
        ("ms-val-29", 3, "Examination shows 3 painful 1.5-cm ulcers in the mouth.",
         "'three' -> '3', adjectives reordered"),
        ("ms-val-31", 3, "3 weeks ago she was diagnosed with iron deficiency anemia.", "'Three' -> '3'"),
        ("ms-val-33", 2, "He was arrested three weeks ago while trying to kiss strangers on the street.",
         "'3' -> 'three'"),
        ("ms-val-35", 5, "She has three children with whom she still keeps regular contact and regularly "
         "attends church services with her friends.", "'3' -> 'three'"),
        ("ms-val-41", 2, "He has a history of atopic dermatitis and has smoked 1 pack of cigarettes daily "
         "for thirty years.", "'one' -> '1', '30' -> 'thirty'"),
        ("ms-val-65", 5, "She has smoked a pack of cigarettes daily for fifteen years.", "'15' -> 'fifteen'"),
        ("ms-val-78", 9, "She recalls two out of three words immediately and one out of three after 5 "
         "minutes.", "digits <-> words both ways"),
        ("ms-val-81", 5, "She has smoked one pack of cigarettes daily for thirty-seven years.",
         "'37' -> 'thirty-seven'"),
        ("ms-val-91", 1, "She has temper outbursts 6 or 7 times per week, which last anywhere between 5 "
         "minutes to half an hour or until she becomes tired.", "'six or seven' -> '6 or 7'"),
        ("ms-val-89", 11, "10 minutes later, his pulse is", "'Ten' -> '10'"),
        ("ms-val-100", 2, "Over the past four days, he has had mild sore throat, red, itchy eyes, and "
         "headache.", "'4' -> 'four'"),
        ("ms-val-112", 0, "A 53-year-old man is brought to the emergency department following an episode of "
         "loss of consciousness one hour ago.", "'1' -> 'one'"),
        ("ms-val-104", 2, "He returned from a family hiking trip to Montana one week ago.", "'1' -> 'one'"),
        ("ms-val-17", 1, "He returned from a camping trip in Oklahoma ten days ago.", "'10' -> 'ten'"),
        ("ms-val-224", 3, "The patient has smoked one pack of cigarettes daily for the past fifty years.",
         "'1' -> 'one', '50' -> 'fifty'"),
        ("ms-val-235", 3, "Her menses occur at regular 28-day intervals and last five days.",
         "'5' -> 'five'"),
        ("ms-val-241", 5, "5 minutes later, he becomes unresponsive.", "'Five' -> '5'"),
        ("ms-val-241", 8, "He smoked 1 pack of cigarettes daily for 40 years but quit two weeks ago for "
         "surgery.", "'one' -> '1', '2' -> 'two'"),
        ("ms-val-259", 3, "She has smoked two packs of cigarettes daily for thirty years.",
         "'2' -> 'two', '30' -> 'thirty'"),
        ("ms-val-318", 5, "The patient has smoked 2 packs of cigarettes daily for thirty years.",
         "'two' -> '2', '30' -> 'thirty'"),
        ("ms-val-326", 2, "He has smoked 1 pack of cigarettes daily for the past forty years.",
         "'one' -> '1', '40' -> 'forty'"),
    ],
    "abbreviation": [
        ("ms-val-9", 11, "Electrocardiogram shows diffuse ST-elevations with depressed PR interval.",
         "'EKG' -> 'Electrocardiogram'"),
        ("ms-val-13", 0, "A 45-year-old man with human immunodeficiency virus comes to the physician "
         "because of multiple lesions on his lower extremity.", "'HIV' spelled out"),
        ("ms-val-51", 5, "A computed tomography scan of the head with contrast shows multiple "
         "ring-enhancing lesions in the basal ganglia and subcortical white matter, confirming cerebral "
         "toxoplasmosis.", "'CT' spelled out"),
        ("ms-val-98", 5, "A computed tomography scan of the chest shows a 2.1-cm well-circumscribed, "
         "calcified nodule in the periphery of the right lower lung field.", "'CT' spelled out"),
        ("ms-val-112", 9, "An ECG shows no abnormalities.", "'electrocardiogram' -> 'ECG'"),
        ("ms-val-139", 7, "An electrocardiogram shows left axis deviation and meets criteria for left "
         "ventricular hypertrophy.", "'ECG' spelled out"),
        ("ms-val-137", 15, "A noncontrast head computed tomography is performed and shows a slightly "
         "hyperdense mass.", "'CT' spelled out"),
        ("ms-val-147", 11, "Magnetic resonance imaging of the brain shows no abnormalities.",
         "'An MRI' spelled out"),
        ("ms-val-81", 4, "She has HTN, hyperlipidemia, and GERD.",
         "standard abbreviations for two diagnoses"),
        ("ms-val-37", 3, "She has CAD, hypertension, type 2 diabetes mellitus, and MS.",
         "standard abbreviations for two diagnoses"),
        ("ms-val-81", 7, "She is 178 cm (5 ft 10 in) tall and weighs 89 kg (207 lbs); body mass index is "
         "29.7 kg/m2.", "'BMI' spelled out"),
        ("ms-val-45", 7, "You note that her BMI and height have both decreased since her last annual visit.",
         "'body mass index (BMI)' -> 'BMI'"),
        ("ms-val-23", 4, "Her temperature is 38.4 C (101.2 F) and HR is 112/min.", "'pulse' -> 'HR'"),
        ("ms-val-17", 6, "Laboratory studies show a WBC count of 1,700/mm3 and a platelet count of "
         "46,000/mm3.", "'leukocyte count' -> 'WBC count'"),
        ("ms-val-53", 4, "Laboratory studies show an Hb concentration of 8.3 g/dL, a WBC count of "
         "81,000/mm3, and a platelet count of 35,600/mm3.",
         "'hemoglobin' -> 'Hb', 'leukocyte count' -> 'WBC count'"),
        ("ms-val-89", 6, "Pulse oximetry on room air shows an SpO2 of 90%.", "'oxygen saturation' -> 'SpO2'"),
        ("ms-val-57", 12, ", leukocyte count is 11,800/mm3, and ESR is 58 mm/h.",
         "'erythrocyte sedimentation rate' -> 'ESR'"),
        ("ms-val-61", 8, "Diagnosis is age-related macular degeneration (AMD).",
         "abbreviation added in parentheses"),
        ("ms-val-37", 20, "Patient is diagnosed with central retinal artery occlusion (CRAO).",
         "abbreviation added in parentheses"),
        ("ms-val-89", 14, "Patient is diagnosed with respiratory distress syndrome (RDS).",
         "abbreviation added in parentheses"),
        ("ms-val-145", 2, "Patient is experiencing PTSD.", "'post-traumatic stress disorder' -> 'PTSD'"),
        ("ms-val-10", 10, "The causal organism is S. aureus.", "genus abbreviated"),
        ("ms-val-2", 24, "Pathology confirms S. pneumoniae is the causal organism.", "genus abbreviated"),
        ("ms-val-9", 3, "His temp is 37.5 C (99.5 F), BP is",
         "'temperature' -> 'temp', 'blood pressure' -> 'BP'"),
        ("ms-val-69", 7, "mmHg, HR is 70/min, RR is 14/min, and oxygen saturation is 97% on room air.",
         "'pulse' -> 'HR', 'respirations' -> 'RR'"),
        ("ms-val-153", 22, "Infusion of 0.9% NaCl is begun.", "'0.9% saline' -> '0.9% NaCl'"),
    ],
    "synonym": [
        ("ms-val-214", 5, "An initial chest x-ray is unremarkable.", "'radiograph' -> 'x-ray'"),
        ("ms-val-218", 3, "Before the operation, the patient had daily bowel movements without "
         "abnormalities.", "'prior to' -> 'before'"),
        ("ms-val-226", 1, "At this visit, she feels well and reports no complaints.",
         "'has no complaints' -> 'reports no'"),
        ("ms-val-281", 1, "The pain is sharp and gets worse with deep inspiration.",
         "'worsens' -> 'gets worse'"),
        ("ms-val-300", 9, "Pulmonary function tests show an FEV1 of 78% of expected.",
         "'a FEV1' -> 'an FEV1'"),
        ("ms-val-306", 2, "At first, the pain only occurred while running, but now it is also present at "
         "rest.", "'Initially' -> 'At first'"),
        ("ms-val-310", 1, "He rates the intensity of the pain as 10 out of 10.",
         "'describes the pain as ... in intensity' -> 'rates the intensity ... as'"),
        ("ms-val-341", 2, "She currently takes paroxetine, dextroamphetamine, and naproxen during her "
         "menses.", "'is currently on' -> 'currently takes'"),
        ("ms-val-374", 7, "His screening colonoscopy at the age of 55 was normal.",
         "'at age 55' -> 'at the age of 55'"),
    ],
}

UNSAFE: dict[str, list[tuple]] = {
    "drug": [
        ("ms-val-11", 3, "Current medications include glucosamine, amlodipine, and naproxen.",
         "meloxicam -> naproxen"),
        ("ms-val-13", 5, "Medications include abacavir, raltegravir, and lamivudine.",
         "dolutegravir -> raltegravir"),
        ("ms-val-23", 3, "Current medications include methotrexate and acetaminophen for pain.",
         "hydroxyurea -> methotrexate"),
        ("ms-val-25", 5, "His current medications are metformin and prophylactic subcutaneous enoxaparin.",
         "heparin -> enoxaparin"),
        ("ms-val-37", 6, "Current medications include aspirin, metoprolol, lisinopril, atorvastatin, "
         "metformin, glyburide, and weekly intramuscular beta-interferon injections.",
         "glipizide -> glyburide"),
        ("ms-val-61", 5, "Current medications include glyburide and losartan.", "lisinopril -> losartan"),
        ("ms-val-67", 6, "Medications include ferrous sulfate and a multivitamin.",
         "folic acid -> ferrous sulfate"),
        ("ms-val-78", 5, "Current medications include lisinopril and simvastatin.",
         "atorvastatin -> simvastatin"),
        ("ms-val-81", 6, "Current medications include aspirin, atorvastatin, ramipril, metoprolol, and "
         "pantoprazole.", "esomeprazole -> pantoprazole"),
        ("ms-val-83", 2, "Current medications are lithium, olanzapine, and levothyroxine.",
         "haloperidol -> olanzapine"),
        ("ms-val-100", 4, "Two weeks ago, he was treated for tonsillitis that resolved with amoxicillin "
         "therapy.", "penicillin -> amoxicillin"),
        ("ms-val-102", 8, "Current medications include clopidogrel, atorvastatin, and metformin.",
         "aspirin -> clopidogrel"),
        ("ms-val-106", 6, "Current medications include enalapril, metoprolol, metformin, and insulin.",
         "captopril -> enalapril"),
        ("ms-val-147", 2, "She has a history of major depressive disorder treated with sertraline.",
         "fluoxetine -> sertraline"),
        ("ms-val-15", 2, "He has no history of serious illness, except for a rash following treatment with "
         "azithromycin 20 years ago.", "erythromycin -> azithromycin"),
        ("ms-val-69", 8, "The patient is instructed to take naproxen and acetaminophen for her joint pain.",
         "ibuprofen -> naproxen"),
        ("ms-val-74", 5, "Her only medication is a salmeterol inhaler.", "albuterol -> salmeterol"),
        ("ms-val-160", 3, "His current medications include captopril and glipizide.",
         "metformin -> glipizide"),
        ("ms-val-168", 2, "Current medications include an albuterol inhaler and montelukast.",
         "inhaled corticosteroid -> montelukast"),
        ("ms-val-81", 6, "Current medications include aspirin, atorvastatin, ramipril, and esomeprazole.",
         "metoprolol dropped"),
        ("ms-val-61", 5, "Current medications include glyburide, lisinopril, and metformin.",
         "metformin added"),
        ("ms-val-198", 2, "Three weeks ago, she was diagnosed with atrial fibrillation and started on "
         "apixaban.", "warfarin -> apixaban"),
        ("ms-val-201", 6, "Her medications include chlorthalidone and atorvastatin.",
         "hydrochlorothiazide -> chlorthalidone"),
        ("ms-val-226", 4, "She currently uses her fluticasone inhaler once a week and takes a prenatal "
         "vitamin.", "albuterol -> fluticasone"),
        ("ms-val-233", 11, "Intravenous vancomycin and cefepime were administered to the patient after labs "
         "revealed the following.", "ceftriaxone -> cefepime"),
        ("ms-val-247", 16, "In addition to oxygen supplementation with a non-rebreather mask, intravenous "
         "sodium thiosulfate was administered to the patient.", "hydroxycobalamin -> sodium thiosulfate"),
        ("ms-val-316", 19, "Trial of desmopressin therapy prescribed given urine osmolality does not change "
         "after 3 hours despite no fluid intake or after administration of desmopressin.",
         "hydrochlorothiazide -> desmopressin"),
        ("ms-val-341", 2, "She is currently on sertraline, dextroamphetamine, and naproxen during her "
         "menses.", "paroxetine -> sertraline"),
        ("ms-val-352", 4, "He was diagnosed with hypertension 2 years ago and was started on lisinopril.",
         "hydrochlorothiazide -> lisinopril"),
        ("ms-val-378", 13, "IV clindamycin and vancomycin is administered after the pelvic ultrasonography "
         "shows an empty uterus.", "gentamicin -> vancomycin"),
        ("ms-val-382", 5, "Based on the following test results, tacrolimus was administered.",
         "cyclosporine -> tacrolimus"),
        ("ms-val-394", 12, "The patient's CRP is 0.10 mg/L. Naproxen was started.", "ibuprofen -> naproxen"),
    ],
    "dose": [
        ("ms-val-229", 7, "After the administration of 1 mg of edrophonium, her ptosis resolves, and her "
         "proximal muscle strength improves to 5/5.", "10 mg -> 1 mg"),
        ("ms-val-198", 3, "Her only other medication is 2 g of acetaminophen daily for osteoarthritis of "
         "her knees.", "1 g -> 2 g"),
        ("ms-val-197", 3, "Her only other medication is 1 g of acetaminophen four times daily for "
         "osteoarthritis of her knees.", "daily -> four times daily"),
        ("ms-val-181", 1, "During the procedure, she was transfused 5 units of packed red blood cells.",
         "3 units -> 5 units"),
        ("ms-val-311", 2, "The ventilator is at a FiO2 of 60%, tidal volume is 920 mL, and positive "
         "end-expiratory pressure is 5 cm H2O.", "FiO2 100% -> 60%"),
        ("ms-val-311", 2, "The ventilator is at a FiO2 of 100%, tidal volume is 520 mL, and positive "
         "end-expiratory pressure is 5 cm H2O.", "tidal volume 920 -> 520 mL"),
        ("ms-val-89", 13, "Pulse oximetry on 40% oxygen shows an oxygen saturation of 90%.",
         "60% -> 40% oxygen"),
        ("ms-val-153", 22, "Infusion of 3% saline is begun.", "0.9% -> 3% saline"),
        ("ms-val-464", 4, "Laboratory studies showed a hemoglobin concentration of 14.8 g/dL, leukocyte "
         "count of 10,300/mm3, platelet count of 175,000/mm3, and blood glucose concentration of 77 mg/dL. "
         "Infusion of 0.45% saline was begun.", "0.9% -> 0.45% saline"),
        ("ms-val-226", 4, "She currently uses her albuterol inhaler three times a day and takes a prenatal "
         "vitamin.", "once a week -> three times a day"),
        ("ms-val-37", 6, "Current medications include aspirin, metoprolol, lisinopril, atorvastatin, "
         "metformin, glipizide, and daily intramuscular beta-interferon injections.", "weekly -> daily"),
        ("ms-val-25", 5, "His current medications are metformin and therapeutic intravenous heparin.",
         "prophylactic subcutaneous -> therapeutic intravenous heparin"),
        ("ms-val-335", 6, "Her current medications include enalapril, metoprolol, high-dose aspirin, and a "
         "multivitamin.", "low-dose -> high-dose aspirin"),
        ("ms-val-198", 2, "Three weeks ago, she was diagnosed with atrial fibrillation and started on "
         "warfarin 10 mg daily.", "a dose added"),
        ("ms-val-292", 5, "He has hypertension treated with enalapril 40 mg twice daily.", "a dose added"),
        ("ms-val-329", 17, "Patient was started on ruxolitinib 20 mg twice daily.", "a dose added"),
        ("ms-val-560", 29, "A lumbar puncture is performed; cerebrospinal fluid analysis shows a leukocyte "
         "count of 2/mm3, a glucose concentration of 60 mg/dL, and a protein concentration of 91 mg/dL. "
         "Intravenous immunoglobulin (IVIG) was given at 2 g/kg.", "an IVIG dose added"),
        ("ms-val-226", 4, "She currently uses her albuterol inhaler twice a week and takes a prenatal "
         "vitamin.", "once -> twice a week"),
        ("ms-val-233", 7, "Pulse oximetry on 6 L of oxygen via nasal cannula shows an oxygen saturation of "
         "91%.", "2 L -> 6 L oxygen"),
    ],
    "number": [
        ("ms-val-1", 0, "A 34-year-old woman comes to the emergency department because of a 4-hour history "
         "of headaches, nausea, and vomiting.", "age 24 -> 34"),
        ("ms-val-5", 4, "His temperature is 39.5 C (103.1 F).", "temperature raised"),
        ("ms-val-7", 2, "She returned from Indonesia 6 weeks ago, where she spent the summer with her "
         "grandparents.", "2 -> 6 weeks"),
        ("ms-val-9", 5, "Hg, pulse is 90/min, and respirations are 12/min.", "pulse 130 -> 90"),
        ("ms-val-13", 9, "There are five similar lesions on the chest.", "two -> five lesions"),
        ("ms-val-17", 6, "Laboratory studies show a leukocyte count of 1,700/mm3 and a platelet count of "
         "146,000/mm3.", "platelets 46,000 -> 146,000"),
        ("ms-val-21", 10, "The pH of the discharge is 4.0.", "pH 5.0 -> 4.0"),
        ("ms-val-25", 4, "He has smoked one pack of cigarettes daily for the past 10 years.",
         "30 -> 10 years"),
        ("ms-val-29", 3, "Examination shows three 3.5-cm, painful ulcers in the mouth.", "1.5 -> 3.5 cm"),
        ("ms-val-33", 10, "Mini-Mental State Examination score is 18/30.", "MMSE 28 -> 18"),
        ("ms-val-35", 4, "She has lost 8 kg (17.6 lb) over the past month.", "3 -> 8 kg"),
        ("ms-val-41", 4, "Spirometry shows an FVC of 58% and an FEV1/FVC ratio of 95%.", "FVC 78% -> 58%"),
        ("ms-val-49", 2, "Abdominal examination shows mild right upper quadrant tenderness and a liver span "
         "of 10 cm.", "liver span 16 -> 10 cm"),
        ("ms-val-53", 4, "Laboratory studies show a hemoglobin concentration of 13.3 g/dL, a leukocyte "
         "count of 81,000/mm3, and a platelet count of 35,600/mm3.", "hemoglobin 8.3 -> 13.3"),
        ("ms-val-57", 16, "Analysis of the synovial fluid shows a leukocyte count of 61,350/mm3 with 87% "
         "neutrophils.", "synovial leukocytes and neutrophil share raised"),
        ("ms-val-78", 9, "She recalls 3 out of 3 words immediately and 1 out of 3 after five minutes.",
         "2 -> 3 words recalled"),
        ("ms-val-81", 7, "She is 178 cm (5 ft 10 in) tall and weighs 89 kg (207 lbs); BMI is 24.7 kg/m2.",
         "BMI 29.7 -> 24.7"),
        ("ms-val-96", 0, "A 37-year-old woman, gravida 4, para 3, at 25 weeks' gestation is admitted to the "
         "hospital in active labor.", "35 -> 25 weeks' gestation"),
        ("ms-val-104", 4, "His temperature is 39.8 C (103.6 F), pulse is 111/min, and blood pressure is "
         "76/40 mm", "blood pressure lowered"),
        ("ms-val-112", 3, "He regained consciousness after 3 seconds and was able to talk normally with his "
         "wife immediately.", "30 -> 3 seconds"),
        ("ms-val-91", 1, "She has temper outbursts one or two times per week, which last anywhere between 5 "
         "minutes to half an hour or until she becomes tired.", "six or seven -> one or two"),
        ("ms-val-15", 7, "He drinks six to eight beers on weekends.", "one to two -> six to eight beers"),
        ("ms-val-78", 6, "Her temperature is 36.8 C (98.2 F), pulse is 15/min, respirations are 84/min, and "
         "blood pressure is 139/83", "pulse and respiration values swapped between their labels"),
        ("ms-val-208", 1, "She was born at 32 weeks' gestation to a 22-year-old woman.", "39 -> 32 weeks"),
        ("ms-val-218", 6, "His temperature is 36 C (96.8 F), pulse is 110/min, and", "temperature changed"),
        ("ms-val-222", 3, "The mother admits that she smokes cigarettes weekly.", "daily -> weekly"),
        ("ms-val-241", 14, "Pulse oximetry shows an oxygen saturation of 93%.", "73% -> 93%"),
        ("ms-val-245", 1, "Apgar scores are 3 and 9 at 1 and 5 minutes, respectively.", "Apgar 8 -> 3"),
        ("ms-val-268", 0, "A 30-year-old woman, gravida 2, para 1, abortus 1, comes to the physician "
         "because of failure to conceive for 2 months.", "12 -> 2 months"),
        ("ms-val-281", 8, "Pleural fluid obtained via diagnostic thoracocentesis shows a pH of 7.4 and "
         "glucose concentration of 55 mg/dL.", "pH 7.1 -> 7.4"),
        ("ms-val-292", 10, "Neurologic examination shows 5/5 strength of the lower extremities.",
         "3/5 -> 5/5"),
        ("ms-val-273", 1, "His temperature prior to arrival was 38.0 C (100.4 F).", "temperature changed"),
        ("ms-val-300", 9, "Pulmonary function tests show a FEV1 of 48% of expected.", "FEV1 78% -> 48%"),
        ("ms-val-318", 5, "The patient has smoked two packs of cigarettes daily for 3 years.",
         "30 -> 3 years"),
        ("ms-val-324", 3, "His pulse is 72/min, and blood pressure is 118/75 mm", "blood pressure lowered"),
        ("ms-val-339", 10, "Her temperature is 38.2 C (100.8 F), pulse is 89/min, respirations are 19/min, "
         "and blood pressure is 110/70 mm", "blood pressure lowered"),
        ("ms-val-348", 3, "Her temperature is 39.6 C (103.3 F), pulse is 128/min, and", "temperature raised"),
        ("ms-val-376", 3, "Thirteen days after receiving these vaccinations, the child developed a fever up "
         "to 38.5 C (101.3 F) and had one generalized seizure that lasted for 2 minutes.",
         "fever 40.5 C -> 38.5 C"),
    ],
    "unit": [
        ("ms-val-11", 1, "He underwent a total knee arthroplasty of his left knee joint 4 years ago.",
         "months -> years"),
        ("ms-val-7", 2, "She returned from Indonesia 2 months ago, where she spent the summer with her "
         "grandparents.", "weeks -> months"),
        ("ms-val-21", 0, "A 25-year-old woman comes to the physician because of vaginal discharge for 4 "
         "weeks.", "days -> weeks"),
        ("ms-val-229", 7, "After the administration of 10 g of edrophonium, her ptosis resolves, and her "
         "proximal muscle strength improves to 5/5.", "mg -> g"),
        ("ms-val-198", 3, "Her only other medication is 1 mg of acetaminophen daily for osteoarthritis of "
         "her knees.", "g -> mg"),
        ("ms-val-49", 2, "Abdominal examination shows mild right upper quadrant tenderness and a liver span "
         "of 16 mm.", "cm -> mm"),
        ("ms-val-35", 4, "She has lost 3 lb (6.6 kg) over the past month.", "kg and lb swapped"),
        ("ms-val-53", 4, "Laboratory studies show a hemoglobin concentration of 8.3 mg/dL, a leukocyte "
         "count of 81,000/mm3, and a platelet count of 35,600/mm3.", "g/dL -> mg/dL"),
        ("ms-val-5", 4, "His temperature is 38.5 F (101.3 C).", "C and F swapped"),
        ("ms-val-29", 3, "Examination shows three 1.5-mm, painful ulcers in the mouth.", "cm -> mm"),
        ("ms-val-112", 3, "He regained consciousness after 30 minutes and was able to talk normally with "
         "his wife immediately.", "seconds -> minutes"),
        ("ms-val-37", 0, "A 62-year-old woman is brought to the emergency department because of sudden loss "
         "of vision in her right eye that occurred 50 hours ago.", "minutes -> hours"),
        ("ms-val-311", 2, "The ventilator is at a FiO2 of 100%, tidal volume is 920 L, and positive "
         "end-expiratory pressure is 5 cm H2O.", "mL -> L"),
        ("ms-val-323", 7, "A postvoid ultrasound shows a residual bladder volume of 110 L. Finasteride "
         "therapy is adminstered.", "mL -> L"),
        ("ms-val-71", 5, "He used to smoke marijuana occasionally but quit 1 week ago.", "year -> week"),
        ("ms-val-74", 0, "A 26-year-old woman comes to the physician because of a progressive swelling in "
         "her mouth that she first noticed 5 months ago.", "years -> months"),
        ("ms-val-98", 0, "A 56-year-old man comes to the physician for a follow-up examination one month "
         "after a chest x-ray showed a solitary pulmonary nodule.", "week -> month"),
        ("ms-val-106", 0, "A 65-year-old woman comes to the emergency department because of blurry vision "
         "for 10 days.", "hours -> days"),
        ("ms-val-17", 0, "A 32-year-old man is brought to the physician by his wife for a 3-week history of "
         "fever, headaches, and myalgias.", "day -> week"),
        ("ms-val-27", 0, "A 4-year-old boy is brought to the physician in December for episodic shortness "
         "of breath and a nonproductive cough for 3 days.", "months -> days"),
        ("ms-val-1", 0, "A 24-month-old woman comes to the emergency department because of a 4-hour history "
         "of headaches, nausea, and vomiting.", "year-old -> month-old"),
        ("ms-val-201", 0, "A 75-year-old woman comes to the physician because of a 6-week history of "
         "fatigue.", "month -> week"),
        ("ms-val-203", 0, "A 48-year-old woman comes to the emergency department because of a "
         "photosensitive blistering rash on her hands, forearms, and face for 3 days.", "weeks -> days"),
        ("ms-val-235", 0, "A previously healthy 30-year-old woman comes to the physician for the evaluation "
         "of pain during sexual intercourse for 6 weeks.", "months -> weeks"),
        ("ms-val-241", 8, "He smoked one pack of cigarettes daily for 40 years but quit 2 years ago for "
         "surgery.", "weeks -> years"),
        ("ms-val-271", 3, "She is 170 cm (5 ft 7 in) tall and weighs 62 lb (136.6 kg); BMI is 21.5 kg/m2.",
         "kg and lb swapped"),
        ("ms-val-329", 2, "Over the past 3 weeks, he has had a 5.6-kg (12-lb) weight loss.",
         "months -> weeks"),
        ("ms-val-345", 9, "After reviewing imaging, reimaging in 6 weeks was recommended in addition to "
         "stopping the oral contraceptive pill.", "months -> weeks"),
        ("ms-val-363", 0, "A 4-year-old boy is brought to the physician by his father because of a 3-week "
         "history of generalized rash.", "day -> week"),
    ],
    "laterality": [
        ("ms-val-5", 0, "A previously healthy 25-year-old man comes to the physician because of a 1-week "
         "history of fever and fluid release from painful lumps in his left groin.", "right -> left groin"),
        ("ms-val-11", 0, "A 59-year-old man comes to the emergency department because of excruciating right "
         "knee pain for 4 days.", "left -> right knee"),
        ("ms-val-11", 8, "Examination shows a tender, swollen right knee joint; range of motion is limited "
         "by pain.", "left -> right knee"),
        ("ms-val-17", 4, "Neurologic examination shows a sustained clonus of the left ankle following "
         "sudden passive dorsiflexion.", "right -> left ankle"),
        ("ms-val-19", 0, "A 71-year-old man comes to the emergency department because of pain and swelling "
         "in his right leg that started after he cut his foot while swimming in the ocean.",
         "left -> right leg"),
        ("ms-val-19", 3, "Examination of the right foot shows a small, purulent wound with surrounding "
         "swelling and dusky redness extending to the mid-calf.", "left -> right foot"),
        ("ms-val-23", 0, "A 6-year-old girl is brought to the physician for intermittent fevers and painful "
         "swelling of the right ankle for 2 weeks.", "left -> right ankle"),
        ("ms-val-25", 0, "A 66-year-old man comes to the physician for a follow-up examination after a "
         "below-knee amputation of the left lower leg.", "right -> left leg"),
        ("ms-val-29", 4, "Abdominal examination shows mild tenderness to palpation in the left lower "
         "quadrant without guarding or rebound.", "right -> left lower quadrant"),
        ("ms-val-37", 4, "She underwent a right carotid endarterectomy 3 years ago.",
         "left -> right carotid"),
        ("ms-val-37", 10, "The direct pupillary reflex is brisk in the right eye and absent in the left eye.",
         "the two sides swapped between the findings"),
        ("ms-val-39", 0, "A 22-year-old man comes to the physician because of a progressive swelling and "
         "pain in his left ring finger for the past 2 days.", "right -> left finger"),
        ("ms-val-41", 3, "Auscultation of the lungs shows decreased breath sounds on the left.",
         "bilaterally -> on the left"),
        ("ms-val-49", 3, "Ultrasonography shows a 5 x 4 cm hyperechoic mass in the right lobe of the liver.",
         "left -> right lobe"),
        ("ms-val-57", 0, "A 14-year-old boy is brought to the physician because of fever, malaise, and "
         "severe left knee joint pain and swelling for 3 days.", "right -> left knee"),
        ("ms-val-65", 0, "A 40-year-old woman comes to the physician for left lower abdominal pain for 6 "
         "months.", "right -> left"),
        ("ms-val-67", 1, "The pain is colicky and radiates to the left groin.", "right -> left groin"),
        ("ms-val-98", 5, "A CT scan of the chest shows a 2.1-cm well-circumscribed, calcified nodule in the "
         "periphery of the left lower lung field.", "right -> left lung"),
        ("ms-val-104", 8, "Tender cervical lymphadenopathy is present on the right.", "left -> right"),
        ("ms-val-115", 8, "Inspiratory crackles are heard at the left lung base.", "right -> left lung base"),
        ("ms-val-120", 0, "An 18-year-old woman is brought to the emergency department by her coach, 30 "
         "minutes after injuring her right knee while playing field hockey.", "left -> right knee"),
        ("ms-val-85", 12, "Cervical and axillary lymph nodes are enlarged on the right.",
         "bilaterally -> on the right"),
        ("ms-val-141", 3, "She underwent surgery for right ovarian torsion a year ago.",
         "left -> right ovary"),
        ("ms-val-208", 8, "There is mucopurulent discharge in the left eye and mild eyelid swelling.",
         "both eyes -> left"),
        ("ms-val-224", 0, "A 67-year-old man comes to the physician for a routine medical check-up prior to "
         "a scheduled elective femoropopliteal bypass surgery of his right leg.", "left -> right leg"),
        ("ms-val-259", 6, "Examination shows a 2.5-cm, palpable, hard, nontender, mass in the upper outer "
         "quadrant of the right breast; there is tethering of the skin over the lump.",
         "left -> right breast"),
        ("ms-val-262", 15, "Abdominal examination shows a sausage-shaped abdominal mass in the left upper "
         "quadrant.", "right -> left"),
        ("ms-val-283", 1, "One month ago, she was diagnosed with carcinoma of the right breast.",
         "left -> right breast"),
        ("ms-val-296", 1, "She has been having dull left-side abdominal pain during this period.",
         "right -> left"),
        ("ms-val-306", 10, "An x-ray of the left foot shows a slight loss of cortical density and callus "
         "formation at the third metatarsal shaft.", "right -> left foot"),
        ("ms-val-335", 4, "She underwent a total right-sided knee arthroplasty 2 years ago because of "
         "osteoarthritis.", "left -> right knee"),
        ("ms-val-337", 9, "The right scrotum is firm, erythematous, and swollen.", "left -> right scrotum"),
        ("ms-val-350", 7, "Abdominal examination showed an entrance wound in the left upper quadrant above "
         "the umbilicus.", "right -> left upper quadrant"),
        ("ms-val-384", 6, "Examination shows visual acuity of 20/20 in the right eye and counting fingers "
         "at 5 feet in the left eye.", "the two eyes' findings swapped"),
        ("ms-val-390", 14, "The left knee shows a large, tender effusion and the patella is displaced "
         "laterally.", "right -> left knee"),
    ],
    "negation": [
        ("ms-val-13", 2, "He has lymphadenopathy.", "negation removed"),
        ("ms-val-15", 6, "The patient smokes.", "negation removed"),
        ("ms-val-21", 1, "She has pain and pruritus.", "negation removed"),
        ("ms-val-23", 1, "She has a history of trauma to the ankle.", "negation removed"),
        ("ms-val-27", 8, "An x-ray of the chest shows abnormalities.", "negation removed"),
        ("ms-val-35", 8, "She has suicidal ideation.", "negation removed"),
        ("ms-val-37", 1, "She has eye pain.", "negation removed"),
        ("ms-val-39", 6, "There was joint laxity.", "negation removed"),
        ("ms-val-45", 5, "She is currently taking medications.", "negation removed"),
        ("ms-val-47", 7, "The newborn passed his auditory screening tests.", "negation removed"),
        ("ms-val-63", 5, "He uses illicit drugs and alcohol.", "negation removed"),
        ("ms-val-67", 5, "She smokes and drinks alcohol.", "negation removed"),
        ("ms-val-74", 10, "There is cervical and submandibular lymphadenopathy.", "negation removed"),
        ("ms-val-81", 2, "She has had fevers and weight loss.", "negation removed"),
        ("ms-val-112", 4, "There was urinary incontinence.", "negation removed"),
        ("ms-val-143", 3, "There is associated itching, redness, and discharge.", "negation removed"),
        ("ms-val-151", 10, "He reports auditory, visual, and tactile hallucinations.", "denial -> report"),
        ("ms-val-9", 8, "There are no crackles in either lung base.", "negation added"),
        ("ms-val-100", 12, "Examination showed no postauricular or suboccipital lymphadenopathy.",
         "negation added"),
        ("ms-val-53", 3, "His spleen is not enlarged.", "negation added"),
        ("ms-val-29", 7, "Colonoscopy shows no cobblestone mucosa.", "negation added"),
        ("ms-val-96", 7, "The abdomen is nontender and no contractions are felt.", "negation added"),
        ("ms-val-9", 10, "Results of a rapid influenza test are positive.", "negative -> positive result"),
        ("ms-val-15", 13, "Gram stain of a urethral swab shows neutrophils and organisms.",
         "'but no organisms' -> 'and organisms'"),
        ("ms-val-210", 3, "She has a personal history of serious illness.", "negation removed"),
        ("ms-val-212", 7, "She drinks, smokes, and uses illicit drugs.", "negation removed"),
        ("ms-val-224", 9, "Cardiac examination shows a holosystolic murmur.", "'no murmurs' -> a murmur"),
        ("ms-val-277", 2, "The lesions are painful and he does not have any urinary complaints.",
         "one of two negations removed"),
        ("ms-val-283", 4, "The lymph node biopsy was positive for metastases.", "negative -> positive for"),
        ("ms-val-288", 5, "He smokes and drinks 1 to 2 beers daily.", "negation removed"),
        ("ms-val-288", 2, "He has fever, hematuria, and burning pain on micturition.", "negation removed"),
        ("ms-val-271", 10, "The abdomen is soft and tender with no organomegaly.", "nontender -> tender"),
        ("ms-val-310", 6, "He drinks alcohol and uses illicit drugs.", "negation removed"),
        ("ms-val-331", 6, "Urine dipstick is negative for leukocyte esterase and nitrite.",
         "positive -> negative for"),
        ("ms-val-368", 7, "He states that he has thought about ending his life, and he has a specific plan.",
         "'no specific plan' -> 'a specific plan'"),
        ("ms-val-394", 7, "Physical exam reveals swelling and warmth surrounding the joint.",
         "negation removed"),
        ("ms-val-408", 8, "A saline infusion test suppresses aldosterone secretion.",
         "'fails to suppress' -> 'suppresses'"),
    ],
    "diagnosis": [
        ("ms-val-25", 11, "Patient is diagnosed with complex regional pain syndrome.",
         "phantom limb pain -> CRPS"),
        ("ms-val-29", 9, "Patient was diagnosed with ulcerative colitis.",
         "Crohn disease -> ulcerative colitis"),
        ("ms-val-31", 11, "Based on the following tests, patient was diagnosed with acute fatty liver of "
         "pregnancy.", "cholestasis of pregnancy -> acute fatty liver of pregnancy"),
        ("ms-val-33", 12, "Patient was diagnosed with Alzheimer disease.",
         "frontotemporal dementia -> Alzheimer disease"),
        ("ms-val-37", 20, "Patient is diagnosed with central retinal vein occlusion.",
         "artery -> vein occlusion"),
        ("ms-val-41", 5, "Patient was diagnosed with radiation pneumonitis.",
         "pulmonary fibrosis -> radiation pneumonitis"),
        ("ms-val-49", 6, "The liver biopsy confirms a hepatic adenoma.",
         "cavernous hemangioma -> hepatic adenoma"),
        ("ms-val-53", 6, "The patient is diagnosed with chronic lymphocytic leukemia.", "AML -> CLL"),
        ("ms-val-61", 8, "Diagnosis is diabetic retinopathy.",
         "macular degeneration -> diabetic retinopathy"),
        ("ms-val-63", 6, "Suspected of major depressive disorder.",
         "persistent -> major depressive disorder"),
        ("ms-val-67", 10, "Based on exam and lab results, she was diagnosed with pyelonephritis.",
         "nephrolithiasis -> pyelonephritis"),
        ("ms-val-71", 8, "Patient is diagnosed with schizoaffective disorder on mental status examination.",
         "schizophrenia -> schizoaffective disorder"),
        ("ms-val-74", 12, "Presentation indicates pleomorphic adenoma.",
         "torus palatinus -> pleomorphic adenoma"),
        ("ms-val-78", 13, "Diagnosis is Parkinson disease.",
         "normal pressure hydrocephalus -> Parkinson disease"),
        ("ms-val-83", 8, "Based on exam, the patient was diagnosed with serotonin syndrome.",
         "NMS -> serotonin syndrome"),
        ("ms-val-85", 14, "Suspected of leukocyte adhesion deficiency.",
         "chronic granulomatous disease -> LAD"),
        ("ms-val-89", 14, "Patient is diagnosed with transient tachypnea of the newborn.", "RDS -> TTN"),
        ("ms-val-98", 8, "Suspected of bronchial carcinoid.", "pulmonary hamartoma -> bronchial carcinoid"),
        ("ms-val-102", 12, "Patient is diagnosed with aortic valve stenosis.",
         "mitral regurgitation -> aortic stenosis"),
        ("ms-val-106", 16, "Diagnosis is diabetic ketoacidosis.", "HHS -> DKA"),
        ("ms-val-143", 6, "Diagnosis is atopic dermatitis.", "ichthyosis vulgaris -> atopic dermatitis"),
        ("ms-val-147", 12, "Patient was diagnosed with factitious disorder.",
         "conversion -> factitious disorder"),
        ("ms-val-151", 12, "Diagnosis is paranoid personality disorder.",
         "delusional -> paranoid personality disorder"),
        ("ms-val-170", 7, "The patient is diagnosed with tension headaches.",
         "migraine -> tension headaches"),
        ("ms-val-158", 6, "The patient is diagnosed with ductal carcinoma in situ.",
         "intraductal papilloma -> DCIS"),
        ("ms-val-160", 4, "Basal cell carcinoma is diagnosed after examination of the oral cavity shows a "
         "single ulcer near the vermillion border.", "squamous -> basal cell carcinoma"),
        ("ms-val-166", 7, "The fetus has spina bifida.", "anencephaly -> spina bifida"),
        ("ms-val-112", 10, "Patient experienced a vasovagal syncope.", "situational -> vasovagal syncope"),
        ("ms-val-49", 6, "The liver biopsy confirms a cavernous lymphangioma.", "hemangioma -> lymphangioma"),
        ("ms-val-131", 15, "Patient was diagnosed with infectious colitis.",
         "ischemic -> infectious colitis"),
        ("ms-val-228", 11, "Core needle biopsy confirms a low-grade infiltrating lobular carcinoma.",
         "ductal -> lobular"),
        ("ms-val-300", 1, "Two months ago, she was diagnosed with COPD after a 1-year history of a chronic "
         "cough and dyspnea with exertion.", "asthma -> COPD"),
        ("ms-val-314", 2, "He was diagnosed with Hodgkin lymphoma around 8 months ago.",
         "non-Hodgkin -> Hodgkin lymphoma"),
        ("ms-val-343", 8, "A Pap test shows high-grade squamous intraepithelial lesion.", "ASC-US -> HSIL"),
        ("ms-val-400", 2, "His younger sibling was treated for scabies 3 months ago.",
         "pediculosis capitis -> scabies"),
    ],
    "organism": [
        ("ms-val-1", 9, "Culture tests indicate Candida albicans.",
         "Trichomonas vaginalis -> Candida albicans"),
        ("ms-val-5", 7, "Haemophilus ducreyi is the causal pathogen.",
         "Chlamydia trachomatis -> Haemophilus ducreyi"),
        ("ms-val-7", 4, "A Shigella dysenteriae infection is confirmed when examination shows diffuse "
         "abdominal tenderness and mild hepatosplenomegaly.", "Salmonella typhi -> Shigella dysenteriae"),
        ("ms-val-13", 13, "Human papillomavirus was determined to be the causal organism.", "HHV-8 -> HPV"),
        ("ms-val-15", 9, "Pathology reports indicate infection by Mycoplasma genitalium.",
         "Chlamydia trachomatis -> Mycoplasma genitalium"),
        ("ms-val-17", 8, "Patient has a Rickettsia rickettsii infection.",
         "Ehrlichia chaffeensis -> Rickettsia rickettsii"),
        ("ms-val-19", 6, "Based on the blood cultures, the causal organism is Aeromonas hydrophila.",
         "Vibrio vulnificus -> Aeromonas hydrophila"),
        ("ms-val-21", 12, "Patient has a trichomonas vaginalis infection.",
         "Gardnerella -> Trichomonas vaginalis"),
        ("ms-val-23", 6, "A bone biopsy culture grew Staphylococcus aureus, confirming the diagnosis.",
         "Salmonella enterica -> Staphylococcus aureus"),
        ("ms-val-69", 10, "Patient was diagnosed with Rubella virus.", "parvovirus -> rubella virus"),
        ("ms-val-100", 11, "Based on exam, the patient has measles.", "rubella -> measles"),
        ("ms-val-9", 13, "Suspected of adenovirus.", "picornavirus -> adenovirus"),
        ("ms-val-11", 9, "Analysis of the synovial fluid confirmed septic arthritis and presence of "
         "Cutibacterium acnes, and the prosthesis was removed.",
         "Staphylococcus epidermidis -> Cutibacterium acnes"),
        ("ms-val-46", 7, "Patient was diagnosed with a congenital toxoplasma infection.",
         "cytomegalovirus -> toxoplasma"),
        ("ms-val-2", 24, "Pathology confirms Mycoplasma pneumoniae is the causal organism.",
         "Streptococcus -> Mycoplasma pneumoniae"),
        ("ms-val-10", 10, "The causal organism is Staphylococcus epidermidis.",
         "S. aureus -> S. epidermidis"),
        ("ms-val-18", 7, "The causal organism is Klebsiella pneumoniae.",
         "Pseudomonas aeruginosa -> Klebsiella pneumoniae"),
        ("ms-val-22", 6, "A bone biopsy culture confirms the diagnosis as it grew Salmonella enterica.",
         "S. pneumoniae -> Salmonella enterica"),
        ("ms-val-289", 8, "Based on exam, Campylobacter jejuni serum IgG test was ordered to further "
         "evaluate.", "Helicobacter pylori -> Campylobacter jejuni"),
        ("ms-val-308", 11, "Neisseria gonorrhoeae and Trichomonas vaginalis screening was recommended.",
         "Chlamydia trachomatis -> Trichomonas vaginalis"),
        ("ms-val-330", 7, "Urine culture shows Proteus mirabilis (> 100,000 colony forming units/mL).",
         "E. coli -> Proteus mirabilis"),
        ("ms-val-3", 4, "Laboratory studies confirm that he has a parainfluenza virus infection.",
         "RSV -> parainfluenza"),
        ("ms-val-8", 12, "Suspected of coxsackievirus.", "paramyxovirus -> coxsackievirus"),
        ("ms-val-14", 13, "Pathology reports indicate infection by Ureaplasma urealyticum.",
         "Mycoplasma genitalium -> Ureaplasma urealyticum"),
        ("ms-val-0", 5, "Culture tests indicate Trichomonas vaginalis.",
         "Neisseria gonorrhoeae -> Trichomonas vaginalis"),
        ("ms-val-243", 2, "Pregnancy and delivery of her first child were complicated by an infection with "
         "E. coli that resulted in sepsis in the newborn.", "GBS -> E. coli"),
    ],
    "finding": [
        ("ms-val-228", 11, "Core needle biopsy confirms a high-grade infiltrating ductal carcinoma.",
         "low -> high grade"),
        ("ms-val-214", 5, "An initial chest radiograph shows a right upper lobe cavitation.",
         "a finding added"),
        ("ms-val-220", 0, "Ultrasonography of the scrotum shows a 2-cm hyperechoic, homogeneous testicular "
         "mass with sharp margins.", "hypoechoic -> hyperechoic"),
        ("ms-val-237", 5, "He also had bloody diarrhea and stomach cramping for 3 days during his visit "
         "there.", "watery -> bloody diarrhea"),
        ("ms-val-239", 2, "The follow-up CT shows that the size of the nodule has decreased to 2 cm.",
         "increased -> decreased"),
        ("ms-val-298", 6, "Examination shows sunken eyes and moist mucous membranes.", "dry -> moist"),
        ("ms-val-257", 10, "Based on the following labs, exchange transfusion was recommended as a next "
         "step in management.", "phototherapy -> exchange transfusion"),
        ("ms-val-306", 10, "An x-ray of the right foot shows a slight loss of cortical density and callus "
         "formation at the fifth metatarsal shaft.", "third -> fifth metatarsal"),
        ("ms-val-320", 4, "Examination shows punctate, blanching macules on the chest.",
         "non-blanching -> blanching"),
        ("ms-val-356", 13, "The abdomen is soft, distended, and tender.", "nontender -> tender"),
        ("ms-val-358", 8, "Cardiac examination showed a normal S1 and a fixed split S2 during inspiration.",
         "split S2 -> fixed split S2"),
        ("ms-val-365", 0, "A 40-year-old woman comes to the physician with a 5-day history of severe "
         "shortness of breath with exertion.", "mild -> severe"),
        ("ms-val-402", 11, "There is a non-blanching, partially confluent erythematous maculopapular "
         "exanthema.", "blanching -> non-blanching"),
        ("ms-val-406", 7, "The patient has a neurological exam within normal limits and pale skin with "
         "brown irises.", "blue -> brown irises"),
        ("ms-val-410", 6, "Delivery of the fetus is followed by placental retention and mild vaginal "
         "bleeding.", "heavy -> mild bleeding"),
    ],
}

# which paraphrase check must catch each unsafe category, and what an injector would claim
EXPECT_CHECK = {"drug": "drug_preserved", "dose": "quantity_preserved", "number": "quantity_preserved",
                "unit": "quantity_preserved", "laterality": "laterality_preserved",
                "negation": "negation_preserved", "diagnosis": "disease_preserved",
                "organism": "organism_preserved", "finding": "term_preserved"}
ERROR_TYPE = {"drug": "pharmacotherapy", "dose": "pharmacotherapy", "number": "management",
              "unit": "management", "laterality": "diagnosis", "negation": "diagnosis",
              "diagnosis": "diagnosis", "organism": "causalOrganism", "finding": "diagnosis"}
# rows whose fact lives in another check than the category's default
EXPECT_OVERRIDE = {
    ("ms-val-78", 6, "number"): "measurement_preserved",
    ("ms-val-25", 5, "dose"): "term_preserved",
    ("ms-val-335", 6, "dose"): "term_preserved",
    ("ms-val-9", 10, "negation"): "term_preserved",
    ("ms-val-271", 10, "negation"): "term_preserved",
    ("ms-val-98", 8, "diagnosis"): "term_preserved",  # neither name is in ICD-10-CM: the clinical-shape rule
    ("ms-val-112", 10, "diagnosis"): "term_preserved",  # the modifier of one ICD head changed
    ("ms-val-214", 5, "finding"): "laterality_preserved",
    ("ms-val-257", 10, "finding"): "procedure_preserved",
}


def find_medec(flag: str | None) -> Path:
    for candidate in (flag, os.environ.get("MEDSERL_MEDEC_DIR"), ROOT.parent / "shared" / "medec"):
        if candidate and (Path(candidate) / VALIDATION_CSV).exists():
            return Path(candidate)
    sys.exit("MEDEC-MS validation CSV not found: pass --medec-dir or set MEDSERL_MEDEC_DIR")


def build(medec_dir: Path) -> list[dict]:
    from medec.prepare import read_medec_csv

    notes, _ = read_medec_csv(medec_dir / VALIDATION_CSV)
    by_id = {n.note_id: dict(n.sentences) for n in notes}
    rows: list[dict] = []
    seen: set[tuple[str, int, str]] = set()
    for label, groups in (("safe", SAFE), ("unsafe", UNSAFE)):
        for category, cases in groups.items():
            for n, (note_id, sid, after, reason) in enumerate(cases, start=1):
                if not note_id.startswith("ms-val-"):
                    raise SystemExit(f"{note_id}: only MEDEC-MS validation notes may be used")
                before = by_id[note_id][sid]
                new = after(before) if callable(after) else after
                if new == before or (note_id, sid, new) in seen:
                    raise SystemExit(f"{label}/{category} {note_id}:{sid}: the edit is empty or a duplicate")
                seen.add((note_id, sid, new))
                row = {"id": f"{label}-{category}-{n:03d}", "label": label, "category": category,
                       "note_id": note_id, "sentence_id": sid, "before": before, "after": new,
                       "reason": reason}
                if label == "unsafe":
                    key = (note_id, sid, category)
                    row["expect_check"] = EXPECT_OVERRIDE.get(key, EXPECT_CHECK[category])
                    row["error_type"] = ERROR_TYPE[category]
                rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medec-dir")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    rows = build(find_medec(args.medec_dir))
    with open(args.out, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    safe = sum(r["label"] == "safe" for r in rows)
    print(f"wrote {len(rows)} edits ({safe} safe, {len(rows) - safe} unsafe) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
