"""The injector: groups of sampled edits per seed note, policy hot-loading, admission control, gRPC."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import REGISTRY

from medec.prepare import read_medec_csv
from medserl.v1 import injector_pb2, injector_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import formats, reward
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.common.topics import DEAD_LETTER, NOTES_SEED, POLICY_UPDATES, ROLLOUTS_GENERATED
from services.inference import checkpoint_sha256, encode_prompt
from services.injector.service import InjectorService, InjectorSettings
from tests.fake_vllm_server import FakeVllmServer, make_lora_adapter

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
            topic: str = ROLLOUTS_GENERATED) -> list[pb.Rollout]:
    consumer = bus.consumer([topic], group)
    got: dict[str, pb.Rollout] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for record in consumer.poll(0.3, 500):
                rollout = pb.Rollout.FromString(record.value)
                if rollout.seed_note_id in seed_ids:
                    got[rollout.rollout_id] = rollout
    finally:
        consumer.close()
    return list(got.values())


def rollouts_counted(version: int) -> float:
    return sum(REGISTRY.get_sample_value("medserl_rollouts_total", {"mode": m, "policy_version": str(version)}) or 0
               for m in ("inject", "paraphrase"))


def check_rollout(rollout: pb.Rollout, seed: pb.Note, service: InjectorService) -> None:
    """Everything the learner needs is on the rollout, and it is consistent."""
    sentences = [(s.id, s.text) for s in seed.sentences]
    mode_name = {pb.MODE_INJECT: "inject", pb.MODE_PARAPHRASE: "paraphrase"}[rollout.mode]
    assert rollout.mode == service.choose_mode(seed)
    assert list(rollout.prompt_token_ids) == encode_prompt(service.backend.tokenizer,
                                                          formats.injector_messages(sentences, mode_name))
    assert len(rollout.completion_token_ids) == len(rollout.behaviour_logprobs) > 0
    assert all(lp <= 0 for lp in rollout.behaviour_logprobs)
    assert rollout.sampling.temperature == service.settings.temperature
    assert rollout.sampling.n == service.settings.group_size and rollout.sampling.seed
    assert rollout.seed_note == seed and rollout.created_unix_ms > 0
    assert rollout.rollout_id.startswith(rollout.group_id)
    edit = formats.parse_injector_edit(rollout.completion_text)
    applied = formats.apply_edit(sentences, edit) if isinstance(edit, formats.InjectorEdit) else edit
    if isinstance(applied, formats.ParseFailure):
        assert rollout.reward == reward.gate_reward(parsed=False, verified=True)
        assert rollout.changed_sentence_id == -1 and not rollout.HasField("modified_note")
    else:
        assert not rollout.HasField("reward")
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
                                 base_model=str(tiny_model_dir), learner_step=1)
        producer.publish(updates_topic, update.SerializeToString(), key="policy")
        producer.flush()
        early = collect(bus, f"check-a-{unique}", {n.note_id for n in first}, 12, topic=generated_topic)
        deadline = time.monotonic() + 60
        while service.policy.version != new_version and time.monotonic() < deadline:
            time.sleep(0.2)
        assert service.policy.version == new_version
        for note in second:
            producer.publish(seed_topic, note.SerializeToString(), key=note.note_id)
        producer.flush()
        late = collect(bus, f"check-b-{unique}", {n.note_id for n in second}, 12, topic=generated_topic)
        letters = []
        consumer = bus.consumer([dead_topic], f"dl-{unique}")
        deadline = time.monotonic() + 60
        while not letters and time.monotonic() < deadline:
            letters = [letter for letter in (pb.DeadLetter.FromString(r.value) for r in consumer.poll(0.5, 500))
                       if letter.service == "injector" and f"empty-{unique}".encode() in letter.payload]
        consumer.close()
    finally:
        runtime.shutdown()
        bus.close()
    assert len(early) == 12 and len(late) == 12
    for rollouts in (early, late):
        groups: dict[str, list[pb.Rollout]] = {}
        for rollout in rollouts:
            groups.setdefault(rollout.group_id, []).append(rollout)
            check_rollout(rollout, by_id[rollout.seed_note_id], service)
        assert len(groups) == 4 and all(len(g) == 3 for g in groups.values())
        assert all(len({r.seed_note_id for r in g}) == 1 for g in groups.values())
    assert {r.policy_version for r in early} <= {0, new_version}
    assert {r.policy_version for r in late} == {new_version}, "later rollouts carry the new version"
    assert service.backend.checkpoint_hash == checkpoint_sha256(adapters[0])
    assert letters and "no text and no sentences" in letters[0].reason
    assert REGISTRY.get_sample_value("medserl_policy_version", {"service": "injector"}) == new_version
    assert rollouts_counted(new_version) - counted_before == sum(r.policy_version == new_version for r in early + late)


def test_admission_control_pauses_until_the_learner_catches_up(tiny_model_dir, seed_notes, adapters):
    bus = MemoryBus()
    settings = settings_for(tiny_model_dir, group_size=2, learner_batch_rollouts=4, max_staleness=0)
    service = InjectorService(settings, bus)
    runtime = ServiceRuntime(service).start()
    notes = unique_notes(seed_notes[:5], "adm")
    try:
        producer = bus.producer()
        for note in notes:
            producer.publish(NOTES_SEED, note.SerializeToString(), key=note.note_id)
        ids = {n.note_id for n in notes}
        first = collect(bus, "adm-1", ids, 4, timeout_s=30)
        assert len(first) == 4, "(0 + 1 + max_staleness 0) versions x 4 rollouts, then it waits"
        time.sleep(1.0)
        assert len(collect(bus, "adm-2", ids, 10, timeout_s=1)) == 4, "paused: no new rollout without a new policy"
        producer.publish(POLICY_UPDATES, pb.PolicyUpdate(version=1, checkpoint_uri=str(adapters[0]),
                                                         kind="lora").SerializeToString(), key="p")
        second = collect(bus, "adm-3", ids, 8, timeout_s=30)
        assert len(second) == 8
        time.sleep(0.5)
        assert len(collect(bus, "adm-3b", ids, 10, timeout_s=1)) == 8, "paused again after the next 4"
        producer.publish(POLICY_UPDATES, pb.PolicyUpdate(version=2, checkpoint_uri=str(adapters[1]),
                                                         kind="lora").SerializeToString(), key="p")
        everything = collect(bus, "adm-4", ids, 10, timeout_s=30)
    finally:
        runtime.shutdown()
    assert len(everything) == 10 and {r.seed_note_id for r in everything} == ids, "admission delays, never drops"
    versions = sorted(r.policy_version for r in everything)
    assert versions == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert service._seed_worker.paused_s > 0.5


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
        rollouts = collect(bus, "after-bad", {note.note_id}, 2, timeout_s=20)
    finally:
        runtime.shutdown()
    assert letters and "not loaded" in letters[0].reason and letters[0].source_topic == POLICY_UPDATES
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
                assert list(rollout.prompt_token_ids) == prompt and rollout.seed_note == note
                assert len(rollout.completion_token_ids) == len(rollout.behaviour_logprobs) > 0
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
            first = collect(bus, "v1", {n.note_id for n in notes[:3]}, 6, timeout_s=30)
            producer.publish(POLICY_UPDATES, pb.PolicyUpdate(version=3, checkpoint_uri=str(adapters[0]),
                                                             kind="lora").SerializeToString(), key="p")
            deadline = time.monotonic() + 20
            while service.policy.version != 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            for note in notes[3:]:
                producer.publish(NOTES_SEED, note.SerializeToString(), key=note.note_id)
            second = collect(bus, "v2", {n.note_id for n in notes[3:]}, 6, timeout_s=30)
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
