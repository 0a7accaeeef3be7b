"""Fuzzing every gRPC method of every service (issue 12).

Five servers run as in production (ServiceRuntime: the call guard, bearer tokens, message limits) with
instant stand-in models. Each method gets random bytes (also truncated or bit-flipped real requests),
well-formed requests with any field values (real MEDEC notes mixed in wherever a Note goes), huge
fields (up to past the server's 8 MB message limit) and strings that are not UTF-8, plus calls with a
wrong bearer token. Every call must end with a status that names the caller's mistake (or OK), never
UNKNOWN, INTERNAL, UNAVAILABLE or a timeout; no status detail may quote a note or the token; after
every call the server answers its health check; no call leaves a concurrency slot taken.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from medserl.v1 import assessor_pb2, generator_pb2, injector_pb2, trainer_pb2, verifier_pb2
from medserl.v1 import messages_pb2 as pb
from services.assessor.service import AssessorService, AssessorSettings
from services.common import auth
from services.common.bus import MemoryBus
from services.common.runtime import ServiceRuntime
from services.generator.service import GeneratorService, GeneratorSettings
from services.injector.service import InjectorService, InjectorSettings
from services.verifier.service import VerifierService, VerifierSettings
from tests.reliability import fuzzing
from tests.reliability.fuzzing import count, fuzz
from tests.rl_fakes import ScriptedBackend, ScriptedDetector, recording_factory
from trainer.service import TrainerService, TrainerSettings

SUITE = "grpc"
TOKEN = "fuzz-caller-token-0123456789abcdef"
MIN_CASES = 150  # per method, all kinds together
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
SERVER_LIMIT = 8 * 1024 * 1024  # grpc_max_message_bytes (the default)
CLIENT_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                  ("grpc.max_send_message_length", 64 * 1024 * 1024)]
HUGE_SIZES = (100_000, 1_000_000, 5_000_000, SERVER_LIMIT + 1_000_000)


@dataclass(frozen=True)
class Method:
    server: str
    path: str
    request: type
    kind: str = "unary_unary"  # | unary_stream | stream_stream

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


METHODS = [
    Method("verifier", "/medserl.v1.Verifier/Verify", verifier_pb2.VerifyRequest),
    Method("verifier", "/medserl.v1.Verifier/VerifyMany", verifier_pb2.VerifyRequest, "stream_stream"),
    Method("assessor", "/medserl.v1.Assessor/Assess", assessor_pb2.AssessRequest),
    Method("assessor", "/medserl.v1.Assessor/AssessMany", assessor_pb2.AssessRequest, "stream_stream"),
    Method("injector", "/medserl.v1.Injector/Inject", injector_pb2.InjectRequest),
    Method("injector", "/medserl.v1.Injector/SubmitSeeds", injector_pb2.SubmitSeedsRequest),
    Method("generator", "/medserl.v1.Generator/SubmitPairs", generator_pb2.SubmitPairsRequest),
    Method("generator", "/medserl.v1.Generator/GetJobStatus", generator_pb2.JobRef),
    Method("generator", "/medserl.v1.Generator/StreamExamples", generator_pb2.JobRef, "unary_stream"),
    Method("trainer", "/medserl.v1.Trainer/GetStatus", trainer_pb2.TrainerStatusRequest),
    Method("trainer", "/medserl.v1.Trainer/GetLatestPolicy", trainer_pb2.LatestPolicyRequest),
    Method("verifier", "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest),
]
IDS = [m.name for m in METHODS]


@dataclass
class Server:
    runtime: ServiceRuntime
    channel: grpc.Channel  # with the bearer token
    anonymous: grpc.Channel


@pytest.fixture(scope="module")
def medec(medec_path):
    return fuzzing.medec_notes(str(medec_path))


@pytest.fixture(scope="module")
def servers(tmp_path_factory, medec):
    root = tmp_path_factory.mktemp("fuzz-grpc")
    tokens = root / "tokens"
    tokens.write_text(f"fuzzer:{TOKEN}\n")
    common = dict(grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1, grpc_tokens_file=str(tokens),
                  poll_timeout_s=0.05, shutdown_grace_s=2)
    patch = pytest.MonkeyPatch()
    patch.delenv("OPENAI_API_KEY", raising=False)  # the generator runs offline: no paid jobs here

    def finish_at_once(self, job, config, pairs):  # a job that ends at once (the pipeline is fuzzed elsewhere)
        with job.cond:
            job.state, job.message = "done", "fuzz"
            job.cond.notify_all()

    patch.setattr(GeneratorService, "_run_job", finish_at_once)
    services = {
        "verifier": VerifierService(VerifierSettings(**common), MemoryBus()),
        "assessor": AssessorService(AssessorSettings(**common), MemoryBus(),
                                    detector=ScriptedDetector()),
        "injector": InjectorService(InjectorSettings(**common, model="scripted", learner_batch_rollouts=0), MemoryBus(),
                                    backend=ScriptedBackend()),
        "generator": GeneratorService(GeneratorSettings(**common, output_root=str(root / "jobs")), MemoryBus()),
        "trainer": TrainerService(TrainerSettings(**common, model="tiny", checkpoint_dir=str(root / "rl"), lora=False),
                                  MemoryBus(), learner_factory=recording_factory([])),
    }
    out: dict[str, Server] = {}
    try:
        for name, service in services.items():
            runtime = ServiceRuntime(service).start()
            target = f"127.0.0.1:{runtime.grpc_port}"
            out[name] = Server(runtime, auth.channel(target, token=TOKEN, options=CLIENT_OPTIONS),
                               grpc.insecure_channel(target, options=CLIENT_OPTIONS))
        yield out
    finally:
        for server in out.values():
            server.channel.close()
            server.anonymous.close()
            server.runtime.shutdown()
        patch.undo()


# --------------------------------------------------------------------------------------------
# requests


def medec_pair(note) -> pb.NotePair:
    from medec.prepare import pair_from_note

    pair = pair_from_note(note)

    def as_note(sentences):
        return pb.Note(note_id=pair.note_id, sentences=[pb.Sentence(id=i, text=t) for i, t in sentences])

    return pb.NotePair(pair_id=pair.pair_id, incorrect=as_note(pair.incorrect_sentences),
                       correct=as_note(pair.correct_sentences), error_type=pair.error_type,
                       error_sentence_id=pair.error_sentence_id, error_sentence=pair.error_sentence,
                       corrected_sentence=pair.corrected_sentence, split="sft_train")


def base_request(method: Method, note, error_note):
    """A well-formed request for ``method`` built on real MEDEC notes (what the bent ones start from)."""
    seed = fuzzing.pb_note(note)
    r = method.request
    if r is verifier_pb2.VerifyRequest:
        modified = pb.Note()
        modified.CopyFrom(seed)
        modified.sentences[0].text = modified.sentences[0].text.replace(" ", "  ", 1) + " Stable."
        return r(id="fuzz", mode=pb.MODE_PARAPHRASE, original=seed, modified=modified)
    if r is assessor_pb2.AssessRequest:
        return r(note=seed)
    if r is injector_pb2.InjectRequest:
        return r(note=seed, mode=pb.MODE_INJECT, sampling=pb.SamplingParams(n=2, max_new_tokens=32))
    if r is injector_pb2.SubmitSeedsRequest:
        return r(notes=[seed])
    if r is generator_pb2.SubmitPairsRequest:
        return r(pairs=[medec_pair(error_note)], seed=3)
    if r is generator_pb2.JobRef:
        return r(job_id="0123456789abcdef")
    if r is health_pb2.HealthCheckRequest:
        return r(service="")
    return r()


@pytest.fixture(scope="module")
def strategies(medec):
    errors = [n for n in medec if n.error_flag]
    special = fuzzing.medec_special(medec)
    out = fuzzing.QuietDict()
    for method in METHODS:
        bases = st.tuples(st.sampled_from(medec), st.sampled_from(errors)).map(
            lambda pair, m=method: base_request(m, *pair))
        out[method.path] = {"base": bases, "message": fuzzing.messages(method.request, special=special)}
    return out


def random_bytes(base: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """Garbage, or a real request cut short or with bytes flipped."""

    @st.composite
    def strategy(draw) -> bytes:
        kind = draw(st.sampled_from(("garbage", "truncated", "flipped")))
        if kind == "garbage":
            return draw(st.binary(max_size=600))
        data = bytearray(draw(base).SerializeToString())
        if kind == "truncated":
            return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
        for _ in range(draw(st.integers(1, 8))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return strategy()


# --------------------------------------------------------------------------------------------
# calling


def call(server: Server, method: Method, payloads: list[bytes], metadata=None, anonymous: bool = False):
    """(status code, details, response count) of one call with raw request bytes."""
    channel = server.anonymous if anonymous else server.channel
    responses = 0
    try:
        if method.kind == "unary_unary":
            channel.unary_unary(method.path)(payloads[0], timeout=20, metadata=metadata)
            responses = 1
        elif method.kind == "unary_stream":
            for _ in channel.unary_stream(method.path)(payloads[0], timeout=20, metadata=metadata):
                responses += 1
        else:
            for _ in channel.stream_stream(method.path)(iter(payloads), timeout=20, metadata=metadata):
                responses += 1
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", responses
    return grpc.StatusCode.OK, "", responses


def assert_proper(servers, method: Method, kind: str, payloads: list[bytes], sentences, *, metadata=None,
                  anonymous: bool = False, expect: set | None = None) -> grpc.StatusCode:
    server = servers[method.server]
    code, details, _ = call(server, method, payloads, metadata, anonymous)
    assert code in (expect or ALLOWED), (method.name, kind, code, details[:300])
    assert TOKEN not in details and not fuzzing.quotes_a_note(details, sentences), (method.name, details[:300])
    health = health_pb2_grpc.HealthStub(server.anonymous).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    count(SUITE, method.name, kind, code.name)
    return code


def merged(pair):
    base, bent = pair
    base.MergeFrom(bent)  # the fields set in ``bent`` replace (or, repeated, extend) the real request's
    return base


def payload_list(draw, method: Method, one: st.SearchStrategy[bytes]) -> list[bytes]:
    if method.kind == "stream_stream":
        return draw(st.lists(one, min_size=0, max_size=4))
    return [draw(one)]


# --------------------------------------------------------------------------------------------
# the fuzz tests


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@fuzz(50)
@given(data=st.data())
def test_random_and_damaged_bytes(servers, strategies, medec_path, method, data):
    sentences = fuzzing.medec_sentences(str(medec_path))
    payloads = payload_list(data.draw, method, random_bytes(strategies[method.path]["base"]))
    assert_proper(servers, method, "bytes", payloads, sentences)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@fuzz(80)
@given(data=st.data())
def test_well_formed_requests_with_any_field_values(servers, strategies, medec_path, method, data):
    sentences = fuzzing.medec_sentences(str(medec_path))
    # any field values, and now and then fields a newer client would send (the only variety for
    # requests without fields)
    generic = strategies[method.path]["message"]
    bent = st.tuples(strategies[method.path]["base"], generic).map(merged)  # a real request, a few fields bent
    one = st.tuples(st.one_of(generic, bent), st.one_of(st.just(b""), fuzzing.unknown_fields())).map(
        lambda pair: pair[0].SerializeToString() + pair[1])
    assert_proper(servers, method, "fields", payload_list(data.draw, method, one), sentences)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@fuzz(10)
@given(data=st.data())
def test_huge_fields_and_long_lists(servers, strategies, medec_path, method, data):
    """A string of up to 9 MB in any string field (past the server's 8 MB limit), or a repeated field
    with tens of thousands of items: refused with INVALID_ARGUMENT / RESOURCE_EXHAUSTED, quickly."""
    sentences = fuzzing.medec_sentences(str(medec_path))
    request = data.draw(strategies[method.path]["base"])
    paths = fuzzing.string_paths(request.DESCRIPTOR)
    lists = fuzzing.repeated_message_paths(request.DESCRIPTOR)
    size = data.draw(st.sampled_from(HUGE_SIZES))
    choice = data.draw(st.sampled_from(("string", "list"))) if lists and paths else ("string" if paths else "raw")
    if choice == "string":
        path = data.draw(st.sampled_from(paths))
        fuzzing.set_path(request, path, data.draw(st.sampled_from("x.a ")) * size)
        payload = request.SerializeToString()
    elif choice == "list":  # the first item of a repeated field (a sentence, a note, a pair) 1,001 or 20,000 times
        path = data.draw(st.sampled_from(lists))
        item = fuzzing.first_item(request, path)
        copies = data.draw(st.sampled_from((1_001, 20_000)))
        payload = request.SerializeToString() + fuzzing.wrap(path[:-1], fuzzing.length_delimited(
            path[-1].number, item.SerializeToString()) * copies)
    else:  # a message without fields: an unknown field that large
        payload = fuzzing.length_delimited(15, b"x" * size)
    code = assert_proper(servers, method, "huge", [payload], sentences)
    if len(payload) > SERVER_LIMIT:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method.name, code)
    elif len(payload) > 1_000_000 and choice != "raw":  # no field a service takes is that large: refused
        where = ".".join(f.name for f in path) if choice != "raw" else "unknown field"
        assert code != grpc.StatusCode.OK, (method.name, choice, where, len(payload))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@fuzz(20)
@given(data=st.data())
def test_strings_that_are_not_utf8_are_invalid_argument(servers, strategies, medec_path, method, data):
    sentences = fuzzing.medec_sentences(str(medec_path))
    request = data.draw(strategies[method.path]["base"])
    paths = fuzzing.string_paths(request.DESCRIPTOR)
    raw = data.draw(fuzzing.invalid_utf8())
    if paths:
        payload = fuzzing.with_raw_string(request.SerializeToString(), data.draw(st.sampled_from(paths)), raw)
        expect = {grpc.StatusCode.INVALID_ARGUMENT}
    else:  # no string field: the bytes travel as an unknown field, which is never validated
        payload = request.SerializeToString() + fuzzing.length_delimited(15, raw)
        expect = None
    payloads = [payload] if method.kind != "stream_stream" else [request.SerializeToString(), payload]
    assert_proper(servers, method, "utf8", payloads, sentences, expect=expect)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@fuzz(10)
@given(token=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=60),
       scheme=st.sampled_from(("Bearer ", "bearer ", "Basic ", "", "Bearer  ")))
def test_a_wrong_bearer_token_is_unauthenticated_and_health_stays_open(servers, medec_path, method, token, scheme):
    sentences = fuzzing.medec_sentences(str(medec_path))
    payload = b""  # the empty request: valid for every method, so only the token can be wrong
    metadata = [("authorization", f"{scheme}{token}")] if scheme or token else None
    health = method.path.startswith("/grpc.health.v1.")
    expect = {grpc.StatusCode.OK} if health else {grpc.StatusCode.UNAUTHENTICATED}
    assert_proper(servers, method, "token", [payload], sentences, metadata=metadata, anonymous=True, expect=expect)


def test_every_method_was_fuzzed_and_no_call_holds_a_slot(servers):
    """Runs after the fuzz tests above (file order)."""
    cases = fuzzing.totals(SUITE)
    for method in METHODS:
        assert cases[method.name] >= MIN_CASES, (method.name, dict(cases))
    for name, server in servers.items():
        assert not server.runtime.failed, f"{name}: a stream worker died"
        done = threading.Event()
        for _ in range(200):  # a stream's slot is released just after its last message reaches the client
            if server.runtime.guard.in_flight == 0:
                break
            done.wait(0.01)
        assert server.runtime.guard.in_flight == 0, name
