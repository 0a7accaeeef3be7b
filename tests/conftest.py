"""Shared fixtures. A real Kafka broker for the session: KAFKA_BOOTSTRAP_SERVERS if set, else one we
start (Maven Central jars + Java 17, or docker). Under CI a broker that does not come up fails the
run; it is never a skip there."""

from __future__ import annotations

import os
import uuid
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
