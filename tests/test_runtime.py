"""The shared service runtime: settings precedence, PHI-safe logs, health, reflection, /metrics, shutdown."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from medserl.v1 import messages_pb2 as pb
from medserl.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.bus import MemoryBus
from services.common.logs import JsonFormatter, RedactFilter
from services.common.runtime import GrpcBinding, Service, ServiceRuntime
from services.common.settings import ServiceSettings, SettingsError, load_settings, parse_set_flags
from services.common.worker import Output, StreamWorker, per_message


@dataclass
class EchoSettings(ServiceSettings):
    echo_suffix: str = "-echo"
    ratio: float = 0.5


class _Status(trainer_pb2_grpc.TrainerServicer):
    def GetStatus(self, request, context):
        return trainer_pb2.TrainerStatus(phase="idle")


class EchoService(Service):
    """A test service: relays notes from one topic to another and answers Trainer.GetStatus."""

    name = "echo"
    settings_cls = EchoSettings

    def grpc_bindings(self):
        return [GrpcBinding(trainer_pb2_grpc.add_TrainerServicer_to_server, _Status(), "medserl.v1.Trainer")]

    def topics(self):
        return ["echo.in", "echo.out", "deadletter"]

    def workers(self):
        def relay(note: pb.Note):
            return [Output("echo.out", note.note_id, pb.Note(note_id=note.note_id + self.settings.echo_suffix))]

        return [StreamWorker(service=self.name, bus=self.bus, topics=["echo.in"], group_id="echo",
                             message_type=pb.Note, handler=per_message(relay), poll_timeout_s=0.1)]


def test_settings_precedence_file_then_env_then_flags(tmp_path):
    config = tmp_path / "echo.yaml"
    config.write_text("echo_suffix: -file\nratio: 0.25\ngrpc_port: 7000\n")
    env = {"MEDSERL_RATIO": "0.75", "MEDSERL_GRPC_PORT": "7001", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    settings = load_settings(EchoSettings, config, parse_set_flags(["grpc_port=7002"]), env=env)
    assert settings.echo_suffix == "-file"  # file beats default
    assert settings.ratio == 0.75  # env beats file
    assert settings.grpc_port == 7002  # flag beats env
    assert settings.kafka_bootstrap == "k:9092"


def test_settings_errors_name_the_setting_and_the_source(tmp_path):
    with pytest.raises(SettingsError, match="grpc_port.*MEDSERL_GRPC_PORT"):
        load_settings(EchoSettings, env={"MEDSERL_GRPC_PORT": "not-a-port"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_setting: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_setting'"):
        load_settings(EchoSettings, bad, env={})
    with pytest.raises(SettingsError, match="key=value"):
        parse_set_flags(["oops"])


def _format(record_extra: dict, log_phi: bool) -> dict:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "verified a note", None, None)
    for key, value in record_extra.items():
        setattr(record, key, value)
    RedactFilter(log_phi).filter(record)
    return json.loads(JsonFormatter("verifier").format(record))


def test_logs_never_carry_note_text_or_keys_unless_asked():
    note = "Patient is a 45-year-old man with chest pain treated with aspirin."
    line = _format({"note": note, "api_key": "sk-secret", "rollout_id": "r1"}, log_phi=False)
    assert note not in json.dumps(line) and "sk-secret" not in json.dumps(line)
    assert line["note"] == f"<redacted {len(note)} chars>" and line["rollout_id"] == "r1"
    assert _format({"note": note, "api_key": "sk-secret"}, log_phi=True)["note"] == note
    assert _format({"api_key": "sk-secret"}, log_phi=True)["api_key"] == "<secret>"


@pytest.fixture
def running_echo():
    bus = MemoryBus()
    settings = EchoSettings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=0)
    runtime = ServiceRuntime(EchoService(settings, bus)).start()
    yield runtime, bus
    runtime.shutdown()


def test_health_reflection_metrics_and_a_relay(running_echo):
    runtime, bus = running_echo
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "medserl.v1.Trainer"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"medserl.v1.Trainer", "grpc.health.v1.Health"} <= names
        assert trainer_pb2_grpc.TrainerStub(channel).GetStatus(trainer_pb2.TrainerStatusRequest(), timeout=5).phase == "idle"

    producer = bus.producer()
    producer.publish("echo.in", pb.Note(note_id="n1").SerializeToString(), key="n1")
    consumer = bus.consumer(["echo.out"], "reader")
    records = consumer.poll(10, 10)
    assert [pb.Note.FromString(r.value).note_id for r in records] == ["n1-echo"]

    body = urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_port}/metrics", timeout=5).read().decode()
    assert 'medserl_messages_consumed_total{service="echo",topic="echo.in"}' in body
    assert 'medserl_service_up{service="echo"} 1.0' in body


def test_shutdown_commits_the_batch_in_hand_and_marks_not_serving():
    bus = MemoryBus()
    settings = EchoSettings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1)
    runtime = ServiceRuntime(EchoService(settings, bus)).start()
    producer = bus.producer()
    for i in range(200):
        producer.publish("echo.in", pb.Note(note_id=f"n{i}").SerializeToString(), key=f"n{i}")
    stopper = threading.Timer(0.05, runtime.stop_event.set)
    stopper.start()
    runtime.wait()
    # whatever the echo worker consumed before the stop was produced AND committed: a new member of
    # the group starts right after the last committed offset, and nothing is missing in between
    out = bus.consumer(["echo.out"], "reader").poll(1, 1000)
    done = {pb.Note.FromString(r.value).note_id.removesuffix("-echo") for r in out}
    rest = bus.consumer(["echo.in"], "echo").poll(1, 1000)
    remaining = {pb.Note.FromString(r.value).note_id for r in rest}
    assert done | remaining == {f"n{i}" for i in range(200)}
    assert not (done & remaining), "a committed message must not be redelivered"


def test_with_topic_creation_off_a_missing_topic_is_an_error_that_names_it():
    """kafka_create_topics=false (the Topic Operator owns the topics): start-up only checks them."""
    from services.common.bus import BusError

    bus = MemoryBus()
    bus.ensure_topics(["echo.in", "deadletter"])
    service = EchoService(EchoSettings(grpc_port=0, metrics_port=-1, kafka_create_topics=False), bus)
    with pytest.raises(BusError, match="topics missing on the broker: echo.out"):
        ServiceRuntime(service).start()
    assert bus.missing_topics(["echo.out"]) == ["echo.out"], "nothing was created"
    bus.ensure_topics(["echo.out"])  # the operator creates it: the service starts
    runtime = ServiceRuntime(EchoService(EchoSettings(grpc_port=0, metrics_port=-1, kafka_create_topics=False),
                                         bus)).start()
    runtime.shutdown()
