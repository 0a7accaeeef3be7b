"""The checks every gRPC call passes before a servicer sees it, with a status code that says why.

Issue 12: a bogus bearer token was accepted, 12 heavy calls pushed the health check past the probe
timeout, undecodable requests answered INTERNAL and a handler's ValueError UNKNOWN. One interceptor,
installed by the runtime on every service, so no servicer has to remember any of it:

* authentication: when tokens are configured, every call but health needs ``authorization: Bearer
  <token>`` (UNAUTHENTICATED otherwise) unless the TLS layer already verified a client certificate;
  the caller's name is available to the servicer as ``current_caller()``;
* a concurrency limit per service: at most ``max_concurrent`` calls run at once, the next one is
  refused at once with RESOURCE_EXHAUSTED (it never waits on a thread), so health checks, which are
  exempt, always find a free server thread;
* deadlines: a call whose deadline passed while it was queued is refused with DEADLINE_EXCEEDED
  before any work; the server's own cap (``max_call_s``) bounds every call's deadline, which is
  checked between streamed messages and by the work itself: handlers and inference backends call
  ``services.common.deadline.checkpoint()`` between notes, batches and generated tokens, which raises
  ``DeadlineExceeded`` once the deadline passed or the call ended (gRPC's termination callback: the
  client went away), so an abandoned call stops burning CPU at the next checkpoint;
* status codes: an undecodable request is INVALID_ARGUMENT, a ValueError escaping a handler is
  INVALID_ARGUMENT with its message, DeadlineExceeded is DEADLINE_EXCEEDED, anything else INTERNAL
  with the exception's class only.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc

from services.common import deadline, metrics
from services.common.auth import Caller, token_caller
from services.common.deadline import CallState, DeadlineExceeded, checkpoint, current_call  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
ANONYMOUS = Caller("anonymous", False, "anonymous")

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("medserl_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """Who made the gRPC call being handled on this thread (anonymous outside a call)."""
    return _caller.get()


def deadline_passed() -> bool:
    """Has the call being handled run past its deadline (the client's or the server's cap), or ended?"""
    call = current_call()
    return call is not None and call.expired()


class _Undecodable:
    """Stands in for a request that did not deserialize, so the guard can answer INVALID_ARGUMENT."""

    def __init__(self, error: BaseException):
        self.error = error


@dataclass
class GuardConfig:
    service: str
    tokens: Mapping[str, str] = field(default_factory=dict)  # sha256(token) -> caller
    client_certificates: bool = False  # mutual TLS: the transport verified every client
    max_concurrent: int = 6
    max_call_s: float = 3600.0

    @property
    def tokens_required(self) -> bool:
        return bool(self.tokens)


class CallGuard(grpc.ServerInterceptor):
    def __init__(self, config: GuardConfig):
        self.config = config
        self._slots = threading.BoundedSemaphore(max(1, config.max_concurrent))
        self.in_flight = 0
        self._count_lock = threading.Lock()

    # --- the interceptor --------------------------------------------------------------------
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, stream_in=False),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, stream_in=False),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, stream_in=True),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method, stream_in=True),
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer)

    # --- admission ----------------------------------------------------------------------------
    def _refuse(self, context, method: str, code: grpc.StatusCode, details: str, kind: str) -> None:
        short = method.rsplit("/", 1)[-1]
        metrics.GRPC_REQUESTS.labels(self.config.service, short, code.name).inc()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            metrics.AUTH_REFUSED.labels(self.config.service, "grpc", kind).inc()
        else:
            metrics.GRPC_LIMITED.labels(self.config.service, short, kind).inc()
        context.abort(code, details)

    def _authenticate(self, context, method: str) -> Caller:
        if method.startswith(HEALTH_PREFIX):
            return ANONYMOUS
        by_token = token_caller(self.config.tokens, context.invocation_metadata()) if self.config.tokens else None
        if by_token is not None:
            return Caller(by_token, True, "token")
        if self.config.client_certificates:
            names = context.auth_context().get("x509_common_name") or [b"client"]
            return Caller(names[0].decode("utf-8", "replace"), True, "certificate")
        if self.config.tokens_required:
            sent = any(k.lower() == "authorization" for k, _ in context.invocation_metadata() or ())
            self._refuse(context, method, grpc.StatusCode.UNAUTHENTICATED,
                         "invalid bearer token" if sent else "this service needs 'authorization: Bearer <token>'",
                         "bad_token" if sent else "no_token")
        return ANONYMOUS

    def _enter(self, context, method: str) -> tuple[bool, contextvars.Token, contextvars.Token]:
        """Authenticate, check the deadline, take a slot. Returns (holds a slot, context tokens)."""
        caller = self._authenticate(context, method)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self._refuse(context, method, grpc.StatusCode.DEADLINE_EXCEEDED,
                         "the call's deadline passed before the server could start it", "deadline")
        limited = not (method.startswith(HEALTH_PREFIX) or method.startswith(REFLECTION_PREFIX))
        if limited and not self._slots.acquire(blocking=False):
            self._refuse(context, method, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"server busy: {self.config.max_concurrent} calls in progress (the limit); retry with backoff",
                         "concurrency")
        if limited:
            with self._count_lock:
                self.in_flight += 1
        cap = self.config.max_call_s
        budget = cap if remaining is None else min(cap, remaining)
        call = CallState(method, time.monotonic() + budget)
        if not context.add_callback(call.ended.set):  # gRPC runs it when the call terminates, however
            call.ended.set()  # it had terminated already
        return limited, _caller.set(caller), deadline.enter(call)

    def _leave(self, limited: bool, tokens) -> None:
        caller_token, call_token = tokens
        deadline.leave(call_token)
        _caller.reset(caller_token)
        if limited:
            with self._count_lock:
                self.in_flight -= 1
            self._slots.release()

    # --- wrappers -----------------------------------------------------------------------------
    def _requests(self, request, context, method: str, stream_in: bool):
        if not stream_in:
            if isinstance(request, _Undecodable):
                self._refuse(context, method, grpc.StatusCode.INVALID_ARGUMENT,
                             f"the request cannot be decoded: {_describe(request.error)}", "decode")
            return request
        return self._checked_stream(request, context, method)

    def _checked_stream(self, requests: Iterator, context, method: str) -> Iterator:
        for request in requests:
            if isinstance(request, _Undecodable):
                self._refuse(context, method, grpc.StatusCode.INVALID_ARGUMENT,
                             f"a streamed request cannot be decoded: {_describe(request.error)}", "decode")
            if deadline_passed():
                self._refuse(context, method, grpc.StatusCode.DEADLINE_EXCEEDED, "the call ran past its deadline",
                             "deadline")
            yield request

    def _unary(self, behaviour, method: str, stream_in: bool):
        def handle(request, context):
            limited, *tokens = self._enter(context, method)
            try:
                return behaviour(self._requests(request, context, method, stream_in), context)
            except Exception as exc:
                self._map(exc, context, method)
                raise
            finally:
                self._leave(limited, tokens)

        return handle

    def _streaming(self, behaviour, method: str, stream_in: bool):
        def handle(request, context):
            limited, *tokens = self._enter(context, method)
            try:
                for response in behaviour(self._requests(request, context, method, stream_in), context):
                    yield response
                    if deadline_passed() and context.is_active():
                        self._refuse(context, method, grpc.StatusCode.DEADLINE_EXCEEDED,
                                     "the call ran past the server's deadline", "deadline")
            except Exception as exc:
                self._map(exc, context, method)
                raise
            finally:
                self._leave(limited, tokens)

        return handle

    def _map(self, exc: Exception, context, method: str) -> None:
        """A handler's exception as a status code (a handler that aborted keeps its own)."""
        if context.code() is not None:
            return
        short = method.rsplit("/", 1)[-1]
        if isinstance(exc, DeadlineExceeded):  # the work stopped at a checkpoint (issue 12)
            metrics.GRPC_LIMITED.labels(self.config.service, short, "deadline").inc()
            metrics.GRPC_REQUESTS.labels(self.config.service, short, "DEADLINE_EXCEEDED").inc()
            log.info("call stopped at a deadline checkpoint", extra={"method": short})
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _describe(exc))
        if isinstance(exc, ValueError):
            metrics.GRPC_REQUESTS.labels(self.config.service, short, "INVALID_ARGUMENT").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _describe(exc))
        log.error("gRPC handler failed", extra={"method": short, "error_class": type(exc).__name__})
        metrics.GRPC_REQUESTS.labels(self.config.service, short, "INTERNAL").inc()
        context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")


def _lenient(deserializer):
    """A deserializer that never raises (gRPC answers INTERNAL when one does)."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - answered as INVALID_ARGUMENT by the guard
            return _Undecodable(exc)

    return deserialize


def _describe(exc: BaseException) -> str:
    """An exception's message, bounded (our ValueErrors never quote note text)."""
    text = str(exc) or type(exc).__name__
    return text[:500]
