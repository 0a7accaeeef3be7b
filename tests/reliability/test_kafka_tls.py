"""Kafka over mutual TLS, as Strimzi's TLS listener with KafkaUser certificates (issue 12): a real
broker with an SSL listener that requires client certificates. A service's bus configured from its
settings (kafka_security_protocol=SSL, CA, certificate, key) produces and consumes; a client without a
certificate, or with one another CA signed, gets a BusError that says it could not connect, never a
message."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from medserl.v1 import messages_pb2 as pb
from services.common.bus import BusError
from tests.conftest import IN_CI


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _signed(d: Path, name: str, ca: str, san: str | None = None) -> None:
    """``name``.pem signed by ``ca``, its key as unencrypted PKCS#8 (what Kafka's PEM keystore reads)."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.rsa",
             "-out", f"{name}.csr", cwd=d)
    _openssl("pkcs8", "-topk8", "-nocrypt", "-in", f"{name}.rsa", "-out", f"{name}.key", cwd=d)
    extra = ["-extfile", f"{name}.ext"] if san else []
    if san:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("openssl is needed for the Kafka TLS test")
        pytest.skip("openssl not installed")
    from medserl_cli.kafka_local import BrokerError, LocalKafka

    d = tmp_path_factory.mktemp("pki")
    _ca(d, "cluster-ca")
    _ca(d, "other-ca")
    _signed(d, "broker", "cluster-ca", san="IP:127.0.0.1,DNS:localhost")
    _signed(d, "verifier", "cluster-ca")
    _signed(d, "intruder", "other-ca")
    (d / "broker-keystore.pem").write_text((d / "broker.key").read_text() + (d / "broker.pem").read_text())
    broker = LocalKafka(tls={"keystore": str(d / "broker-keystore.pem"), "truststore": str(d / "cluster-ca.pem")})
    try:
        broker.start()
    except BrokerError as exc:
        if IN_CI:
            pytest.fail(f"the TLS broker did not come up: {exc}")
        pytest.skip(f"no Kafka broker: {exc}")
    yield SimpleNamespace(broker=broker, pki=d)
    broker.cleanup()


def _bus(tls_broker, cert: str | None, ca: str = "cluster-ca"):
    from services.common.kafka_bus import KafkaBus, kafka_security

    d = tls_broker.pki
    settings = SimpleNamespace(kafka_security_protocol="SSL", kafka_ssl_cafile=str(d / f"{ca}.pem"),
                               kafka_ssl_certfile=str(d / f"{cert}.pem") if cert else "",
                               kafka_ssl_keyfile=str(d / f"{cert}.key") if cert else "")
    return KafkaBus(tls_broker.broker.tls_bootstrap, client_id=cert or "anonymous", connect_timeout_s=8,
                    request_timeout_ms=6000, security=kafka_security(settings))


@pytest.mark.kafka
def test_a_service_with_its_certificate_produces_and_consumes_over_mutual_tls(tls_broker, unique):
    bus = _bus(tls_broker, "verifier")
    topic = f"tls-{unique}"
    bus.ensure_topics([topic])
    producer = bus.producer()
    producer.publish(topic, pb.Note(note_id="n1", text="0 Fever.").SerializeToString(), key="n1")
    producer.flush()
    consumer = bus.consumer([topic], f"g-{unique}")
    got = []
    for _ in range(60):
        got.extend(consumer.poll(0.5, 10))
        if got:
            break
    consumer.commit(got)
    consumer.close()
    producer.close()
    bus.close()
    assert [pb.Note.FromString(r.value).note_id for r in got] == ["n1"]


@pytest.mark.kafka
@pytest.mark.parametrize("cert", [None, "intruder"], ids=["no-certificate", "certificate-of-another-ca"])
def test_a_client_without_a_certificate_the_cluster_ca_signed_is_refused(tls_broker, unique, cert):
    bus = _bus(tls_broker, cert)
    with pytest.raises(BusError) as refused:
        bus.ensure_topics([f"tls-refused-{unique}"])
    message = str(refused.value)
    assert tls_broker.broker.tls_bootstrap in message and "no SSL session came up" in message, message
    assert "kafka_ssl_certfile" in message, "the error names what to fix"
    bus.close()
