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
  English stop words and general clinical-prose words): catches "scaphoid" -> "trapezium" or
  "oligoarticular" -> "systemic", where the whole-entity lexicons see the same head ("fracture").

All matching is on lower-cased word tokens with compiled regexes and dictionary lookups: no model,
so a verification takes microseconds.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from services.verifier.lexicons import get_lexicon

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

_NEGATION_WORDS = frozenset("no not denies denied deny denying without absent never none neither nor cannot".split())
_NEGATION_BIGRAMS = frozenset({"negative for", "absence of", "free of", "ruled out", "rules out", "unable to",
                               "fails to", "failed to", "rule out"})
_SCOPE_END_WORDS = frozenset("but however although though except yet whereas which".split())
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
    discharged consult consultation ligated ligation suture sutured incision amputation""".split()
)
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
        elif m.group("unit"):
            unit = _UNIT_CANON.get(m.group("unit").lower(), m.group("unit").lower())
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


def _terms(sentence: str, tokens: list[tuple[str, int, int]], entities: list[Entity],
           vocabulary: frozenset[str]) -> list[Entity]:
    """Medical words: the modifiers that make a diagnosis or a procedure what it is ("scaphoid fracture",
    "oligoarticular arthritis", "radical orchiectomy"). Words inside a drug, organism or laterality
    mention, or in a number/vital/lab with its unit and label, are those kinds' business (a brand and its
    generic are one drug; "pulse 106/min" and "heart rate 106 beats per minute" are one measurement)."""
    excluded = [(e.start, e.end) for e in entities
                if e.kind in ("drug", "organism", "laterality", "quantity", "measurement")]
    out = []
    for word, start, end in tokens:
        eponym = (start > 1 and len(word) >= 4 and sentence[start].isupper() and sentence[start - 1] == " "
                  and sentence[start - 2] not in ".!?:")
        if (word in vocabulary or eponym) and not any(a <= start < b for a, b in excluded):
            out.append(Entity("term", word, start, end))
    return out


def _tokens(sentence: str) -> list[tuple[str, int, int]]:
    lower = sentence.lower()
    if len(lower) != len(sentence):  # a few Unicode letters change length when lower-cased
        lower = "".join(c.lower()[:1] or c for c in sentence)
    return [(m.group(), m.start(), m.end()) for m in _TOKEN_SPAN.finditer(lower)]


@lru_cache(maxsize=16384)
def extract_entities(sentence: str) -> tuple[Entity, ...]:
    """Every clinical fact in one sentence (cached: the same sentence is checked many times)."""
    lexicon = get_lexicon()
    tokens = _tokens(sentence)
    entities: list[Entity] = []
    organisms = _organisms(sentence, tokens, lexicon.genera)
    entities.extend(organisms)
    for e in _lexicon_entities(tokens, lexicon.terms, lexicon.prefixes):
        if any(o.start <= e.start < o.end or e.start <= o.start < e.end for o in organisms):
            continue  # the binomial already covers it
        if e.kind == "organism":
            e = Entity("organism", _organism_key(e.key), e.start, e.end)
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
    for i, (word, start, end) in enumerate(tokens):
        if word in _LATERAL:
            entities.append(Entity("laterality", _LATERAL[word], start, end))
        if word in _NEGATION_WORDS:
            cues.append(end)
        elif word == "t" and i > 0 and tokens[i - 1][0].endswith("n") and sentence[start - 1:start] in ("'", "\u2019"):
            cues.append(end)
        if word in _PROC_WORDS or (len(word) > 6 and word.endswith(_PROC_SUFFIXES)):
            entities.append(Entity("procedure", word, start, end))
            continue
        if word not in _PHRASE_FIRST_WORDS or i + 1 >= n:
            continue
        bigram = f"{word} {tokens[i + 1][0]}"
        if bigram in _NEGATION_BIGRAMS:
            cues.append(tokens[i + 1][2])
        elif bigram in _PROC_PHRASES:
            entities.append(Entity("procedure", bigram, start, tokens[i + 1][2]))
        elif i + 2 < n and f"{bigram} {tokens[i + 2][0]}" in _PROC_PHRASES:
            entities.append(Entity("procedure", f"{bigram} {tokens[i + 2][0]}", start, tokens[i + 2][2]))
    entities.extend(_terms(sentence, tokens, entities, vocabulary))
    if cues:
        # negation: the facts inside each cue's scope (to the end of the clause)
        facts = [e for e in entities if e.kind in ("drug", "disease", "organism", "procedure")]
        for cue_end in cues:
            punct = _SCOPE_END_PUNCT.search(sentence, cue_end)
            scope_end = punct.start() if punct else len(sentence)
            for word, start, _end in tokens:
                if cue_end <= start < scope_end and word in _SCOPE_END_WORDS:
                    scope_end = start
                    break
            for e in facts:
                if cue_end <= e.start < scope_end:
                    entities.append(Entity("negation", f"neg:{e.kind}:{e.key}", cue_end, e.end))
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


def entity_diff(before: str, after: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per kind, the facts removed from and added to ``before`` (only kinds that differ)."""
    a, b = _counts(before), _counts(after)
    out: dict[str, tuple[list[str], list[str]]] = {}
    empty: Counter = Counter()
    for kind in ENTITY_KINDS:
        ca, cb = a.get(kind, empty), b.get(kind, empty)
        if ca == cb:
            continue
        removed = sorted((ca - cb).elements())
        added = sorted((cb - ca).elements())
        if removed or added:
            out[kind] = (removed, added)
    return out
