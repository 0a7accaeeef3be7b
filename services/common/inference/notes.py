"""Turning a ``medserl.v1.Note`` into the numbered sentences a model sees, with clear rejections.

Both the injector and the assessor use this, over Kafka and over gRPC: a bad note gets one reason
(a dead letter or INVALID_ARGUMENT), never a crash or a silent skip.
"""

from __future__ import annotations

MAX_NOTE_CHARS = 40_000
MAX_SENTENCES = 300


class InvalidNote(ValueError):
    """The note cannot be given to a model; the message says why (never the note text)."""


def note_sentences(note, max_chars: int = MAX_NOTE_CHARS, max_sentences: int = MAX_SENTENCES) -> list[tuple[int, str]]:
    """``[(id, text)]`` from the note's sentences (MEDEC ids kept) or, when it has none, its text."""
    if note is None:
        raise InvalidNote("no note given")
    if note.sentences:
        sentences = [(int(s.id), s.text) for s in note.sentences]
        ids = [sid for sid, _ in sentences]
        if any(sid < 0 for sid in ids):
            raise InvalidNote("sentence ids must be >= 0")
        if len(set(ids)) != len(ids):
            raise InvalidNote("sentence ids must be unique")
        if not any(text.strip() for _, text in sentences):
            raise InvalidNote("every sentence is empty")
    else:
        if not note.text.strip():
            raise InvalidNote("note has no text and no sentences")
        from services.common.segment import number_sentences

        sentences = [(int(sid), text) for sid, text in number_sentences(note.text)]
        if not sentences:
            raise InvalidNote("note text has no sentence")
    total = sum(len(text) for _, text in sentences)
    if total > max_chars:
        raise InvalidNote(f"note too long: {total} characters (limit {max_chars})")
    if len(sentences) > max_sentences:
        raise InvalidNote(f"note has {len(sentences)} sentences (limit {max_sentences})")
    return sentences


def make_note(note_id: str, sentences: list[tuple[int, str]], source: str = "", split: str = ""):
    """A ``Note`` message from numbered sentences (its text is the sentences joined by spaces)."""
    from medserl.v1 import messages_pb2 as pb

    return pb.Note(note_id=note_id, text=" ".join(text for _, text in sentences),
                   sentences=[pb.Sentence(id=sid, text=text) for sid, text in sentences],
                   source=source, split=split)
