"""The shared role formats: every SFT record round-trips, and parsers survive model garbage."""

from __future__ import annotations

import random
import string

import pytest

from services.common import formats
from services.common.formats import (
    AssessorOutput,
    InjectorEdit,
    ParseFailure,
    apply_edit,
    assessor_messages,
    injector_messages,
    parse_assessor_output,
    parse_injector_edit,
    render_assessor_output,
    render_injector_edit,
    sft_messages,
)
from trainer.medec_sft import medec_sft_records
from trainer.tiny_model import MEDEC_VALIDATION_CSV

REASONING = {
    "why_wrong": "Amoxicillin does not cover atypical organisms; the corrected note names doxycycline.\nSecond line.",
    "key_clues": ["fisherman", "lake"],
    "clinical_impact": "untreated infection",
    "wrong_finding": "amoxicillin",
    "right_finding": "doxycycline",
}


@pytest.fixture(scope="module")
def sft_set(medec_path) -> list[dict]:
    """An SFT set in the generator's layout from every usable MEDEC validation note; every third
    INCORRECT record also carries a generator-style reasoning object."""
    records = medec_sft_records(medec_path / MEDEC_VALIDATION_CSV)
    for n, record in enumerate(records):
        if record["kind"] == "INCORRECT" and n % 3 == 0:
            record["reasoning"] = dict(REASONING)
    return records


def test_sft_set_covers_both_kinds_and_all_error_types(sft_set):
    kinds = {r["kind"] for r in sft_set}
    types = {r["error_type"] for r in sft_set if r["kind"] == "INCORRECT"}
    assert kinds == {"CORRECT", "INCORRECT"}
    assert types == set(formats.ERROR_TYPES)
    assert len(sft_set) > 500


def test_every_record_round_trips_for_both_roles(sft_set):
    for record in sft_set:
        note = [tuple(s) for s in record["note_sentences"]]
        source = [tuple(s) for s in record["source_sentences"]]

        assessor_chat = sft_messages(record, "assessor")
        assert [m["role"] for m in assessor_chat] == ["system", "user", "assistant"]
        verdict = parse_assessor_output(assessor_chat[-1]["content"], num_sentences=len(note))
        assert verdict == formats.assessor_target(record), record["id"]
        if record["kind"] == "INCORRECT":
            assert verdict == AssessorOutput(
                True, record["changed_sentence_id"], formats.one_line(record["original_sentence"])
            )
        else:
            assert verdict == AssessorOutput(False, -1, None)

        injector_chat = sft_messages(record, "injector")
        edit = parse_injector_edit(injector_chat[-1]["content"])
        assert edit == formats.injector_target(record), record["id"]
        assert edit.error_type == (record["error_type"] if record["kind"] == "INCORRECT" else None)
        assert edit.is_span and edit.old and edit.new, record["id"]
        # the parsed edit applied to the injector's input gives the note the assessor sees (up to the
        # line breaks MEDEC has inside a few sentences: the prompt shows each sentence on one line)
        applied = apply_edit(source, edit)
        assert [(i, formats.one_line(t)) for i, t in applied] == [(i, formats.one_line(t)) for i, t in note]
        assert [t for i, t in applied if i != edit.sentence_id] == [t for i, t in source if i != edit.sentence_id]
        assert formats.resolve_edit(source, edit).new_sentence == dict(applied)[edit.sentence_id]
        mode = "inject" if record["kind"] == "INCORRECT" else "paraphrase"
        assert injector_chat[1]["content"].startswith(f"Mode: {mode}\n")


def test_span_edits_are_short_and_copy_words_of_the_shown_sentence(sft_set):
    """The point of format v2: the injector names a few words of the sentence, not the sentence."""
    old_words, sentence_words, whole = [], [], 0
    for record in sft_set:
        edit = formats.injector_target(record)
        shown = formats.one_line(dict(tuple(s) for s in record["source_sentences"])[edit.sentence_id])
        assert edit.old in shown, record["id"]
        assert formats.locate_span(shown, edit.old)[0] == shown.find(edit.old) or edit.old == shown
        old_words.append(len(edit.old.split()))
        sentence_words.append(len(shown.split()))
        whole += edit.old == shown
    assert sorted(old_words)[len(old_words) // 2] <= 2  # median: a word or two
    assert sum(old_words) < 0.25 * sum(sentence_words)
    assert whole < 0.15 * len(sft_set)  # whole-sentence spans: one-word sentences, MEDEC rewrites


def test_span_edit_on_a_medec_error_pair(sft_set):
    record = next(r for r in sft_set if r["kind"] == "INCORRECT" and r["error_type"] == "pharmacotherapy"
                  and len(formats.injector_target(r).old.split()) == 1)
    edit = formats.injector_target(record)
    text = render_injector_edit(edit)
    lines = text.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["sentence_id", "old", "new", "error_type", "reasoning"]
    assert lines[1] == f"old: {edit.old}" and lines[2] == f"new: {edit.new}"
    source = [tuple(s) for s in record["source_sentences"]]
    assert dict(apply_edit(source, edit))[edit.sentence_id] == formats.one_line(record["new_sentence"])


def test_span_matching_rules():
    sentence = "The patient shows a rash; this shows that the rash is new."
    assert formats.locate_span(sentence, "shows") == (12, 17)  # the first whole-word match
    start = sentence.index("rash is new.")
    assert formats.locate_span(sentence, "rash  is\nnew.") == (start, start + 12)  # any whitespace between words
    assert formats.locate_span(sentence, "atien") == (5, 10)  # inside a word when no whole word matches
    assert formats.locate_span(sentence, "THE PATIENT") == (0, 11)  # case-folded as a last resort
    assert formats.locate_span(sentence, "eczema") is None and formats.locate_span(sentence, " ") is None
    note = [(0, "Intro."), (1, sentence)]
    edit = InjectorEdit(1, None, "diagnosis", old="a rash", new="urticaria")
    assert apply_edit(note, edit) == [(0, "Intro."), (1, "The patient shows urticaria; this shows that the rash is new.")]
    deletion = apply_edit(note, InjectorEdit(1, None, "diagnosis", old="that the rash is new", new=""))
    assert deletion[1] == (1, "The patient shows a rash; this shows.")
    missing = apply_edit(note, InjectorEdit(1, None, None, old="eczema", new="psoriasis"))
    assert isinstance(missing, ParseFailure) and "not in sentence 1" in missing.reason
    # the shortest span that rebuilds the new sentence, widened until its first match is the change
    assert formats.span_edit(sentence, sentence.replace("is new", "is old")) == ("new.", "old.")
    assert formats.span_edit("The rash is a rash.", "The rash is a hive.") == ("rash.", "hive.")
    assert formats.span_edit("It shows X and shows Y.", "It shows X and reveals Y.") == ("and shows", "and reveals")  # widened to the left first
    assert formats.span_edit("A rash.", "A new rash.") == ("A", "A new")  # an insertion keeps a word
    assert formats.span_edit("No fever today.", "Fever today.") == ("No fever", "Fever")


def test_reasoning_is_one_short_line(sft_set):
    with_reasoning = [r for r in sft_set if r["reasoning"]]
    assert with_reasoning
    for record in with_reasoning:
        edit = formats.injector_target(record)
        assert edit.reasoning.startswith("Amoxicillin does not cover")
        assert "\n" not in edit.reasoning and len(edit.reasoning) <= formats.MAX_REASONING_CHARS + 3


def test_assessor_prompt_shows_numbered_sentences_and_no_ids(sft_set):
    for record in sft_set[:50]:
        note = [tuple(s) for s in record["note_sentences"]]
        user = assessor_messages(note)[1]["content"]
        for sid, text in note:
            assert f"[{sid}] {formats.one_line(text)}" in user
        for leaked in (record["pair_id"], record["id"], "ms-val", "ms-test", "Text ID"):
            assert leaked not in user
        # the assessor never sees the injector's source note when they differ
        changed = record["changed_sentence_id"]
        original = dict(tuple(s) for s in record["source_sentences"])[changed]
        if original != dict(note)[changed]:
            assert f"[{changed}] {original}\n" not in user + "\n"


def test_render_parse_round_trip_values():
    cases = [
        AssessorOutput(False, -1, None),
        AssessorOutput(True, 0, "The patient was given doxycycline: 100 mg/day."),
        AssessorOutput(True, 12, None),
    ]
    for out in cases:
        assert parse_assessor_output(render_assessor_output(out), num_sentences=13) == out
    edits = [
        InjectorEdit(3, None, "management", "changed the plan: x = y", old="120/80 mm Hg;", new="90/60 mm Hg;"),
        InjectorEdit(0, None, None, "", old="The patient", new="This patient"),
        InjectorEdit(7, None, "causalOrganism", "reasoning: nested key", old="organism: E. coli", new="organism: x"),
        InjectorEdit(2, None, "diagnosis", "", old="not", new=""),  # a deletion
        # the sentence form (format v1, the generator's paraphrases) still renders and parses
        InjectorEdit(3, "BP is 120/80 mm Hg; HR 72/min.", "management", "changed the plan: x = y"),
        InjectorEdit(0, "Of note, the patient is well.", None, ""),
    ]
    for edit in edits:
        assert parse_injector_edit(render_injector_edit(edit)) == edit


def test_model_style_variations_parse():
    verdict = AssessorOutput(True, 2, "Start metformin.")
    variants = [
        "<think>\nerror_flag: 0 looks fine? no...\n</think>\n\nerror_flag: 1\nerror_sentence_id: 2\ncorrected_sentence: Start metformin.",
        "</think>\nerror_flag: 1\nerror_sentence_id: 2\ncorrected_sentence: Start metformin.",
        "Here is my verdict.\n```\nerror_flag: 1\nerror_sentence_id: 2\ncorrected_sentence: Start metformin.\n```\nDone.",
        "**error_flag**: 1\n**error_sentence_id**: 2\n**corrected_sentence**: Start metformin.",
        "- Error flag: yes\n- Error sentence id: [2]\n- Corrected sentence: Start metformin.",
        '{"error_flag": 1, "error_sentence_id": 2, "corrected_sentence": "Start metformin."}',
    ]
    for text in variants:
        assert parse_assessor_output(text, num_sentences=5) == verdict, text
    assert parse_assessor_output("<think></think>error_flag: 0") == AssessorOutput(False, -1, None)
    remark = (
        "error_flag: 1 (yes)\nerror_sentence_id: 2 (the third sentence)\ncorrected_sentence: Start metformin."
    )
    assert parse_assessor_output(remark) == verdict
    for bad_id in ("2.5", "2a", "sentence 2"):
        assert isinstance(
            parse_assessor_output(f"error_flag: 1\nerror_sentence_id: {bad_id}\ncorrected_sentence: x"),
            ParseFailure,
        )
    edit = parse_injector_edit(
        "<think>hmm</think>\nsentence_id: 1\nnew_sentence: x y.\nerror_type: Pharmacotherapy\n"
    )
    assert edit == InjectorEdit(1, "x y.", "pharmacotherapy", "")
    span = InjectorEdit(1, None, "pharmacotherapy", "", old="x", new="y")
    for text in (
        "sentence_id: 1\nold: x\nnew: y\nerror_type: Pharmacotherapy",
        "**sentence_id**: [1]\n**old**: `x`\n**new**: y\n**error_type**: pharmacotherapy.\n",
        '{"sentence_id": 1, "old": "x", "new": "y", "error_type": "pharmacotherapy"}',
    ):
        assert parse_injector_edit(text) == span, text


GARBAGE = [
    "",
    "   \n\n ",
    "I think the note is fine.",
    "<think>the error might be in sentence 3 because",  # truncated while thinking
    "error_flag: maybe",
    "error_flag: 1",  # no sentence id
    "error_flag: 1\nerror_sentence_id: three\ncorrected_sentence: x",
    "error_flag: 1\nerror_sentence_id: -4\ncorrected_sentence: x",
    "error_flag: 1\nerror_sentence_id: 99\ncorrected_sentence: x",  # not in a 10-sentence note
    "error_flag: 1\nerror_sentence_id: 2",  # truncated before the correction
    "{not json",
    '{"error_flag": [1, 2]}',
    "[1, 2, 3]",
    "\x00\x01\x02 binary",
    "sentence_id: 2\nnew_sentence: x",
    "sentence_id: two\nnew_sentence: x\nerror_type: diagnosis",
    "sentence_id: 2\nnew_sentence:\nerror_type: diagnosis",
    "sentence_id: 2\nnew_sentence: x\nerror_type: spelling",
    "sentence_id: 2\nold: x\nerror_type: diagnosis",  # no new line
    "sentence_id: 2\nold:\nnew: y\nerror_type: diagnosis",  # nothing to replace
    "sentence_id: 2\nold: x\nnew: y",  # truncated before error_type
    "```\n```",
    "<think></think>",
]


def test_garbage_returns_parse_failure_with_reason():
    for text in GARBAGE:
        for result in (parse_assessor_output(text, num_sentences=10), parse_injector_edit(text)):
            assert isinstance(result, ParseFailure), (text, result)
            assert result.reason and result.raw == text
            assert not result
    for value in (None, 42, b"bytes", ["error_flag: 1"]):
        assert isinstance(parse_assessor_output(value), ParseFailure)
        assert isinstance(parse_injector_edit(value), ParseFailure)


def test_truncated_outputs_never_raise_and_lose_no_required_line(sft_set):
    record = next(r for r in sft_set if r["kind"] == "INCORRECT")
    assessor_text = sft_messages(record, "assessor")[-1]["content"]
    injector_text = sft_messages(record, "injector")[-1]["content"]
    for cut in range(len(assessor_text)):
        result = parse_assessor_output(assessor_text[:cut])
        if "corrected_sentence:" not in assessor_text[:cut]:
            assert isinstance(result, ParseFailure), assessor_text[:cut]
    for cut in range(len(injector_text)):
        result = parse_injector_edit(injector_text[:cut])
        if "error_type:" not in injector_text[:cut]:
            assert isinstance(result, ParseFailure), injector_text[:cut]


def test_random_text_never_raises():
    rng = random.Random(7)
    alphabet = string.printable + "<>{}[]:_ ütf\u2028"
    pieces = [
        "error_flag:",
        "error_sentence_id:",
        "sentence_id:",
        "new_sentence:",
        "old:",
        "new:",
        "error_type:",
        "<think>",
        "</think>",
        "{",
        "}",
        "\n",
    ]
    for _ in range(2000):
        text = "".join(
            rng.choice(pieces) if rng.random() < 0.2 else rng.choice(alphabet)
            for _ in range(rng.randint(0, 80))
        )
        assert isinstance(
            parse_assessor_output(text, num_sentences=rng.randint(1, 20)), (AssessorOutput, ParseFailure)
        )
        assert isinstance(parse_injector_edit(text), (InjectorEdit, ParseFailure))


def test_apply_edit_rejects_ids_not_in_the_note():
    note = [(0, "A."), (1, "B."), (2, "C.")]
    assert apply_edit(note, InjectorEdit(1, "B2.", None)) == [(0, "A."), (1, "B2."), (2, "C.")]
    assert apply_edit(note, InjectorEdit(1, None, None, old="B.", new="B2.")) == [(0, "A."), (1, "B2."), (2, "C.")]
    for bad in (3, 99):
        for edit in (InjectorEdit(bad, "X.", "diagnosis"), InjectorEdit(bad, None, "diagnosis", old="A.", new="X.")):
            failure = apply_edit(note, edit)
            assert isinstance(failure, ParseFailure) and str(bad) in failure.reason


def test_bad_arguments_are_errors_not_garbage_outputs():
    with pytest.raises(ValueError, match="mode"):
        injector_messages([(0, "A.")], "delete")
    record = {
        "kind": "CORRECT",
        "note_sentences": [[0, "A."]],
        "source_sentences": [[0, "A."]],
        "changed_sentence_id": 0,
        "original_sentence": "A.",
        "new_sentence": "A!",
        "error_type": None,
    }
    with pytest.raises(ValueError, match="role"):
        sft_messages(record, "judge")
    with pytest.raises(ValueError, match="kind"):
        sft_messages({**record, "kind": "MAYBE"}, "assessor")
