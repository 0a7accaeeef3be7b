"""The injector: one RolloutGroup of sampled edits per seed message (deterministic id), policy
hot-loading, admission control from the learner's accounting (surviving a restart), gRPC."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import REGISTRY

from medec.prepare import read_medec_csv
from medserl.v1 import injector_pb2, injector_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import formats
from services.common.bus import MemoryBus, Record
from services.common.runtime import ServiceRuntime
from services.common.topics import DEAD_LETTER, NOTES_SEED, POLICY_UPDATES, ROLLOUTS_GENERATED
from services.inference import checkpoint_sha256, encode_prompt
from services.injector.service import InjectorService, InjectorSettings, group_id_for
from tests.fake_vllm_server import FakeVllmServer, make_lora_adapter
from tests.rl_fakes import read_all

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


@pytest.fixture(scope="module")
def seed_notes(medec_path) -> list[pb.Note]:
    """Correct MEDEC notes (the injector starts from correct notes), with their MEDEC sentence ids."""
    notes, _ = read_medec_csv(medec_path / VALIDATION)
    return [pb.Note(note_id=n.note_id, text=n.text, source="medec-ms-val", split="rl_train",
                    sentences=[pb.Sentence(id=int(i), text=s) for i, s in n.sentences])
            for n in notes if not n.error_flag][:12]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("injector-adapters")
    return [make_lora_adapter(tiny_model_dir, root / f"v{i}", seed=i) for i in (1, 2)]


def settings_for(tiny_model_dir, **overrides) -> InjectorSettings:
    values = dict(bus="memory", grpc_port=0, metrics_port=-1, poll_timeout_s=0.1, backend="transformers",
                  model=str(tiny_model_dir), group_size=2, max_new_tokens=12, seed=1,
                  group_id=f"injector-{time.monotonic_ns()}")
    values.update(overrides)
    return InjectorSettings(**values)


def unique_notes(notes: list[pb.Note], tag: str) -> list[pb.Note]:
    out = []
    for note in notes:
        copy = pb.Note()
        copy.CopyFrom(note)
        copy.note_id = f"{tag}-{note.note_id}"
        out.append(copy)
    return out


def collect(bus, group: str, seed_ids: set[str], want: int, timeout_s: float = 120,
            topic: str = ROLLOUTS_GENERATED) -> list[pb.RolloutGroup]:
    """Groups for the given seed notes until ``want`` distinct groups arrived (or the timeout)."""
    consumer = bus.consumer([topic], group)
    got: dict[str, pb.RolloutGroup] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for record in consumer.poll(0.3, 500):
                g = pb.RolloutGroup.FromString(record.value)
                if g.seed_note_id in seed_ids:
                    got[g.group_id] = g
    finally:
        consumer.close()
    return list(got.values())


def rollouts_of(groups: list[pb.RolloutGroup]) -> list[pb.Rollout]:
    return [r for g in groups for r in g.rollouts]


def update_to(version: int, adapter, **fields) -> pb.PolicyUpdate:
    return pb.PolicyUpdate(version=version, checkpoint_uri=str(adapter), kind="lora",
                           checkpoint_sha256=checkpoint_sha256(adapter), **fields)


def rollouts_counted(version: int) -> float:
    return sum(REGISTRY.get_sample_value("medserl_rollouts_total", {"mode": m, "policy_version": str(version)}) or 0
               for m in ("inject", "paraphrase"))


def check_group(group: pb.RolloutGroup, seed: pb.Note, service: InjectorService) -> None:
    """Everything the verifier, assessor and learner need is on the group, and it is consistent."""
    assert group.seed_note == seed and group.seed_note_id == seed.note_id and group.mode == service.choose_mode(seed)
    assert group.group_id.startswith(f"{seed.note_id}~") and group.created_unix_ms > 0
    assert len(group.rollouts) == service.settings.group_size
    assert [r.rollout_id for r in group.rollouts] == [f"{group.group_id}-{i}" for i in range(len(group.rollouts))]
    for rollout in group.rollouts:
        assert (rollout.group_id, rollout.seed_note_id, rollout.mode, rollout.policy_version) == \
            (group.group_id, seed.note_id, group.mode, group.policy_version)
        check_rollout(rollout, seed, service)


def check_rollout(rollout: pb.Rollout, seed: pb.Note, service: InjectorService) -> None:
    """One rollout: tokens, log-probs, sampling, and the parsed edit (or why it did not parse)."""
    sentences = [(s.id, s.text) for s in seed.sentences]
    mode_name = {pb.MODE_INJECT: "inject", pb.MODE_PARAPHRASE: "paraphrase"}[rollout.mode]
    assert list(rollout.prompt_token_ids) == encode_prompt(service.backend.tokenizer,
                                                          formats.injector_messages(sentences, mode_name))
    assert len(rollout.completion_token_ids) == len(rollout.behaviour_logprobs) > 0
    assert all(lp <= 0 for lp in rollout.behaviour_logprobs)
    assert rollout.sampling.temperature == service.settings.temperature
    assert rollout.sampling.n == service.settings.group_size and rollout.sampling.seed
    assert rollout.created_unix_ms > 0
    assert not rollout.HasField("reward") and not rollout.HasField("verification"), "the injector never scores"
    edit = formats.parse_injector_edit(rollout.completion_text)
    applied = formats.apply_edit(sentences, edit) if isinstance(edit, formats.InjectorEdit) else edit
    if isinstance(applied, formats.ParseFailure):
        assert rollout.parse_error and rollout.parse_error == (applied.reason[:300] or "unparseable")
        assert rollout.changed_sentence_id == -1 and not rollout.HasField("modified_note")
    else:
        assert not rollout.parse_error
        assert rollout.changed_sentence_id == edit.sentence_id
        assert [(s.id, s.text) for s in rollout.modified_note.sentences] == applied
        assert rollout.claimed_error_type == (edit.error_type or "")


def test_mode_is_a_stable_coin_with_the_configured_bias(tiny_model_dir):
    notes = [pb.Note(note_id=f"n{i}", text=f"note {i}.") for i in range(2000)]
    for fraction in (0.5, 0.2, 1.0, 0.0):
        service = InjectorService.__new__(InjectorService)
        service.settings = settings_for(tiny_model_dir, inject_fraction=fraction)
        modes = [service.choose_mode(n) for n in notes]
        share = sum(m == pb.MODE_INJECT for m in modes) / len(modes)
        assert share == pytest.approx(fraction, abs=0.04)
        assert modes == [service.choose_mode(n) for n in notes], "redelivery gets the same mode"


def test_bad_settings_are_refused(tiny_model_dir):
    for bad in ({"inject_fraction": 1.5}, {"group_size": 0}, {"backend": "openai_chat"}):
        with pytest.raises(ValueError):
            InjectorService(settings_for(tiny_model_dir, **bad), MemoryBus())


def test_group_ids_name_the_seed_not_the_message(tiny_model_dir, seed_notes):
    record = Record(NOTES_SEED, 2, 17, b"k", b"")
    n1 = pb.Note(note_id="n1", text="0 Fever.\n1 Cough.")
    assert group_id_for(n1, record) == group_id_for(n1, Record(NOTES_SEED, 0, 900, None, b"other bytes")), \
        "the same seed submitted twice (any offset) is one group"
    assert group_id_for(n1, record) != group_id_for(pb.Note(note_id="n1", text="0 Fever.\n1 Rash."), record)
    assert group_id_for(n1, record) != group_id_for(pb.Note(note_id="n1@e1", text=n1.text), record), \
        "a new epoch of a note is a new note_id"
    assert group_id_for(n1, record).startswith("n1~")
    assert group_id_for(n1, None) != group_id_for(n1, None), "a gRPC call is no redelivery"

    bus = MemoryBus()
    service = InjectorService(settings_for(tiny_model_dir, learner_batch_rollouts=0), bus)
    note = unique_notes(seed_notes[:1], "det")[0]
    first = service._handle_seeds([note], [record])[0][0].message
    again = service._handle_seeds([note], [record])[0][0].message  # the same message, redelivered
    assert first.group_id == again.group_id and [r.rollout_id for r in first.rollouts] == \
        [r.rollout_id for r in again.rollouts]
    resubmitted = service._handle_seeds([note], [Record(NOTES_SEED, 1, 18, None, b"")])[0][0].message
    assert resubmitted.group_id == first.group_id, "the same seed submitted again is the same group"
    (invalid,) = service._handle_seeds([pb.Note(note_id="")], [record])
    assert "note_id is empty" in str(invalid)


@pytest.mark.kafka
def test_kafka_round_trip_and_a_policy_version_published_mid_stream(kafka_bootstrap, tiny_model_dir, seed_notes,
                                                                    adapters, unique, monkeypatch):
    from services.common.kafka_bus import KafkaBus
    from services.injector import service as injector_module

    # topics of this test only: the shared broker keeps no policy version of ours for later tests
    seed_topic, generated_topic, updates_topic = (f"{t}.{unique}" for t in (NOTES_SEED, ROLLOUTS_GENERATED, POLICY_UPDATES))
    monkeypatch.setattr(injector_module, "NOTES_SEED", seed_topic)
    monkeypatch.setattr(injector_module, "ROLLOUTS_GENERATED", generated_topic)
    monkeypatch.setattr(injector_module, "POLICY_UPDATES", updates_topic)
    dead_topic = f"{DEAD_LETTER}.{unique}"
    monkeypatch.setattr(injector_module, "DEAD_LETTER", dead_topic)
    bus = KafkaBus(kafka_bootstrap)
    settings = settings_for(tiny_model_dir, bus="kafka", kafka_bootstrap=kafka_bootstrap, group_size=3,
                            group_id=f"injector-{unique}", poll_timeout_s=0.2)
    service = InjectorService(settings, bus)
    runtime = ServiceRuntime(service).start()
    new_version = 7
    counted_before = rollouts_counted(new_version)
    first, second = unique_notes(seed_notes[:4], f"a-{unique}"), unique_notes(seed_notes[4:8], f"b-{unique}")
    by_id = {n.note_id: n for n in first + second}
    try:
        producer = bus.producer()
        for note in first:
            producer.publish(seed_topic, note.SerializeToString(), key=note.note_id)
        producer.publish(seed_topic, pb.Note(note_id=f"empty-{unique}").SerializeToString(), key="empty")
        producer.flush()
        # the learner publishes a new policy while the first seeds are being processed
        update = pb.PolicyUpdate(version=new_version, checkpoint_uri=f"file://{adapters[0]}", kind="lora",
                                 base_model=str(tiny_model_dir), learner_step=1,
                                 checkpoint_sha256=checkpoint_sha256(adapters[0]))
        producer.publish(updates_topic, update.SerializeToString(), key="policy")
        producer.flush()
        early = collect(bus, f"check-a-{unique}", {n.note_id for n in first}, 4, topic=generated_topic)
        deadline = time.monotonic() + 60
        while service.policy.version != new_version and time.monotonic() < deadline:
            time.sleep(0.2)
        assert service.policy.version == new_version
        for note in second:
            producer.publish(seed_topic, note.SerializeToString(), key=note.note_id)
        producer.flush()
        late = collect(bus, f"check-b-{unique}", {n.note_id for n in second}, 4, topic=generated_topic)
        letters = []
        consumer = bus.consumer([dead_topic], f"dl-{unique}")
        deadline = time.monotonic() + 60
        while not letters and time.monotonic() < deadline:
            letters = [letter for letter in (pb.DeadLetter.FromString(r.value) for r in consumer.poll(0.5, 500))
                       if letter.service == "injector" and letter.key == b"empty"]
        consumer.close()
    finally:
        runtime.shutdown()
        bus.close()
    assert len(early) == 4 and len(late) == 4
    for g in early + late:
        check_group(g, by_id[g.seed_note_id], service)
    assert {g.policy_version for g in early} <= {0, new_version}
    assert {g.policy_version for g in late} == {new_version}, "later groups carry the new version"
    assert service.backend.checkpoint_hash == checkpoint_sha256(adapters[0])
    assert letters and "no text and no sentences" in letters[0].reason
    assert REGISTRY.get_sample_value("medserl_policy_version", {"service": "injector"}) == new_version
    assert rollouts_counted(new_version) - counted_before == sum(r.policy_version == new_version
                                                                for r in rollouts_of(early + late))


def _generated(bus) -> int:
    return sum(bus.end_offsets(ROLLOUTS_GENERATED))


def test_admission_follows_the_learners_accounting_and_survives_a_restart(tiny_model_dir, seed_notes):
    """window = ceil((1 + max_staleness) * learner batch / group size) = ceil(1 * 4 / 2) = 2 groups in
    flight, in flight = groups on rollouts.generated - PolicyUpdate.groups_consumed, plus a grant when
    the learner asks (rollouts_wanted). The workers are driven by hand: no timing."""
    bus = MemoryBus()
    settings = settings_for(tiny_model_dir, group_size=2, learner_batch_rollouts=4, max_staleness=0,
                            group_id="adm-injector", poll_timeout_s=0.01)
    service = InjectorService(settings, bus)
    bus.ensure_topics(list(service.topics()))
    updates_worker, seeds_worker = service.workers()
    producer = bus.producer()
    for note in unique_notes(seed_notes[:8], "adm"):
        producer.publish(NOTES_SEED, note.SerializeToString(), key=note.note_id)

    def run_seeds() -> int:
        """Seed polls until the worker processes nothing (the budget is spent or the seeds are)."""
        total = 0
        while (n := seeds_worker.run_once()) > 0:
            total += n
        return total

    def account(**fields) -> None:
        producer.publish(POLICY_UPDATES, pb.PolicyUpdate(**fields).SerializeToString(), key="policy")
        updates_worker.run_once()

    assert service.policy.window == 2
    assert run_seeds() == 2 and _generated(bus) == 2, "two groups, then the window is full"
    assert service.policy.budget() == 0 and run_seeds() == 0 and seeds_worker.paused_s > 0
    account(version=0, groups_consumed=1)  # the learner disposed of one group: one slot frees
    assert run_seeds() == 1 and _generated(bus) == 3
    account(version=0, groups_consumed=1, rollouts_wanted=4)  # starving: 4 rollouts = 2 groups past the window
    account(version=0, groups_consumed=1, rollouts_wanted=4)  # asked again: replaces the grant, never adds up
    assert service.policy.credit == 2
    assert run_seeds() == 2 and _generated(bus) == 5 and service.policy.credit == 0
    assert service.policy.budget() == 0

    # a restarted injector (new process, same seed group) derives its window from the bus, not from zero
    updates_worker.close()
    seeds_worker.close()
    service.close()
    restarted = InjectorService(settings, bus)
    updates_worker, seeds_worker = restarted.workers()
    updates_worker.run_once()  # a new policy consumer replays every update from the start
    assert restarted.policy.groups_consumed == 1 and restarted.policy.in_flight() == 4
    # the window stays full; only the newest grant is replayed (once, however many requests were made)
    assert restarted.policy.budget() == restarted.policy.credit == 2
    assert run_seeds() == 2 and _generated(bus) == 7 and restarted.policy.budget() == 0
    account(version=0, groups_consumed=7)
    assert run_seeds() == 1 and _generated(bus) == 8
    generated = read_all(bus, ROLLOUTS_GENERATED, "all", pb.RolloutGroup)
    assert len({g.group_id for g in generated}) == 8 and {g.seed_note_id for g in generated} == \
        {f"adm-{n.note_id}" for n in seed_notes[:8]}, "nothing generated twice, nothing dropped"


def test_a_broken_policy_update_is_dead_lettered_and_the_old_version_kept(tiny_model_dir, seed_notes):
    bus = MemoryBus()
    service = InjectorService(settings_for(tiny_model_dir), bus)
    runtime = ServiceRuntime(service).start()
    try:
        producer = bus.producer()
        producer.publish(POLICY_UPDATES, pb.PolicyUpdate(version=5, checkpoint_uri="/nonexistent/adapter",
                                                         kind="lora").SerializeToString(), key="p")
        consumer = bus.consumer([DEAD_LETTER], "dl")
        letters = []
        deadline = time.monotonic() + 20
        while not letters and time.monotonic() < deadline:
            letters = [pb.DeadLetter.FromString(r.value) for r in consumer.poll(0.3, 10)]
        note = unique_notes(seed_notes[:1], "after-bad")[0]
        producer.publish(NOTES_SEED, note.SerializeToString(), key=note.note_id)
        groups = collect(bus, "after-bad", {note.note_id}, 1, timeout_s=20)
    finally:
        runtime.shutdown()
    assert letters and "not loaded" in letters[0].reason and letters[0].source_topic == POLICY_UPDATES
    rollouts = rollouts_of(groups)
    assert service.policy.version == 0 and {r.policy_version for r in rollouts} == {0} and len(rollouts) == 2
    assert service.policy.learner_version == 5, "admission follows the learner even when a version fails to load"


def test_grpc_inject_and_submit_seeds(tiny_model_dir, seed_notes):
    bus = MemoryBus()
    service = InjectorService(settings_for(tiny_model_dir), bus)
    runtime = ServiceRuntime(service).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = injector_pb2_grpc.InjectorStub(channel)
            note = seed_notes[0]
            reply = stub.Inject(injector_pb2.InjectRequest(note=note, mode=pb.MODE_INJECT,
                                                           sampling=pb.SamplingParams(n=3, temperature=0.7, seed=9)),
                                timeout=60)
            assert len(reply.rollouts) == 3 and {r.mode for r in reply.rollouts} == {pb.MODE_INJECT}
            assert all(r.sampling.temperature == pytest.approx(0.7) for r in reply.rollouts)
            assert all(r.sampling.seed == 9 for r in reply.rollouts)
            sentences = [(s.id, s.text) for s in note.sentences]
            prompt = encode_prompt(service.backend.tokenizer, formats.injector_messages(sentences, "inject"))
            for rollout in reply.rollouts:
                assert list(rollout.prompt_token_ids) == prompt and rollout.seed_note_id == note.note_id
                assert len(rollout.completion_token_ids) == len(rollout.behaviour_logprobs) > 0
                assert not rollout.HasField("reward")
            assert len({r.rollout_id for r in reply.rollouts}) == 3 and len({r.group_id for r in reply.rollouts}) == 1
            bad_requests = [
                injector_pb2.InjectRequest(note=pb.Note(note_id="x"), mode=pb.MODE_INJECT),
                injector_pb2.InjectRequest(note=note, mode=pb.MODE_MEDEC_INCORRECT),
                injector_pb2.InjectRequest(note=note, mode=pb.MODE_INJECT, sampling=pb.SamplingParams(n=1000)),
                injector_pb2.InjectRequest(note=note, mode=pb.MODE_INJECT, sampling=pb.SamplingParams(top_p=3)),
                injector_pb2.InjectRequest(note=note, mode=pb.MODE_INJECT,
                                           sampling=pb.SamplingParams(max_new_tokens=10**6)),
            ]
            for bad in bad_requests:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Inject(bad, timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            again = stub.Inject(injector_pb2.InjectRequest(note=pb.Note(text=note.text), mode=pb.MODE_PARAPHRASE),
                                timeout=60)
            assert len(again.rollouts) == service.settings.group_size
            assert again.rollouts[0].seed_note_id.startswith("grpc-")
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitSeeds(injector_pb2.SubmitSeedsRequest(notes=[note, pb.Note(note_id="blank")]), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "note #1" in err.value.details()
            accepted = stub.SubmitSeeds(injector_pb2.SubmitSeedsRequest(notes=unique_notes(seed_notes[:2], "sub")),
                                        timeout=30)
            assert accepted.accepted == 2
    finally:
        runtime.shutdown()
    consumer = bus.consumer([NOTES_SEED], "seed-check")
    published = [pb.Note.FromString(r.value).note_id for r in consumer.poll(1.0, 100)]
    assert sorted(published) == sorted(f"sub-{n.note_id}" for n in seed_notes[:2]), "the invalid batch published nothing"


def test_vllm_backend_in_the_service_with_lora_updates(tiny_model_dir, seed_notes, adapters):
    """Valid edits from a scripted vLLM server: applied, stamped, and LoRA versions loaded over HTTP."""

    def responder(prompt_ids, model, rng):
        mode = "inject" if "Mode: inject" in tokenizer.decode(prompt_ids) else "paraphrase"
        error_type = "diagnosis" if mode == "inject" else "none"
        return (f"sentence_id: 0\nnew_sentence: Edited by {model} ({mode}).\nerror_type: {error_type}\n"
                f"reasoning: test edit")

    with FakeVllmServer(tiny_model_dir, served_name="policy-base", responder=responder) as server:
        tokenizer = server.state.tokenizer
        bus = MemoryBus()
        settings = settings_for(tiny_model_dir, backend="vllm", base_url=server.base_url, model="policy-base",
                                tokenizer=str(tiny_model_dir), group_size=2, max_new_tokens=64)
        service = InjectorService(settings, bus)
        runtime = ServiceRuntime(service).start()
        try:
            producer = bus.producer()
            notes = unique_notes(seed_notes[:6], "vllm")
            for note in notes[:3]:
                producer.publish(NOTES_SEED, note.SerializeToString(), key=note.note_id)
            first = rollouts_of(collect(bus, "v1", {n.note_id for n in notes[:3]}, 3, timeout_s=30))
            producer.publish(POLICY_UPDATES, update_to(3, adapters[0]).SerializeToString(), key="p")
            deadline = time.monotonic() + 20
            while service.policy.version != 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            for note in notes[3:]:
                producer.publish(NOTES_SEED, note.SerializeToString(), key=note.note_id)
            second = rollouts_of(collect(bus, "v2", {n.note_id for n in notes[3:]}, 3, timeout_s=30))
        finally:
            runtime.shutdown()
        by_id = {n.note_id: n for n in notes}
        for rollout in first + second:
            check_rollout(rollout, by_id[rollout.seed_note_id], service)
            assert rollout.changed_sentence_id == 0 and rollout.modified_note.sentences[0].text.startswith("Edited by")
            assert rollout.claimed_error_type == ("diagnosis" if rollout.mode == pb.MODE_INJECT else "")
        assert {r.policy_version for r in first} == {0} and {r.policy_version for r in second} == {3}
        assert all("policy-base" in r.modified_note.sentences[0].text for r in first)
        assert all("policy-v3" in r.modified_note.sentences[0].text for r in second)
        assert server.state.lora_calls() == [("load_lora_adapter", "policy-v3")], "a replica never unloads on exit"
        assert {c.body["model"] for c in server.state.completions()} == {"policy-base", "policy-v3"}
