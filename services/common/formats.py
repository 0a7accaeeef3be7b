"""Task formats of the two RL roles: the ONE place prompts and outputs are defined.

SFT, inference (injector/assessor services), the verifier and the reward all import from here, so a
model trained on these strings is scored with exactly the parser that matches them.

Format version ``FORMAT_VERSION`` (bump it whenever a prompt or an output layout changes: SFT data
and checkpoints record it).

Prompts (system + user chat messages)
-------------------------------------
The note is shown as numbered sentences, one per line, ``[<id>] <sentence>`` (ids 0..n-1, MEDEC
style). The assessor sees ONLY the numbered sentences: never a note id, a file name or a
neighbouring note (MEDEC's twin notes sit at adjacent ids; an id-adjacency rule alone scores ~0.99).

Outputs (the assistant turn): short ``key: value`` lines, one field per line, fixed order
----------------------------------------------------------------------------------------
Assessor (MEDEC verdict)::

    error_flag: 1
    error_sentence_id: 3
    corrected_sentence: The patient was started on amoxicillin.

and with no error::

    error_flag: 0
    error_sentence_id: -1
    corrected_sentence: NA

Injector (a span edit of one sentence)::

    sentence_id: 3
    old: amoxicillin
    new: doxycycline
    error_type: pharmacotherapy
    reasoning: doxycycline is contraindicated in a child this young.

``old`` is the exact words of sentence ``sentence_id`` to replace and ``new`` what replaces them
(``apply_edit`` builds the new sentence; ``new`` may be empty to delete words). ``error_type`` is one
of ``ERROR_TYPES`` or ``none`` (paraphrase mode); ``reasoning`` may be empty. The sentence form of
format v1 (``new_sentence: <the whole new sentence>`` instead of ``old``/``new``) still parses and is
what ``render_injector_edit`` writes for an edit built with a whole sentence.
Values are single lines: a line break inside a value (MEDEC has a few corrected sentences with
blank lines in them) is rendered as one space, and the SFT targets are normalised the same way.

Why this layout: a 2-layer CPU model learns a fixed key/value layout in a few hundred steps, and
Qwen3-4B follows it reliably from the instructions alone; it needs no JSON escaping (notes are full
of quotes and slashes), and a truncated output is detectable (a required line is missing). Why a span
and not the whole new sentence: a small model cannot copy a 25-token sentence reliably (a tiny CPU
model trained on the sentence form wrote 48% parseable and 6% verifier-valid edits, mostly because
the copied sentence ran on past its end); the words it changes are a few tokens, every other word of
the sentence is kept by construction, as every other sentence of the note is.

Parsers never raise: model garbage (empty, truncated, wrong ids, extra prose, Markdown bold or code
fences, Qwen3 ``<think>...</think>`` blocks, a JSON object instead of lines) returns either a parsed
value or ``ParseFailure(reason, raw)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

FORMAT_VERSION = "medserl-format-v2"  # v2: the injector writes a span edit

ERROR_TYPES = ("diagnosis", "management", "treatment", "pharmacotherapy", "causalOrganism")
MODES = ("paraphrase", "inject")
ROLES = ("assessor", "injector")
NO_ERROR_TYPE = "none"
NA = "NA"  # MEDEC's "no corrected sentence"

# keys of the output lines, in render order
ASSESSOR_KEYS = ("error_flag", "error_sentence_id", "corrected_sentence")
INJECTOR_KEYS = ("sentence_id", "old", "new", "error_type", "reasoning")
SENTENCE_FORM_KEY = "new_sentence"  # format v1's whole-sentence edit, still accepted
# strings a tokenizer should keep whole (the tiny model's BPE adds them to its training corpus)
FORMAT_STRINGS = (*ASSESSOR_KEYS, *INJECTOR_KEYS, SENTENCE_FORM_KEY, *ERROR_TYPES, NO_ERROR_TYPE, NA, *MODES)

MAX_REASONING_CHARS = 300

# kwargs for ``tokenizer.apply_chat_template`` in SFT and at inference: Qwen3 then puts an empty
# ``<think></think>`` block in the prompt and the model answers directly (other templates ignore it).
CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}

Sentences = Sequence[tuple[int, str]]


@dataclass(frozen=True)
class InjectorEdit:
    """The injector's answer: one edit of sentence ``sentence_id``.

    Two forms. A span edit (what the injector writes): replace the words ``old`` of the sentence with
    ``new``; ``new_sentence`` is then None until ``resolve_edit`` computes it from the note. A
    sentence edit (``old`` None; the generator's paraphrases, format v1): the sentence becomes
    ``new_sentence``. ``apply_edit`` takes either.
    """

    sentence_id: int
    new_sentence: str | None = None  # the whole new sentence (given, or computed by ``resolve_edit``)
    error_type: str | None = None  # None in paraphrase mode
    reasoning: str = ""
    old: str | None = None  # span edit: the exact words of the sentence to replace
    new: str | None = None  # span edit: what replaces them ("" deletes them)

    @property
    def is_span(self) -> bool:
        return self.old is not None


@dataclass(frozen=True)
class AssessorOutput:
    """A MEDEC verdict. ``sentence_id`` is -1 and ``corrected_sentence`` None when there is no error."""

    error_flag: bool
    sentence_id: int
    corrected_sentence: str | None


@dataclass(frozen=True)
class ParseFailure:
    """Why a model output could not be read (``raw`` is the text as given)."""

    reason: str
    raw: str

    def __bool__(self) -> bool:  # lets callers write ``if not parsed:``
        return False


# ---------------------------------------------------------------------------------------------
# prompts

ASSESSOR_SYSTEM = (
    "You are a careful physician reviewing a clinical note for a medical error. The note is given as "
    "numbered sentences. At most one sentence contains an error (a wrong diagnosis, management, "
    "treatment, pharmacotherapy or causal organism). Answer with exactly three lines:\n"
    "error_flag: 1 if the note has an error, else 0\n"
    "error_sentence_id: the number of the wrong sentence, or -1\n"
    "corrected_sentence: the wrong sentence rewritten correctly, or NA\n"
    "Write nothing else."
)

INJECTOR_SYSTEM = (
    "You edit clinical notes to build training data for an error detector. The note is given as "
    "numbered sentences and is correct. Change exactly ONE sentence and keep every other sentence "
    "as it is.\n"
    "Mode paraphrase: reword the sentence safely; keep every medication, dose, number with its unit, "
    "diagnosis and organism exactly; error_type is none.\n"
    "Mode inject: introduce one realistic, clinically significant error of type diagnosis, "
    "management, treatment, pharmacotherapy or causalOrganism that a careful reader could detect.\n"
    "Answer with exactly five lines:\n"
    "sentence_id: the number of the sentence you changed\n"
    "old: the exact words of that sentence you replace, copied as they are\n"
    "new: the words that replace them\n"
    "error_type: diagnosis, management, treatment, pharmacotherapy, causalOrganism or none\n"
    "reasoning: one short sentence on what you changed and why\n"
    "Write nothing else."
)


_LINE_BREAKS = re.compile(r"[ \t]*[\r\n][\s]*")


def one_line(text: str) -> str:
    """Values are single lines: a line break (and the blanks around it) becomes one space."""
    return _LINE_BREAKS.sub(" ", text).strip()


# Chat-template control strings spelled in note text (``<|im_end|>``, ``<think>``, ``</s>``, DeepSeek's
# ``<｜...｜>``): a zero-width space after the ``<`` keeps them readable but never a special token, so a
# note cannot close its turn and pre-write the verdict (issue 12). ``<5 mg`` and ``< 10`` are untouched.
_CONTROL_LIKE = re.compile(r"<(?=[|\uff5c]|/?[A-Za-z_][\w.:-]{0,40}>)")


def neutralise_control_tokens(text: str) -> str:
    return _CONTROL_LIKE.sub("<\u200b", text)


def render_note(sentences: Sentences) -> str:
    """Numbered sentences, one per line: ``[<id>] <sentence>``; control-token spellings neutralised."""
    return "\n".join(f"[{int(sid)}] {neutralise_control_tokens(one_line(str(text)))}" for sid, text in sentences)


def assessor_messages(sentences: Sentences) -> list[dict]:
    """System + user messages asking for a MEDEC verdict on a note (numbered sentences only)."""
    user = f"Note:\n{render_note(sentences)}\n\nIs there a medical error in this note?"
    return [{"role": "system", "content": ASSESSOR_SYSTEM}, {"role": "user", "content": user}]


def injector_messages(sentences: Sentences, mode: str) -> list[dict]:
    """System + user messages asking the injector for one edit in ``mode`` (paraphrase | inject)."""
    if mode not in MODES:
        raise ValueError(f"unknown injector mode {mode!r}; expected one of {MODES}")
    user = f"Mode: {mode}\nNote:\n{render_note(sentences)}"
    return [{"role": "system", "content": INJECTOR_SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------------------------
# rendering


def render_assessor_output(out: AssessorOutput) -> str:
    if not out.error_flag:
        return f"error_flag: 0\nerror_sentence_id: -1\ncorrected_sentence: {NA}"
    corrected = one_line(out.corrected_sentence) if out.corrected_sentence else NA
    return f"error_flag: 1\nerror_sentence_id: {int(out.sentence_id)}\ncorrected_sentence: {corrected}"


def render_injector_edit(edit: InjectorEdit) -> str:
    """The injector's answer lines: ``old``/``new`` for a span edit, ``new_sentence`` for a sentence edit."""
    error_type = edit.error_type or NO_ERROR_TYPE
    reasoning = one_line(edit.reasoning or "")
    if edit.is_span:
        change = f"old: {one_line(edit.old or '')}\nnew: {one_line(edit.new or '')}".rstrip()
    else:
        change = f"{SENTENCE_FORM_KEY}: {one_line(edit.new_sentence or '')}"
    return f"sentence_id: {int(edit.sentence_id)}\n{change}\nerror_type: {error_type}\nreasoning: {reasoning}".rstrip()


# ---------------------------------------------------------------------------------------------
# parsing (never raises)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
# an integer, optionally bracketed, optionally followed by a remark: "3", "[3]", "3.", "3 (the fourth)"
_INT = re.compile(r"^[\[(]?\s*([-+]?\d+)\s*[\])]?\.?(?:\s.*)?$")
_TYPES_BY_LOWER = {t.lower(): t for t in ERROR_TYPES}
_NONE_TYPES = {"none", "null", "na", "n/a", "no error", "-", ""}


def _strip_wrappers(text: str) -> str | ParseFailure:
    """Remove Qwen3 thinking, code fences and Markdown emphasis around the answer."""
    raw = text
    cleaned = _THINK_BLOCK.sub("", text)
    lowered = cleaned.lower()
    if "</think>" in lowered:  # the template opened <think> in the prompt: the answer follows the close
        cleaned = cleaned[lowered.rfind("</think>") + len("</think>") :]
    elif "<think>" in lowered:
        return ParseFailure("unterminated <think> block (output truncated while thinking)", raw)
    cleaned = _FENCE.sub("", cleaned)
    return cleaned.strip()


def _key_values(text: str, keys: Sequence[str]) -> dict[str, str]:
    """First ``key: value`` line for each key (tolerates bullets, bold, spaces or '=' separators)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip().lstrip("-*•> ").strip()
        match = re.match(r"^[*_`]*([A-Za-z_ ]+?)[*_`]*\s*[:=]\s*(.*)$", stripped)
        if not match:
            continue
        key = match.group(1).strip().lower().replace(" ", "_")
        if key in keys and key not in found:
            found[key] = match.group(2).strip().strip("*_`").strip()
    if found:
        return found
    return _json_key_values(text, keys)


def _json_key_values(text: str, keys: Sequence[str]) -> dict[str, str]:
    """Fallback for models that answer with a JSON object instead of lines."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return {}
    try:
        obj = json.loads(text[start : end + 1])
    except (ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, str] = {}
    for key, value in obj.items():
        norm = str(key).strip().lower().replace(" ", "_")
        if norm in keys and norm not in out:
            out[norm] = "" if value is None else str(value).strip()
    return out


def _parse_int(value: str) -> int | None:
    match = _INT.match(value.strip())
    return int(match.group(1)) if match else None


def _parse_flag(value: str) -> bool | None:
    words = value.strip().split()
    value = words[0].strip(".,;:()[]").lower() if words else ""
    if value in ("1", "yes", "true", "error", "incorrect"):
        return True
    if value in ("0", "no", "false", "none", "correct"):
        return False
    return None


def parse_assessor_output(text: str, num_sentences: int | None = None) -> AssessorOutput | ParseFailure:
    """Read a MEDEC verdict; ``num_sentences`` (when given) rejects ids outside the note."""
    return _never_raising(_parse_assessor, text, num_sentences)


def _never_raising(parse, text, *args):
    """Run ``parse`` so that a bug in it (or a non-string input) is a ParseFailure, never an exception."""
    try:
        if not isinstance(text, str):
            return ParseFailure(f"expected text, got {type(text).__name__}", repr(text))
        return parse(text, *args)
    except Exception as exc:  # a parser bug must not take a service down
        return ParseFailure(f"parser error: {type(exc).__name__}", text if isinstance(text, str) else repr(text))


def _output_fields(text: str, keys: Sequence[str]) -> dict[str, str] | ParseFailure:
    """``key: value`` lines of a model output after removing think blocks, fences and emphasis."""
    cleaned = _strip_wrappers(text)
    if isinstance(cleaned, ParseFailure):
        return cleaned
    if not cleaned:
        return ParseFailure("empty output", text)
    return _key_values(cleaned, keys)


def _parse_assessor(text: str, num_sentences: int | None) -> AssessorOutput | ParseFailure:
    fields = _output_fields(text, ASSESSOR_KEYS)
    if isinstance(fields, ParseFailure):
        return fields
    if "error_flag" not in fields:
        return ParseFailure("missing error_flag line", text)
    flag = _parse_flag(fields["error_flag"])
    if flag is None:
        return ParseFailure(f"error_flag is not 0/1: {fields['error_flag'][:40]!r}", text)
    if not flag:
        return AssessorOutput(False, -1, None)
    if "error_sentence_id" not in fields:
        return ParseFailure("error_flag is 1 but error_sentence_id is missing", text)
    sentence_id = _parse_int(fields["error_sentence_id"])
    if sentence_id is None or sentence_id < 0:
        return ParseFailure(
            f"error_sentence_id is not a sentence number: {fields['error_sentence_id'][:40]!r}", text
        )
    if num_sentences is not None and sentence_id >= num_sentences:
        return ParseFailure(
            f"error_sentence_id {sentence_id} is not in the note (0..{num_sentences - 1})", text
        )
    if "corrected_sentence" not in fields:
        return ParseFailure("error_flag is 1 but corrected_sentence is missing (truncated?)", text)
    corrected = fields["corrected_sentence"]
    return AssessorOutput(True, sentence_id, None if corrected.upper() in ("NA", "N/A", "") else corrected)


def parse_injector_edit(text: str) -> InjectorEdit | ParseFailure:
    """Read the injector's edit (whether the id exists in the note is checked by ``apply_edit``)."""
    return _never_raising(_parse_injector, text)


def _parse_injector(text: str) -> InjectorEdit | ParseFailure:
    fields = _output_fields(text, (*INJECTOR_KEYS, SENTENCE_FORM_KEY))
    if isinstance(fields, ParseFailure):
        return fields
    span = "old" in fields or SENTENCE_FORM_KEY not in fields
    for key in ("sentence_id", *(("old", "new") if span else (SENTENCE_FORM_KEY,)), "error_type"):
        if key not in fields:
            return ParseFailure(f"missing {key} line", text)
    sentence_id = _parse_int(fields["sentence_id"])
    if sentence_id is None or sentence_id < 0:
        return ParseFailure(f"sentence_id is not a sentence number: {fields['sentence_id'][:40]!r}", text)
    if span and not fields["old"]:
        return ParseFailure("old is empty (name the words to replace)", text)
    if not span and not fields[SENTENCE_FORM_KEY]:
        return ParseFailure("new_sentence is empty", text)
    raw_type = fields["error_type"].strip().strip(".")
    if raw_type.lower() in _NONE_TYPES:
        error_type = None
    elif raw_type.lower() in _TYPES_BY_LOWER:
        error_type = _TYPES_BY_LOWER[raw_type.lower()]
    else:
        return ParseFailure(
            f"unknown error_type {raw_type[:40]!r}; expected one of {ERROR_TYPES} or none", text
        )
    reasoning = fields.get("reasoning", "")
    if span:
        return InjectorEdit(sentence_id, None, error_type, reasoning, old=fields["old"], new=fields["new"])
    return InjectorEdit(sentence_id, fields[SENTENCE_FORM_KEY], error_type, reasoning)


def _span_pattern(words: Sequence[str], whole_words: bool, flags: int = 0) -> re.Pattern:
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\S){body}(?!\S)" if whole_words else body, flags)


def locate_span(sentence: str, old: str) -> tuple[int, int] | None:
    """Where the words ``old`` are in ``sentence``: (start, end) characters, or None.

    The first match of, in order: the same run of whole words (any whitespace between them, since the
    prompt shows each sentence on one line), the same characters inside words, the same case-folded.
    Deterministic, so the SFT target and the applied edit agree on which occurrence is meant.
    """
    words = old.split()
    if not words:
        return None
    for whole, flags in ((True, 0), (False, 0), (False, re.IGNORECASE)):
        match = _span_pattern(words, whole, flags).search(sentence)
        if match:
            return match.start(), match.end()
    return None


def _splice(sentence: str, start: int, end: int, new: str) -> str:
    """``sentence`` with characters start..end replaced by ``new`` (a deletion leaves one space)."""
    head, tail = sentence[:start], sentence[end:]
    if new:
        return head + new + tail
    if head and tail and not head[-1].isspace() and not tail[0].isspace():
        return head + tail
    if not tail or tail[0] in ".,;:!?)":
        return head.rstrip() + tail
    return (head.rstrip() + " " + tail.lstrip()) if head.strip() else tail.lstrip()


def resolve_edit(sentences: Sentences, edit: InjectorEdit) -> InjectorEdit | ParseFailure:
    """The edit with ``new_sentence`` filled in from the note (a span edit applied to its sentence)."""
    texts = {int(sid): str(text) for sid, text in sentences}
    if edit.sentence_id not in texts:
        return ParseFailure(
            f"sentence_id {edit.sentence_id} is not in the note ({len(texts)} sentences)",
            render_injector_edit(edit),
        )
    if not edit.is_span:
        return edit
    sentence = texts[edit.sentence_id]
    where = locate_span(sentence, edit.old or "")
    if where is None:
        return ParseFailure(f"old words are not in sentence {edit.sentence_id}", render_injector_edit(edit))
    return replace(edit, new_sentence=_splice(sentence, *where, one_line(edit.new or "")))


def apply_edit(sentences: Sentences, edit: InjectorEdit) -> list[tuple[int, str]] | ParseFailure:
    """The note with the edit applied to sentence ``edit.sentence_id`` (every other sentence as it
    was); ParseFailure when that id is not in the note or a span edit's ``old`` words are not in it."""
    resolved = resolve_edit(sentences, edit)
    if isinstance(resolved, ParseFailure):
        return resolved
    return [
        (int(sid), resolved.new_sentence if int(sid) == edit.sentence_id else text) for sid, text in sentences
    ]


def span_edit(before: str, after: str) -> tuple[str, str]:
    """(old, new): the shortest run of whole words of ``before`` whose replacement gives ``after``.

    Both are taken as the prompt shows them (one line). The run is widened by a word while ``old`` or
    ``new`` would be empty (a pure insertion or deletion: a small model learns a field that always
    holds words more easily) and until ``locate_span`` finds this occurrence first, so ``apply_edit``
    rebuilds ``after`` from ``before``; when it still cannot (only spacing differs), the whole
    sentence is the span.
    """
    before, after = one_line(before), one_line(after)
    a = list(re.finditer(r"\S+", before))
    b = list(re.finditer(r"\S+", after))
    aw, bw = [m.group() for m in a], [m.group() for m in b]
    prefix = 0
    while prefix < min(len(aw), len(bw)) and aw[prefix] == bw[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(aw), len(bw)) - prefix and aw[-1 - suffix] == bw[-1 - suffix]:
        suffix += 1
    i, j, k, m = prefix, len(aw) - suffix, prefix, len(bw) - suffix

    def span() -> tuple[str, str, int]:
        old = before[a[i].start() : a[j - 1].end()] if j > i else ""
        new = after[b[k].start() : b[m - 1].end()] if m > k else ""
        return old, new, a[i].start() if j > i else -1

    while True:
        old, new, start = span()
        where = locate_span(before, old) if old and new else None
        if where is not None and where[0] == start:
            break
        if i > 0:
            i, k = i - 1, k - 1
        elif j < len(aw):
            j, m = j + 1, m + 1
        else:
            return before, after
    if before[: a[i].start()] + new + before[a[j - 1].end() :] != after:
        return before, after
    return old, new


# ---------------------------------------------------------------------------------------------
# SFT chats


def _sentences(value) -> list[tuple[int, str]]:
    return [(int(sid), str(text)) for sid, text in value]


def short_reasoning(reasoning: dict | str | None, limit: int = MAX_REASONING_CHARS) -> str:
    """One line for the injector's ``reasoning`` field from the generator's reasoning object."""
    if not reasoning:
        return ""
    if isinstance(reasoning, str):
        text = reasoning
    else:
        text = str(reasoning.get("why_wrong") or "")
        if not text and reasoning.get("wrong_finding") and reasoning.get("right_finding"):
            text = f"{reasoning['right_finding']} was changed to {reasoning['wrong_finding']}"
    text = one_line(text)
    if len(text) > limit:
        cut = text[:limit]
        text = (cut[: cut.rfind(" ")] if " " in cut else cut).rstrip(" ,;:") + "..."
    return text


def assessor_target(record: dict) -> AssessorOutput:
    """The MEDEC verdict an SFT record teaches (CORRECT: no error; INCORRECT: the original back)."""
    if record["kind"] == "CORRECT":
        return AssessorOutput(False, -1, None)
    return AssessorOutput(
        True, int(record["changed_sentence_id"]), one_line(str(record["original_sentence"]))
    )


def injector_target(record: dict) -> InjectorEdit:
    """The span edit an SFT record teaches (CORRECT: the safe paraphrase; INCORRECT: the MEDEC error),
    taken against the sentence the injector is shown (``source_sentences``)."""
    error_type = record.get("error_type") if record["kind"] == "INCORRECT" else None
    sentence_id = int(record["changed_sentence_id"])
    new_sentence = one_line(str(record["new_sentence"]))
    source = {int(sid): str(text) for sid, text in record["source_sentences"]}
    before = source.get(sentence_id, str(record["original_sentence"]))
    old, new = span_edit(before, new_sentence)
    return InjectorEdit(sentence_id, None, error_type or None, short_reasoning(record.get("reasoning")),
                        old=old, new=new)


def sft_messages(record: dict, role: str) -> list[dict]:
    """The full chat (system, user, assistant) an SFT record teaches for ``role``."""
    if record.get("kind") not in ("CORRECT", "INCORRECT"):
        raise ValueError(f"SFT record kind must be CORRECT or INCORRECT, got {record.get('kind')!r}")
    if role == "assessor":
        messages = assessor_messages(_sentences(record["note_sentences"]))
        answer = render_assessor_output(assessor_target(record))
    elif role == "injector":
        mode = "paraphrase" if record["kind"] == "CORRECT" else "inject"
        messages = injector_messages(_sentences(record["source_sentences"]), mode)
        answer = render_injector_edit(injector_target(record))
    else:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    return [*messages, {"role": "assistant", "content": answer}]
