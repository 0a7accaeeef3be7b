"""Shared fixtures. A real Kafka broker for the session: KAFKA_BOOTSTRAP_SERVERS if set, else one we
start (Maven Central jars + Java 17, or docker). Under CI a broker that does not come up fails the
run; it is never a skip there."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def medec_dir() -> Path | None:
    for candidate in (os.environ.get("MEDSERL_MEDEC_DIR"), ROOT.parent / "shared" / "medec"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def medec_path() -> Path:
    path = medec_dir()
    if path is None:
        if IN_CI:
            pytest.fail("MEDEC data not found: set MEDSERL_MEDEC_DIR or put it at ../shared/medec")
        pytest.skip("MEDEC data not found (MEDSERL_MEDEC_DIR)")
    return path


class _ExternalBroker:
    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap

    def restart(self, down_s: float = 2.0) -> None:
        pytest.skip("cannot restart an external broker")

    def cleanup(self) -> None:
        pass


@pytest.fixture(scope="session")
def kafka_broker():
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield _ExternalBroker(external)
        return
    from medserl_cli.kafka_local import BrokerError, start_broker

    try:
        broker = start_broker()
    except BrokerError as exc:
        if IN_CI:
            pytest.exit(f"Kafka broker did not come up under CI: {exc}", returncode=3)
        pytest.skip(f"no Kafka broker: {exc}")
    try:
        yield broker
    finally:
        broker.cleanup()
        # clients some tests leave open keep reconnecting from their background threads until the
        # interpreter exits; with the broker gone that is only noise on a closed capture stream
        import logging

        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        logging.raiseExceptions = False


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def unique() -> str:
    """A suffix for topic and group names so tests never see each other's messages."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-architecture model, built once per session (MEDEC validation notes when the
    data is here, else the demo set) so model tests run offline."""
    from trainer.tiny_model import build_tiny_model, medec_texts

    data = medec_dir()
    texts = medec_texts(data) if data is not None else None
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), texts=texts, seed=0)


# ---------------------------------------------------------------------------------------------
# ``medserl run`` at smoke size, once per session


SMOKE_SECRETS = {"OPENAI_API_KEY": "sk-proj-smokeRunFakeKey0123456789abcdefXYZ",
                 "MEDSERL_GRPC_TOKENS": "smoke:smoke-run-grpc-token-0123456789abcdef"}


@dataclass
class SmokeRun:
    out: Path  # the run folder (report.md, summary.json, data, models)
    results: dict  # what run_pipeline returned
    log_file: Path  # everything logged during the run, DEBUG and up, in the services' JSON format
    printed: Path  # everything printed to stdout and stderr
    metrics: Path  # the Prometheus exposition after the run
    secrets: tuple[str, ...]  # the fake key and token that were in the environment


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """The embedded pipeline on the bundled demo set at smoke size, run once per session with a fake
    OpenAI key and a fake gRPC token in the environment: tests/test_pipeline.py checks what it made,
    tests/reliability/test_secrets_scan.py what it leaked."""
    import contextlib
    import logging

    from prometheus_client import REGISTRY, generate_latest

    from medserl_cli.pipeline import PipelineConfig, run_pipeline
    from services.common.logs import JsonFormatter, RedactFilter

    root = tmp_path_factory.mktemp("smoke")
    out, log_file, printed, metrics = root / "run", root / "run.log", root / "printed.txt", root / "metrics.txt"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.addFilter(RedactFilter(log_phi=False))  # what `medserl serve` / `medserl run` install
    handler.setFormatter(JsonFormatter("smoke"))  # every extra field, not just the message
    logger = logging.getLogger()
    level = logger.level
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MEDSERL_MEDEC_DIR", raising=False)
        for name, value in SMOKE_SECRETS.items():
            patch.setenv(name, value)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            with printed.open("w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink), \
                    contextlib.redirect_stderr(sink):
                results = run_pipeline(PipelineConfig(out=str(out), sft_pairs=4, sft_epochs=1, rl_seed_notes=2,
                                                      rl_updates=1, rl_rollouts_per_update=4, rl_group_size=2,
                                                      rl_max_new_tokens=24, eval_notes=3, eval_max_new_tokens=24,
                                                      progress=False))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            handler.close()
    metrics.write_bytes(generate_latest(REGISTRY))
    return SmokeRun(out, results, log_file, printed, metrics, tuple(SMOKE_SECRETS.values()))
