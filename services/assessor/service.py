"""The frozen assessor service: a MEDEC verdict for every verified rollout, and a public detect API.

Stream: ``rollouts.verified`` -> verdict (shared assessor format + P(error)) -> reward
(``services.common.reward``) -> ``rollouts.scored``. Rollouts that failed a gate (unparseable or
rejected by the verifier) are scored by the gate reward without being shown to the model.

gRPC ``medserl.v1.Assessor``: ``Assess(note)`` and streaming ``AssessMany`` for clients that submit
notes. The model sees the numbered sentences only: never note ids or neighbouring notes.

Frozen: the checkpoint hash is recorded at start and stamped on every verdict; the assessor has no
policy-update consumer and its detector refuses weight updates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from medserl.v1 import assessor_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import metrics
from services.common.notes import InvalidNote, note_sentences
from services.common.reward import INVALID, UNPARSEABLE, RewardWeights, game_reward, gate_reward
from services.common.runtime import GrpcBinding, Service
from services.common.topics import DEAD_LETTER, ROLLOUTS_SCORED, ROLLOUTS_VERIFIED
from services.common.worker import InvalidInput, Output, StreamWorker
from services.inference import ModelServiceSettings

log = logging.getLogger(__name__)


@dataclass
class AssessorSettings(ModelServiceSettings):
    """Which detector, how it samples, and the reward weights."""

    grpc_port: int = 50054
    metrics_port: int = 9104
    temperature: float = 0.0  # greedy: a detector should be deterministic
    top_p: float = 1.0
    max_new_tokens: int = 160
    seed: int = 0  # < 0: unseeded
    top_logprobs: int = 5  # alternatives at the flag position, for P(error)
    reward_fooled: float = 1.0
    reward_caught: float = -1.0
    verifier_penalty: float = -1.0
    format_penalty: float = -1.0
    rate_window: int = 500  # rollouts in the detection / false-flag rate windows
    max_stream_notes: int = 10_000  # AssessMany: notes per call


class RateWindow:
    """Share of ``True`` among the last ``size`` observations (thread-safe)."""

    def __init__(self, size: int):
        self._values: deque[bool] = deque(maxlen=max(1, size))
        self._lock = threading.Lock()

    def add(self, value: bool) -> float:
        with self._lock:
            self._values.append(value)
            return sum(self._values) / len(self._values)


class _AssessorServicer(assessor_pb2_grpc.AssessorServicer):
    def __init__(self, service: AssessorService):
        self.service = service

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        metrics.GRPC_REQUESTS.labels(self.service.name, method, code.name).inc()

    def _assess_one(self, note: pb.Note, method: str, label: str, context) -> pb.AssessorVerdict:
        """Validate one note and judge it; a bad note is INVALID_ARGUMENT, a backend failure UNAVAILABLE."""
        try:
            sentences = note_sentences(note)
        except InvalidNote as exc:
            self._count(method, grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {label}: {exc}")
        try:
            return self.service.assess([sentences])[0]
        except Exception as exc:  # noqa: BLE001 - a backend failure is UNAVAILABLE, the server lives on
            log.exception("assessment failed", extra={"error_class": type(exc).__name__})
            self._count(method, grpc.StatusCode.UNAVAILABLE)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"assessor backend failed: {type(exc).__name__}")

    def Assess(self, request, context):
        verdict = self._assess_one(request.note, "Assess", "note", context)
        self._count("Assess", grpc.StatusCode.OK)
        return verdict

    def AssessMany(self, request_iterator, context):
        limit = self.service.settings.max_stream_notes
        for count, request in enumerate(request_iterator, start=1):
            if count > limit:
                self._count("AssessMany", grpc.StatusCode.RESOURCE_EXHAUSTED)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {limit} notes in one stream")
            yield self._assess_one(request.note, "AssessMany", f"note #{count - 1}", context)
        self._count("AssessMany", grpc.StatusCode.OK)


class AssessorService(Service):
    name = "assessor"
    settings_cls = AssessorSettings

    def __init__(self, settings: AssessorSettings, bus, detector=None):
        super().__init__(settings, bus)
        from services.assessor.detector import build_detector

        self.detector = detector or build_detector(settings)
        self.checkpoint_hash = self.detector.checkpoint_hash
        self.weights = RewardWeights(fooled=settings.reward_fooled, caught=settings.reward_caught,
                                     verifier_penalty=settings.verifier_penalty, format_penalty=settings.format_penalty)
        self.detection = RateWindow(settings.rate_window)
        self.false_flags = RateWindow(settings.rate_window)
        log.info("assessor frozen at checkpoint", extra={"checkpoint_hash": self.checkpoint_hash,
                                                        "backend": settings.backend})

    # --- the judgement ------------------------------------------------------------------------
    def assess(self, notes: Sequence[list[tuple[int, str]]]) -> list[pb.AssessorVerdict]:
        """Verdicts for notes given as numbered sentences only."""
        started = time.perf_counter()
        detections = self.detector.detect(notes)
        elapsed = time.perf_counter() - started
        tokens = sum(d.generated_tokens for d in detections)
        if tokens:
            metrics.GENERATED_TOKENS.labels(self.name).inc(tokens)
        if notes:
            metrics.GENERATION_SECONDS.labels(self.name).observe(elapsed)
        verdicts = []
        for detection in detections:
            metrics.VERDICT_SECONDS.observe(detection.latency_s)
            verdicts.append(detection.to_verdict(self.checkpoint_hash))
        return verdicts

    def load_policy(self, *args, **kwargs) -> None:
        """Refused: the assessor is frozen (raises FrozenAssessorError)."""
        self.detector.load_policy(*args, **kwargs)

    # --- the stream ---------------------------------------------------------------------------
    def score_batch(self, rollouts: list[pb.Rollout]) -> list:
        """Scored rollouts (or an InvalidInput) per verified rollout; one generate call per batch."""
        results: list = [None] * len(rollouts)
        to_judge: list[tuple[int, list[tuple[int, str]]]] = []
        for i, rollout in enumerate(rollouts):
            if not rollout.rollout_id:
                results[i] = InvalidInput("rollout has no rollout_id")
                continue
            try:
                gate = self._gate(rollout)
            except InvalidInput as exc:
                results[i] = exc
                continue
            if gate is not None:
                results[i] = self._scored(rollout, gate)
                continue
            if rollout.mode not in (pb.MODE_INJECT, pb.MODE_PARAPHRASE):
                results[i] = InvalidInput(f"rollout mode {pb.Mode.Name(rollout.mode)} has no game reward")
                continue
            try:
                to_judge.append((i, note_sentences(rollout.modified_note)))
            except InvalidNote as exc:
                results[i] = InvalidInput(f"modified note: {exc}")
        if to_judge:
            verdicts = self.assess([sentences for _, sentences in to_judge])
            for (i, _), verdict in zip(to_judge, verdicts, strict=True):
                rollout = rollouts[i]
                rollout.verdict.CopyFrom(verdict)
                reward = game_reward(rollout.mode, verdict, rollout.changed_sentence_id, self.weights)
                self._observe(rollout, verdict, reward)
                results[i] = self._scored(rollout, reward)
        return results

    def _gate(self, rollout: pb.Rollout) -> pb.RewardParts | None:
        """The gate reward when the injector's output did not parse or the verifier rejected it."""
        if rollout.HasField("reward") and rollout.reward.outcome == UNPARSEABLE:
            return gate_reward(parsed=False, verified=True, weights=self.weights)
        if rollout.HasField("reward") and rollout.reward.outcome == INVALID:
            return gate_reward(parsed=True, verified=False, weights=self.weights)
        if not rollout.HasField("verification"):
            raise InvalidInput("rollout reached the assessor without a verification report")
        if not rollout.verification.passed:
            return gate_reward(parsed=True, verified=False, weights=self.weights)
        return None

    def _scored(self, rollout: pb.Rollout, reward: pb.RewardParts) -> list[Output]:
        rollout.reward.CopyFrom(reward)
        metrics.REWARD.labels(pb.Mode.Name(rollout.mode)).observe(reward.total)
        key = rollout.group_id or rollout.rollout_id
        return [Output(self.topic(ROLLOUTS_SCORED), key, pb.ScoredRollout(rollout=rollout))]

    def _observe(self, rollout: pb.Rollout, verdict: pb.AssessorVerdict, reward: pb.RewardParts) -> None:
        mode = pb.Mode.Name(rollout.mode)
        metrics.VERDICTS.labels(mode, reward.outcome).inc()
        if rollout.mode == pb.MODE_INJECT:
            caught = verdict.error_flag and verdict.error_sentence_id == rollout.changed_sentence_id
            metrics.DETECTION_RATE.set(self.detection.add(bool(caught)))
        else:
            metrics.FALSE_FLAG_RATE.set(self.false_flags.add(bool(verdict.error_flag)))

    def _handle(self, rollouts: list[pb.Rollout]) -> list:
        try:
            return self.score_batch(rollouts)
        except Exception as exc:  # noqa: BLE001 - the worker retries each message alone
            return [exc] * len(rollouts)

    # --- runtime hooks ------------------------------------------------------------------------
    def grpc_bindings(self):
        return [GrpcBinding(assessor_pb2_grpc.add_AssessorServicer_to_server, _AssessorServicer(self),
                            "medserl.v1.Assessor")]

    def topics(self):
        return [self.topic(ROLLOUTS_VERIFIED), self.topic(ROLLOUTS_SCORED), self.topic(DEAD_LETTER)]

    def workers(self):
        s = self.settings
        return [StreamWorker(
            service=self.name, bus=self.bus, topics=[self.topic(ROLLOUTS_VERIFIED)],
            group_id=s.group_id or f"medserl-{self.name}", message_type=pb.Rollout,
            handler=self._handle, message_id=lambda r: r.rollout_id,
            max_batch=s.max_batch, poll_timeout_s=s.poll_timeout_s, dead_letter_topic=self.topic(DEAD_LETTER),
            max_attempts=s.max_attempts,
        )]

    def close(self) -> None:
        self.detector.close()
