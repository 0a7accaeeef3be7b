"""Hostile gRPC callers (issue 12): anonymous and bogus-token calls, wrong certificates, floods,
undecodable requests, an open bind without authentication, anonymous spending of the operator's key.
Each is refused with a status code and a reason, and the service keeps answering health checks."""

from __future__ import annotations

import subprocess
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from medserl.v1 import generator_pb2, generator_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.common import auth
from services.common.bus import MemoryBus
from services.common.runtime import GrpcBinding, Service, ServiceRuntime
from services.common.settings import ServiceSettings
from services.generator.service import GeneratorService, GeneratorSettings

TOKEN = "ops-token-0123456789abcdef"


class Toy(trainer_pb2_grpc.TrainerServicer):
    """GetStatus blocks while ``gate`` is clear (a heavy call); GetLatestPolicy raises ``error``."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.error: Exception | None = None

    def GetStatus(self, request, context):  # noqa: N802
        self.entered.release()
        self.gate.wait(30)
        return trainer_pb2.TrainerStatus(phase="idle")

    def GetLatestPolicy(self, request, context):  # noqa: N802
        raise self.error or RuntimeError("unset")


class ToyService(Service):
    name = "toy"

    def __init__(self, settings, bus):
        super().__init__(settings, bus)
        self.servicer = Toy()

    def grpc_bindings(self):
        return [GrpcBinding(trainer_pb2_grpc.add_TrainerServicer_to_server, self.servicer, "medserl.v1.Trainer")]

    def topics(self):
        return []


def start(**settings) -> ServiceRuntime:
    base = dict(grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1)
    return ServiceRuntime(ToyService(ServiceSettings(**{**base, **settings}), MemoryBus())).start()


def health_status(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


@pytest.fixture
def tokens_file(tmp_path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"# caller:token\nops:{TOKEN}\n")
    return str(path)


def test_calls_without_a_token_or_with_a_bogus_one_are_refused_and_health_stays_open(tokens_file):
    runtime = start(grpc_tokens_file=tokens_file)
    target = f"127.0.0.1:{runtime.grpc_port}"
    try:
        with grpc.insecure_channel(target) as anonymous:
            stub = trainer_pb2_grpc.TrainerStub(anonymous)
            code, details = code_of(lambda: stub.GetStatus(trainer_pb2.TrainerStatusRequest(), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
            bogus = [("authorization", "Bearer not-the-token-at-all")]
            code, details = code_of(lambda: stub.GetStatus(trainer_pb2.TrainerStatusRequest(), metadata=bogus,
                                                           timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED and details == "invalid bearer token"
            assert health_status(anonymous) == health_pb2.HealthCheckResponse.SERVING, "health needs no token"
            reflect = reflection_pb2_grpc.ServerReflectionStub(anonymous)
            request = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            code, _ = code_of(lambda: list(reflect.ServerReflectionInfo(request, timeout=10)))
            assert code == grpc.StatusCode.UNAUTHENTICATED, "reflection is behind the tokens"
        with auth.channel(target, token=TOKEN) as allowed:
            assert trainer_pb2_grpc.TrainerStub(allowed).GetStatus(trainer_pb2.TrainerStatusRequest(),
                                                                   timeout=10).phase == "idle"
    finally:
        runtime.shutdown()
    assert REGISTRY.get_sample_value("medserl_auth_refused_total",
                                     {"service": "toy", "channel": "grpc", "reason": "bad_token"}) >= 1


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)


def _leaf(folder: Path, name: str, ca: str, san: str = "") -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=folder)
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "rogue-ca")
    _leaf(folder, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _leaf(folder, "client", "ca")
    _leaf(folder, "rogue", "rogue-ca")
    return folder


def test_mutual_tls_refuses_a_wrong_or_missing_client_certificate(pki):
    runtime = start(grpc_tls_cert=str(pki / "server.crt"), grpc_tls_key=str(pki / "server.key"),
                    grpc_tls_client_ca=str(pki / "ca.crt"), health_port=0)
    target = f"localhost:{runtime.grpc_port}"
    request = trainer_pb2.TrainerStatusRequest()
    try:
        for cert, key in ((None, None), ("rogue.crt", "rogue.key")):
            with auth.channel(target, ca=str(pki / "ca.crt"), cert=str(pki / cert) if cert else "",
                              key=str(pki / key) if key else "") as refused:
                code, _ = code_of(lambda ch=refused: trainer_pb2_grpc.TrainerStub(ch).GetStatus(request, timeout=10))
                assert code == grpc.StatusCode.UNAVAILABLE, f"{cert}: the TLS handshake refuses it"
        with grpc.insecure_channel(target) as plaintext:
            code, _ = code_of(lambda: trainer_pb2_grpc.TrainerStub(plaintext).GetStatus(request, timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE
        with auth.channel(target, ca=str(pki / "ca.crt"), cert=str(pki / "client.crt"),
                          key=str(pki / "client.key")) as allowed:
            assert trainer_pb2_grpc.TrainerStub(allowed).GetStatus(request, timeout=10).phase == "idle"
        with grpc.insecure_channel(f"127.0.0.1:{runtime.health_port}") as probe:  # kubelet probes: plaintext
            assert health_status(probe) == health_pb2.HealthCheckResponse.SERVING
            code, _ = code_of(lambda: trainer_pb2_grpc.TrainerStub(probe).GetStatus(request, timeout=10))
            assert code == grpc.StatusCode.UNIMPLEMENTED, "the health port serves health only"
    finally:
        runtime.shutdown()


def test_an_open_bind_without_authentication_is_refused_at_start(tokens_file):
    with pytest.raises(RuntimeError, match="refusing to serve gRPC on 0.0.0.0 without authentication"):
        start(grpc_host="0.0.0.0")
    for settings in ({"grpc_tokens_file": tokens_file}, {"grpc_insecure": True}):
        start(grpc_host="0.0.0.0", **settings).shutdown()
    assert ServiceSettings().grpc_host == "127.0.0.1" and ServiceSettings().metrics_host == "127.0.0.1"


def test_a_flood_of_heavy_calls_is_refused_past_the_limit_and_health_still_answers():
    runtime = start(grpc_workers=4)  # limit: grpc_workers - 2 = 2 heavy calls at once
    toy = runtime.service.servicer
    toy.gate.clear()
    pool = futures.ThreadPoolExecutor(max_workers=8)
    target = f"127.0.0.1:{runtime.grpc_port}"
    try:
        with grpc.insecure_channel(target) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            heavy = [pool.submit(stub.GetStatus, trainer_pb2.TrainerStatusRequest(), timeout=30) for _ in range(2)]
            for _ in heavy:
                assert toy.entered.acquire(timeout=20)
            codes = []
            for _ in range(10):
                codes.append(code_of(lambda: stub.GetStatus(trainer_pb2.TrainerStatusRequest(), timeout=10)))
            assert all(c == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in d for c, d in codes)
            for _ in range(5):  # every slot is taken, yet health answers
                assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            toy.gate.set()
            assert all(f.result(timeout=30).phase == "idle" for f in heavy)
            assert stub.GetStatus(trainer_pb2.TrainerStatusRequest(), timeout=10).phase == "idle"
    finally:
        toy.gate.set()
        pool.shutdown()
        runtime.shutdown()
    assert runtime.guard.in_flight == 0


def test_undecodable_requests_and_handler_errors_get_client_or_server_codes_never_unknown():
    runtime = start()
    toy = runtime.service.servicer
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            raw = channel.unary_unary("/medserl.v1.Trainer/GetStatus", request_serializer=None,
                                      response_deserializer=None)
            for garbage in (b"\xff\xff\xff", b"\x0a\x05abc", bytes(range(256))):
                code, details = code_of(lambda g=garbage: raw(g, timeout=10))
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot be decoded" in details
            stub = trainer_pb2_grpc.TrainerStub(channel)
            toy.error = ValueError("reasoning_json is not JSON")
            code, details = code_of(lambda: stub.GetLatestPolicy(trainer_pb2.LatestPolicyRequest(), timeout=10))
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "reasoning_json is not JSON")
            toy.error = RuntimeError("patient note text must not leak")
            code, details = code_of(lambda: stub.GetLatestPolicy(trainer_pb2.LatestPolicyRequest(), timeout=10))
            assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error (RuntimeError)")
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        runtime.shutdown()


# --------------------------------------------------------------------------------------------
# the generator: anonymous callers cannot spend the operator's key; jobs and spend per caller


def _pair(pid: str) -> pb.NotePair:
    sentences = [(0, "The patient has a cough."), (1, "She was given 5 mg of lisinopril.")]
    wrong = [(0, sentences[0][1]), (1, "She was given 5 mg of metformin.")]

    def note(items):
        return pb.Note(note_id=pid, sentences=[pb.Sentence(id=i, text=t) for i, t in items])

    return pb.NotePair(pair_id=pid, incorrect=note(wrong), correct=note(sentences), error_type="pharmacotherapy",
                       error_sentence_id=1)


@pytest.fixture
def generator(tmp_path, tokens_file, monkeypatch):
    """A generator with the operator's key, tokens on, jobs that never finish (they hold their slot)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-operator-key-that-costs-money-000")
    gate = threading.Event()
    monkeypatch.setattr(GeneratorService, "_run_job", lambda self, job, config, pairs: gate.wait(30))
    settings = GeneratorSettings(grpc_host="0.0.0.0", grpc_port=0, metrics_port=-1, grpc_tokens_file=tokens_file,
                                 output_root=str(tmp_path / "jobs"), max_jobs_per_caller=2, max_cost_per_job_usd=8,
                                 max_spend_per_caller_usd=20, shutdown_grace_s=1)
    runtime = ServiceRuntime(GeneratorService(settings, MemoryBus())).start()
    yield runtime
    gate.set()
    runtime.shutdown()


def test_anonymous_callers_cannot_start_paid_jobs_and_each_caller_has_job_and_spend_limits(generator):
    target = f"127.0.0.1:{generator.grpc_port}"
    request = generator_pb2.SubmitPairsRequest(pairs=[_pair("p1")], max_cost_usd=5)
    with grpc.insecure_channel(target) as anonymous:
        code, _ = code_of(lambda: generator_pb2_grpc.GeneratorStub(anonymous).SubmitPairs(request, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with auth.channel(target, token=TOKEN) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        too_big = generator_pb2.SubmitPairsRequest(pairs=[_pair("p0")], max_cost_usd=500)
        code, details = code_of(lambda: stub.SubmitPairs(too_big, timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "per-job limit" in details
        first = stub.SubmitPairs(request, timeout=10)
        unbudgeted = generator_pb2.SubmitPairsRequest(pairs=[_pair("p2")])  # gets the per-job cap: 8 USD
        stub.SubmitPairs(unbudgeted, timeout=10)
        code, details = code_of(lambda: stub.SubmitPairs(request, timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_jobs_per_caller" in details
        assert stub.GetJobStatus(first, timeout=10).job_id == first.job_id
    service: GeneratorService = generator.service
    assert service.spent == {"ops": 13.0}
    jobs = list(service.jobs.values())
    for job in jobs:  # two jobs end (spending nothing): slots free, reservations released
        job.state = "done"
    service.spent["ops"] = 18.0  # as if 18 USD had been spent
    with auth.channel(target, token=TOKEN) as channel:
        code, details = code_of(lambda: generator_pb2_grpc.GeneratorStub(channel).SubmitPairs(request, timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "spend limit of 20" in details


def test_anonymous_spending_is_permission_denied_on_an_open_insecure_bind(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-operator-key-that-costs-money-000")
    settings = GeneratorSettings(grpc_host="0.0.0.0", grpc_port=0, metrics_port=-1, grpc_insecure=True,
                                 output_root=str(tmp_path / "jobs"))
    runtime = ServiceRuntime(GeneratorService(settings, MemoryBus())).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = generator_pb2_grpc.GeneratorStub(channel)
            code, details = code_of(lambda: stub.SubmitPairs(
                generator_pb2.SubmitPairsRequest(pairs=[_pair("p1")]), timeout=10))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "authenticated caller" in details
            assert not runtime.service.jobs
    finally:
        runtime.shutdown()


def test_secrets_are_redacted_from_job_messages():
    text = "401: Incorrect API key provided: sk-proj-abcdefghijklmnop1234. Authorization: Bearer tok1234567890abc"
    cleaned = auth.redact(text, ["tok1234567890abc"])
    assert "sk-proj-abcdefghijklmnop1234" not in cleaned and "tok1234567890abc" not in cleaned
    assert cleaned.startswith("401: Incorrect API key provided: <redacted>")
