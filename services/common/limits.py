"""Limits on ids and sizes checked at every boundary (gRPC and bus), so hostile values fail early.

Issue 12: one ``SubmitSeeds`` with a 300 KB ``note_id`` crash-looped the injector (the id is copied into
every rollout id, and the group outgrew the producer's limit). Ids are short printable names.
"""

from __future__ import annotations

MAX_ID_CHARS = 256


def id_problem(what: str, value: str, max_chars: int = MAX_ID_CHARS) -> str:
    """Why ``value`` is not a usable id ('' when it is): empty, too long, or with control characters."""
    if not value:
        return f"{what} is empty"
    if len(value) > max_chars:
        return f"{what} has {len(value)} characters (limit {max_chars})"
    if not value.isprintable():
        return f"{what} has control characters"
    return ""


def enum_name(enum, value: int) -> str:
    """The name of ``value`` in a protobuf enum, or the number: proto3 enums are open, so any int32
    arrives, and ``Enum.Name`` raises on the ones it does not know (a ValueError in a reason)."""
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)
