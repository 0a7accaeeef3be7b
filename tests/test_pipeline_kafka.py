"""The distributed pipeline as a product (issue 11), through the real ``medserl`` command.

* ``medserl up`` starts a broker of its own and each service as a process, ``status`` shows them
  healthy, ``client`` talks to them over gRPC, ``down`` stops them all, the Java broker included.
* The whole RL loop (verifier, assessor, injector on the tiny model, learner) runs distributed
  over the real broker from ``up`` and seeds submitted with ``client submit-seeds``.
* Killing the ``make kafka`` wrapper, even with kill -9, stops the Java broker.
* ``deadletter list`` shows letters without their payloads; ``replay`` puts each back once.
* An unreachable broker, ``--bus kafka`` without an address, a port in use: one line, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medserl.v1 import messages_pb2 as pb
from medserl_cli.commands.up import BROKER_MARKER, process_alive
from tests.conftest import ROOT


def medserl(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDSERL_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    clean.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "medserl_cli", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, services: dict, **top) -> Path:
    import yaml

    settings = {"grpc_port": 0, "metrics_port": 0, "poll_timeout_s": 0.2, **top.pop("settings", {})}
    path.write_text(yaml.safe_dump({"settings": settings, "services": services, **top}))
    return path


def note_file(tmp_path: Path) -> Path:
    path = tmp_path / "note.txt"
    path.write_text("0 A 54-year-old woman presents with fever and cough.\n1 Chest X-ray shows a right lower lobe "
                    "infiltrate.\n2 She is started on amoxicillin 500 mg three times daily.\n")
    return path


# ---------------------------------------------------------------------------------------------------
# up / status / client / down


@pytest.mark.kafka
def test_up_starts_a_broker_and_services_that_status_client_and_down_see(tmp_path):
    state = tmp_path / "state"
    config = write_config(tmp_path / "up.yaml", {"verifier": {}, "assessor": {"backend": "baseline_last_sentence"}})
    port = free_port()
    up = medserl("up", "--config", str(config), "--kafka-port", str(port), "--state-dir", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        saved = json.loads((state / "up.json").read_text())
        assert saved["bootstrap"] == f"127.0.0.1:{port}" and saved["broker"]["kind"] == "java"
        broker_pid = saved["broker"]["pid"]
        assert process_alive(broker_pid, BROKER_MARKER)
        for name in ("verifier", "assessor"):
            entry = saved["services"][name]
            assert f"127.0.0.1:{entry['grpc_port']}" in up.stdout and entry["log"] in up.stdout
        status = medserl("status", "--state-dir", str(state), "--json", "--interval", "0.2")
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert {r["service"]: r["health"] for r in report["services"]} == {"verifier": "SERVING", "assessor": "SERVING"}
        assert report["broker"]["alive"] is True
        groups = {g["group"] for g in report["groups"]}
        assert {"medserl-assessor", "medserl-verifier-rollouts"} <= groups
        target = f"127.0.0.1:{saved['services']['assessor']['grpc_port']}"
        assess = medserl("client", "assess", "--file", str(note_file(tmp_path)), "--target", target)
        assert assess.returncode == 0, assess.stderr
        # the last-sentence baseline flags sentence 2; the MEDEC run-file line follows the verdict
        assert "error in sentence 2" in assess.stdout and assess.stdout.strip().endswith("note 1 2 NA")
        client_status = medserl("client", "status", "--target", target)
        assert client_status.returncode == 0 and "medserl.v1.Assessor: SERVING" in client_status.stdout
        again = medserl("up", "--config", str(config), "--kafka-port", str(free_port()), "--state-dir", str(state))
        assert "already up" in one_error_line(again)
    finally:
        down = medserl("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "verifier: stopped" in down.stdout and "assessor: stopped" in down.stdout and "kafka: stopped" in down.stdout
    assert not process_alive(broker_pid, BROKER_MARKER), "down stops the broker's Java process"
    assert not (state / "up.json").exists()
    assert "nothing is up" in one_error_line(medserl("status", "--state-dir", str(state)))


@pytest.mark.kafka
def test_the_rl_loop_runs_distributed_from_up_and_client_submit_seeds(tmp_path, kafka_bootstrap, tiny_model_dir, unique):
    state = tmp_path / "state"
    model = str(tiny_model_dir)
    services = {
        "verifier": {},
        "assessor": {"backend": "baseline_last_sentence"},
        "trainer": {"model": model, "lora": False, "device": "cpu", "checkpoint_dir": str(tmp_path / "rl"),
                    "rollouts_per_update": 8, "micro_batch_size": 8, "max_staleness": 1, "starve_after_s": 10},
        "injector": {"backend": "transformers", "model": model, "group_size": 4, "max_batch": 2,
                     "max_new_tokens": 24, "learner_batch_rollouts": 8, "max_staleness": 1},
    }
    config = write_config(tmp_path / "rl.yaml", services, settings={"topic_suffix": f".{unique}"})
    up = medserl("up", "--config", str(config), "--kafka-bootstrap", kafka_bootstrap, "--state-dir", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    saved = json.loads((state / "up.json").read_text())
    assert saved["broker"] is None, "an existing broker is used, not started"
    injector = f"127.0.0.1:{saved['services']['injector']['grpc_port']}"
    trainer = f"127.0.0.1:{saved['services']['trainer']['grpc_port']}"
    try:
        submitted = medserl("client", "submit-seeds", "--demo", "--limit", "6", "--target", injector)
        assert submitted.returncode == 0 and "6 seed notes accepted" in submitted.stdout, submitted.stderr
        deadline = time.monotonic() + 240
        version = 0
        while version < 1 and time.monotonic() < deadline:  # the learner's own answer, over gRPC
            status = medserl("client", "status", "--target", trainer)
            assert status.returncode == 0, status.stderr
            version = int(status.stdout.split("policy version ")[1].split(",")[0])
        assert version >= 1, "the learner trained a version on rollouts that went through every service"
        report = json.loads(medserl("status", "--state-dir", str(state), "--json", "--interval", "0.2").stdout)
        rows = {r["service"]: r for r in report["services"]}
        assert all(r["health"] == "SERVING" for r in rows.values())
        assert rows["trainer"]["policy_version"] >= 1
        assert all(g["group"].startswith("medserl-") for g in report["groups"])
        inject = medserl("client", "inject", "--file", str(note_file(tmp_path)), "--mode", "inject", "--n", "2",
                         "--target", injector)
        assert inject.returncode == 0, inject.stderr
        assert len([line for line in inject.stdout.splitlines() if line.strip()]) == 2
    finally:
        down = medserl("down", "--state-dir", str(state))
    assert down.returncode == 0 and down.stdout.count(": stopped") == 4, down.stdout + down.stderr


# ---------------------------------------------------------------------------------------------------
# the broker wrapper


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.kafka
@pytest.mark.skipif(not Path("/proc").exists(), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_kill_9_of_the_broker_wrapper_stops_the_java_broker(tmp_path):
    wrapper = subprocess.Popen([sys.executable, "-m", "medserl_cli.kafka_local", "start", "--port", "0",
                                "--data", str(tmp_path / "kafka")], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = wrapper.stdout.readline()
        assert line.startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:"), wrapper.stderr.read()[-2000:]
        (java,) = [p for p in _children(wrapper.pid) if process_alive(p, BROKER_MARKER)]
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait(10)
        deadline = time.monotonic() + 60
        while process_alive(java, BROKER_MARKER) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process_alive(java, BROKER_MARKER), "the Java broker outlived its wrapper"
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


def test_the_local_broker_is_configured_without_an_fsync_per_message(tmp_path):
    from medserl_cli.kafka_local import DEFAULT_PORT, LocalKafka

    properties = LocalKafka(workdir=tmp_path, port=DEFAULT_PORT)._properties().read_text()
    assert "log.flush.interval" not in properties, "flushing is left to the OS, as on production brokers"
    assert f"PLAINTEXT://127.0.0.1:{DEFAULT_PORT}" in properties and DEFAULT_PORT == 9092


# ---------------------------------------------------------------------------------------------------
# dead letters


@pytest.mark.kafka
def test_deadletter_list_hides_payloads_and_replay_puts_each_letter_back_once(kafka_bootstrap, unique):
    from medserl_cli.commands.deadletter import read_topic
    from services.common.kafka_bus import KafkaBus

    suffix = f".{unique}"
    bus = KafkaBus(kafka_bootstrap)
    bus.ensure_topics([f"deadletter{suffix}", f"notes.seed{suffix}", f"rollouts.generated{suffix}"])
    # by default a dead letter copies nothing of its message (no note text on the topic): replay reads
    # the original back from its source offset
    third = pb.RolloutGroup(group_id="seed-3~def", seed_note_id="seed-3",
                            seed_note=pb.Note(note_id="seed-3", text="SECRET-THIRD-TEXT one. two."))
    producer = bus.producer()
    producer.publish(f"rollouts.generated{suffix}", third.SerializeToString(), key=third.group_id)
    producer.flush()
    (at,) = read_topic(bus, f"rollouts.generated{suffix}")
    seed = pb.Note(note_id="seed-1", text="SECRET-NOTE-TEXT one. two.")
    group = pb.RolloutGroup(group_id="seed-2~abc", seed_note_id="seed-2", seed_note=pb.Note(note_id="seed-2",
                            text="SECRET-GROUP-TEXT one. two."), rollouts=[pb.Rollout(rollout_id="seed-2~abc-0")])
    letters = [
        pb.DeadLetter(source_topic=f"notes.seed{suffix}", source_offset=7, key=b"seed-1", payload=seed.SerializeToString(),
                      reason="model server down", error_class="InferenceError", service="injector", attempts=9),
        pb.DeadLetter(source_topic=f"rollouts.verified{suffix}", payload=group.SerializeToString(), reason="boom",
                      error_class="RuntimeError", service="assessor", attempts=3),
        pb.DeadLetter(source_topic=f"sft.verified{suffix}", payload=b"x", reason="not pipeline work",
                      error_class="DecodeError", service="generator"),
        pb.DeadLetter(source_topic=f"rollouts.generated{suffix}", source_partition=at.partition,
                      source_offset=at.offset, key=b"seed-3~def", reason="boom", error_class="RuntimeError",
                      service="verifier", attempts=3),
        pb.DeadLetter(source_topic=f"rollouts.generated{suffix}", source_partition=at.partition,
                      source_offset=at.offset + 50, key=b"gone", reason="past retention", error_class="RuntimeError",
                      service="verifier", attempts=3),
    ]
    for letter in letters:
        producer.publish(f"deadletter{suffix}", letter.SerializeToString(), key=letter.key)
    producer.flush()
    common = ("--kafka-bootstrap", kafka_bootstrap, "--topic-suffix", suffix)
    listed = medserl("deadletter", "list", *common)
    assert listed.returncode == 0, listed.stderr
    assert "5 dead letters" in listed.stdout and "InferenceError" in listed.stdout and "model server down" in listed.stdout
    assert "SECRET" not in listed.stdout, "a payload may be a clinical note: never printed"
    only = medserl("deadletter", "list", *common, "--service", "injector", "--json")
    assert [json.loads(line)["attempts"] for line in only.stdout.splitlines()] == [9]
    replay = medserl("deadletter", "replay", *common)
    assert replay.returncode == 0, replay.stderr
    assert "3 replayed" in replay.stdout and "2 with nothing to redo" in replay.stdout
    seeds = [pb.Note.FromString(r.value) for r in read_topic(bus, f"notes.seed{suffix}")]
    assert sorted(n.note_id for n in seeds) == ["seed-1", "seed-2", "seed-3"], \
        "a seed as it was; a group as its seed note, also one read back from its source offset"
    again = medserl("deadletter", "replay", *common)
    assert "0 replayed, 3 replayed before" in again.stdout
    assert len(read_topic(bus, f"notes.seed{suffix}")) == 3, "each letter is replayed once"
    assert "(replayed)" in medserl("deadletter", "list", *common).stdout
    producer.close()
    bus.close()


# ---------------------------------------------------------------------------------------------------
# one line instead of a traceback


def test_bus_kafka_without_an_address_says_how_to_give_one():
    line = one_error_line(medserl("serve", "verifier", "--bus", "kafka", "--metrics-port", "-1", "--grpc-port", "0"))
    assert "--bus kafka needs a broker address" in line and "--kafka-bootstrap HOST:PORT" in line and "make kafka" in line


def test_an_unreachable_broker_names_the_address_and_how_to_start_one():
    address = f"127.0.0.1:{free_port()}"
    line = one_error_line(medserl("serve", "verifier", "--bus", "kafka", "--kafka-bootstrap", address,
                                  "--metrics-port", "-1", "--grpc-port", "0"))
    assert f"cannot reach Kafka at {address}" in line and "make kafka" in line and "medserl up" in line


def test_a_port_in_use_names_the_flag():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = one_error_line(medserl("serve", "verifier", "--grpc-port", str(port), "--metrics-port", "-1"))
        assert f"port {port} (--grpc-port) is already in use" in line
        line = one_error_line(medserl("serve", "verifier", "--grpc-port", "0", "--metrics-port", str(port),
                                      "--set", "metrics_host=127.0.0.1"))
        assert f"port {port} (--metrics-port) is already in use" in line
        line = one_error_line(medserl("up", "--config", "configs/up/cpu.yaml", "--kafka-port", str(port),
                                      "--state-dir", "/nonexistent-medserl-state"))
        assert f"127.0.0.1:{port} is already in use" in line and "--kafka-bootstrap" in line


def test_client_and_down_with_nothing_there_say_so(tmp_path):
    line = one_error_line(medserl("client", "assess", "--file", str(note_file(tmp_path)), "--target",
                                  f"127.0.0.1:{free_port()}", "--deadline", "5"), code=3)
    assert "nothing answers at" in line
    assert "nothing to stop" in one_error_line(medserl("down", "--state-dir", str(tmp_path / "none")))
