"""The frozen assessor service: a MEDEC verdict for every verified rollout, and a public detect API.

Stream: ``rollouts.verified`` (RolloutGroup) -> a verdict for every verified rollout (shared
assessor format + P(error)) -> the reward of EVERY rollout, gates included, from
``services.common.reward.score_rollout`` with the configured weights (the only caller) ->
``rollouts.scored`` (the same group, whole). Rollouts that failed a gate are scored without being
shown to the model. An answer that does not parse is judged once more; if it still does not parse
the rollout is excluded (never a win; counted on ``medserl_assessor_unparsed_total``).

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
from services.assessor.detector import ModelDetector
from services.common import metrics
from services.common.deadline import DeadlineExceeded
from services.common.limits import enum_name
from services.common.notes import InvalidNote, note_sentences
from services.common.reward import EXCLUDED, RewardWeights, needs_verdict, score_rollout
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
    reward_fooled: float = RewardWeights.fooled
    reward_caught: float = RewardWeights.caught
    verifier_penalty: float = RewardWeights.verifier_penalty
    format_penalty: float = RewardWeights.format_penalty
    rejudge_unparsed: bool = True  # judge an unparseable answer once more before excluding the rollout
    rejudge_temperature: float = 0.7  # the second look samples: a greedy retry would repeat the first answer
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
        except DeadlineExceeded:
            raise  # stopped at a checkpoint: the guard answers DEADLINE_EXCEEDED
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
    def assess(self, notes: Sequence[list[tuple[int, str]]], *, rejudge: bool = False) -> list[pb.AssessorVerdict]:
        """Verdicts for notes given as numbered sentences only (``rejudge``: sampled, for a second look)."""
        started = time.perf_counter()
        detections = (self.detector.detect(notes, temperature=self.settings.rejudge_temperature)
                      if rejudge and isinstance(self.detector, ModelDetector) else self.detector.detect(notes))
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
    def score_groups(self, groups: list[pb.RolloutGroup]) -> list:
        """Each group scored whole (or an InvalidInput); one generate call for the whole poll."""
        results: list = [None] * len(groups)
        to_judge: list[tuple[pb.Rollout, list[tuple[int, str]]]] = []
        scored: list[pb.RolloutGroup | None] = [None] * len(groups)
        for i, group in enumerate(groups):
            if not group.group_id or not group.rollouts:
                results[i] = InvalidInput("rollout group without a group_id or without rollouts")
                continue
            if group.mode not in (pb.MODE_INJECT, pb.MODE_PARAPHRASE):
                results[i] = InvalidInput(f"group {group.group_id!r}: mode {enum_name(pb.Mode, group.mode)} "
                                          "has no game reward")
                continue
            copy = pb.RolloutGroup()
            copy.CopyFrom(group)
            pending = []
            try:
                for rollout in copy.rollouts:
                    if rollout.mode not in (pb.MODE_INJECT, pb.MODE_PARAPHRASE):  # the reward needs it
                        raise InvalidInput(f"rollout {rollout.rollout_id!r}: mode {enum_name(pb.Mode, rollout.mode)} "
                                           "has no game reward")
                    if not rollout.parse_error and not rollout.HasField("verification"):
                        raise InvalidInput(f"rollout {rollout.rollout_id!r} reached the assessor without a "
                                           "verification report")
                    if needs_verdict(rollout):
                        pending.append((rollout, note_sentences(rollout.modified_note)))
            except InvalidNote as exc:
                results[i] = InvalidInput(f"group {group.group_id!r}: modified note: {exc}")
                continue
            except InvalidInput as exc:
                results[i] = exc
                continue
            to_judge.extend(pending)
            scored[i] = copy
        verdicts = self._judge([sentences for _, sentences in to_judge])
        by_id = {rollout.rollout_id: verdict for (rollout, _), verdict in zip(to_judge, verdicts, strict=True)}
        for i, group in enumerate(scored):
            if group is None:
                continue
            for rollout in group.rollouts:
                verdict = by_id.get(rollout.rollout_id)
                if verdict is not None:
                    rollout.verdict.CopyFrom(verdict)
                rollout.reward.CopyFrom(score_rollout(rollout, verdict, self.weights))
                self._observe(rollout, verdict)
            results[i] = [Output(self.topic(ROLLOUTS_SCORED), group.group_id, group)]
        return results

    def _judge(self, notes: list[list[tuple[int, str]]]) -> list[pb.AssessorVerdict]:
        """Verdicts; answers that do not parse are judged once more (sampled) when configured."""
        if not notes:
            return []
        verdicts = self.assess(notes)
        retry = [i for i, v in enumerate(verdicts) if not v.parsed]
        if retry and self.settings.rejudge_unparsed:
            again = self.assess([notes[i] for i in retry], rejudge=True)
            for i, verdict in zip(retry, again, strict=True):
                if verdict.parsed:
                    verdicts[i] = verdict
        for verdict in verdicts:
            if not verdict.parsed:
                metrics.ASSESSOR_UNPARSED.inc()
        return verdicts

    def _observe(self, rollout: pb.Rollout, verdict: pb.AssessorVerdict | None) -> None:
        mode = pb.Mode.Name(rollout.mode)
        metrics.REWARD.labels(mode).observe(rollout.reward.total)
        metrics.VERDICTS.labels(mode, rollout.reward.outcome).inc()
        if verdict is None or rollout.reward.outcome == EXCLUDED:
            return
        if rollout.mode == pb.MODE_INJECT:
            caught = verdict.error_flag and verdict.error_sentence_id == rollout.changed_sentence_id
            metrics.DETECTION_RATE.set(self.detection.add(bool(caught)))
        else:
            metrics.FALSE_FLAG_RATE.set(self.false_flags.add(bool(verdict.error_flag)))

    def _handle(self, groups: list[pb.RolloutGroup]) -> list:
        try:
            return self.score_groups(groups)
        except Exception as exc:  # noqa: BLE001 - the worker retries each message alone
            return [exc] * len(groups)

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
            group_id=s.group_id or f"medserl-{self.name}", message_type=pb.RolloutGroup,
            handler=self._handle,  # no skip by id: the learner drops (and counts) duplicate groups
            max_batch=s.max_batch, poll_timeout_s=s.poll_timeout_s, dead_letter_topic=self.topic(DEAD_LETTER),
            max_attempts=s.max_attempts,
        )]

    def close(self) -> None:
        self.detector.close()
