"""The verifier service: gRPC ``medserl.v1.Verifier`` and a Kafka worker for RL rollouts.

* ``Verify`` / ``VerifyMany``: any example (an SFT example or a rollout, in any mode) over gRPC. SFT
  examples are verified by the generator itself, a library call to :func:`verify`, never over Kafka.
* ``rollouts.generated`` (RolloutGroup) -> ``rollouts.verified`` (the same group, whole): every
  parsed rollout gets its ``verification`` report; an unparsed one (``parse_error`` set) passes
  through untouched. The verifier never scores: the reward is the assessor's (services/common/reward.py).

Bad input (empty note, an oversized note, invalid UTF-8, ids out of range, a note with no sentences,
an unknown mode) is INVALID_ARGUMENT with the reason over gRPC and a dead letter with the reason over
Kafka; the service keeps serving. The reason never contains note text.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from medserl.v1 import messages_pb2 as pb
from medserl.v1 import verifier_pb2
from services.common import metrics, topics
from services.common.bus import Bus
from services.common.limits import id_problem
from services.common.notes import InvalidNote
from services.common.notes import note_sentences as common_note_sentences
from services.common.runtime import GrpcBinding, Service
from services.common.settings import ServiceSettings
from services.common.worker import InvalidInput, Output, StreamWorker, per_message
from services.verifier.checks import (
    PROTO_TO_MODE,
    VerificationResult,
    VerifyInputError,
    verify,
)

log = logging.getLogger(__name__)
SERVICE_NAME = "medserl.v1.Verifier"


@dataclass
class VerifierSettings(ServiceSettings):
    grpc_port: int = 50052
    metrics_port: int = 9102


def note_sentences(note: pb.Note, what: str) -> list[tuple[int, str]]:
    """A note's numbered sentences under the one rule (``services.common.notes``), as a verifier input error."""
    try:
        return common_note_sentences(note)
    except InvalidNote as exc:
        raise VerifyInputError(f"{what} {exc}") from None


def _reasoning(text: str) -> dict | None:
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VerifyInputError(f"reasoning_json is not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(value, dict):
        raise VerifyInputError("reasoning_json must be a JSON object")
    return value


def _observe(result: VerificationResult, seconds: float) -> None:
    metrics.VERIFICATIONS.labels(result.mode, str(result.passed).lower()).inc()
    metrics.VERIFY_SECONDS.labels(result.mode).observe(seconds)
    for check in result.failed_checks():
        metrics.VERIFIER_CHECK_FAILURES.labels(result.mode, check.name).inc()


class VerifierCore:
    """Turns protobuf requests into :func:`verify` calls and records metrics. No transport here."""

    def run(self, mode: str, original: pb.Note, modified: pb.Note, *, error_sentence_id: int | None = None,
            claimed_error_type: str | None = None, reasoning: dict | None = None) -> VerificationResult:
        started = time.perf_counter()
        result = verify(mode, note_sentences(original, "original"), note_sentences(modified, "modified"),
                        error_sentence_id=error_sentence_id, claimed_error_type=claimed_error_type,
                        reasoning=reasoning)
        _observe(result, time.perf_counter() - started)
        return result

    def verify_request(self, request: verifier_pb2.VerifyRequest) -> pb.VerificationReport:
        if request.id and (problem := id_problem("id", request.id)):  # echoed back: never a 1 MB "id"
            raise VerifyInputError(problem)
        mode = PROTO_TO_MODE.get(request.mode)
        if mode is None:
            raise VerifyInputError(f"mode {pb.Mode.Name(request.mode) if request.mode in pb.Mode.values() else request.mode}"
                                   " cannot be verified; use MODE_PARAPHRASE, MODE_INJECT or MODE_MEDEC_INCORRECT")
        result = self.run(
            mode, request.original, request.modified,
            error_sentence_id=request.error_sentence_id if mode == "medec_incorrect" else None,
            claimed_error_type=request.claimed_error_type or None,
            reasoning=_reasoning(request.reasoning_json),
        )
        return result.to_proto(request.id)

    # --- Kafka handlers ----------------------------------------------------------------------
    def rollout_group(self, group: pb.RolloutGroup, out_verified: str) -> list[Output]:
        """Annotate every parsed rollout of the group and forward the whole group."""
        if not group.group_id or not group.rollouts:
            raise InvalidInput("rollout group without a group_id or without rollouts")
        mode = {pb.MODE_INJECT: "inject", pb.MODE_PARAPHRASE: "paraphrase"}.get(group.mode)
        if mode is None:
            raise InvalidInput(f"group {group.group_id!r}: mode {group.mode} is not inject or paraphrase")
        checked = pb.RolloutGroup()
        checked.CopyFrom(group)
        try:
            original = note_sentences(group.seed_note, "original")
        except VerifyInputError as exc:
            raise InvalidInput(f"group {group.group_id!r}: {exc}") from None
        for rollout in checked.rollouts:
            if rollout.parse_error:
                continue
            started = time.perf_counter()
            try:
                result = verify(mode, original, note_sentences(rollout.modified_note, "modified"),
                                error_sentence_id=rollout.changed_sentence_id,
                                claimed_error_type=(rollout.claimed_error_type or None) if mode == "inject" else None)
            except VerifyInputError as exc:  # the edit itself is unusable: a failed check, not a lost group
                report = pb.VerificationReport(subject_id=rollout.rollout_id, mode=group.mode, passed=False,
                                               checks=[pb.Check(name="verifier_input", passed=False,
                                                                detail=str(exc)[:300])])
                rollout.verification.CopyFrom(report)
                continue
            _observe(result, time.perf_counter() - started)
            rollout.verification.CopyFrom(result.to_proto(rollout.rollout_id, group.mode))
        return [Output(out_verified, group.group_id, checked)]


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------

class _Undecodable:
    """Stands in for a request protobuf could not decode (e.g. invalid UTF-8 in a string field), so the
    servicer can answer INVALID_ARGUMENT instead of gRPC's generic INTERNAL."""

    def __init__(self, reason: str):
        self.reason = reason


def _deserialize_request(data: bytes):
    request = verifier_pb2.VerifyRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return _Undecodable(f"undecodable VerifyRequest (invalid UTF-8 in a string field?): {exc}"[:500])
    return request


class VerifierServicer:
    def __init__(self, core: VerifierCore):
        self.core = core

    def _one(self, request, context, method: str) -> pb.VerificationReport:
        if isinstance(request, _Undecodable):
            metrics.GRPC_REQUESTS.labels("verifier", method, "INVALID_ARGUMENT").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        try:
            report = self.core.verify_request(request)
        except VerifyInputError as exc:
            metrics.GRPC_REQUESTS.labels("verifier", method, "INVALID_ARGUMENT").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {request.id!r}: {exc}")
        metrics.GRPC_REQUESTS.labels("verifier", method, "OK").inc()
        return report

    def Verify(self, request, context):  # noqa: N802 - gRPC method name
        return self._one(request, context, "Verify")

    def VerifyMany(self, request_iterator, context) -> Iterator[pb.VerificationReport]:  # noqa: N802
        for request in request_iterator:
            yield self._one(request, context, "VerifyMany")


def add_verifier_to_server(servicer: VerifierServicer, server: grpc.Server) -> None:
    """Like the generated ``add_VerifierServicer_to_server``, with a request decoder that turns
    undecodable bytes into INVALID_ARGUMENT."""
    handlers = {
        "Verify": grpc.unary_unary_rpc_method_handler(
            servicer.Verify, request_deserializer=_deserialize_request,
            response_serializer=pb.VerificationReport.SerializeToString),
        "VerifyMany": grpc.stream_stream_rpc_method_handler(
            servicer.VerifyMany, request_deserializer=_deserialize_request,
            response_serializer=pb.VerificationReport.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


# --------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------

class VerifierService(Service):
    """Gates RL rollouts over Kafka; answers Verify/VerifyMany for any example."""

    name = "verifier"
    settings_cls = VerifierSettings

    def __init__(self, settings: VerifierSettings, bus: Bus):
        super().__init__(settings, bus)
        from services.verifier.lexicons import get_lexicon

        get_lexicon()  # load (or build and cache) the lexicons now, not on the first request
        self.core = VerifierCore()

    def topics(self) -> Sequence[str]:
        return [self.topic(t) for t in (topics.ROLLOUTS_GENERATED, topics.ROLLOUTS_VERIFIED,
                                        topics.DEAD_LETTER)]

    def grpc_bindings(self) -> Sequence[GrpcBinding]:
        return [GrpcBinding(add_verifier_to_server, VerifierServicer(self.core), SERVICE_NAME)]

    def workers(self) -> Sequence[StreamWorker]:
        s = self.settings
        group = s.group_id or "medserl-verifier"
        common = dict(service=self.name, bus=self.bus, max_batch=s.max_batch, poll_timeout_s=s.poll_timeout_s,
                      max_attempts=s.max_attempts, dead_letter_topic=self.topic(topics.DEAD_LETTER))
        ro_verified = self.topic(topics.ROLLOUTS_VERIFIED)
        return [
            StreamWorker(topics=[self.topic(topics.ROLLOUTS_GENERATED)], group_id=f"{group}-rollouts",
                         message_type=pb.RolloutGroup,
                         # no skip by id here: a duplicate group flows on to the learner, which drops it
                         # durably and counts it (the injector's admission budget relies on that count)
                         handler=per_message(lambda m: self.core.rollout_group(m, ro_verified)), **common),
        ]
