"""Fuzzing the note text path (issue 12): the sentence splitter, the note validator, the prompt renderer
and the model-output parsers take any text (control characters, the chat template's tokens, lone
surrogates from undecodable bytes, runs of punctuation, real MEDEC notes bent out of shape) without
raising anything but their own InvalidNote, keep every character, and stay linear.

Linear is shown two ways, neither a wall-clock deadline: the Python work (opcodes executed in
``segment.py`` / ``notes.py``, counted by a tracer: deterministic) of a text repeated 8x is at most
~8x, and the CPU time of this thread (the regular expression's work, which no tracer sees) of a text
repeated 16x is far below the 256x a quadratic splitter would take (best of three, GC off).
"""

from __future__ import annotations

import gc
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medserl.v1 import messages_pb2 as pb
from services.common import formats, notes, segment
from services.common.limits import id_problem
from services.common.notes import InvalidNote, note_sentences
from services.common.segment import number_sentences, split_sentences
from tests.reliability import fuzzing
from tests.reliability.fuzzing import count, fuzz, hostile_text
from tests.reliability.test_hostile_text import _reference_split

SUITE = "text"
MIN_CASES = 100


@pytest.fixture(scope="module")
def medec(medec_path):
    return fuzzing.medec_notes(str(medec_path))


def squash(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


def any_text() -> st.SearchStrategy[str]:
    """Arbitrary text: every code point (lone surrogates included), hostile pieces, undecodable bytes."""
    return st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=300),
        hostile_text(30),
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    )


def bent_medec_text(draw, medec) -> str:
    """A real MEDEC note's text with hostile pieces spliced in at random places."""
    text = draw(st.sampled_from(medec)).text
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(hostile_text()) + text[at:]
    return text


def check_split(text: str) -> list[str]:
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences), "sentences are stripped and never empty"
    assert squash("".join(sentences)) == squash(text), "every character but whitespace is kept, in order"
    assert [i for i, _ in number_sentences(text)] == list(range(len(sentences)))
    return sentences


def check_note(note: pb.Note) -> str:
    """note_sentences accepts or refuses with InvalidNote, never anything else; returns the outcome."""
    try:
        sentences = note_sentences(note)
    except InvalidNote as exc:
        assert str(exc) and len(str(exc)) < 300
        return "InvalidNote"
    assert sentences and all(isinstance(sid, int) and isinstance(t, str) for sid, t in sentences)
    assert len({sid for sid, _ in sentences}) == len(sentences)
    assert len(sentences) <= notes.MAX_SENTENCES and sum(len(t) for _, t in sentences) <= notes.MAX_NOTE_CHARS
    return "ok"


# --------------------------------------------------------------------------------------------


@fuzz(400)
@given(text=any_text())
def test_the_splitter_takes_any_text_keeps_every_character_and_splits_like_the_reference(text):
    check_split(text)
    if len(text) <= 120:  # the old (quadratic) splitter is the specification of where sentences end
        assert split_sentences(text) == _reference_split(text)
    count(SUITE, "split_sentences", "arbitrary", "ok")


@fuzz(200)
@given(data=st.data())
def test_the_splitter_on_real_medec_notes_bent_with_hostile_text(medec, data):
    original = data.draw(st.sampled_from(medec))
    sentences = check_split(original.text)
    assert len(sentences) >= len(original.sentences) // 2, "a MEDEC note splits into about its sentences"
    check_split(bent_medec_text(data.draw, medec))
    count(SUITE, "split_sentences", "medec", "ok")


@fuzz(300)
@given(data=st.data())
def test_the_note_validator_accepts_or_refuses_with_a_reason_and_nothing_else(medec, data):
    choice = data.draw(st.sampled_from(("medec", "text", "sentences", "generic")))
    if choice == "medec":
        note = data.draw(fuzzing.medec_note_strategy(medec))
    elif choice == "text":
        # a protobuf string is UTF-8: lone surrogates become U+FFFD, as a decoder would have made them
        note = pb.Note(note_id="n", text=data.draw(any_text().map(lambda t: t.encode("utf-8", "replace").decode())))
    elif choice == "sentences":
        items = data.draw(st.lists(st.tuples(fuzzing._ints(-(2**31), 2**31 - 1), hostile_text()), max_size=8))
        note = pb.Note(note_id="n", sentences=[pb.Sentence(id=i, text=t) for i, t in items])
    else:
        note = data.draw(fuzzing.messages(pb.Note, depth=2))
    outcome = check_note(note)
    if choice == "medec" and outcome == "ok" and note.sentences:
        assert [t for _, t in note_sentences(note)] == [s.text for s in note.sentences], "MEDEC ids and text kept"
    count(SUITE, "note_sentences", choice, outcome)


def test_an_unbent_medec_note_is_accepted_with_its_own_sentences(medec):
    for source in medec:
        note = fuzzing.pb_note(source)
        assert note_sentences(note) == [(i, s) for i, s in source.sentences], source.note_id
    count(SUITE, "note_sentences", "medec-all", "ok")


@fuzz(250)
@given(data=st.data())
def test_prompt_rendering_neutralises_control_tokens_in_any_text(medec, data):
    if data.draw(st.booleans()):
        sentences = list(data.draw(st.sampled_from(medec)).sentences)
        i = data.draw(st.integers(0, len(sentences) - 1))
        sentences[i] = (sentences[i][0], sentences[i][1] + data.draw(st.sampled_from(fuzzing.CONTROL_TOKENS)))
    else:
        sentences = list(enumerate(data.draw(st.lists(any_text(), min_size=1, max_size=6))))
    rendered = formats.render_note(sentences)
    for token in ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "</think>", "<think>"):
        assert token not in rendered
    for messages in (formats.assessor_messages(sentences), formats.injector_messages(sentences, "inject")):
        assert all(isinstance(m["content"], str) for m in messages)
    count(SUITE, "render_note", "arbitrary", "ok")


OUTPUT_LINES = ("error_flag: 1\n", "error_flag: 0\n", "error_sentence_id: 3\n", "corrected_sentence: x\n",
                "sentence_id: 0\n", "sentence_id: -1\n", "new_sentence: y\n", "old: the\n", "new: a\n",
                "error_type: diagnosis\n", "reason: z\n", "\n", "```", "<think>", "</think>", "NA",
                "99999999999999999999", "{\"sentence_id\": 1, \"new_sentence\": \"x\"}")


@fuzz(300)
@given(data=st.data())
def test_model_output_parsers_and_the_edit_applier_never_raise(medec, data):
    text = data.draw(st.one_of(any_text(), st.lists(st.one_of(st.sampled_from(OUTPUT_LINES), hostile_text(4)),
                                                    max_size=10).map("".join)))
    sentences = list(data.draw(st.sampled_from(medec)).sentences)
    assessed = formats.parse_assessor_output(text, len(sentences))
    assert isinstance(assessed, formats.AssessorOutput | formats.ParseFailure)
    edit = formats.parse_injector_edit(text)
    assert isinstance(edit, formats.InjectorEdit | formats.ParseFailure)
    if isinstance(edit, formats.InjectorEdit):
        applied = formats.apply_edit(sentences, edit)
        assert isinstance(applied, list | formats.ParseFailure)
        if isinstance(applied, list):
            assert [i for i, _ in applied] == [i for i, _ in sentences], "an edit never adds or drops a sentence"
    assert isinstance(id_problem("id", text), str)
    count(SUITE, "output_parsers", "arbitrary", "ok")


# --------------------------------------------------------------------------------------------
# linear: deterministic opcode counts (Python) and a CPU-time ratio (the regular expression)

TRACED = {segment.__file__, notes.__file__}


def opcodes(fn, *args) -> int:
    """Opcodes executed in segment.py / notes.py while ``fn(*args)`` runs (a deterministic work count)."""
    executed = 0

    def local(frame, event, arg):
        nonlocal executed
        if event == "opcode":
            executed += 1
        return local

    def calls(frame, event, arg):
        if frame.f_code.co_filename in TRACED:
            frame.f_trace_opcodes = True
            return local
        return None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        fn(*args)
    finally:
        sys.settrace(previous)
    return executed


def cpu_seconds(fn, *args, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.disable()
        try:
            started = time.thread_time()
            fn(*args)
            best = min(best, time.thread_time() - started)
        finally:
            gc.enable()
    return best


def repeated(unit: str, chars: int) -> str:
    return unit * max(1, chars // max(1, len(unit)))


def split_note_text(text: str) -> None:
    try:
        note_sentences(pb.Note(note_id="n", text=text))
    except InvalidNote:
        pass


@fuzz(40)
@given(data=st.data())
def test_splitting_and_validating_stay_linear_on_hostile_repetitions(medec, data):
    pieces = st.one_of(hostile_text(6), st.sampled_from(medec).map(lambda n: n.sentences[0][1][:60]),
                       st.sampled_from((".", "?!", ". ", "A. ", "Dr. ", "e.g. ", "b.i.d. A", "...\u201d B", ")] ")))
    unit = data.draw(st.lists(pieces, min_size=1, max_size=4).map("".join).filter(lambda u: u.strip()))
    unit = unit.encode("utf-8", "replace").decode("utf-8")
    for fn in (split_sentences, split_note_text):
        small, large = repeated(unit, 500), repeated(unit, 500) * 8
        ops_small, ops_large = opcodes(fn, small), opcodes(fn, large)
        assert ops_large <= 9 * ops_small + 2_000, (fn.__name__, unit, ops_small, ops_large)
        base = repeated(unit, 2_000)
        cpu_small, cpu_large = cpu_seconds(fn, base), cpu_seconds(fn, base * 16)
        assert cpu_large <= 64 * cpu_small + 0.005, (fn.__name__, unit, cpu_small, cpu_large)  # quadratic: 256x
    count(SUITE, "split_sentences", "linear", "ok")
    count(SUITE, "note_sentences", "linear", "ok")


def test_every_text_function_was_fuzzed():
    """Runs after the fuzz tests above (file order): each function got its cases."""
    cases = fuzzing.totals(SUITE)
    for target in ("split_sentences", "note_sentences", "render_note", "output_parsers"):
        assert cases[target] >= MIN_CASES, (target, dict(cases))
