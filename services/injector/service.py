"""The injector service: the policy that writes one edit per note, for the RL self-play loop.

Stream: ``notes.seed`` -> a mode per note (paraphrase / inject; ``inject_fraction`` of notes are
inject) -> a group of ``group_size`` sampled edits in the shared injector format -> the edit applied
-> ``rollouts.generated`` (everything the learner needs: ids, mode, policy version, prompt and
completion token ids, behaviour log-probs, sampling params, the seed and the modified note).
A completion that does not parse is still published, with the format-gate reward, so the verifier
can forward it straight to the learner (the policy must learn that garbage costs).

Policy versions: a second worker follows ``policy.updates`` and loads each new version without a
restart (transformers: LoRA adapter or full weights from the checkpoint; vllm: load_lora_adapter).
Loading and generating share a lock, so every rollout carries the version that really made it.

Admission control: with ``learner_batch_rollouts`` rollouts per learner step, the injector generates
at most ``(v - v0 + 1 + max_staleness) * learner_batch_rollouts`` rollouts by the time it knows of
policy version ``v`` (``v0``: the version it started with), so it never runs more than
``max_staleness`` versions ahead of the learner. When the budget is spent it stops polling
``notes.seed`` (seeds wait in the topic; nothing is dropped) until a new version arrives. The budget
is per replica and counts from the replica's start; a version that fails to load still advances it
(the learner moved on; the rollouts keep the older version's stamp, so the learner sees they are
stale), so a bad checkpoint never stalls the loop. ``learner_batch_rollouts`` must be at least the
learner's batch divided by the number of replicas, or the loop waits forever.

gRPC ``medserl.v1.Injector``: ``Inject(note, mode)`` returns a group without publishing it;
``SubmitSeeds`` validates notes and publishes them to ``notes.seed``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, replace

import grpc

from medserl.v1 import injector_pb2, injector_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import formats, metrics
from services.common.notes import InvalidNote, make_note, note_sentences
from services.common.reward import gate_reward
from services.common.runtime import GrpcBinding, Service
from services.common.topics import DEAD_LETTER, NOTES_SEED, POLICY_UPDATES, ROLLOUTS_GENERATED
from services.common.worker import InvalidInput, Output, StreamWorker
from services.inference import (
    Completion,
    GenerationParams,
    InferenceBackend,
    ModelServiceSettings,
    PolicyUpdateError,
    build_backend,
)

log = logging.getLogger(__name__)

MODE_NAMES = {pb.MODE_PARAPHRASE: "paraphrase", pb.MODE_INJECT: "inject"}


@dataclass
class InjectorSettings(ModelServiceSettings):
    grpc_port: int = 50053
    metrics_port: int = 9103
    inject_fraction: float = 0.5  # share of seed notes given mode inject (the rest: paraphrase)
    group_size: int = 4  # edits sampled per seed note (the learner's per-note baseline)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0  # < 0: unseeded sampling; else per-note seeds derive from it
    initial_policy_version: int = 0
    max_staleness: int = 1  # versions the injector may run ahead of the learner
    learner_batch_rollouts: int = 256  # rollouts per learner step; 0 turns admission control off
    max_group_size: int = 32  # gRPC Inject: largest n a client may ask for


class PolicyState:
    """The policy version in use and the admission budget, shared by the workers and gRPC."""

    def __init__(self, backend: InferenceBackend, version: int, settings: InjectorSettings):
        self.backend = backend
        self.version = version  # the version loaded and stamped on rollouts
        self.learner_version = version  # the newest version the learner published (loaded or not)
        self.start_version = version
        self.settings = settings
        self.generated = 0  # rollouts admitted since start
        self.lock = threading.RLock()  # generation and weight loading never interleave
        self._changed = threading.Condition()

    def budget(self) -> int | None:
        """Rollouts that may still be generated before the learner publishes a new version."""
        per_step = self.settings.learner_batch_rollouts
        if per_step <= 0:
            return None
        allowed = (self.learner_version - self.start_version + 1 + self.settings.max_staleness) * per_step
        return max(0, allowed - self.generated)

    def admit(self, rollouts: int) -> None:
        with self._changed:
            self.generated += rollouts

    def saw_learner_version(self, version: int) -> None:
        """The learner has reached ``version``: admission follows it even if loading that version fails."""
        with self._changed:
            if version > self.learner_version:
                self.learner_version = version
                self._changed.notify_all()

    def update(self, update: pb.PolicyUpdate) -> bool:
        """Load a newer version (older or equal versions are ignored). True when it switched."""
        self.saw_learner_version(update.version)
        if update.version <= self.version:
            return False
        with self.lock:
            self.backend.load_policy(update.version, update.checkpoint_uri, update.kind or "lora")
            previous, self.version = self.version, update.version
        with self._changed:
            self._changed.notify_all()
        metrics.POLICY_VERSION.labels("injector").set(update.version)
        log.info("policy version loaded", extra={"version": update.version, "previous": previous,
                                                 "kind": update.kind or "lora", "learner_step": update.learner_step})
        return True

    def wait_for_change(self, timeout_s: float) -> None:
        with self._changed:
            self._changed.wait(timeout_s)


class AdmissionWorker(StreamWorker):
    """A seed consumer that polls only while the admission budget allows another group."""

    def __init__(self, *, policy: PolicyState, group_size: int, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy
        self.group_size = group_size
        self._configured_batch = self.max_batch
        self.paused_s = 0.0

    def run_once(self) -> int:
        budget = self.policy.budget()
        if budget is not None:
            groups = budget // self.group_size
            if groups <= 0:
                started = time.monotonic()
                self.policy.wait_for_change(self.poll_timeout_s)
                self.paused_s += time.monotonic() - started
                return 0
            self.max_batch = max(1, min(self._configured_batch, groups))
        return super().run_once()


class _InjectorServicer(injector_pb2_grpc.InjectorServicer):
    def __init__(self, service: InjectorService):
        self.service = service

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        metrics.GRPC_REQUESTS.labels(self.service.name, method, code.name).inc()

    def Inject(self, request, context):
        service = self.service
        try:
            sentences = note_sentences(request.note)
            if request.mode not in (pb.MODE_UNSPECIFIED, pb.MODE_PARAPHRASE, pb.MODE_INJECT):
                raise InvalidNote(f"mode must be MODE_PARAPHRASE or MODE_INJECT, got {pb.Mode.Name(request.mode)}")
            params = service.params.merged_with_proto(request.sampling if request.HasField("sampling") else None)
            if params.n > service.settings.max_group_size:
                raise InvalidNote(f"sampling.n {params.n} is above the limit {service.settings.max_group_size}")
            if params.max_new_tokens > service.settings.max_new_tokens:
                raise InvalidNote(f"sampling.max_new_tokens {params.max_new_tokens} is above the service's "
                                  f"{service.settings.max_new_tokens}")
        except (InvalidNote, ValueError) as exc:
            self._count("Inject", grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        note = pb.Note()
        note.CopyFrom(request.note)
        if not note.note_id:
            note.note_id = f"grpc-{uuid.uuid4().hex[:12]}"
        mode = request.mode if request.mode != pb.MODE_UNSPECIFIED else service.choose_mode(note)
        try:
            rollouts = service.generate_groups([(note, sentences, mode)], params)[0]
        except Exception as exc:  # noqa: BLE001 - the backend failed; the server keeps serving
            log.exception("inject failed", extra={"error_class": type(exc).__name__})
            self._count("Inject", grpc.StatusCode.UNAVAILABLE)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"injector backend failed: {type(exc).__name__}")
        self._count("Inject", grpc.StatusCode.OK)
        return injector_pb2.InjectResponse(rollouts=rollouts)

    def SubmitSeeds(self, request, context):
        for i, note in enumerate(request.notes):
            try:
                note_sentences(note)
                if not note.note_id:
                    raise InvalidNote("note_id is empty")
            except InvalidNote as exc:
                self._count("SubmitSeeds", grpc.StatusCode.INVALID_ARGUMENT)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"note #{i}: {exc}")
        try:
            for note in request.notes:
                self.service.producer.publish(self.service.topic(NOTES_SEED), note.SerializeToString(), key=note.note_id)
            self.service.producer.flush()
        except Exception as exc:  # noqa: BLE001 - the bus is down; tell the client to retry
            self._count("SubmitSeeds", grpc.StatusCode.UNAVAILABLE)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"could not publish seeds: {exc}")
        self._count("SubmitSeeds", grpc.StatusCode.OK)
        return injector_pb2.SubmitSeedsResponse(accepted=len(request.notes))


class InjectorService(Service):
    name = "injector"
    settings_cls = InjectorSettings

    def __init__(self, settings: InjectorSettings, bus, backend: InferenceBackend | None = None):
        super().__init__(settings, bus)
        if not 0.0 <= settings.inject_fraction <= 1.0:
            raise ValueError(f"inject_fraction must be in [0, 1], got {settings.inject_fraction}")
        if settings.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {settings.group_size}")
        if settings.backend not in ("transformers", "vllm"):
            raise ValueError(f"the injector needs token ids and log-probs: backend must be transformers or vllm, "
                             f"got {settings.backend!r}")
        self.backend = backend or build_backend(settings.backend_config())
        self.params = GenerationParams(temperature=settings.temperature, top_p=settings.top_p,
                                       max_new_tokens=settings.max_new_tokens, n=settings.group_size,
                                       seed=None).validate()
        self.policy = PolicyState(self.backend, settings.initial_policy_version, settings)
        self.producer = bus.producer()
        self._instance = uuid.uuid4().hex[:8]
        self._seed_worker: AdmissionWorker | None = None
        self._rng = random.Random(settings.seed)
        self._rng_lock = threading.Lock()
        metrics.POLICY_VERSION.labels(self.name).set(self.policy.version)

    # --- decisions ------------------------------------------------------------------------------
    def choose_mode(self, note: pb.Note) -> int:
        """Inject with probability ``inject_fraction``; a pure function of the note and the seed."""
        digest = hashlib.sha256(f"{self.settings.seed}:{note.note_id}:{note.text}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        return pb.MODE_INJECT if draw < self.settings.inject_fraction else pb.MODE_PARAPHRASE

    def _sampling_seed(self) -> int | None:
        """Per-call seeds from one seeded stream: a run with the same seed samples the same edits."""
        if self.settings.seed < 0:
            return None
        with self._rng_lock:
            return self._rng.randrange(2**31)

    # --- generation -----------------------------------------------------------------------------
    def generate_groups(self, items: list[tuple[pb.Note, list[tuple[int, str]], int]],
                        params: GenerationParams) -> list[list[pb.Rollout]]:
        """One group of ``params.n`` rollouts per (seed note, sentences, mode), in one generate call."""
        prompts = [formats.injector_messages(sentences, MODE_NAMES[mode]) for _, sentences, mode in items]
        if params.seed is None and self.settings.seed >= 0:
            params = replace(params, seed=self._sampling_seed())
        started = time.perf_counter()
        with self.policy.lock:
            version = self.policy.version
            completions = self.backend.generate(prompts, params)
        elapsed = time.perf_counter() - started
        metrics.GENERATION_SECONDS.labels(self.name).observe(elapsed)
        metrics.GENERATED_TOKENS.labels(self.name).inc(sum(c.num_tokens for c in completions))
        groups: list[list[pb.Rollout]] = [[] for _ in items]
        group_ids = [f"{note.note_id}~{uuid.uuid4().hex[:12]}" for note, _, _ in items]
        for completion in completions:
            note, sentences, mode = items[completion.prompt_index]
            group = groups[completion.prompt_index]
            rollout = self._rollout(note, sentences, mode, completion, version, params,
                                    group_ids[completion.prompt_index], len(group))
            group.append(rollout)
            metrics.ROLLOUTS.labels(MODE_NAMES[mode], str(version)).inc()
        return groups

    def _rollout(self, note: pb.Note, sentences, mode: int, completion: Completion, version: int,
                 params: GenerationParams, group_id: str, index: int) -> pb.Rollout:
        rollout = pb.Rollout(
            rollout_id=f"{group_id}-{index}",
            seed_note_id=note.note_id,
            group_id=group_id,
            mode=mode,
            policy_version=version,
            prompt_token_ids=completion.prompt_token_ids,
            completion_token_ids=completion.token_ids,
            behaviour_logprobs=completion.logprobs,
            sampling=pb.SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                       max_new_tokens=params.max_new_tokens, n=params.n, seed=params.seed or 0),
            completion_text=completion.text,
            changed_sentence_id=-1,
            created_unix_ms=int(time.time() * 1000),
        )
        rollout.seed_note.CopyFrom(note)
        edit = formats.parse_injector_edit(completion.text)
        modified = formats.apply_edit(sentences, edit) if isinstance(edit, formats.InjectorEdit) else edit
        if isinstance(modified, formats.ParseFailure):
            rollout.reward.CopyFrom(gate_reward(parsed=False, verified=True))
            return rollout
        rollout.changed_sentence_id = edit.sentence_id
        rollout.claimed_error_type = edit.error_type or ""
        rollout.modified_note.CopyFrom(make_note(rollout.rollout_id, modified, source="injector", split=note.split))
        return rollout

    # --- stream handlers ------------------------------------------------------------------------
    def _handle_seeds(self, notes: list[pb.Note]) -> list:
        results: list = [None] * len(notes)
        items, positions = [], []
        for i, note in enumerate(notes):
            try:
                if not note.note_id:
                    raise InvalidNote("note_id is empty")
                sentences = note_sentences(note)
            except InvalidNote as exc:
                results[i] = InvalidInput(f"seed note: {exc}")
                continue
            items.append((note, sentences, self.choose_mode(note)))
            positions.append(i)
        if items:
            try:
                groups = self.generate_groups(items, self.params)
            except Exception as exc:  # noqa: BLE001 - retried per message by the worker
                for i in positions:
                    results[i] = exc
                return results
            self.policy.admit(sum(len(g) for g in groups))
            for i, group in zip(positions, groups, strict=True):
                results[i] = [Output(self.topic(ROLLOUTS_GENERATED), r.group_id, r) for r in group]
        return results

    def _handle_updates(self, updates: list[pb.PolicyUpdate]) -> list:
        """Load only the newest version of a batch; older ones are superseded."""
        results: list = [[] for _ in updates]
        newest = max(range(len(updates)), key=lambda i: updates[i].version, default=None)
        if newest is None:
            return results
        try:
            self.policy.update(updates[newest])
        except PolicyUpdateError as exc:
            log.error("policy update not loaded; keeping the current version",
                      extra={"version": updates[newest].version, "error": str(exc)[:300]})
            results[newest] = InvalidInput(f"policy update v{updates[newest].version} not loaded: {exc}")
        return results

    # --- runtime hooks --------------------------------------------------------------------------
    def grpc_bindings(self):
        return [GrpcBinding(injector_pb2_grpc.add_InjectorServicer_to_server, _InjectorServicer(self),
                            "medserl.v1.Injector")]

    def topics(self):
        return [self.topic(NOTES_SEED), self.topic(ROLLOUTS_GENERATED), self.topic(POLICY_UPDATES), self.topic(DEAD_LETTER)]

    def workers(self):
        s = self.settings
        self._seed_worker = AdmissionWorker(
            policy=self.policy, group_size=s.group_size,
            service=self.name, bus=self.bus, topics=[self.topic(NOTES_SEED)], group_id=s.group_id or f"medserl-{self.name}",
            message_type=pb.Note, handler=self._handle_seeds, max_batch=s.max_batch,
            poll_timeout_s=s.poll_timeout_s, dead_letter_topic=self.topic(DEAD_LETTER), max_attempts=s.max_attempts,
        )
        # every injector replica must see every policy update: a group of its own
        updates = StreamWorker(
            service=self.name, bus=self.bus, topics=[self.topic(POLICY_UPDATES)],
            group_id=f"medserl-{self.name}-policy-{self._instance}", message_type=pb.PolicyUpdate,
            handler=self._handle_updates, max_batch=64, poll_timeout_s=s.poll_timeout_s,
            dead_letter_topic=self.topic(DEAD_LETTER), max_attempts=1,
        )
        return [updates, self._seed_worker]

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            self.producer.close()
            self.backend.close()
