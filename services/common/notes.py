"""Turning a ``medserl.v1.Note`` into its numbered sentences, with clear rejections: the one rule.

The injector, the assessor, the verifier and the generator use this, over Kafka and over gRPC: a bad
note gets one reason (a dead letter or INVALID_ARGUMENT), never a crash or a silent skip.
"""

from __future__ import annotations

from services.common.limits import MAX_ID_CHARS, id_problem

MAX_NOTE_CHARS = 40_000  # far above any clinical note (MEDEC's longest is ~5k characters)
MAX_SENTENCES = 300


class InvalidNote(ValueError):
    """The note cannot be given to a model; the message says why (never the note text)."""


def note_sentences(note, max_chars: int = MAX_NOTE_CHARS, max_sentences: int = MAX_SENTENCES) -> list[tuple[int, str]]:
    """``[(id, text)]`` from the note's sentences (MEDEC ids kept) or, when it has none, its text."""
    if note is None:
        raise InvalidNote("no note given")
    if len(note.text) > max_chars:  # also beside sentences: the text travels on with the note (issue 12)
        raise InvalidNote(f"note is too long: {len(note.text)} characters (limit {max_chars})")
    if note.note_id and (problem := id_problem("note_id", note.note_id, 2 * MAX_ID_CHARS)):
        raise InvalidNote(problem)  # (a rollout's note is named after the rollout: up to twice an id)
    for label, value in (("source", note.source), ("split", note.split)):
        if len(value) > MAX_ID_CHARS:
            raise InvalidNote(f"note {label} has {len(value)} characters (limit {MAX_ID_CHARS})")
    size = note.ByteSize() if hasattr(note, "ByteSize") else 0
    if size > 8 * max_chars + 65_536:  # any other field (an unknown one too) that outweighs text and sentences
        raise InvalidNote(f"note is too large: {size} bytes (limit {8 * max_chars + 65_536})")
    if len(note.sentences) > max_sentences:  # before copying them
        raise InvalidNote(f"note has {len(note.sentences)} sentences (limit {max_sentences})")
    if note.sentences:
        sentences = [(int(s.id), s.text) for s in note.sentences]
        ids = [sid for sid, _ in sentences]
        if any(sid < 0 for sid in ids):
            raise InvalidNote("note has a negative sentence id")
        if len(set(ids)) != len(ids):
            raise InvalidNote("note has duplicate sentence ids")
        if not any(text.strip() for _, text in sentences):
            raise InvalidNote("note is empty (every sentence is blank)")
    else:
        if not note.text.strip():
            raise InvalidNote("note is empty (no text and no sentences)")
        from services.common.segment import number_sentences

        sentences = [(int(sid), text) for sid, text in number_sentences(note.text)]
        if not sentences:
            raise InvalidNote("note has no sentences")
    total = sum(len(text) for _, text in sentences)
    if total > max_chars:
        raise InvalidNote(f"note is too long: {total} characters (limit {max_chars})")
    if len(sentences) > max_sentences:
        raise InvalidNote(f"note has {len(sentences)} sentences (limit {max_sentences})")
    return sentences


def make_note(note_id: str, sentences: list[tuple[int, str]], source: str = "", split: str = ""):
    """A ``Note`` message from numbered sentences (its text is the sentences joined by spaces)."""
    from medserl.v1 import messages_pb2 as pb

    return pb.Note(note_id=note_id, text=" ".join(text for _, text in sentences),
                   sentences=[pb.Sentence(id=sid, text=text) for sid, text in sentences],
                   source=source, split=split)
