"""A call's deadline stops the work itself (issue 12: a call abandoned at 0.5 s burned 6 s of CPU).

The handler's work is a stand-in slower than any deadline, and it is synchronised on the call, never
on sleeps: a forward pass of the tiny model lasts until the call has ended (the client's deadline
passed); a judgement lasts until the call's server-side deadline (``grpc_max_call_s``). What is
asserted is how much work was done, never how long it took: the generate loop stops at the next
token after the deadline, AssessMany stops before the next note, the server counts the stop and keeps
serving.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from medserl.v1 import assessor_pb2, assessor_pb2_grpc, injector_pb2, injector_pb2_grpc
from medserl.v1 import messages_pb2 as pb
from services.assessor.detector import Detection, Detector
from services.assessor.service import AssessorService, AssessorSettings
from services.common import formats
from services.common.bus import MemoryBus
from services.common.deadline import current_call
from services.common.runtime import ServiceRuntime
from services.injector.service import InjectorService, InjectorSettings
from tests.reliability import fuzzing

COMMON = dict(grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1, shutdown_grace_s=5)
MAX_NEW_TOKENS = 64


def stopped_calls(service: str, method: str) -> float:
    return REGISTRY.get_sample_value("medserl_grpc_limited_total",
                                     {"service": service, "method": method, "limit": "deadline"}) or 0.0


def serving(channel) -> bool:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def medec(medec_path):
    return fuzzing.medec_notes(str(medec_path))


class SlowModel:
    """The tiny model, slower than any deadline: a forward pass lasts until the call it serves has ended
    (at most 30 s), then runs for real. Counts the passes: the work the call cost."""

    def __init__(self, model):
        self.model = model
        self.passes = 0

    def __call__(self, **kwargs):
        self.passes += 1
        call = current_call()
        assert call is not None, "generation for a gRPC call runs inside the call"
        call.ended.wait(30)
        return self.model(**kwargs)


def test_an_inject_call_whose_client_gave_up_stops_generating_at_the_next_token(tiny_model_dir, medec):
    from services.inference.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_model_dir)
    fast_model, slow = backend.model, SlowModel(backend.model)
    backend.model = slow
    settings = InjectorSettings(**COMMON, model=str(tiny_model_dir), group_size=2, max_new_tokens=MAX_NEW_TOKENS,
                                learner_batch_rollouts=0)
    service = InjectorService(settings, MemoryBus(), backend=backend)
    generate, finished, outcome = service.generate_groups, threading.Event(), {}

    def watched(*args, **kwargs):  # how the work ended, seen from the service
        try:
            return generate(*args, **kwargs)
        except BaseException as exc:
            outcome["raised"] = type(exc).__name__
            raise
        finally:
            finished.set()

    service.generate_groups = watched
    before = stopped_calls("injector", "Inject")
    runtime = ServiceRuntime(service).start()
    note = fuzzing.pb_note(medec[0])
    request = injector_pb2.InjectRequest(note=note, mode=pb.MODE_INJECT,
                                         sampling=pb.SamplingParams(n=2, max_new_tokens=MAX_NEW_TOKENS))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = injector_pb2_grpc.InjectorStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Inject(request, timeout=2.0)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert finished.wait(60), "the handler's work ended"
            assert outcome == {"raised": "DeadlineExceeded"}, "it was stopped, it did not run to the end"
            assert slow.passes == 1 < MAX_NEW_TOKENS, "one forward pass after the deadline, not 64"
            assert serving(channel)
            backend.model = fast_model  # the same server answers a call that has the time
            rollouts = stub.Inject(request, timeout=120).rollouts
            assert len(rollouts) == 2 and all(r.completion_token_ids for r in rollouts)
    finally:
        runtime.shutdown()  # waits for the handlers: the counters below are final
    assert stopped_calls("injector", "Inject") - before == 1
    assert runtime.guard.in_flight == 0


class SlowDetector(Detector):
    """Judging a note lasts until the call's deadline (at most 30 s): a model slower than the server's
    per-call limit. Counts the notes it judged."""

    name = "slow"

    def __init__(self):
        self.judged = 0

    @property
    def checkpoint_hash(self) -> str:
        return "slow"

    def detect(self, notes):
        call = current_call()
        assert call is not None
        call.wait(30)  # returns at the call's deadline (the server's grpc_max_call_s)
        self.judged += len(notes)
        answer = formats.AssessorOutput(False, -1, None)
        return [Detection(answer, 0.0, formats.render_assessor_output(answer), 1, 0.0) for _ in notes]


def test_assess_many_stops_before_the_next_note_once_the_servers_call_limit_passes(medec):
    detector = SlowDetector()
    settings = AssessorSettings(**COMMON, grpc_max_call_s=1.0)
    before = stopped_calls("assessor", "AssessMany")
    runtime = ServiceRuntime(AssessorService(settings, MemoryBus(), detector=detector)).start()
    notes = [assessor_pb2.AssessRequest(note=fuzzing.pb_note(n)) for n in medec[:20]]
    verdicts = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = assessor_pb2_grpc.AssessorStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                for verdict in stub.AssessMany(iter(notes), timeout=120):  # the client would wait: the server cuts
                    verdicts.append(verdict)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert detector.judged == 1 < len(notes), "the notes after the deadline were never judged"
            assert len(verdicts) == 1
            assert serving(channel)
    finally:
        runtime.shutdown()
    assert stopped_calls("assessor", "AssessMany") - before == 1
    assert runtime.guard.in_flight == 0
