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

All matching is on lower-cased word tokens with compiled regexes and dictionary lookups: no model,
so a verification takes microseconds.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from services.verifier.lexicons import get_lexicon

ENTITY_KINDS = ("drug", "disease", "organism", "quantity", "measurement", "negation", "laterality", "procedure")

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
    rf"(?<![\w.])(?P<num>(?P<ratio>(?:{_DIGITS})\s?/\s?(?:{_DIGITS}))|{_DIGITS}|(?i:{_WORD_NUMBER_RE}))"
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
LABEL = re.compile(r"(?i)(?<![\w+-])(" + "|".join(re.escape(s) for s in sorted(_LABELS, key=len, reverse=True)) + r")(?![\w])")

NEGATION = re.compile(
    r"(?i)\b(?:no|not|denies|denied|deny|denying|without|negative for|absent|absence of|free of|never|none|"
    r"neither|nor|cannot|unable to|fails to|failed to|ruled out|rules out)\b|n't\b"
)
_SCOPE_END = re.compile(r"(?i)[.;:]|\b(?:but|however|although|though|except|yet|whereas|which)\b")
LATERALITY = re.compile(r"(?i)\b(left|right|bilateral|bilaterally|unilateral|unilaterally|contralateral|ipsilateral)\b")
_LATERAL_CANON = {"bilaterally": "bilateral", "unilaterally": "unilateral"}
PROCEDURE = re.compile(
    r"(?i)\b(?:\w+(?:ectomy|otomy|ostomy|oscopy|ography|ogram|plasty|pexy|centesis|desis|rrhaphy|graphy)|"
    r"biops(?:y|ies)|ct(?: scan)?|computed tomography|mri|magnetic resonance imaging|x-rays?|radiographs?|"
    r"ultrasound|ultrasonography|echocardiogram|ecg|ekg|electrocardiogram|eeg|emg|dialysis|transfusions?|"
    r"intubation|mechanical ventilation|surgery|surgical \w+|resection|excision|catheterization|cardioversion|"
    r"defibrillation|stents?|stenting|bypass|grafts?|lumbar puncture|spinal tap|pet scan|cultures?|urinalysis|"
    r"serology|pcr|titers?|vaccin\w+|immunization|radiation|radiotherapy|chemotherapy|physical therapy|"
    r"lavage|drainage|debridement|irrigation|splint(?:ing)?|cast|referral|follow-up|observation|admission|"
    r"counseling|reassurance|monitoring|screening|smear|stain(?:ing)?|aspiration|injection|infusion|"
    r"immobilization|reduction|fixation|ablation|embolization|thrombolysis|angiography|hysterectomy|"
    r"cesarean|delivery|induction|amniotomy|cerclage|transplant(?:ation)?|test(?:ing)?)\b"
)
_GENUS_BINOMIAL = re.compile(r"\b([A-Z][a-z]+|[A-Z]\.)\s+([a-z]{3,}(?:[ -][a-z]+)?)\b")
_VIRUS = re.compile(r"(?i)\b(\w+virus(?:es)?|hepatitis [a-e](?: virus)?|herpes (?:simplex|zoster)(?: virus)?|"
                    r"varicella[- ]zoster(?: virus)?|epstein[- ]barr(?: virus)?|human papillomavirus)\b")
_TOKEN_SPAN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Entity:
    kind: str
    key: str
    start: int
    end: int


def _number_value(text: str) -> str:
    lower = text.lower().strip()
    if lower in _WORD_NUMBERS:
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
        elif m.group("unit"):
            unit = _UNIT_CANON.get(m.group("unit").lower(), m.group("unit").lower())
        if not m.group("unit") and not m.group("old") and _ORDINAL_CONTEXT.search(text[: m.start()]):
            unit = "#"  # "type 2", "grade 3", "day 5": a label, still a fact to keep
        out.append(Entity("quantity", f"{value}{(' ' + unit) if unit else ''}", m.start(), m.end()))
    return out


def _lexicon_entities(text: str) -> list[Entity]:
    """Longest dictionary matches over word tokens (drugs, diseases, organism words)."""
    lexicon = get_lexicon()
    lower = text.lower()
    spans = [(m.group(), m.start(), m.end()) for m in _TOKEN_SPAN.finditer(lower)]
    out: list[Entity] = []
    i = 0
    terms, prefixes = lexicon.terms, lexicon.prefixes
    while i < len(spans):
        best = None
        phrase = ""
        for j in range(i, min(len(spans), i + 8)):
            phrase = spans[j][0] if j == i else f"{phrase} {spans[j][0]}"
            if phrase not in prefixes:
                break
            hit = terms.get(phrase)
            if hit is not None:
                best = (j, hit)
        if best is None:
            i += 1
            continue
        j, (kind, canonical) = best
        out.append(Entity(kind, canonical, spans[i][1], spans[j][2]))
        i = j + 1
    return out


def _organisms(text: str, genera: frozenset[str]) -> list[Entity]:
    out = []
    for m in _GENUS_BINOMIAL.finditer(text):
        genus = m.group(1).lower()
        species = m.group(2).split()[0].split("-")[0]
        if genus.endswith(".") or genus in genera:
            if genus.endswith(".") and species in ("coli", "aureus", "pneumoniae", "pyogenes", "agalactiae", "difficile",
                                                   "gonorrhoeae", "meningitidis", "influenzae", "epidermidis",
                                                   "albicans", "pylori", "faecalis", "aeruginosa", "jirovecii",
                                                   "trachomatis", "pallidum", "vaginalis", "lamblia", "marcescens"):
                out.append(Entity("organism", f"{genus[0]}. {species}", m.start(), m.end()))
            elif not genus.endswith("."):
                out.append(Entity("organism", f"{genus[0]}. {species}", m.start(), m.end()))
    for m in re.finditer(r"\b([A-Z][a-z]+)\b", text):
        if m.group(1).lower() in genera and not any(e.start <= m.start() < e.end for e in out):
            out.append(Entity("organism", m.group(1).lower(), m.start(), m.end()))
    for m in _VIRUS.finditer(text):
        if not any(e.start <= m.start() < e.end for e in out):
            out.append(Entity("organism", " ".join(m.group(1).lower().replace("-", " ").split()), m.start(), m.end()))
    return out


def _organism_key(name: str) -> str:
    """"Streptococcus pneumoniae", "S. pneumoniae" and "pneumococcus" are one organism: "s. pneumoniae"."""
    words = name.lower().split()
    if len(words) == 2 and words[0].rstrip(".").isalpha() and not words[1].startswith("virus") and words[0] not in (
            "herpes", "hepatitis", "measles", "mumps", "rubella", "rabies", "influenza", "zika", "dengue", "ebola",
            "human", "respiratory", "group"):
        return f"{words[0][0]}. {words[1]}"
    return " ".join(words)


@lru_cache(maxsize=8192)
def extract_entities(sentence: str) -> tuple[Entity, ...]:
    """Every clinical fact in one sentence (cached: the same sentence is checked many times)."""
    lexicon = get_lexicon()
    entities: list[Entity] = []
    organisms = _organisms(sentence, lexicon.genera)
    entities.extend(organisms)
    for e in _lexicon_entities(sentence):
        if any(o.start <= e.start < o.end or e.start <= o.start < e.end for o in organisms):
            continue  # the binomial already covers it
        if e.kind == "organism":
            e = Entity("organism", _organism_key(e.key), e.start, e.end)
        entities.append(e)
    quantities = _quantities(sentence)
    entities.extend(quantities)
    # measurement: label + the first quantity after it, with no other label in between
    labels = [(m.start(), m.end(), _LABELS[m.group(1).lower()]) for m in LABEL.finditer(sentence)]
    for q in quantities:
        before = [lab for lab in labels if lab[1] <= q.start and q.start - lab[1] <= 40]
        if before:
            label = before[-1]
            between = sentence[label[1] : q.start]
            if not any(other.start >= label[1] and other.end <= q.start for other in quantities) and "." not in between.strip(". "):
                entities.append(Entity("measurement", f"{label[2]}={q.key}", label[0], q.end))
    for m in LATERALITY.finditer(sentence):
        word = m.group(1).lower()
        entities.append(Entity("laterality", _LATERAL_CANON.get(word, word), m.start(), m.end()))
    for m in PROCEDURE.finditer(sentence):
        entities.append(Entity("procedure", m.group().lower(), m.start(), m.end()))
    # negation: the facts inside each cue's scope (to the clause end)
    facts = [e for e in entities if e.kind in ("drug", "disease", "organism", "procedure")]
    negated = False
    for m in NEGATION.finditer(sentence):
        negated = True
        end_match = _SCOPE_END.search(sentence, m.end())
        scope_end = end_match.start() if end_match else len(sentence)
        for e in facts:
            if m.end() <= e.start < scope_end:
                entities.append(Entity("negation", f"neg:{e.kind}:{e.key}", m.start(), e.end))
    if negated:
        entities.append(Entity("negation", "negated", 0, 0))
    return tuple(entities)


def entity_counts(sentence: str) -> dict[str, Counter]:
    """Entities of one sentence as ``kind -> Counter(key)`` (negation keys deduplicated)."""
    counts: dict[str, Counter] = {kind: Counter() for kind in ENTITY_KINDS}
    for e in extract_entities(sentence):
        counts[e.kind][e.key] += 1
    counts["negation"] = Counter(set(counts["negation"]))
    return counts


def entity_diff(before: str, after: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per kind, the facts removed from and added to ``before`` (only kinds that differ)."""
    a, b = entity_counts(before), entity_counts(after)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for kind in ENTITY_KINDS:
        removed = sorted((a[kind] - b[kind]).elements())
        added = sorted((b[kind] - a[kind]).elements())
        if removed or added:
            out[kind] = (removed, added)
    return out
