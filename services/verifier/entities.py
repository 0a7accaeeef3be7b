"""Clinical facts in one sentence, as comparable multisets per kind.

Kinds (``ENTITY_KINDS``):

* ``drug``: medication names from the drug lexicon, keyed by canonical generic name (a brand name
  and its generic are the same fact).
* ``disease``: ICD-10-CM terms and clinical abbreviations, keyed by canonical term.
* ``organism``: binomials of known pathogen genera ("Neisseria gonorrhoeae", "S. aureus"), virus
  names and common pathogen words.
* ``quantity``: every number with its unit, normalised: ``2`` = ``two``, ``1,000`` = ``1000``,
  ``4-hour`` = ``4 hours``, ``mm Hg`` = ``mmHg``; ratios (``102/73``), percentages, ages, durations.
* ``measurement``: a vital or lab label bound to the quantity after it (``pulse=106/min``), so two
  values swapped between labels are caught even though the numbers are all still there.
* ``negation``: the negated facts (``neg:disease:fever``) plus whether the sentence negates at all.
* ``laterality``: left / right / bilateral / unilateral.
* ``procedure``: tests, imaging, surgery and other management actions.
* ``term``: a word of the medical vocabulary (ICD-10-CM A-T descriptions and drug names, less
  English stop words and general clinical-prose words) outside every whole entity: catches
  "scaphoid" -> "trapezium" or "oligoarticular" -> "systemic", where the whole-entity lexicons see
  the same head ("fracture"). Also clinical words outside ICD-10-CM by their shape ("thecoma"), an
  ordinal before a diagnosis ("second branchial cleft cyst") and capitalised eponyms mid-sentence
  (not the first word after an opener such as "Of note,"). A vocabulary word that is everyday
  English ("presence", "onset") is keyed ``~word``: the checks count it only where the sentence's
  clinical entities change as well.

Inflection is not a change of fact: ``entity_diff`` drops a disease/term/procedure that the other
sentence still has in another word form ("is enlarged" / "enlargement", "was intubated" /
"underwent intubation", "surgically excised" / "surgical excision"), and negated facts are keyed by
word family. A laterality word in a sentence with two sides is also bound to the finding it
qualifies ("brisk in the left eye and absent in the right eye"), so swapping the sides is a change.

All matching is on lower-cased word tokens with compiled regexes and dictionary lookups: no model,
so a verification takes microseconds.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from services.verifier.lexicons import (
    CLINICAL_PREFIXES,
    CLINICAL_SUFFIXES,
    COMMON_ENGLISH,
    NOT_CLINICAL,
    get_lexicon,
    word_family,
)

ENTITY_KINDS = ("drug", "disease", "organism", "quantity", "measurement", "negation", "laterality", "procedure", "term")

_WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "dozen": 12, "single": 1,
    "once": 1, "twice": 2, "thrice": 3, "half": 0.5,
}
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_WORD_NUMBER_RE = (
    r"(?:(?:" + "|".join(_TENS) + r")[- ](?:" + "|".join(_UNITS) + r"))|"
    + "|".join(sorted((w for w in _WORD_NUMBERS if w not in ("single",)), key=len, reverse=True))
)
_DIGITS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"

# unit spelling -> canonical unit; longest first in the regex
_UNIT_CANON: dict[str, str] = {}
for canon, spellings in {
    "mmhg": ["mm hg", "mmhg", "mm of hg", "millimeters of mercury"],
    "/min": ["/min", "/ min", "per minute", "per min", "bpm", "beats per minute", "beats/min", "breaths per minute",
             "breaths/min"],
    "%": ["%", "percent", "per cent"],
    "c": ["°c", "° c", "c", "degrees celsius", "degrees c", "celsius"],
    "f": ["°f", "° f", "f", "degrees fahrenheit", "degrees f", "fahrenheit"],
    "year": ["years", "year", "yrs", "yr", "y", "-year", "-years", "year-old", "years-old", "yo", "y/o"],
    "month": ["months", "month", "mos", "mo", "-month"],
    "week": ["weeks", "week", "wks", "wk", "-week"],
    "day": ["days", "day", "d", "-day"],
    "hour": ["hours", "hour", "hrs", "hr", "h", "-hour"],
    "minute": ["minutes", "minute", "mins", "-minute"],
    "second": ["seconds", "second", "secs", "sec"],
    "pack-year": ["pack-years", "pack-year", "pack years", "pack year"],
    "pack": ["packs", "pack"],
    "times": ["times", "x"],
    "mg/dl": ["mg/dl", "mg/ dl", "mg / dl", "mg per deciliter"], "g/dl": ["g/dl", "g / dl", "g/ dl"],
    "meq/l": ["meq/l", "meq / l", "meq/ l"], "mmol/l": ["mmol/l"], "mg/l": ["mg/l"], "ng/ml": ["ng/ml"],
    "pg/ml": ["pg/ml"], "u/l": ["u/l", "iu/l", "units/l"], "mcg/dl": ["mcg/dl", "µg/dl", "ug/dl"], "ng/dl": ["ng/dl"],
    "/mm3": ["/mm3", "/mm^3", "/mm 3", "cells/mm3", "/µl", "/ul", "/microliter", "/mcl"], "fl": ["fl"],
    "mosm/kg": ["mosm/kg", "mosm/kg h2o"], "meq": ["meq"], "mmol": ["mmol"], "kg/m2": ["kg/m2", "kg/m^2"],
    "mu/l": ["mu/l", "µu/ml", "uu/ml", "μu/ml", "mu/ml"], "g": ["g", "grams", "gram"], "kg": ["kg", "kilograms"],
    "mg": ["mg", "milligrams", "milligram"], "mcg": ["mcg", "µg", "micrograms"], "lb": ["lb", "lbs", "pounds", "pound"],
    "oz": ["oz", "ounces"], "cm": ["cm", "centimeters"], "mm": ["mm", "millimeters"], "m": ["m", "meters"],
    "in": ["in", "inches", "inch"], "ft": ["ft", "feet", "foot"], "l": ["l", "liters", "liter"], "ml": ["ml", "milliliters"],
    "dl": ["dl"], "units": ["units", "unit", "iu", "u"], "mg/kg": ["mg/kg"], "ml/kg": ["ml/kg"], "cm h2o": ["cm h2o"],
    "drinks": ["drinks", "drink", "beers", "beer", "glasses", "glass"], "cigarettes": ["cigarettes", "cigarette"],
    "minutes-apgar": [],
}.items():
    for spelling in spellings:
        _UNIT_CANON[spelling] = canon
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNIT_CANON, key=len, reverse=True))
QUANTITY = re.compile(
    rf"(?<![\w.])(?P<num>(?P<ratio>(?:{_DIGITS})\s?/\s?(?:{_DIGITS}))|{_DIGITS}|(?i:(?:{_WORD_NUMBER_RE})(?![a-z]))"
    r"|(?i:an?(?=\s+(?:week|day|month|year|hour|minute|decade)s?\b)))"
    rf"(?:(?:\s?-\s?|\s)?(?P<unit>(?i:{_UNIT_RE}))(?![a-zA-Z0-9]))?(?P<old>-(?:year|month|week|day)s?-old)?",
)
_ORDINAL_CONTEXT = re.compile(r"(?i)\b(?:type|grade|stage|class|phase|gravida|para|g|p|day|week|ct|t|l|c|s)\s?$")

_LABELS: dict[str, str] = {}
for canon, spellings in {
    "pulse": ["pulse", "heart rate", "hr", "pulse rate"],
    "bp": ["blood pressure", "bp"],
    "resp": ["respirations", "respiratory rate", "rr", "respiration rate"],
    "temp": ["temperature", "temp"],
    "spo2": ["oxygen saturation", "o2 saturation", "spo2", "sao2", "pulse oximetry", "o2 sat"],
    "bmi": ["bmi", "body mass index"], "weight": ["weight", "weighs"], "height": ["height"],
    "hemoglobin": ["hemoglobin", "hb", "hgb"], "hematocrit": ["hematocrit", "hct"],
    "leukocytes": ["leukocyte count", "leukocytes", "wbc", "white blood cell count", "white blood cells", "wbc count"],
    "platelets": ["platelet count", "platelets", "plt"], "sodium": ["sodium", "na+", "na"],
    "potassium": ["potassium", "k+", "k"], "chloride": ["chloride", "cl-", "cl−", "cl"],
    "bicarbonate": ["bicarbonate", "hco3-", "hco3−", "hco3"], "bun": ["urea nitrogen", "bun", "blood urea nitrogen"],
    "creatinine": ["creatinine", "cr"], "glucose": ["glucose", "blood glucose", "blood sugar"],
    "calcium": ["calcium", "ca2+", "ca"], "magnesium": ["magnesium", "mg2+"], "phosphorus": ["phosphorus", "phosphate"],
    "albumin": ["albumin"], "protein": ["total protein", "protein"], "bilirubin": ["total bilirubin", "bilirubin"],
    "direct bilirubin": ["direct bilirubin"], "alt": ["alt", "alanine aminotransferase"],
    "ast": ["ast", "aspartate aminotransferase"], "alp": ["alkaline phosphatase", "alp"], "ggt": ["ggt"],
    "ldh": ["ldh", "lactate dehydrogenase"], "ck": ["creatine kinase", "ck", "cpk"], "troponin": ["troponin"],
    "inr": ["inr"], "pt": ["prothrombin time", "pt"], "ptt": ["partial thromboplastin time", "ptt", "aptt"],
    "esr": ["erythrocyte sedimentation rate", "esr"], "crp": ["c-reactive protein", "crp"], "tsh": ["tsh"],
    "t4": ["t4", "thyroxine"], "t3": ["t3"], "hba1c": ["hba1c", "hemoglobin a1c", "a1c"], "ferritin": ["ferritin"],
    "mcv": ["mean corpuscular volume", "mcv"], "reticulocytes": ["reticulocyte count"], "lipase": ["lipase"],
    "amylase": ["amylase"], "ph": ["ph"], "pco2": ["pco2", "paco2"], "po2": ["po2", "pao2"], "lactate": ["lactate"],
    "cholesterol": ["cholesterol"], "ldl": ["ldl"], "hdl": ["hdl"], "triglycerides": ["triglycerides"],
    "fev1": ["fev1"], "fvc": ["fvc"], "dlco": ["dlco"], "ejection fraction": ["ejection fraction"],
    "cd4": ["cd4+ t-lymphocyte count", "cd4+ count", "cd4 count", "cd4+", "cd4"], "uric acid": ["uric acid"],
    "osmolality": ["osmolality"], "anion gap": ["anion gap"], "neutrophils": ["neutrophils", "segmented neutrophils"],
    "lymphocytes": ["lymphocytes"], "eosinophils": ["eosinophils"], "monocytes": ["monocytes"], "hcg": ["hcg", "β-hcg"],
}.items():
    for spelling in spellings:
        _LABELS[spelling] = canon
_TOKEN_SPAN = re.compile(r"[a-z0-9]+")

_LABEL_PHRASES = {" ".join(re.findall(r"[a-z0-9]+", k)): v for k, v in _LABELS.items()}
_LABEL_MAX = max(len(k.split()) for k in _LABEL_PHRASES)
_LABEL_BREAKERS = frozenset("loss gain bearing change changes".split())
_WORD_AFTER = re.compile(r"\s+[a-z]")
# adjacent word pairs of multi-word labels: "blood pressure", "body mass index" are a label, not terms
_LABEL_BIGRAMS = frozenset((a, b) for k in _LABEL_PHRASES
                           for a, b in zip(k.split(), k.split()[1:], strict=False))

_NEGATION_WORDS = frozenset("no not denies denied deny denying without absent never none neither nor cannot".split())
_NEGATION_BIGRAMS = frozenset({"negative for", "absence of", "free of", "ruled out", "rules out", "unable to",
                               "fails to", "failed to", "rule out", "refrain from", "refrained from",
                               "refrains from"})
# a negation's scope ends at the clause's verb: "No abnormalities are shown on an electrocardiogram"
# does not negate the electrocardiogram
_SCOPE_END_WORDS = frozenset("but however although though except yet whereas which is are was were".split())
_SCOPE_END_PUNCT = re.compile(r"[.;:]")
_LATERAL = {"left": "left", "right": "right", "bilateral": "bilateral", "bilaterally": "bilateral",
            "unilateral": "unilateral", "unilaterally": "unilateral", "contralateral": "contralateral",
            "ipsilateral": "ipsilateral"}
_PROC_SUFFIXES = ("ectomy", "otomy", "ostomy", "oscopy", "ography", "ogram", "plasty", "pexy", "centesis", "desis",
                  "rrhaphy", "graphy", "scopy")
_PROC_WORDS = frozenset(
    """biopsy biopsies ct mri radiograph radiographs ultrasound ultrasonography echocardiogram ecg ekg
    electrocardiogram eeg emg dialysis hemodialysis transfusion transfusions intubation intubated reintubated
    surgery resection excision catheterization cardioversion defibrillation stent stents stenting bypass graft
    grafts culture cultures urinalysis serology pcr titer titers immunization radiation radiotherapy chemotherapy
    lavage drainage debridement irrigation splint splinting cast casting referral referred observation admission
    admitted counseling reassurance reassured monitoring screening smear stain staining aspiration injection
    infusion immobilization reduction fixation ablation embolization thrombolysis cesarean delivery induction
    amniotomy cerclage transplant transplantation test testing vaccine vaccination vaccinated hospitalization
    hospitalized ventilation bipap cpap brace prosthesis repositioning physiotherapy rehabilitation discharge
    discharged consult consultation ligated ligation suture sutured incision amputation consulted ventilated
    excised resected transfused biopsied immunized catheterized discontinued discontinuation
    withheld""".split()
)
# one procedure, several names: the key is the first
_PROC_SYNONYMS = {name: group[0] for group in (
    ("ecg", "ekg", "electrocardiogram", "electrocardiography"), ("ct", "ct scan", "computed tomography"),
    ("mri", "magnetic resonance imaging"), ("x ray", "x rays", "radiograph", "radiographs"),
    ("ultrasound", "ultrasonography", "sonography"),
    ("eeg", "electroencephalogram", "electroencephalography"),
    ("lumbar puncture", "spinal tap")) for name in group}
_PROC_PHRASES = frozenset({"x ray", "x rays", "ct scan", "lumbar puncture", "spinal tap", "pet scan", "physical therapy",
                           "mechanical ventilation", "computed tomography", "magnetic resonance imaging", "follow up",
                           "plasma exchange", "watchful waiting", "expectant management", "chest tube",
                           "external cephalic version"})
_PHRASE_FIRST_WORDS = frozenset(p.split()[0] for p in _PROC_PHRASES | _NEGATION_BIGRAMS)
_LATIN_ENDINGS = ("ae", "us", "is", "um", "ii", "i", "a", "es", "ans", "ens", "ax", "e", "ei")
_NOT_SPECIES = frozenset(
    """species infection infections organism organisms bacteria bacterium isolates isolate strain strains colonies
    sepsis pneumonia bacteremia endocarditis meningitis colitis cocci bacilli serotype toxin toxins positive
    negative culture cultures growth grows grew this these those there were have with from that which while
    infestation vaginosis vaginitis diarrhea enteritis cellulitis abscess osteomyelitis arthritis disease
    cystitis pyelonephritis urethritis cervicitis keratitis conjunctivitis otitis sinusitis pharyngitis
    hepatitis encephalitis was are is""".split()
)
_KNOWN_ABBREVIATED_SPECIES = frozenset(
    """coli aureus pneumoniae pyogenes agalactiae difficile gonorrhoeae meningitidis influenzae epidermidis albicans
    pylori faecalis faecium aeruginosa jirovecii trachomatis pallidum vaginalis lamblia marcescens saprophyticus
    tuberculosis typhi monocytogenes perfringens botulinum tetani burgdorferi gondii falciparum vivax cholerae
    jejuni fumigatus neoformans immitis capsulatum viridans mutans bovis gallolyticus acnes mirabilis
    catarrhalis pertussis henselae israelii""".split()
)
_ORDINALS = {w: str(i) for i, group in enumerate((("first", "1st"), ("second", "2nd"), ("third", "3rd"),
                                                   ("fourth", "4th"), ("fifth", "5th"), ("sixth", "6th")),
                                                  start=1)
             for w in group}
# how often (a dose's frequency): "weekly" -> "daily" is a changed dose
_FREQUENCY = {"daily": "day", "nightly": "night", "weekly": "week", "monthly": "month", "hourly": "hour",
              "yearly": "year", "annually": "year", "biweekly": "2 week"}
_CLAUSE_WORDS = frozenset("and but or while whereas although though".split())
_BIND_SKIP = frozenset("the a an of in on at to for with is was are were be been has had have this that it "
                       "its his her their patient which who as by from both side sided".split())
_OPENER = re.compile(r"\s*(?:[A-Za-z]+\s+){0,3}[A-Za-z]+,\s+")


@dataclass(frozen=True)
class Entity:
    kind: str
    key: str
    start: int
    end: int


def _number_value(text: str) -> str:
    lower = text.lower().strip()
    if lower in ("a", "an"):  # "a week ago" = "one week ago"
        value = 1.0
    elif lower in _WORD_NUMBERS:
        value = float(_WORD_NUMBERS[lower])
    elif re.fullmatch(r"(?:" + "|".join(_TENS) + r")[- ](?:" + "|".join(_UNITS) + r")", lower):
        tens, unit = re.split(r"[- ]", lower)
        value = float(_WORD_NUMBERS[tens] + _WORD_NUMBERS[unit])
    else:
        value = float(lower.replace(",", ""))
    return f"{value:g}"


def _quantities(text: str) -> list[Entity]:
    out = []
    for m in QUANTITY.finditer(text):
        num = m.group("num")
        if m.group("ratio"):
            left, right = re.split(r"\s?/\s?", num)
            value = f"{_number_value(left)}/{_number_value(right)}"
        else:
            value = _number_value(num)
        unit = ""
        if m.group("old"):
            unit = re.sub(r"^-|s?-old$", "", m.group("old")).rstrip("s")
        elif m.group("unit") and not (m.group("unit").lower() == "in" and _WORD_AFTER.match(text, m.end())):
            unit = _UNIT_CANON.get(m.group("unit").lower(), m.group("unit").lower())  # "10 in intensity": no inch
        if not m.group("unit") and not m.group("old") and _ORDINAL_CONTEXT.search(text[: m.start()]):
            unit = "#"  # "type 2", "grade 3", "day 5": a label, still a fact to keep
        out.append(Entity("quantity", f"{value}{(' ' + unit) if unit else ''}", m.start(), m.end()))
    return out


def _lexicon_entities(tokens: list[tuple[str, int, int]], terms: dict, prefixes: frozenset) -> list[Entity]:
    """Longest dictionary matches over word tokens (drugs, diseases, organism words)."""
    out: list[Entity] = []
    i = 0
    n = len(tokens)
    while i < n:
        best = None
        phrase = ""
        for j in range(i, min(n, i + 8)):
            phrase = tokens[j][0] if j == i else f"{phrase} {tokens[j][0]}"
            if phrase not in prefixes:
                break
            hit = terms.get(phrase)
            if hit is not None:
                best = (j, hit)
        if best is None:
            i += 1
            continue
        j, (kind, canonical) = best
        out.append(Entity(kind, canonical, tokens[i][1], tokens[j][2]))
        i = j + 1
    return out


def _organisms(text: str, tokens: list[tuple[str, int, int]], genera: frozenset[str]) -> list[Entity]:
    """Binomials of known genera ("Neisseria gonorrhoeae", "S. aureus"), bare genera and *virus words."""
    out: list[Entity] = []
    n = len(tokens)
    skip_until = -1
    for i, (word, start, end) in enumerate(tokens):
        if i <= skip_until:
            continue
        nxt = tokens[i + 1] if i + 1 < n else None
        if word in genera:
            if (nxt is not None and nxt[0].isalpha() and len(nxt[0]) >= 4 and nxt[0].endswith(_LATIN_ENDINGS)
                    and nxt[0] not in _NOT_SPECIES and nxt[1] - end <= 2):
                out.append(Entity("organism", f"{word[0]}. {nxt[0]}", start, nxt[2]))
                skip_until = i + 1
            else:
                out.append(Entity("organism", word, start, end))
        elif (len(word) == 1 and word.isalpha() and nxt is not None and nxt[0] in _KNOWN_ABBREVIATED_SPECIES
              and text[end:end + 1] == "." and text[start:end].isupper()):
            out.append(Entity("organism", f"{word}. {nxt[0]}", start, nxt[2]))
            skip_until = i + 1
        elif word.endswith(("virus", "viruses")) and len(word) > 5:
            out.append(Entity("organism", word[:-2] if word.endswith("viruses") else word, start, end))
    return out


def _organism_key(name: str) -> str:
    """"Streptococcus pneumoniae", "S. pneumoniae" and "pneumococcus" are one organism: "s. pneumoniae"."""
    words = name.lower().split()
    if len(words) == 2 and words[0].rstrip(".").isalpha() and not words[1].startswith("virus") and words[0] not in (
            "herpes", "hepatitis", "measles", "mumps", "rubella", "rabies", "influenza", "zika", "dengue", "ebola",
            "human", "respiratory", "group", "parvovirus"):
        return f"{words[0][0]}. {words[1]}"
    return " ".join(words)


def _measurements(tokens: list[tuple[str, int, int]], quantities: list[Entity], text: str) -> list[Entity]:
    """Bind each quantity to the nearest vital/lab label before it (no other quantity in between)."""
    labels: list[tuple[int, int, str]] = []
    n = len(tokens)
    i = 0
    while i < n:
        hit = None
        phrase = ""
        for j in range(i, min(n, i + _LABEL_MAX)):
            phrase = tokens[j][0] if j == i else f"{phrase} {tokens[j][0]}"
            canon = _LABEL_PHRASES.get(phrase)
            if canon is not None:
                hit = (j, canon)
        if hit is None:
            i += 1
            continue
        if hit[0] + 1 >= n or tokens[hit[0] + 1][0] not in _LABEL_BREAKERS:  # "weight loss" is no weight
            labels.append((tokens[i][1], tokens[hit[0]][2], hit[1]))
        i = hit[0] + 1
    out: list[Entity] = []
    if not labels:
        return out
    previous_end = -1
    for q in quantities:
        candidates = [lab for lab in labels if previous_end <= lab[0] and lab[1] <= q.start and q.start - lab[1] <= 40]
        if candidates:
            label = candidates[-1]
            out.append(Entity("measurement", f"{label[2]}={q.key}", label[0], q.end))
        previous_end = q.end
    return out


family = lru_cache(maxsize=65536)(word_family)  # "enlarged", "enlargement" -> "enlarg"


def clinical_shape(word: str) -> bool:
    """A clinical word outside the lexicons by its form: a tumour, inflammation or condition name
    ("thecoma", "hemangioblastoma", "plasmapheresis") or a hypo-/hyper- finding ("hypoechoic")."""
    shaped = ((len(word) >= 6 and word.endswith(CLINICAL_SUFFIXES))
              or (len(word) >= 8 and word.startswith(CLINICAL_PREFIXES)))
    return shaped and word not in NOT_CLINICAL


def _opener_end(sentence: str) -> int:
    """Where the first word after an opener ("Of note,", "Notably,", "In addition,") starts, else -1."""
    m = _OPENER.match(sentence)
    return m.end() if m else -1


def _terms(sentence: str, tokens: list[tuple[str, int, int]], entities: list[Entity],
           vocabulary: frozenset[str]) -> list[Entity]:
    """Medical words: the modifiers that make a diagnosis or a procedure what it is ("scaphoid fracture",
    "oligoarticular arthritis", "radical orchiectomy"). Words inside a whole entity (drug, disease,
    organism, procedure, laterality, a number/vital/lab with its unit and label, a vital/lab name) are
    that entity's business (a brand and its generic are one drug; "pulse 106/min" and "heart rate 106
    beats per minute" are one measurement). Everyday English words of the vocabulary are keyed ``~word``."""
    excluded = [(e.start, e.end) for e in entities if e.kind != "negation"]
    opener = _opener_end(sentence) if sentence[:1].isupper() else -1
    disease_starts = {e.start for e in entities if e.kind == "disease"}
    out = []
    n = len(tokens)
    skip = -1
    for i, (word, start, end) in enumerate(tokens):
        if i == skip or any(a <= start < b for a, b in excluded):
            continue
        if ((i + 1 < n and (word, tokens[i + 1][0]) in _LABEL_BIGRAMS)
                or (i and (tokens[i - 1][0], word) in _LABEL_BIGRAMS)):
            continue
        if word == "non" and i + 1 < n and sentence[end:end + 1] == "-":
            out.append(Entity("term", f"non{tokens[i + 1][0]}", start, tokens[i + 1][2]))  # "non-blanching"
            skip = i + 1
        elif word in vocabulary:
            out.append(Entity("term", f"~{word}" if word in COMMON_ENGLISH else word, start, end))
        elif (start > 1 and len(word) >= 4 and sentence[start].isupper() and sentence[start - 1] == " "
              and sentence[start - 2] not in ".!?:" and start != opener) or clinical_shape(word):
            out.append(Entity("term", word, start, end))  # an eponym ("Tanner", "Gram") or a clinical word
        elif word in _ORDINALS and any(t[1] in disease_starts for t in tokens[i + 1:i + 4]):
            out.append(Entity("term", f"ord:{_ORDINALS[word]}", start, end))  # "second branchial cleft cyst"
    return out


def _tokens(sentence: str) -> list[tuple[str, int, int]]:
    lower = sentence.lower()
    if len(lower) != len(sentence):  # a few Unicode letters change length when lower-cased
        lower = "".join(c.lower()[:1] or c for c in sentence)
    return [(m.group(), m.start(), m.end()) for m in _TOKEN_SPAN.finditer(lower)]


def _organism_strain(e: Entity, tokens: list[tuple[str, int, int]], by_start: dict[int, int]) -> Entity:
    """"Herpes simplex virus type 2", "human herpesvirus 8": the type number is part of the organism."""
    i = by_start.get(e.start)
    if i is None:
        return e
    j = i
    while j < len(tokens) and tokens[j][2] <= e.end:
        j += 1
    if j < len(tokens) and tokens[j][0] == "type" and j + 1 < len(tokens) and tokens[j + 1][0].isdigit():
        return Entity("organism", f"{e.key} {tokens[j + 1][0]}", e.start, e.end)
    if j < len(tokens) and tokens[j][0].isdigit() and len(tokens[j][0]) <= 2 and tokens[j][1] - e.end <= 1:
        return Entity("organism", f"{e.key} {tokens[j][0]}", e.start, e.end)
    return e


def _laterality_bindings(sentence: str, tokens: list[tuple[str, int, int]],
                         sides: list[tuple[int, str]]) -> list[Entity]:
    """With two sides in one sentence, each side is also keyed by the word it qualifies in its clause:
    the nearest content word before it ("brisk in the left eye" -> left@brisk), else after it."""
    out = []
    for i, side in sides:
        bound = ""
        for j in range(i - 1, -1, -1):
            word = tokens[j][0]
            if word in _CLAUSE_WORDS or re.search(r"[,;:]", sentence[tokens[j][2]:tokens[j + 1][1]]):
                break
            if word not in _BIND_SKIP and word not in _LATERAL and len(word) > 2 and not word.isdigit():
                bound = family(word)
                break
        if not bound:
            for j in range(i + 1, len(tokens)):
                word = tokens[j][0]
                if word in _CLAUSE_WORDS or re.search(r"[,;:]", sentence[tokens[j - 1][2]:tokens[j][1]]):
                    break
                if word not in _BIND_SKIP and word not in _LATERAL and len(word) > 2 and not word.isdigit():
                    bound = ">" + family(word)
                    break
        out.append(Entity("laterality", f"{side}@{bound}", tokens[i][1], tokens[i][2]))
    return out


@lru_cache(maxsize=16384)
def extract_entities(sentence: str) -> tuple[Entity, ...]:
    """Every clinical fact in one sentence (cached: the same sentence is checked many times)."""
    lexicon = get_lexicon()
    tokens = _tokens(sentence)
    by_start = {t[1]: i for i, t in enumerate(tokens)}
    entities: list[Entity] = []
    organisms = [_organism_strain(o, tokens, by_start) for o in _organisms(sentence, tokens, lexicon.genera)]
    entities.extend(organisms)
    for e in _lexicon_entities(tokens, lexicon.terms, lexicon.prefixes):
        if any(o.start <= e.start < o.end or e.start <= o.start < e.end for o in organisms):
            continue  # the binomial already covers it
        if e.kind == "organism":
            e = _organism_strain(Entity("organism", _organism_key(e.key), e.start, e.end), tokens, by_start)
        entities.append(e)
    # most sentences have no number at all: skip the quantity regex for them
    has_number = any(c.isdigit() for c in sentence) or any(
        t[0] in _WORD_NUMBERS or t[0] in _TENS or t[0] in ("a", "an") for t in tokens)
    quantities = _quantities(sentence) if has_number else []
    entities.extend(quantities)
    if quantities:
        entities.extend(_measurements(tokens, quantities, sentence))
    vocabulary = lexicon.vocabulary
    n = len(tokens)
    cues: list[int] = []  # end offsets of negation cues
    verbal: list[int] = []  # token indices of "not", "n't", "never": they negate the predicate after them
    sides: list[tuple[int, str]] = []
    phrase_end = -1  # the last token of a procedure phrase already taken
    for i, (word, start, end) in enumerate(tokens):
        if word in _LATERAL:
            entities.append(Entity("laterality", _LATERAL[word], start, end))
            sides.append((i, _LATERAL[word]))
        if word in _FREQUENCY:
            entities.append(Entity("quantity", f"every {_FREQUENCY[word]}", start, end))
        if word in _NEGATION_WORDS:
            cues.append(end)
            if word in ("not", "never"):
                verbal.append(i)
        elif word == "t" and i > 0 and tokens[i - 1][0].endswith("n") and sentence[start - 1:start] in ("'", "\u2019"):
            cues.append(end)
            verbal.append(i)
        if word in _PHRASE_FIRST_WORDS and i + 1 < n:
            bigram = f"{word} {tokens[i + 1][0]}"
            trigram = f"{bigram} {tokens[i + 2][0]}" if i + 2 < n else ""
            if bigram in _NEGATION_BIGRAMS:
                cues.append(tokens[i + 1][2])
            elif trigram in _PROC_PHRASES:
                name = _PROC_SYNONYMS.get(trigram, trigram)
                entities.append(Entity("procedure", name, start, tokens[i + 2][2]))
                phrase_end = i + 2
            elif bigram in _PROC_PHRASES:
                name = _PROC_SYNONYMS.get(bigram, bigram)
                entities.append(Entity("procedure", name, start, tokens[i + 1][2]))
                phrase_end = i + 1
        if i > phrase_end and (word in _PROC_WORDS or (len(word) > 6 and word.endswith(_PROC_SUFFIXES))):
            entities.append(Entity("procedure", _PROC_SYNONYMS.get(word, word), start, end))
    if len({side for _, side in sides}) > 1:
        entities.extend(_laterality_bindings(sentence, tokens, sides))
    entities.extend(_terms(sentence, tokens, entities, vocabulary))
    if cues:
        # negation: the facts inside each cue's scope (to the end of the clause), keyed by word family
        facts = [e for e in entities if e.kind in ("drug", "disease", "organism", "procedure")]
        # a predicate term right after "not" ("the lesions are not painful", "not very tender"); the object
        # of a negated verb ("does not have lymphadenopathy") is left to the clause-scope rule above
        predicates = {tokens[i + 1][1] for i in verbal if i + 1 < n}
        predicates |= {tokens[i + 2][1] for i in verbal if i + 2 < n and (tokens[i + 1][0] == "very"
                                                                          or tokens[i + 1][0].endswith("ly"))}
        for e in entities:
            if e.kind == "term" and not e.key.startswith("~") and e.start in predicates:
                entities.append(Entity("negation", f"neg:term:{family(e.key)}", e.start, e.end))
        for cue_end in cues:
            punct = _SCOPE_END_PUNCT.search(sentence, cue_end)
            scope_end = punct.start() if punct else len(sentence)
            for word, start, _end in tokens:
                if cue_end <= start < scope_end and word in _SCOPE_END_WORDS:
                    scope_end = start
                    break
            for e in facts:
                if cue_end <= e.start < scope_end:
                    key = " ".join(family(w) for w in e.key.split())
                    entities.append(Entity("negation", f"neg:{e.kind}:{key}", cue_end, e.end))
        entities.append(Entity("negation", "negated", 0, 0))
    return tuple(entities)


@lru_cache(maxsize=16384)
def _counts(sentence: str) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for e in extract_entities(sentence):
        counts.setdefault(e.kind, Counter())[e.key] += 1
    if "negation" in counts:
        counts["negation"] = Counter(set(counts["negation"]))
    return counts


def entity_counts(sentence: str) -> dict[str, Counter]:
    """Entities of one sentence as ``kind -> Counter(key)`` for every kind (negation keys deduplicated)."""
    counts = _counts(sentence)
    return {kind: Counter(counts.get(kind, ())) for kind in ENTITY_KINDS}


@lru_cache(maxsize=16384)
def _families(sentence: str) -> tuple[str, ...]:
    return tuple(family(t[0]) for t in _tokens(sentence))


_REWORDABLE = ("disease", "term", "procedure")


def _reworded(key: str, kind_keys: Counter, other: str) -> bool:
    """Whether ``key`` (removed from or added to one sentence) is still in ``other`` in another word form:
    its words' families occur there in order, and ``other`` does not have the same fact under this key
    (so a fact stated twice in place of once is still a change)."""
    if key in kind_keys:
        return False
    words = [family(w) for w in key.lstrip("~").split()]
    fams = _families(other)
    if len(words) == 1:
        return words[0] in fams
    k = len(words)
    return any(list(fams[i:i + k]) == words for i in range(len(fams) - k + 1))


def entity_diff(before: str, after: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per kind, the facts removed from and added to ``before`` (only kinds that differ). A disease, term
    or procedure that the other sentence holds in another word form (a nominalisation, an inflection)
    is not a change."""
    a, b = _counts(before), _counts(after)
    out: dict[str, tuple[list[str], list[str]]] = {}
    empty: Counter = Counter()
    for kind in ENTITY_KINDS:
        ca, cb = a.get(kind, empty), b.get(kind, empty)
        if ca == cb:
            continue
        removed = sorted((ca - cb).elements())
        added = sorted((cb - ca).elements())
        if kind in _REWORDABLE:
            removed = [k for k in removed if not _reworded(k, cb, after)]
            added = [k for k in added if not _reworded(k, ca, before)]
        if removed or added:
            out[kind] = (removed, added)
    return out


def near_clinical_word(word: str) -> bool:
    """Whether ``word`` is no known word (ICD-10-CM, drug names, stop lists, in any inflection) but one
    typing slip (a letter dropped, added, changed or two swapped) from a drug name, a procedure word or
    a clinical word shape ("wafarin", "plasmapharesis"): the inject-mode fallback for a misspelt
    clinical term. Costs ~50 dictionary lookups per letter, so it is only asked when nothing else changed."""
    if len(word) < 6 or not word.isalpha():
        return False
    lexicon = get_lexicon()
    if (family(word) in lexicon.known_families or word in _PROC_WORDS or clinical_shape(word)
            or word.endswith(_PROC_SUFFIXES)):
        return False
    terms = lexicon.terms
    letters = "abcdefghijklmnopqrstuvwxyz"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    variants = {a + b[1:] for a, b in splits if b}
    variants |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    variants |= {a + c + b[1:] for a, b in splits if b for c in letters}
    variants |= {a + c + b for a, b in splits for c in letters}
    variants.discard(word)
    for v in variants:
        hit = terms.get(v)
        if (hit is not None and hit[0] == "drug") or v in _PROC_WORDS or clinical_shape(v) or (
                len(v) > 6 and v.endswith(_PROC_SUFFIXES)):
            return True
    return False
