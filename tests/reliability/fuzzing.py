"""What the fuzz suites share (issue 12): reproducible hypothesis settings, the case counters the
session prints, real MEDEC notes as the raw material, and strategies for hostile protobuf messages.

Every suite counts its cases in ``CASES[suite][(target, kind)]``; ``tests/reliability/conftest.py``
prints the tables at the end of the session and each suite's last test asserts that every target got
its share. Strategies build messages from descriptors, so a field added to a proto is fuzzed too.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from medserl.v1 import messages_pb2 as pb

# suite -> (target, kind) -> cases; target is a gRPC method or a "service:topic" consumer
CASES: dict[str, Counter] = defaultdict(Counter)
# suite -> target -> outcome (status code / dead-letter class) -> cases
OUTCOMES: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))


def count(suite: str, target: str, kind: str, outcome: str | None = None) -> None:
    CASES[suite][(target, kind)] += 1
    if outcome is not None:
        OUTCOMES[suite][target][outcome] += 1


def totals(suite: str) -> Counter:
    """Cases per target, all kinds together."""
    out: Counter = Counter()
    for (target, _kind), n in CASES[suite].items():
        out[target] += n
    return out


def table(suite: str) -> list[str]:
    """The suite's cases as text lines: one row per target, one column per kind, then the outcomes."""
    cases = CASES.get(suite)
    if not cases:
        return []
    kinds = sorted({k for _, k in cases})
    targets = sorted({t for t, _ in cases})
    width = max(len(t) for t in targets)
    lines = [f"{'target':<{width}}  " + "  ".join(f"{k:>10}" for k in kinds) + f"  {'total':>7}  outcomes"]
    for target in targets:
        row = [cases.get((target, k), 0) for k in kinds]
        outcomes = OUTCOMES.get(suite, {}).get(target, Counter())
        seen = ", ".join(f"{name} {n}" for name, n in outcomes.most_common())
        lines.append(f"{target:<{width}}  " + "  ".join(f"{n:>10}" for n in row) + f"  {sum(row):>7}  {seen}")
    lines.append(f"{'all':<{width}}  " + "  ".join(f"{sum(cases.get((t, k), 0) for t in targets):>10}" for k in kinds)
                 + f"  {sum(cases.values()):>7}")
    return lines


def fuzz(max_examples: int, **overrides):
    """Reproducible and quick: the same cases on every run (derandomize), no example database in the
    working tree, no per-example deadline (a slow case is a finding of its own, asserted separately)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
                    **overrides)


# --------------------------------------------------------------------------------------------
# real MEDEC notes


class Quiet(tuple):
    """A tuple that prints as its length: hypothesis prints a failing test's arguments, and these are notes."""

    def __repr__(self) -> str:
        return f"<{len(self)} items>"


class QuietDict(dict):
    def __repr__(self) -> str:
        return f"<{len(self)} entries>"


@functools.cache
def medec_notes(medec_dir: str) -> Quiet:
    """The MEDEC-MS validation notes (``medec.prepare.MedecNote``), read once per session."""
    from medec.prepare import read_medec_csv

    path = Path(medec_dir) / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
    notes, _skipped = read_medec_csv(path)
    assert len(notes) > 100, f"expected the MEDEC validation notes in {path}"
    return Quiet(notes)


def pb_note(note, *, with_text: bool = True, with_sentences: bool = True) -> pb.Note:
    return pb.Note(note_id=note.note_id, text=note.text if with_text else "", source="medec", split="validation",
                   sentences=[pb.Sentence(id=i, text=s) for i, s in note.sentences] if with_sentences else [])


@functools.cache
def medec_sentences(medec_dir: str, min_chars: int = 25) -> frozenset[str]:
    """Every MEDEC sentence long enough to be recognised if it leaked into a log or a reason."""
    return frozenset(s for n in medec_notes(medec_dir) for _, s in n.sentences if len(s) >= min_chars)


def quotes_a_note(text: str, sentences: frozenset[str]) -> bool:
    return any(s in text for s in sentences)


# --------------------------------------------------------------------------------------------
# hostile text

CONTROL_TOKENS = ("<|im_end|>", "<|im_start|>assistant\n", "<|im_start|>system\n", "</think>", "<think>",
                  "<|endoftext|>", "<｜end▁of▁sentence｜>", "</s>", "<s>")
HOSTILE_PIECES = (
    *CONTROL_TOKENS, "\x00", "\r\n", "\r", "\n\n", "\t", "\u2028", "\u2029", "\u202e", "\ufeff", "\u200b", "\x0b",
    "\x1c", "...", "?!?!", "." * 64, "!" * 33, "Dr.", "e.g.", "b.i.d.", "mg.", "U.S.A. B", "No. 5", "min. 5",
    "error_flag: 1", "error_sentence_id: 0", "[3] ", "sentence_id: 99", "corrected_sentence: NA", "'\"", "\\",
    "\u201c", "\u2019", ")]", "([", "%s%n", "{}", "{{", "😷", "ẞ", "İ", "\u0301", " " * 20, "102/73 mm Hg.",
    "38.1 C.", "A.", "a", "Z", "5",
)


def hostile_text(max_pieces: int = 12) -> st.SearchStrategy[str]:
    """Short strings mixing printable text, unicode, control characters and the chat template's tokens."""
    piece = st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=10))
    return st.one_of(st.text(max_size=40), st.lists(piece, max_size=max_pieces).map("".join))


# --------------------------------------------------------------------------------------------
# protobuf messages from descriptors

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
SPECIAL_FLOATS = (0.0, -0.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 5e-324, 1.0, -1.0, 0.5, 3.0)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, 2, lo, hi, 2**31 - 1, -(2**31), 10**9, 300, 1000) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -3), min(hi, 40)))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t in _INT_RANGES:
        return _ints(*_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(width=32, allow_nan=True, allow_infinity=True))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return hostile_text()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: any int32 arrives
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), _ints(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for field type {t} ({field.full_name})")


def build(cls: type[Message], values: dict) -> Message:
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def messages(cls: type[Message], depth: int = 3, special: dict[str, st.SearchStrategy] | None = None,
             max_repeated: int = 3) -> st.SearchStrategy[Message]:
    """Messages of ``cls`` with any subset of fields set to any value of their wire type (depth-limited).
    ``special`` maps a message type's full name to a strategy mixed in for every field of that type
    (real MEDEC notes for ``medserl.v1.Note``)."""
    return _messages(cls.DESCRIPTOR.full_name, depth, tuple(sorted((special or {}).items())), max_repeated)


@functools.cache
def _messages(full_name: str, depth: int, special: tuple, max_repeated: int) -> st.SearchStrategy:
    from google.protobuf import descriptor_pool

    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    cls = message_class(descriptor)
    optional = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if depth <= 0:
                continue
            value = _messages(field.message_type.full_name, depth - 1, special, max_repeated)
            extra = dict(special).get(field.message_type.full_name)
            if extra is not None:
                value = st.one_of(extra, value)
        else:
            value = _scalar(field)
        optional[field.name] = st.lists(value, max_size=max_repeated) if field.is_repeated else value
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: build(cls, values))


def string_paths(descriptor: Descriptor, depth: int = 3) -> list[tuple[FieldDescriptor, ...]]:
    """Paths of fields from ``descriptor`` down to every string field (depth-limited)."""
    out: list[tuple[FieldDescriptor, ...]] = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            out.append((field,))
        elif field.message_type is not None and depth > 0:
            out.extend((field, *rest) for rest in string_paths(field.message_type, depth - 1))
    return out


def repeated_message_paths(descriptor: Descriptor, depth: int = 2) -> list[tuple[FieldDescriptor, ...]]:
    """Paths of fields from ``descriptor`` down to every repeated message field (depth-limited)."""
    out: list[tuple[FieldDescriptor, ...]] = []
    for field in descriptor.fields:
        if field.message_type is None:
            continue
        if field.is_repeated:
            out.append((field,))
        elif depth > 0:
            out.extend((field, *rest) for rest in repeated_message_paths(field.message_type, depth - 1))
    return out


def first_item(message: Message, path: Sequence[FieldDescriptor]) -> Message:
    """The first item of the repeated field at ``path`` (an empty one when there is none)."""
    target = message
    for field in path[:-1]:
        target = getattr(target, field.name)
    items = getattr(target, path[-1].name)
    return items[0] if len(items) else message_class(path[-1].message_type)()


def set_path(message: Message, path: Sequence[FieldDescriptor], value: str) -> None:
    """Set the string at ``path`` (adding one element to repeated messages on the way)."""
    target = message
    for field in path[:-1]:
        container = getattr(target, field.name)
        target = container.add() if field.is_repeated else container
    last = path[-1]
    if last.is_repeated:
        getattr(target, last.name).append(value)
    else:
        setattr(target, last.name, value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def wrap(parents: Sequence[FieldDescriptor], inner: bytes) -> bytes:
    """``inner`` (encoded fields) as the content of the nested message at ``parents``. Appended to a
    request it merges into that message (a repeated field gets more items, a string is replaced)."""
    for field in reversed(parents):
        inner = length_delimited(field.number, inner)
    return inner


def with_raw_string(base: bytes, path: Sequence[FieldDescriptor], raw: bytes) -> bytes:
    """``base`` plus the bytes ``raw`` as the string at ``path``: the only way to send a string that is
    not UTF-8, which no protobuf library will build."""
    return base + wrap(path[:-1], length_delimited(path[-1].number, raw))


def _unknown_field(number: int, wire: int, raw: bytes, value: int) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(value)
    if wire == 1:
        return tag + value.to_bytes(8, "little")
    if wire == 5:
        return tag + (value & 0xFFFFFFFF).to_bytes(4, "little")
    return tag + _varint(len(raw)) + raw


def unknown_fields(max_fields: int = 4) -> st.SearchStrategy[bytes]:
    """Well-formed fields no schema here knows (a newer client's): parsers must skip them."""
    number = st.one_of(st.integers(100, 18_999), st.integers(20_000, 2**29 - 1))
    one = st.builds(_unknown_field, number, st.sampled_from((0, 1, 2, 5)), st.binary(max_size=24),
                    st.integers(0, 2**64 - 1))
    return st.lists(one, max_size=max_fields).map(b"".join)


INVALID_UTF8 = (b"\xff", b"\xfe\xfd", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80",
                b"\xf8\x88\x80\x80\x80", b"caf\xe9")


def invalid_utf8() -> st.SearchStrategy[bytes]:
    """Bytes that are certainly not UTF-8: valid text around one invalid sequence."""
    text = st.text(max_size=12).map(lambda s: s.encode("utf-8"))
    return st.tuples(text, st.sampled_from(INVALID_UTF8), text).map(lambda parts: b"".join(parts))


def other_types() -> tuple[type[Message], ...]:
    """Every message type that crosses the bus or gRPC, for wrong-type payloads."""
    from medserl.v1 import assessor_pb2, generator_pb2, injector_pb2, verifier_pb2

    return (pb.Note, pb.NotePair, pb.Rollout, pb.RolloutGroup, pb.PolicyUpdate, pb.DeadLetter, pb.SftExample,
            pb.VerificationReport, pb.AssessorVerdict, pb.RewardParts, pb.SamplingParams,
            verifier_pb2.VerifyRequest, assessor_pb2.AssessRequest, injector_pb2.InjectRequest,
            injector_pb2.SubmitSeedsRequest, generator_pb2.SubmitPairsRequest)


def rng_bytes(seed: int, size: int) -> bytes:
    """``size`` pseudo-random bytes from ``seed`` (hypothesis draws the seed: megabytes stay cheap)."""
    import random

    return random.Random(seed).randbytes(size)


def medec_note_strategy(notes: Sequence) -> st.SearchStrategy[pb.Note]:
    """A real MEDEC note as a Note, as it is or bent: sentences only, text only, ids shuffled, duplicated or
    negative, hostile text spliced into a sentence, a sentence blanked."""

    @st.composite
    def strategy(draw) -> pb.Note:
        source = draw(st.sampled_from(notes))
        layout = draw(st.sampled_from(("both", "sentences", "text")))
        note = pb_note(source, with_text=layout != "sentences", with_sentences=layout != "text")
        bend = draw(st.sampled_from(("none", "none", "hostile", "ids", "blank", "truncate", "id")))
        if bend == "hostile" and note.sentences:
            i = draw(st.integers(0, len(note.sentences) - 1))
            text = note.sentences[i].text
            at = draw(st.integers(0, len(text)))
            note.sentences[i].text = text[:at] + draw(hostile_text()) + text[at:]
        elif bend == "hostile":
            at = draw(st.integers(0, len(note.text)))
            note.text = note.text[:at] + draw(hostile_text()) + note.text[at:]
        elif bend == "ids" and note.sentences:
            ids = draw(st.lists(_ints(-(2**31), 2**31 - 1), min_size=len(note.sentences),
                                max_size=len(note.sentences)))
            for sentence, sid in zip(note.sentences, ids, strict=True):
                sentence.id = sid
        elif bend == "blank" and note.sentences:
            note.sentences[draw(st.integers(0, len(note.sentences) - 1))].text = draw(st.sampled_from(("", " ", "\n")))
        elif bend == "truncate":
            keep = draw(st.integers(0, max(0, len(note.sentences) - 1)))
            del note.sentences[keep:]
            note.text = note.text[: draw(st.integers(0, len(note.text)))]
        elif bend == "id":
            note.note_id = draw(hostile_text())
        return note

    return strategy()


def medec_special(notes: Sequence) -> dict[str, st.SearchStrategy]:
    return {"medserl.v1.Note": medec_note_strategy(notes)}

