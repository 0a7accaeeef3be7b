"""The injector service: the policy that writes one edit per note, for the RL self-play loop.

Stream: ``notes.seed`` -> a mode per note (paraphrase / inject; ``inject_fraction`` of notes are
inject) -> ONE RolloutGroup of ``group_size`` sampled edits (ids, mode, policy version, prompt and
completion token ids, behaviour log-probs, sampling params, the modified note) -> ``rollouts.generated``.
A completion that does not parse stays in its group with ``parse_error`` set: the assessor scores it
with the format penalty, so the policy learns that garbage costs. The injector never writes a reward.

Group ids are deterministic: ``<note id>~<hash of the seed's id and sentences>``, so a redelivered
seed message and the same seed submitted twice yield the same id (the learner drops the copy); a
note wanted again (a new self-play epoch) comes with a new note_id.

Policy versions: a second worker follows ``policy.updates`` and loads the newest version without a
restart (transformers: LoRA adapter or full weights; vllm: load_lora_adapter), after checking the
checkpoint's sha256 against the update. Loading and generating share a lock, so every rollout carries
the version that really made it.

Admission control (no state of its own, so it survives restarts and is shared by replicas): the
injector may have at most ``window = ceil((1 + max_staleness) * learner_batch_rollouts / group_size)``
groups in flight, where in flight = groups ever written to ``rollouts.generated`` (its end offsets)
minus the groups the learner says it has disposed of (``PolicyUpdate.groups_consumed``: trained,
stale, duplicate, quarantined or dead-lettered on the way). When the learner has waited for input
too long it says how many rollouts it still wants (``rollouts_wanted``) and the injector grants
them, even past the window: a loss the counts cannot see never stalls the loop. A request replaces
the grant still unused (it is not added to it), so repeated requests while seeds are missing, or every
request replayed to a restarted injector, never add up to an unbounded burst past the window.
When the budget is spent the seed worker stops polling (seeds wait in the topic; nothing is dropped).

gRPC ``medserl.v1.Injector``: ``Inject(note, mode)`` returns a group's rollouts without publishing
them; ``SubmitSeeds`` validates notes and publishes them to ``notes.seed``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from medserl.v1 import injector_pb2, injector_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import formats, metrics
from services.common.auth import bus_auth
from services.common.bus import Bus, BusError, Record
from services.common.deadline import DeadlineExceeded, checkpoint
from services.common.limits import enum_name, id_problem
from services.common.notes import InvalidNote, make_note, note_sentences
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
    checkpoint_sha256,
    local_path,
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
    seed: int = 0  # < 0: unseeded sampling; else per-group seeds derive from it
    initial_policy_version: int = 0
    max_staleness: int = 1  # versions the injector may run ahead of the learner (sizes the window)
    learner_batch_rollouts: int = 64  # the learner's rollouts_per_update; 0 turns admission control off
    verify_checkpoint_sha256: bool = True  # refuse a policy update whose files do not match its sha256
    max_group_size: int = 32  # gRPC Inject: largest n a client may ask for
    max_seeds_per_call: int = 1000  # gRPC SubmitSeeds: notes in one call
    max_version_jump: int = 1000  # an unsigned update more than this above the learner's newest version is forged
    checkpoint_root: str = ""  # when set, policy checkpoints must lie under this folder (e.g. /checkpoints)


def group_id_for(note: pb.Note, record: Record | None) -> str:
    """A seed's group id is a digest of its content (id and sentences), so a redelivered seed and the
    same seed submitted twice name one group, which the learner trains once. Self-play that wants a
    note again (a new epoch) gives it a new note_id. A gRPC Inject call is not a seed: random."""
    if record is None:
        return f"{note.note_id}~{uuid.uuid4().hex[:12]}"
    content = "\x1f".join([note.note_id, note.text, *(f"{s.id}\x1e{s.text}" for s in note.sentences)])
    return f"{note.note_id}~{hashlib.sha256(content.encode()).hexdigest()[:12]}"


class PolicyUpdateRefused(PolicyUpdateError):
    """A policy update that is not the learner's (forged or out of sequence): ignored, never accounted."""


class PolicyState:
    """The policy version in use and the admission budget, shared by the workers and gRPC."""

    def __init__(self, backend: InferenceBackend, version: int, settings: InjectorSettings,
                 generated_groups=lambda: 0):
        self.backend = backend
        self.version = version  # the version loaded and stamped on rollouts
        self.learner_version = version  # the newest version the learner announced (loaded or not)
        self.settings = settings
        self.generated_groups = generated_groups  # groups ever written to rollouts.generated
        self.groups_consumed = 0  # from the learner's newest update
        self.credit = 0  # groups granted past the window because the learner asked for them
        self.lock = threading.RLock()  # generation and weight loading never interleave
        self._changed = threading.Condition()

    @property
    def window(self) -> int | None:
        per_step = self.settings.learner_batch_rollouts
        if per_step <= 0:
            return None
        return math.ceil((1 + self.settings.max_staleness) * per_step / self.settings.group_size)

    def in_flight(self) -> int:
        return max(0, self.generated_groups() - self.groups_consumed)

    def budget(self) -> int | None:
        """Groups that may be generated now (None: no admission control)."""
        window = self.window
        if window is None:
            return None
        in_flight = self.in_flight()
        budget = max(0, window - in_flight) + self.credit
        metrics.ADMISSION_BUDGET.set(budget)
        metrics.ADMISSION_IN_FLIGHT.set(in_flight)
        return budget

    def admit(self, groups: int) -> None:
        with self._changed:
            window_left = max(0, (self.window or 0) - self.in_flight())
            self.credit = max(0, self.credit - max(0, groups - window_left))

    def account(self, update: pb.PolicyUpdate, trusted: bool = True) -> None:
        """The learner's accounting (every update carries it, a new version or not). An update that is
        not ``trusted`` (unsigned) cannot switch admission off: it never disposes of more groups than were
        generated, and no grant is larger than one window (issue 12)."""
        with self._changed:
            consumed = update.groups_consumed
            if not trusted and consumed > self.groups_consumed:
                consumed = min(consumed, self.generated_groups())
            self.groups_consumed = max(self.groups_consumed, consumed)
            if update.version > self.learner_version:
                self.learner_version = update.version
            if update.rollouts_wanted > 0:  # the newest request, not the sum of every request ever made
                grant = math.ceil(update.rollouts_wanted / self.settings.group_size)
                self.credit = max(self.credit, min(grant, self.window or grant))
            self._changed.notify_all()

    def refusal(self, update: pb.PolicyUpdate, trusted: bool, horizon: int | None = None) -> str:
        """Why an update must be ignored entirely, neither loaded nor accounted ('' when it may be
        used): an unsigned version far past the learner's sequence (a forged 1000000000001 would mask
        every real version), or a checkpoint outside ``checkpoint_root``."""
        horizon = self.learner_version if horizon is None else horizon
        if not trusted and update.version > horizon + max(1, self.settings.max_version_jump):
            return (f"version {update.version} jumps more than max_version_jump={self.settings.max_version_jump} "
                    f"past the learner's newest version {horizon}")
        if update.version < 0 or update.groups_consumed < 0 or update.rollouts_wanted < 0:
            return "negative version or accounting"
        if len(update.checkpoint_uri) > 4096 or "\x00" in update.checkpoint_uri:
            return f"checkpoint_uri of {len(update.checkpoint_uri)} characters is not a path"
        root = self.settings.checkpoint_root
        if root and update.checkpoint_uri:
            try:
                resolved = Path(update.checkpoint_uri.removeprefix("file://")).resolve()
            except (OSError, ValueError, RuntimeError):  # a symlink loop, a name too long
                return "checkpoint_uri cannot be resolved"
            if not resolved.is_relative_to(Path(root).resolve()):
                return f"checkpoint outside checkpoint_root {root}"
        return ""

    def update(self, update: pb.PolicyUpdate, trusted: bool = True) -> bool:
        """Load a newer version (older or equal versions are ignored), then account the update (also when
        loading fails): the budget it frees is spent by the version it announces. True when it switched.
        A refused update (``refusal``) raises PolicyUpdateRefused and is not accounted."""
        reason = self.refusal(update, trusted)
        if reason:
            raise PolicyUpdateRefused(reason)
        try:
            return self._load(update)
        finally:
            self.account(update, trusted)

    def _load(self, update: pb.PolicyUpdate) -> bool:
        if update.version <= self.version or not update.checkpoint_uri:
            return False
        if self.settings.verify_checkpoint_sha256:
            path = local_path(update.checkpoint_uri)
            if not update.checkpoint_sha256:
                raise PolicyUpdateError(f"policy update v{update.version} has no checkpoint_sha256")
            try:
                digest = checkpoint_sha256(path)
            except (OSError, ValueError) as exc:  # not a checkpoint folder (e.g. "/"), unreadable files
                raise PolicyUpdateError(f"policy update v{update.version}: {exc}") from None
            if digest != update.checkpoint_sha256:
                raise PolicyUpdateError(f"policy update v{update.version}: the files at its checkpoint_uri do "
                                        "not match its checkpoint_sha256")
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

    def __init__(self, *, policy: PolicyState, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy
        self._configured_batch = self.max_batch
        self.paused_s = 0.0

    def run_once(self) -> int:
        try:
            budget = self.policy.budget()  # reads rollouts.generated's end offsets from the broker
        except BusError as exc:  # the broker is away (a restart): wait, take nothing
            log.warning("admission budget unknown; bus unavailable", extra={"error": str(exc)[:300]})
            self.policy.wait_for_change(max(0.5, self.poll_timeout_s))
            return 0
        if budget is not None:
            if budget <= 0:
                started = time.monotonic()
                self.policy.wait_for_change(self.poll_timeout_s)
                waited = time.monotonic() - started
                self.paused_s += waited
                metrics.ADMISSION_PAUSED_SECONDS.inc(waited)
                return 0
            self.max_batch = max(1, min(self._configured_batch, budget))
        return super().run_once()


class _InjectorServicer(injector_pb2_grpc.InjectorServicer):
    def __init__(self, service: InjectorService):
        self.service = service

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        metrics.GRPC_REQUESTS.labels(self.service.name, method, code.name).inc()

    def Inject(self, request, context):
        service = self.service
        try:
            if request.note.note_id and (problem := id_problem("note_id", request.note.note_id)):
                raise InvalidNote(problem)
            sentences = note_sentences(request.note)
            if request.mode not in (pb.MODE_UNSPECIFIED, pb.MODE_PARAPHRASE, pb.MODE_INJECT):
                raise InvalidNote(f"mode must be MODE_PARAPHRASE or MODE_INJECT, got {enum_name(pb.Mode, request.mode)}")
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
            rollouts = list(service.generate_groups([(note, sentences, mode, None)], params)[0].rollouts)
        except DeadlineExceeded:
            raise  # the call ended or ran out of time: the guard answers DEADLINE_EXCEEDED
        except Exception as exc:  # noqa: BLE001 - the backend failed; the server keeps serving
            log.exception("inject failed", extra={"error_class": type(exc).__name__})
            self._count("Inject", grpc.StatusCode.UNAVAILABLE)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"injector backend failed: {type(exc).__name__}")
        self._count("Inject", grpc.StatusCode.OK)
        return injector_pb2.InjectResponse(rollouts=rollouts)

    def SubmitSeeds(self, request, context):
        limit = self.service.settings.max_seeds_per_call
        if len(request.notes) > limit:
            self._count("SubmitSeeds", grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{len(request.notes)} notes in one call (limit {limit})")
        for i, note in enumerate(request.notes):
            try:
                if problem := id_problem("note_id", note.note_id):
                    raise InvalidNote(problem)
                note_sentences(note)
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

    def __init__(self, settings: InjectorSettings, bus: Bus, backend: InferenceBackend | None = None):
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
        self.policy = PolicyState(self.backend, settings.initial_policy_version, settings,
                                  generated_groups=self._generated_groups)
        self.producer = self.bus.producer()  # signs as the injector when keys are configured
        self._instance = uuid.uuid4().hex[:8]
        self._seed_worker: AdmissionWorker | None = None
        self._rng = random.Random(settings.seed)
        self._rng_lock = threading.Lock()
        metrics.POLICY_VERSION.labels(self.name).set(self.policy.version)

    def _generated_groups(self) -> int:
        """Groups ever written to rollouts.generated: the end offsets, durable and shared by replicas."""
        return sum(self.bus.end_offsets(self.topic(ROLLOUTS_GENERATED)))

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
    def generate_groups(self, items: list[tuple[pb.Note, list[tuple[int, str]], int, Record | None]],
                        params: GenerationParams) -> list[pb.RolloutGroup]:
        """One RolloutGroup of ``params.n`` rollouts per (seed note, sentences, mode, seed record), in one
        generate call."""
        prompts = [formats.injector_messages(sentences, MODE_NAMES[mode]) for _, sentences, mode, _ in items]
        if params.seed is None and self.settings.seed >= 0:
            params = replace(params, seed=self._sampling_seed())
        started = time.perf_counter()
        with self.policy.lock:
            checkpoint("before generating")  # a gRPC call that waited on the lock past its deadline
            version = self.policy.version
            completions = self.backend.generate(prompts, params)  # the backend checks per token / batch
        elapsed = time.perf_counter() - started
        metrics.GENERATION_SECONDS.labels(self.name).observe(elapsed)
        metrics.GENERATED_TOKENS.labels(self.name).inc(sum(c.num_tokens for c in completions))
        now_ms = int(time.time() * 1000)
        groups = []
        for note, _, mode, record in items:
            group = pb.RolloutGroup(group_id=group_id_for(note, record), seed_note_id=note.note_id,
                                    mode=mode, policy_version=version, created_unix_ms=now_ms)
            group.seed_note.CopyFrom(note)
            groups.append(group)
        for completion in completions:
            note, sentences, mode, _ = items[completion.prompt_index]
            group = groups[completion.prompt_index]
            group.rollouts.append(self._rollout(group, sentences, completion, params, len(group.rollouts)))
            metrics.ROLLOUTS.labels(MODE_NAMES[mode], str(version)).inc()
        return groups

    def _rollout(self, group: pb.RolloutGroup, sentences, completion: Completion, params: GenerationParams,
                 index: int) -> pb.Rollout:
        rollout = pb.Rollout(
            rollout_id=f"{group.group_id}-{index}",
            seed_note_id=group.seed_note_id,
            group_id=group.group_id,
            mode=group.mode,
            policy_version=group.policy_version,
            prompt_token_ids=completion.prompt_token_ids,
            completion_token_ids=completion.token_ids,
            behaviour_logprobs=completion.logprobs,
            sampling=pb.SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                       max_new_tokens=params.max_new_tokens, n=params.n, seed=params.seed or 0),
            completion_text=completion.text,
            changed_sentence_id=-1,
            created_unix_ms=group.created_unix_ms,
        )
        edit = formats.parse_injector_edit(completion.text)
        modified = formats.apply_edit(sentences, edit) if isinstance(edit, formats.InjectorEdit) else edit
        if isinstance(modified, formats.ParseFailure):
            rollout.parse_error = modified.reason[:300] or "unparseable"
            return rollout
        rollout.changed_sentence_id = edit.sentence_id
        rollout.claimed_error_type = edit.error_type or ""
        rollout.modified_note.CopyFrom(make_note(rollout.rollout_id, modified, source="injector",
                                                 split=group.seed_note.split))
        return rollout

    # --- stream handlers ------------------------------------------------------------------------
    def _handle_seeds(self, notes: list[pb.Note], records: list[Record]) -> list:
        results: list = [None] * len(notes)
        items, positions = [], []
        for i, (note, record) in enumerate(zip(notes, records, strict=True)):
            try:
                if problem := id_problem("note_id", note.note_id):
                    raise InvalidNote(problem)
                sentences = note_sentences(note)
            except InvalidNote as exc:
                results[i] = InvalidInput(f"seed note: {exc}")
                continue
            items.append((note, sentences, self.choose_mode(note), record))
            positions.append(i)
        if items:
            try:
                groups = self.generate_groups(items, self.params)
            except Exception as exc:  # noqa: BLE001 - retried per message by the worker
                for i in positions:
                    results[i] = exc
                return results
            self.policy.admit(len(groups))
            for i, group in zip(positions, groups, strict=True):
                results[i] = [Output(self.topic(ROLLOUTS_GENERATED), group.group_id, group)]
        return results

    def _handle_updates(self, updates: list[pb.PolicyUpdate]) -> list:
        """Load only the newest version of a batch (older ones are superseded), then account every
        update. In that order: a restarted injector replaying the topic opens its admission window only
        once the newest policy is loaded, so it never writes a burst of groups with a stale policy."""
        results: list = [[] for _ in updates]
        # signed by the learner (the worker refused every other message on this topic) or not
        auth = bus_auth(self.bus)
        trusted = auth is not None and auth.enforced(self.topic(POLICY_UPDATES))
        accepted, horizon = [], self.policy.learner_version
        for i, update in enumerate(updates):  # forged or out-of-sequence updates: refused, never accounted
            reason = self.policy.refusal(update, trusted, horizon)
            if reason:
                metrics.POLICY_UPDATES_REFUSED.labels("forged" if "jump" in reason else "invalid").inc()
                log.error("policy update refused; keeping the current version",
                          extra={"version": update.version, "error": reason})
                results[i] = InvalidInput(f"policy update v{update.version} refused: {reason}")
                continue
            accepted.append(i)
            horizon = max(horizon, update.version)
        newest = max(accepted, key=lambda i: updates[i].version, default=None)
        if newest is not None:
            try:
                self.policy.update(updates[newest], trusted)
            except PolicyUpdateError as exc:
                reason = "checkpoint_sha256" if "sha256" in str(exc) else "not_loaded"
                metrics.POLICY_UPDATES_REFUSED.labels(reason).inc()
                log.error("policy update not loaded; keeping the current version",
                          extra={"version": updates[newest].version, "error": str(exc)[:300]})
                results[newest] = InvalidInput(f"policy update v{updates[newest].version} not loaded: {exc}")
        for i in accepted:
            self.policy.account(updates[i], trusted)
        return results

    # --- runtime hooks --------------------------------------------------------------------------
    def grpc_bindings(self):
        return [GrpcBinding(injector_pb2_grpc.add_InjectorServicer_to_server, _InjectorServicer(self),
                            "medserl.v1.Injector")]

    def topics(self):
        return [self.topic(NOTES_SEED), self.topic(ROLLOUTS_GENERATED), self.topic(POLICY_UPDATES),
                self.topic(DEAD_LETTER)]

    def workers(self):
        s = self.settings
        self._seed_worker = AdmissionWorker(
            policy=self.policy, service=self.name, bus=self.bus, topics=[self.topic(NOTES_SEED)],
            group_id=s.group_id or f"medserl-{self.name}", message_type=pb.Note, handler=self._handle_seeds,
            with_records=True, max_batch=s.max_batch, poll_timeout_s=s.poll_timeout_s,
            dead_letter_topic=self.topic(DEAD_LETTER), max_attempts=s.max_attempts,
        )
        # every injector replica must see every policy update: a group of its own, from the start
        updates = StreamWorker(
            service=self.name, bus=self.bus, topics=[self.topic(POLICY_UPDATES)],
            group_id=f"medserl-{self.name}-policy-{self._instance}", message_type=pb.PolicyUpdate,
            handler=self._handle_updates, max_batch=1000, poll_timeout_s=s.poll_timeout_s,
            dead_letter_topic=self.topic(DEAD_LETTER), max_attempts=1,
        )
        return [updates, self._seed_worker]

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            self.producer.close()
            self.backend.close()
