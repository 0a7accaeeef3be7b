"""Two services as separate processes over a real Kafka broker: verifier -> assessor.

They exchange protobuf RolloutGroups (every group arrives whole, every rollout scored), answer gRPC
health checks and reflection, and a SIGTERM in the middle of traffic loses no message (a restarted
verifier picks up what was handed back).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from medec.prepare import read_medec_csv
from medserl.v1 import messages_pb2 as pb
from services.common import reward
from services.common.topics import ROLLOUTS_GENERATED, ROLLOUTS_SCORED
from tests.conftest import ROOT

pytestmark = pytest.mark.kafka


class ServiceProcess:
    """``medserl serve <name>`` as a child process; waits for its READY line."""

    def __init__(self, name: str, bootstrap: str, group: str, suffix: str, *extra: str):
        self.name = name
        cmd = [sys.executable, "-m", "medserl_cli", "serve", name, "--bus", "kafka", "--kafka-bootstrap", bootstrap,
               "--grpc-port", "0", "--metrics-port", "0", "--set", f"group_id={group}", "--set", "poll_timeout_s=0.2",
               "--set", f"topic_suffix={suffix}",
               *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr_lines: list[str] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.grpc_port = self._wait_ready()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _wait_ready(self, timeout_s: float = 120) -> int:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {''.join(self.stderr_lines)[-3000:]}")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("READY"):
                fields = dict(part.split("=") for part in line.split()[1:])
                return int(fields["grpc_port"])
        raise AssertionError(f"{self.name} not ready in {timeout_s}s: {''.join(self.stderr_lines)[-3000:]}")

    def terminate(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def processed_at_shutdown(self) -> int:
        """Messages the service committed before it stopped (from its JSON 'service stopped' log line)."""
        import json

        self._stderr_thread.join(10)  # the process has exited: read its log to the end
        for line in self.stderr_lines:
            if '"service stopped"' in line:
                return int(json.loads(line)["processed"])
        raise AssertionError(f"{self.name} did not log a clean stop: {''.join(self.stderr_lines)[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def medec_groups(medec_path: Path, prefix: str, count: int) -> list[pb.RolloutGroup]:
    """Inject groups built from MEDEC's own doctor-written errors (seed = the corrected note): the
    doctor's error as one rollout, an unparseable completion as the other."""
    notes, _ = read_medec_csv(medec_path / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv")
    groups = []
    for note in notes:
        if not note.error_flag or note.error_sentence_id < 0:
            continue
        modified = [(i, s) for i, s in note.sentences]
        seed = [(i, note.corrected_sentence if i == note.error_sentence_id else s) for i, s in modified]
        gid = f"{prefix}-{note.note_id}~0"
        common = dict(seed_note_id=note.note_id, group_id=gid, mode=pb.MODE_INJECT, policy_version=0,
                      prompt_token_ids=[1, 2, 3], completion_token_ids=[4, 5], behaviour_logprobs=[-0.1, -0.2])
        edit = pb.Rollout(rollout_id=f"{gid}-0", changed_sentence_id=note.error_sentence_id,
                          claimed_error_type=note.error_type or "",
                          modified_note=pb.Note(note_id=f"{gid}-0",
                                                sentences=[pb.Sentence(id=i, text=s) for i, s in modified]),
                          **common)
        garbage = pb.Rollout(rollout_id=f"{gid}-1", changed_sentence_id=-1, completion_text="lorem ipsum",
                             parse_error="no sentence_id line", **common)
        groups.append(pb.RolloutGroup(
            group_id=gid, seed_note_id=note.note_id, mode=pb.MODE_INJECT, policy_version=0, rollouts=[edit, garbage],
            seed_note=pb.Note(note_id=note.note_id, sentences=[pb.Sentence(id=i, text=s) for i, s in seed])))
        if len(groups) == count:
            break
    return groups


def collect_scored(bus, group: str, suffix: str, wanted: set[str], timeout_s: float = 180) -> dict[str, pb.RolloutGroup]:
    """Read rollouts.scored until every wanted group arrived; duplicates collapse by group id."""
    consumer = bus.consumer([ROLLOUTS_SCORED + suffix], group)
    seen: dict[str, pb.RolloutGroup] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted <= set(seen) and time.monotonic() < deadline:
            for record in consumer.poll(0.5, 500):
                g = pb.RolloutGroup.FromString(record.value)
                if g.group_id in wanted:
                    seen[g.group_id] = g
    finally:
        consumer.close()
    return seen


def check_health_and_reflection(port: int, service_name: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service_name), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                    timeout=10)))
        assert service_name in {s.name for s in reply.list_services_response.service}
        # reflection serves the real proto descriptors, so grpcurl-style clients can call without stubs
        symbol = next(iter(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=service_name)]), timeout=10)))
        assert symbol.file_descriptor_response.file_descriptor_proto


def assert_scored_consistently(scored: pb.RolloutGroup, sent: pb.RolloutGroup) -> None:
    """The whole group, every rollout with the reward services.common.reward gives (default weights)."""
    assert [r.rollout_id for r in scored.rollouts] == [r.rollout_id for r in sent.rollouts]
    for rollout in scored.rollouts:
        if rollout.parse_error:
            assert not rollout.HasField("verification") and not rollout.HasField("verdict")
            assert (rollout.reward.outcome, rollout.reward.total) == (reward.UNPARSEABLE, -2.0)
            continue
        assert rollout.verification.checks, "every parsed rollout carries the verifier's report"
        if not rollout.verification.passed:
            assert (rollout.reward.outcome, rollout.reward.total) == (reward.INVALID, -1.5)
            assert not rollout.HasField("verdict")
            continue
        assert rollout.verdict.parsed
        assert rollout.reward == reward.score_rollout(rollout, rollout.verdict)
        assert rollout.reward.outcome in (reward.CAUGHT, reward.FOOLED)


@pytest.fixture
def kafka(kafka_bootstrap):
    from services.common.kafka_bus import KafkaBus

    return KafkaBus(kafka_bootstrap)


def test_verifier_and_assessor_processes_score_rollouts_over_kafka(kafka, kafka_bootstrap, medec_path, unique):
    verifier = ServiceProcess("verifier", kafka_bootstrap, f"verifier-{unique}", f".{unique}")
    assessor = ServiceProcess("assessor", kafka_bootstrap, f"assessor-{unique}", f".{unique}", "--set", "backend=baseline_last_sentence")
    try:
        check_health_and_reflection(verifier.grpc_port, "medserl.v1.Verifier")
        check_health_and_reflection(assessor.grpc_port, "medserl.v1.Assessor")
        groups = medec_groups(medec_path, unique, 30)
        producer = kafka.producer()
        for g in groups:
            producer.publish(ROLLOUTS_GENERATED + f".{unique}", g.SerializeToString(), key=g.group_id)
        producer.flush()
        scored = collect_scored(kafka, f"reader-{unique}", f".{unique}", {g.group_id for g in groups})
        assert len(scored) == len(groups), "every group reaches the learner's topic"
        for g in groups:
            assert_scored_consistently(scored[g.group_id], g)
        judged = [r for g in scored.values() for r in g.rollouts if r.HasField("verdict")]
        assert judged, "MEDEC's own errors must mostly pass the inject checks and reach the assessor"
        assert verifier.terminate() == 0 and assessor.terminate() == 0
    finally:
        verifier.kill()
        assessor.kill()


def test_sigterm_during_traffic_loses_no_message(kafka, kafka_bootstrap, medec_path, unique):
    group = f"verifier-{unique}"
    assessor = ServiceProcess("assessor", kafka_bootstrap, f"assessor-{unique}", f".{unique}", "--set", "backend=baseline_last_sentence")
    verifier = ServiceProcess("verifier", kafka_bootstrap, group, f".{unique}", "--set", "max_batch=4")
    try:
        groups = medec_groups(medec_path, unique, 120)

        def publish_steadily() -> None:  # traffic keeps flowing before, during and after the SIGTERM
            producer = kafka.producer()
            for g in groups:
                producer.publish(ROLLOUTS_GENERATED + f".{unique}", g.SerializeToString(), key=g.group_id)
                producer.flush()
                time.sleep(0.03)

        publisher = threading.Thread(target=publish_steadily)
        publisher.start()
        time.sleep(1.5)
        assert verifier.terminate() == 0, "SIGTERM must end in a clean shutdown"
        processed_before = verifier.processed_at_shutdown()
        assert 0 < processed_before < len(groups), "the SIGTERM must land in the middle of the traffic"
        verifier = ServiceProcess("verifier", kafka_bootstrap, group, f".{unique}", "--set", "max_batch=4")
        publisher.join()
        scored = collect_scored(kafka, f"reader-{unique}", f".{unique}", {g.group_id for g in groups})
        missing = {g.group_id for g in groups} - set(scored)
        assert not missing, f"{len(missing)} groups lost across the SIGTERM"
        for g in groups:
            assert_scored_consistently(scored[g.group_id], g)
    finally:
        verifier.kill()
        assessor.kill()
