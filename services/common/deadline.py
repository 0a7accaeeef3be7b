"""The deadline of the gRPC call being handled, where the work can ask "should I go on?".

Issue 12: a call abandoned at 0.5 s burned 6 s of CPU, because nothing between the interceptor and the
model ever looked at the call again. ``services.common.guard`` opens a :class:`CallState` for every
call (the client's deadline capped by the server's ``grpc_max_call_s``; ``ended`` is set by gRPC when
the call terminates: the client gave up, its deadline passed, or it was answered) and handlers and
backends call :func:`checkpoint` between units of work (notes, batches, generated tokens): past the
deadline, or once the call ended, it raises :class:`DeadlineExceeded` and the guard answers
DEADLINE_EXCEEDED. Outside a gRPC call (a stream worker, a batch job) there is no call state and
:func:`checkpoint` does nothing, so backends call it unconditionally.

No gRPC import here: inference backends use it without depending on the server.
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass, field


class DeadlineExceeded(Exception):  # noqa: N818 - named after the status code it becomes
    """The call being handled ran past its deadline or ended: stop the work (DEADLINE_EXCEEDED)."""


@dataclass
class CallState:
    method: str
    deadline: float  # time.monotonic() by which the call must be answered
    ended: threading.Event = field(default_factory=threading.Event)  # set by gRPC when the call terminates

    def expired(self) -> bool:
        return self.ended.is_set() or time.monotonic() >= self.deadline

    def left(self) -> float:
        """Seconds before the deadline (0 once the call ended)."""
        return 0.0 if self.ended.is_set() else max(0.0, self.deadline - time.monotonic())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call ends or its deadline passes, at most ``timeout`` seconds; True when it
        did. For handlers that wait on something else meanwhile (a job, a queue)."""
        limit = self.left() if timeout is None else min(timeout, self.left())
        self.ended.wait(limit)
        return self.expired()


_current: contextvars.ContextVar[CallState | None] = contextvars.ContextVar("medserl_call", default=None)


def current_call() -> CallState | None:
    """The gRPC call being handled on this thread (None outside a call)."""
    return _current.get()


def enter(call: CallState) -> contextvars.Token:
    return _current.set(call)


def leave(token: contextvars.Token) -> None:
    _current.reset(token)


def checkpoint(what: str = "") -> None:
    """Raise DeadlineExceeded when the call being handled is past its deadline or has ended; nothing
    outside a call. Cheap (a context lookup and a clock read): call it per token, note or batch."""
    call = _current.get()
    if call is not None and call.expired():
        why = "the call ended (the client went away or its deadline passed)" if call.ended.is_set() \
            else "the call ran past its deadline"
        raise DeadlineExceeded(f"{why}; stopped{' ' + what if what else ''}")


def time_left(default: float | None = None) -> float | None:
    """Seconds the call being handled has left (``default`` outside a call): bounds a blocking wait,
    e.g. an HTTP request to a model server made on behalf of the call."""
    call = _current.get()
    return default if call is None else call.left()
