"""The offline backend: a deterministic, rule-based one-sentence paraphraser and reasoning writer.

Used when no API key and no base URL are set (the embedded ``make run``), and by the fake OpenAI
server in tests to answer like a model would. Rules only touch connective wording (verbs like
"shows", framing like "comes to the physician because of", sentence-initial pronouns), never a
number, unit, drug, diagnosis, organism or negation, so the verifier accepts most MEDEC notes.
Every record it produces says ``model_written: false``.
"""

from __future__ import annotations

import difflib
import hashlib
import re

OFFLINE_MODEL = "medserl-offline-rules-v1"

# (pattern, replacement): applied to one sentence; ordered from most to least specific
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"\bcomes to the (physician|emergency department|clinic|office)( accompanied by [^,.]+)? because of\b", r"presents to the \1\2 with"),
    (r"\bcomes to the (physician|emergency department|clinic|office)\b", r"presents to the \1"),
    (r"\bis brought to the (physician|emergency department|clinic|hospital)\b", r"is taken to the \1"),
    (r"\bwas brought to the (physician|emergency department|clinic|hospital)\b", r"was taken to the \1"),
    (r"\b(He|She) has a (\d+-\w+ )?history of\b", r"The patient has a \2history of"),
    (r"\bcomplains of\b", "reports"),
    (r"\bis notable for\b", "is remarkable for"),
    (r"\bwas notable for\b", "was remarkable for"),
    (r"\bconsistent with\b", "in keeping with"),
    (r"\bdemonstrates\b", "shows"),
    (r"\bdemonstrated\b", "showed"),
    (r"\bshows\b", "reveals"),
    (r"\bshowed\b", "revealed"),
    (r"\breveals\b", "shows"),
    (r"\brevealed\b", "showed"),
    (r"\bunderwent\b", "had"),
    (r"\bapproximately\b", "about"),
    (r"\bsubsequently\b", "later"),
    (r"\bCurrent medications include\b", "Current medications consist of"),
    (r"\bbecause of\b", "due to"),
    (r"\bstates that\b", "reports that"),
    (r"\b(is|are|was|were) started\b", r"\1 initiated"),
    (r"\bthen\b", "subsequently"),
    (r"^(He|She) (is|was|has|had|reports|works|lives|takes|drinks|smokes|appears|denies|does) ", r"The patient \2 "),
    (r"^The patient\b", "This patient"),
]]
_FALLBACK_PREFIX = "Of note, "
_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"\S+")


def _rewrite(sentence: str) -> str | None:
    """The sentence with the first applicable rule applied once, or None if no rule applies.

    One rule only: chaining rules could undo each other (shows -> reveals -> shows).
    """
    for pattern, replacement in _RULES:
        new = pattern.sub(replacement, sentence, count=1)
        if new != sentence:
            return new
    return None


def _fallback(sentence: str) -> str | None:
    """'Of note, ' before a sentence that starts with a common word (never before a name or acronym)."""
    words = sentence.split()
    if len(words) < 5 or words[0] not in _FALLBACK_STARTS:
        return None
    return _FALLBACK_PREFIX + " ".join([words[0].lower(), *words[1:]])


_FALLBACK_STARTS = ("A", "An", "The", "His", "Her", "He", "She", "There", "On", "In", "After", "During", "Physical",
                    "Examination", "Laboratory", "Vital", "Blood", "Serum", "Urine", "Temperature")


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def paraphrase_candidates(sentences: list[tuple[int, str]]) -> list[tuple[tuple[int, int], int, str]]:
    """Every (risk, sentence id, rewrite) the rules can make, safest first.

    Risk = (0 for a wording rule / 1 for the 'Of note' fallback, digits in the sentence).
    """
    found = []
    for sid, text in sentences:
        if len(_WORD.findall(text)) < 4:
            continue
        digits = len(_DIGIT.findall(text))
        new = _rewrite(text)
        if new is not None:
            found.append(((0, digits), sid, new))
        elif (new := _fallback(text)) is not None:
            found.append(((1, digits), sid, new))
    found.sort()
    return found


def offline_paraphrase(sentences: list[tuple[int, str]], pair_id: str, attempt: int) -> tuple[int, str] | None:
    """One (sentence id, paraphrase) for this pair and try; None if the rules cannot rewrite the note.

    Among the safest candidates the choice depends on the pair id (so the changed position varies
    across the data set) and the try (so a retry picks another sentence).
    """
    candidates = paraphrase_candidates(sentences)
    if not candidates:
        return None
    safest = [c for c in candidates if c[0] == candidates[0][0]]
    start = _stable_int(pair_id) % len(safest)
    order = safest[start:] + safest[:start] + candidates[len(safest):]
    if attempt >= len(order):
        return None
    _risk, sid, new = order[attempt]
    return sid, new


_STOPWORDS = frozenset("the a an of and or to in on at for with is was are were be been has had have this that it its "
                       "his her their patient patients which who as by from not will".split())


def _has_content_word(words: list[str]) -> bool:
    return any(len(w) > 2 and w not in _STOPWORDS for w in (re.sub(r"[^a-z0-9]", "", x.lower()) for x in words))


def changed_spans(wrong: str, right: str) -> tuple[str, str]:
    """The differing word spans of two sentences (wrong side, right side), whole words only.

    A span made only of small words ("is", "B") is widened by a word on each side until both sides
    name something a reader can find in the sentence.
    """
    a, b = wrong.split(), right.split()
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    blocks = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if not blocks:
        return wrong.strip(), right.strip()
    i1, i2 = blocks[0][1], blocks[-1][2]
    j1, j2 = blocks[0][3], blocks[-1][4]
    for _ in range(4):
        if _has_content_word(a[i1:i2]) and _has_content_word(b[j1:j2]):
            break
        i1, i2, j1, j2 = max(0, i1 - 1), min(len(a), i2 + 1), max(0, j1 - 1), min(len(b), j2 + 1)
    strip = ".,;:"
    wrong_span = " ".join(a[i1:i2]).strip(strip) or " ".join(a).strip(strip)
    right_span = " ".join(b[j1:j2]).strip(strip) or " ".join(b).strip(strip)
    return wrong_span, right_span


_IMPACT = {
    "diagnosis": "Acting on the wrong diagnosis would misdirect the work-up and treatment and delay care for the actual condition.",
    "management": "Following the wrong management plan could expose the patient to unnecessary procedures or withhold the appropriate next step.",
    "treatment": "The wrong treatment could fail to control the condition and expose the patient to avoidable harm.",
    "pharmacotherapy": "Giving the wrong medication could leave the condition untreated and cause adverse drug effects.",
    "causalOrganism": "Targeting the wrong organism would lead to inappropriate antimicrobial therapy and treatment failure.",
}


def offline_reasoning(sentences: list[tuple[int, str]], error_sentence_id: int, error_type: str,
                      error_sentence: str, corrected_sentence: str) -> dict:
    """A template explanation built only from the note: the changed span and the nearby sentences."""
    wrong, right = changed_spans(error_sentence, corrected_sentence)
    others = [text for sid, text in sentences if sid != error_sentence_id]
    # clues: the sentences with the most findings (digits, length) among the others, first words only
    ranked = sorted(others, key=lambda t: (-len(_DIGIT.findall(t)), -len(t)))[:3]
    clues = [" ".join(t.split()[:14]).rstrip(",;:") for t in ranked]
    return {
        "why_wrong": f"The note states {wrong} where the rest of the presentation supports {right}; "
                     f"this is a {error_type} error.",
        "key_clues": clues,
        "clinical_impact": _IMPACT.get(error_type, "Acting on the wrong statement could harm the patient."),
        "wrong_finding": wrong,
        "right_finding": right,
    }
