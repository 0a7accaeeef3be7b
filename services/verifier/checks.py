"""Named verifier checks for the three modes. Each check returns pass/fail with a detail.

``verify(mode, original, modified, ...)`` compares two numbered-sentence lists:

* ``paraphrase`` (a CORRECT SFT example or a paraphrase rollout): exactly one sentence changed, it
  really changed (not whitespace/case only), every other sentence is byte-identical, every clinical
  fact of every kind is preserved (drugs, quantities, vitals/labs, diseases, organisms, negation,
  laterality, procedures), and the new sentence's length is within bounds.
* ``medec_incorrect`` (an INCORRECT SFT example): ``original`` is the corrected note,
  ``modified`` the MEDEC incorrect note. The error sentence id is the one sentence that differs; when
  the MEDEC note itself is passed (``medec_reference``) the note is byte-identical to it; when
  reasoning is given it names the wrong and the right finding, cites a clue found in the note and
  states a clinical impact.
* ``inject`` (an error rollout): exactly one sentence changed, at least one clinical fact was
  added, removed or swapped in it, and the claimed error type fits what changed.

In ``paraphrase`` and ``inject`` mode a non-negative ``error_sentence_id`` is the id the edit claims
to have changed (``changed_id_matches_claim``); an id outside the note is a bad request.

Precision on safe paraphrases (issue 15): in RL a false rejection is a penalty for correct behaviour,
so the entity checks tell a rewording from a changed fact (``services/verifier/entities.py``; measured
by ``bench/bench_verifier_precision.py`` on ``tests/data/verifier_precision_edits.jsonl``):

* Common words in context: a medical-vocabulary word that is also everyday English ("presence",
  "onset", "identified"; ``lexicons.COMMON_ENGLISH``) is a weak term (``~word``). ``term_preserved``
  and inject's ``clinical_entity_changed`` count weak terms only where the sentence's clinical
  entities change too; on their own they are wording. English words that do change a finding
  ("major"/"minor", "low", "dry"/"moist", "watery"/"bloody"; ``lexicons.CLINICAL_MODIFIERS``), a
  "non-" word ("non-blanching") and hypo-/hyper- words ("hypoechoic") are ordinary terms.
* Word forms: a disease, term or procedure still present in the other sentence in another form
  ("is enlarged" / "enlargement", "was intubated" / "underwent intubation") is not a change; a
  procedure's names are one procedure ("EKG" = "electrocardiogram", "CT" = "computed tomography"),
  an abbreviation and its spelled-out diagnosis are one disease ("PTSD"), words of a vital/lab name
  ("blood pressure") and of a whole entity are not terms of their own.
* Eponyms: a capitalised word mid-sentence is a term (an eponym such as "Tanner"), but not the first
  word after a sentence opener ("Of note, Physical examination ...", "Notably, Gram stain ...").
* Negation: a cue's scope ends at the clause's verb ("No abnormalities are shown on an
  electrocardiogram" negates no procedure); a term right after "not" is negated ("are not
  painful"); "refrain from" is a cue. With two sides in a sentence each side is bound to its finding,
  so swapping them is a laterality change while reordering the clauses is not.
* Inject-mode fallback for swaps between clinical terms outside ICD-10-CM: words shaped like a
  clinical term ("fibroma" -> "thecoma", "IgG" -> "IgM"; ``lexicons.CLINICAL_SUFFIXES`` and
  ``CLINICAL_WORDS``) are terms, an ordinal before a diagnosis is one ("second branchial cleft cyst"),
  an organism's type number is part of it ("herpes simplex virus type 2"), dose frequencies
  ("weekly") are quantities. When still nothing changed, a swapped word that no lexicon knows but
  that is one typing slip from a drug or procedure name ("wafarin") counts as a changed term (and
  fails ``term_preserved`` in paraphrase mode). Inject's length bounds treat a sentence under
  ``INJECT_LENGTH_FLOOR`` characters as that long, so a short sentence may become a normal one.

Why named checks: the SFT report shows pass rates per check, and the RL gate tells the learner why a
rollout was rejected.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from medserl.v1 import messages_pb2 as pb
from services.common.formats import ERROR_TYPES  # the one list of MEDEC error types
from services.common.notes import MAX_NOTE_CHARS, MAX_SENTENCES
from services.verifier.entities import ENTITY_KINDS, entity_diff, near_clinical_word

MODES = ("paraphrase", "medec_incorrect", "inject")
MODE_TO_PROTO = {"paraphrase": pb.MODE_PARAPHRASE, "inject": pb.MODE_INJECT, "medec_incorrect": pb.MODE_MEDEC_INCORRECT}
PROTO_TO_MODE = {v: k for k, v in MODE_TO_PROTO.items()}

# Length bounds for the changed sentence, relative to the original (characters).
PARAPHRASE_LENGTH = (0.5, 2.0)
INJECT_LENGTH = (0.3, 3.0)
MIN_SENTENCE_CHARS = 3
# inject mode measures both sentences as at least this long: a short sentence may become a normal one
# ("Colposcopy is ordered." -> a 94-character follow-up plan is a real MEDEC error), and a long one may
# become a short one ("Chest tube was placed.")
INJECT_LENGTH_FLOOR = 40

# Which changed entity kinds make each claimed MEDEC error type plausible.
# ("term" = a word of the medical vocabulary changed where no whole entity did.)
TYPE_FITS: dict[str, frozenset[str]] = {
    "causalOrganism": frozenset({"organism", "term"}),
    "pharmacotherapy": frozenset({"drug", "quantity", "measurement", "term"}),
    "diagnosis": frozenset({"disease", "organism", "negation", "laterality", "term"}),
    "treatment": frozenset({"drug", "procedure", "quantity", "disease", "term"}),
    "management": frozenset({"procedure", "drug", "quantity", "measurement", "disease", "negation", "laterality",
                             "term"}),
}
# paraphrase check names per entity kind
PRESERVE_CHECKS = {kind: f"{kind}_preserved" for kind in ENTITY_KINDS}


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class VerificationResult:
    mode: str
    checks: list[CheckResult] = field(default_factory=list)
    changed_sentence_ids: list[int] = field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "changed_sentence_ids": list(self.changed_sentence_ids), "latency_ms": round(self.latency_ms, 4)}

    def to_proto(self, subject_id: str, mode: int | None = None) -> pb.VerificationReport:
        return pb.VerificationReport(
            subject_id=subject_id, mode=MODE_TO_PROTO.get(self.mode, pb.MODE_UNSPECIFIED) if mode is None else mode,
            passed=self.passed, checks=[pb.Check(name=c.name, passed=c.passed, detail=c.detail) for c in self.checks],
            changed_sentence_ids=self.changed_sentence_ids, latency_ms=self.latency_ms,
        )

    @classmethod
    def from_proto(cls, report: pb.VerificationReport) -> VerificationResult:
        return cls(mode=PROTO_TO_MODE.get(report.mode, "unspecified"),
                   checks=[CheckResult(c.name, c.passed, c.detail) for c in report.checks],
                   changed_sentence_ids=list(report.changed_sentence_ids), latency_ms=report.latency_ms)


class VerifyInputError(ValueError):
    """The request itself is unusable (unknown mode, empty note, bad ids): not a failed check."""




def validate_sentences(sentences: Sequence[tuple[int, str]], what: str) -> None:
    """Reject notes no check can judge: empty, huge, duplicate or negative ids."""
    if not sentences:
        raise VerifyInputError(f"{what} note has no sentences")
    if len(sentences) > MAX_SENTENCES:
        raise VerifyInputError(f"{what} note has {len(sentences)} sentences (limit {MAX_SENTENCES})")
    total = 0
    seen: set[int] = set()
    for item in sentences:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise VerifyInputError(f"{what} note: a sentence must be [id, text], got {type(item).__name__}")
        sid, text = item
        if not isinstance(sid, int) or isinstance(sid, bool) or sid < 0:
            raise VerifyInputError(f"{what} note: sentence id {sid!r} is not a non-negative integer")
        if sid in seen:
            raise VerifyInputError(f"{what} note: duplicate sentence id {sid}")
        if not isinstance(text, str):
            raise VerifyInputError(f"{what} note: sentence {sid} is not text")
        seen.add(sid)
        total += len(text)
    if total > MAX_NOTE_CHARS:
        raise VerifyInputError(f"{what} note has {total} characters (limit {MAX_NOTE_CHARS})")
    if total == 0 or all(not t.strip() for _, t in sentences):
        raise VerifyInputError(f"{what} note is empty")


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _diff_checks(original: Sequence[tuple[int, str]], modified: Sequence[tuple[int, str]],
                 checks: list[CheckResult]) -> list[int]:
    """Shared sentence-diff checks; returns the ids of the changed sentences."""
    orig, mod = dict(original), dict(modified)
    missing = sorted(set(orig) - set(mod))
    extra = sorted(set(mod) - set(orig))
    checks.append(CheckResult("sentence_ids_match", not missing and not extra,
                              "same sentence ids" if not missing and not extra
                              else f"missing ids {missing[:10]}, extra ids {extra[:10]}"))
    changed = sorted(i for i in orig if i in mod and orig[i] != mod[i])
    changed_all = sorted(changed + extra)
    checks.append(CheckResult("exactly_one_changed", len(changed_all) == 1 and not missing,
                              f"changed sentence ids {changed_all[:20]}" if changed_all else "no sentence changed"))
    others = changed_all[1:] + missing
    checks.append(CheckResult("others_byte_identical", not others,
                              "all other sentences byte-identical" if not others
                              else f"sentences {others[:20]} also differ"))
    return changed_all


def _length_check(before: str, after: str, bounds: tuple[float, float], floor: int = 1) -> CheckResult:
    lo, hi = bounds
    ratio = max(floor, len(after)) / max(floor, len(before))
    ok = lo <= ratio <= hi and len(after.strip()) >= MIN_SENTENCE_CHARS
    measured = f" (lengths under {floor} count as {floor})" if floor > 1 else ""
    return CheckResult("length_within_bounds", ok, f"new/old length {len(after)}/{len(before)} = {ratio:.2f} "
                       f"(allowed {lo}-{hi}){measured}")


def _fmt(items: list[str]) -> str:
    return ", ".join(items[:6]) + (" ..." if len(items) > 6 else "")


def verify(mode: str, original: list[tuple[int, str]], modified: list[tuple[int, str]], *,
           error_sentence_id: int | None = None, claimed_error_type: str | None = None,
           reasoning: dict | None = None, medec_reference: list[tuple[int, str]] | None = None) -> VerificationResult:
    """Run every check of ``mode``. Raises :class:`VerifyInputError` for an unusable request."""
    started = time.perf_counter()
    if mode not in MODES:
        raise VerifyInputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    original = [tuple(x) if isinstance(x, list) else x for x in original]  # JSON gives [id, text] lists
    modified = [tuple(x) if isinstance(x, list) else x for x in modified]
    validate_sentences(original, "original")
    validate_sentences(modified, "modified")
    result = VerificationResult(mode=mode)
    checks = result.checks
    if mode == "medec_incorrect":
        _medec_checks(original, modified, error_sentence_id, reasoning, medec_reference, result)
    else:
        changed = _diff_checks(original, modified, checks)
        result.changed_sentence_ids = changed
        orig, mod = dict(original), dict(modified)
        if error_sentence_id is not None and error_sentence_id >= 0:
            # the id the edit claims to change (the reward is computed on it): must be the one changed
            if error_sentence_id not in orig:
                raise VerifyInputError(f"claimed sentence id {error_sentence_id} is not in the note "
                                       f"(ids {min(orig)}..{max(orig)})")
            ok = changed == [error_sentence_id]
            checks.append(CheckResult("changed_id_matches_claim", ok, f"sentence {error_sentence_id} changed" if ok
                                      else f"claimed {error_sentence_id}, changed {changed[:20]}"))
        target = changed[0] if changed and changed[0] in orig and changed[0] in mod else None
        before = orig.get(target, "") if target is not None else ""
        after = mod.get(target, "") if target is not None else ""
        real = target is not None and _norm(before) != _norm(after)
        checks.append(CheckResult("real_change", real, "the sentence was reworded" if real else
                                  ("no sentence changed" if target is None else "only whitespace or case changed")))
        diff = entity_diff(before, after) if target is not None else {}
        if mode == "paraphrase":
            others_changed = any(kind != "term" for kind in diff)
            for kind in ENTITY_KINDS:
                removed, added = diff.get(kind, ([], []))
                changed = removed + added
                if kind == "term" and not others_changed:
                    changed = [k for k in changed if not k.startswith("~")]  # wording, no clinical change
                ok = target is not None and not changed
                detail = "preserved" if ok else ("no changed sentence to compare" if target is None else
                                                 f"removed [{_fmt(removed)}] added [{_fmt(added)}]")
                if kind == "term" and ok and not diff:
                    slips = _slipped_words(before, after)  # "Heparin and wafarin" -> "Heparin"
                    if slips:
                        ok, detail = False, f"changed a word one slip from a clinical term [{_fmt(slips)}]"
                checks.append(CheckResult(PRESERVE_CHECKS[kind], ok, detail))
            checks.append(_length_check(before, after, PARAPHRASE_LENGTH) if target is not None
                          else CheckResult("length_within_bounds", False, "no changed sentence"))
        else:
            _inject_checks(diff, target, before, after, claimed_error_type, checks)
    result.latency_ms = (time.perf_counter() - started) * 1000
    return result


def _inject_checks(diff: dict, target: int | None, before: str, after: str, claimed: str | None,
                   checks: list[CheckResult]) -> None:
    changed_kinds = sorted(diff)
    # a medical word added while every original word stays is elaboration ("clear to auscultation and
    # percussion"), not an error: a term counts when one was removed, or added in place of other words
    # ("seminoma" -> "teratoma" where only the new word is in the vocabulary). Whole entities count
    # whenever added or removed; everyday-English terms ("~presence") never on their own.
    before_words = _content_words(before)
    gone = before_words - _content_words(after)
    removed_terms, added_terms = diff.get("term", ([], []))
    strong_removed = [k for k in removed_terms if not k.startswith("~")]
    strong_added = [k for k in added_terms if not k.startswith("~")]
    # "blanching" -> "non-blanching" replaces the finding even though no word went
    replaced = bool(gone) or any(k.startswith("non") and k[3:] in before_words for k in strong_added)
    entity_changed = [k for k in changed_kinds
                      if k != "term" or strong_removed or (strong_added and replaced)]
    summary = "; ".join(f"{k}: -[{_fmt(r)}] +[{_fmt(a)}]" for k, (r, a) in diff.items())
    if not entity_changed and target is not None:
        # fallback: a swapped word one typing slip from a drug or procedure name ("wafarin")
        slips = _slipped_words(before, after)
        if slips:
            entity_changed = ["term"]
            summary = f"term: near a clinical word [{_fmt(slips)}]"
    checks.append(CheckResult("clinical_entity_changed", target is not None and bool(entity_changed),
                              summary if entity_changed else "no clinical fact was added, removed or swapped"))
    if claimed is None or claimed == "":
        checks.append(CheckResult("error_type_fits", False, "no error type claimed"))
    else:
        canonical = next((t for t in ERROR_TYPES if t.lower() == claimed.strip().lower()), None)
        if canonical is None:
            checks.append(CheckResult("error_type_fits", False, f"{claimed!r} is not a MEDEC error type"))
        else:
            fits = TYPE_FITS[canonical] & set(entity_changed)
            checks.append(CheckResult("error_type_fits", bool(fits),
                                      f"{canonical} fits the changed {', '.join(sorted(fits))}" if fits else
                                      f"{canonical} needs a change in {', '.join(sorted(TYPE_FITS[canonical]))}; "
                                      f"changed: {', '.join(entity_changed) or 'nothing'}"))
    checks.append(_length_check(before, after, INJECT_LENGTH, INJECT_LENGTH_FLOOR) if target is not None
                  else CheckResult("length_within_bounds", False, "no changed sentence"))


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("the a an of and or to in on at for with is was are were be been has had have this that "
                  "it its his her their patient patients which who as by from".split())


def _slipped_words(before: str, after: str) -> list[str]:
    """Words removed or added that no lexicon knows but that are one typing slip from a clinical term."""
    a, b = _content_words(before), _content_words(after)
    return sorted(w for w in a ^ b if near_clinical_word(w))


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and (len(w) > 1 or w.isdigit())}


def _medec_checks(original, modified, error_sentence_id, reasoning, reference, result: VerificationResult) -> None:
    checks = result.checks
    orig, mod = dict(original), dict(modified)
    changed = sorted(i for i in set(orig) | set(mod) if orig.get(i) != mod.get(i))
    result.changed_sentence_ids = changed
    if reference is not None:
        ref = [(int(i), s) for i, s in reference]
        same = list(modified) == ref
        checks.append(CheckResult("matches_medec_note", same, "byte-identical to the MEDEC incorrect note" if same else
                                  "differs from the MEDEC incorrect note"))
    checks.append(CheckResult("sentence_ids_match", set(orig) == set(mod),
                              "same sentence ids" if set(orig) == set(mod) else "the notes have different sentence ids"))
    if error_sentence_id is None or error_sentence_id < 0:
        checks.append(CheckResult("error_sentence_is_the_diff", False, "no error sentence id given"))
    elif error_sentence_id not in mod:
        raise VerifyInputError(f"error sentence id {error_sentence_id} is not in the note "
                               f"(ids {min(mod)}..{max(mod)})")
    else:
        ok = changed == [error_sentence_id]
        checks.append(CheckResult("error_sentence_is_the_diff", ok,
                                  f"only sentence {error_sentence_id} differs" if ok
                                  else f"differing sentences {changed[:20]}, claimed {error_sentence_id}"))
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        checks.append(CheckResult("reasoning_names_findings", False, "reasoning is not an object"))
        return
    wrong = str(reasoning.get("wrong_finding") or "").strip()
    right = str(reasoning.get("right_finding") or "").strip()
    error_text = mod.get(error_sentence_id, "") if error_sentence_id is not None else ""
    fixed_text = orig.get(error_sentence_id, "") if error_sentence_id is not None else ""
    named = bool(_content_words(wrong) and _content_words(right) and _norm(wrong) != _norm(right))
    # a finding is grounded when it is quoted from its sentence or shares a content word with it
    wrong_grounded = _norm(wrong) in _norm(error_text) or bool(_content_words(wrong) & _content_words(error_text))
    right_grounded = _norm(right) in _norm(fixed_text) or bool(_content_words(right) & _content_words(fixed_text))
    if not named:
        detail = "wrong_finding/right_finding missing, identical or without a content word"
    elif not wrong_grounded:
        detail = "wrong_finding shares no word with the error sentence"
    elif not right_grounded:
        detail = "right_finding shares no word with the corrected sentence"
    else:
        detail = "names the wrong and the right finding"
    checks.append(CheckResult("reasoning_names_findings", named and wrong_grounded and right_grounded, detail))
    clues = reasoning.get("key_clues") or []
    if isinstance(clues, str):
        clues = [clues]
    note_text = " ".join(s for _, s in modified)
    note_norm = _norm(note_text)
    note_words = _content_words(note_text)
    cited = [c for c in clues if isinstance(c, str) and c.strip() and (
        _norm(c) in note_norm or (len(_content_words(c)) > 0
                                  and len(_content_words(c) & note_words) / len(_content_words(c)) >= 0.6))]
    checks.append(CheckResult("reasoning_cites_clue", bool(cited),
                              f"{len(cited)} of {len(clues)} clues occur in the note" if clues else "no key clues"))
    impact = str(reasoning.get("clinical_impact") or "").strip()
    checks.append(CheckResult("reasoning_states_impact", len(_content_words(impact)) >= 3,
                              "states a clinical impact" if len(_content_words(impact)) >= 3
                              else "clinical_impact missing or too short"))
