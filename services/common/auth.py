"""Who may talk to a service: bus messages signed per producer, gRPC callers with tokens or certificates.

Bus messages (issue 12: anyone who could write ``rollouts.scored`` could forge rewards, anyone who could
write ``policy.updates`` could make the injector load their LoRA). Every message a service publishes
carries three headers: ``medserl-producer`` (the service), ``medserl-type`` (the protobuf type its topic
holds) and ``medserl-sig``, an HMAC-SHA256 over producer, topic, type, key and value with the producer's
own key. A consumer accepts a message on a topic only from the services that write that topic
(``TOPIC_PRODUCERS``) and only with a valid signature. Keys come from ``message_keys_dir/<service>.key``
(a mounted Secret) or ``$MEDSERL_MESSAGE_KEY_<SERVICE>``, never from a flag; a service holds its own key
and the keys of the producers it reads. A file may hold several keys, one a line: the first signs, any
verifies (rotation). ``message_auth``: ``auto`` signs when the service has its key and verifies a topic
once it holds a key of that topic's producers (an unsigned or foreign message is then refused), so the
embedded mode needs no keys; ``required`` refuses every unsigned message and a start without keys;
``off`` turns both off.

gRPC: bearer tokens (``authorization: Bearer <token>`` metadata) from ``grpc_tokens_file`` (one
``caller:token`` or ``token`` a line) or ``$MEDSERL_GRPC_TOKENS`` (comma-separated), TLS with optional
client certificates. The checks themselves are in ``services.common.guard``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common import metrics, topics
from services.common.bus import DEFAULT_PARTITIONS, Bus, Consumer, Producer, Record

log = logging.getLogger(__name__)

HEADER_PRODUCER = "medserl-producer"
HEADER_TYPE = "medserl-type"
HEADER_SIGNATURE = "medserl-sig"
MIN_KEY_BYTES = 16
SERVICES = ("generator", "verifier", "injector", "assessor", "trainer")

# The protobuf each topic carries and the services that may write it (``seeder``: an operator's key
# for publishing seed notes straight to the topic, beside the injector's SubmitSeeds).
TOPIC_TYPES: dict[str, str] = {
    topics.SFT_VERIFIED: "medserl.v1.SftExample",
    topics.SFT_REJECTED: "medserl.v1.SftExample",
    topics.NOTES_SEED: "medserl.v1.Note",
    topics.ROLLOUTS_GENERATED: "medserl.v1.RolloutGroup",
    topics.ROLLOUTS_VERIFIED: "medserl.v1.RolloutGroup",
    topics.ROLLOUTS_SCORED: "medserl.v1.RolloutGroup",
    topics.POLICY_UPDATES: "medserl.v1.PolicyUpdate",
    topics.DEAD_LETTER: "medserl.v1.DeadLetter",
}
TOPIC_PRODUCERS: dict[str, tuple[str, ...]] = {
    topics.SFT_VERIFIED: ("generator",),
    topics.SFT_REJECTED: ("generator",),
    topics.NOTES_SEED: ("injector", "seeder"),
    topics.ROLLOUTS_GENERATED: ("injector",),
    topics.ROLLOUTS_VERIFIED: ("verifier",),
    topics.ROLLOUTS_SCORED: ("assessor",),
    topics.POLICY_UPDATES: ("trainer",),
    topics.DEAD_LETTER: SERVICES,
}


class AuthConfigError(ValueError):
    """Keys or tokens are missing or malformed; the message names the file or variable, never a value."""


def base_topic(topic: str, suffix: str = "") -> str:
    """The topic of services.common.topics a deployment's (suffixed) topic name stands for."""
    return topic[: -len(suffix)] if suffix and topic.endswith(suffix) else topic


def _key_lines(text: str, where: str) -> list[bytes]:
    keys = [line.strip().encode() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for key in keys:
        if len(key) < MIN_KEY_BYTES:
            raise AuthConfigError(f"{where}: a message key must have at least {MIN_KEY_BYTES} bytes "
                                  "(e.g. `openssl rand -hex 32`)")
    return keys


def load_message_keys(keys_dir: str = "", env: Mapping[str, str] | None = None) -> dict[str, list[bytes]]:
    """Keys by producer: ``<keys_dir>/<producer>.key`` files, then ``$MEDSERL_MESSAGE_KEY_<PRODUCER>``."""
    env = os.environ if env is None else env
    keys: dict[str, list[bytes]] = {}
    if keys_dir:
        folder = Path(keys_dir)
        if not folder.is_dir():
            raise AuthConfigError(f"message_keys_dir {keys_dir} is not a directory")
        for path in sorted(folder.glob("*.key")):
            found = _key_lines(path.read_text(), str(path))
            if found:
                keys[path.stem] = found
    for name, value in env.items():
        if name.startswith("MEDSERL_MESSAGE_KEY_") and value.strip():
            producer = name.removeprefix("MEDSERL_MESSAGE_KEY_").lower()
            keys.setdefault(producer, _key_lines(value.replace(",", "\n"), f"${name}"))
    return keys


def _mac(key: bytes, producer: str, topic: str, type_name: str, msg_key: bytes, value: bytes) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (producer.encode(), topic.encode(), type_name.encode(), msg_key, value):
        mac.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two inputs share a byte string
        mac.update(part)
    return mac.hexdigest()


class MessageAuth:
    """Signs what one service publishes and checks what it reads."""

    def __init__(self, service: str, keys: dict[str, list[bytes]], mode: str = "auto", topic_suffix: str = ""):
        if mode not in ("auto", "required", "off"):
            raise AuthConfigError(f"message_auth must be auto, required or off, got {mode!r}")
        self.service = service
        self.keys = keys
        self.mode = mode
        self.topic_suffix = topic_suffix
        if mode == "required" and service not in keys:
            raise AuthConfigError(f"message_auth=required but {service} has no key: put it in "
                                  f"message_keys_dir/{service}.key or $MEDSERL_MESSAGE_KEY_{service.upper()}")

    @property
    def signs(self) -> bool:
        return self.mode != "off" and self.service in self.keys

    def headers(self, topic: str, value: bytes, key: bytes | None) -> list[tuple[str, bytes]]:
        """The producer, type and signature headers of one message (none without a key)."""
        if not self.signs:
            return []
        type_name = TOPIC_TYPES.get(base_topic(topic, self.topic_suffix), "")
        signature = _mac(self.keys[self.service][0], self.service, topic, type_name, key or b"", value)
        return [(HEADER_PRODUCER, self.service.encode()), (HEADER_TYPE, type_name.encode()),
                (HEADER_SIGNATURE, signature.encode())]

    def enforced(self, topic: str) -> bool:
        """Is a signature required on ``topic``? (``auto``: once a key of one of its producers is held.)"""
        if self.mode == "off":
            return False
        if self.mode == "required":
            return True
        producers = TOPIC_PRODUCERS.get(base_topic(topic, self.topic_suffix), ())
        return any(p in self.keys for p in producers)

    def check(self, record: Record, expected_type: str = "") -> str:
        """Why ``record`` must be refused ('' when it may be read): wrong type, unsigned, a producer
        that does not write this topic, or a bad signature. The reason never quotes the payload."""
        headers = {}
        for name, value in record.headers or ():
            headers.setdefault(name, value)
        type_name = (headers.get(HEADER_TYPE) or b"").decode("utf-8", "replace")
        if type_name and expected_type and type_name != expected_type:
            return self._refuse(record, "wrong_type", f"message of type {type_name[:100]} on a topic of "
                                                      f"{expected_type}")
        if not self.enforced(record.topic):
            return ""
        producer = (headers.get(HEADER_PRODUCER) or b"").decode("utf-8", "replace")
        signature = (headers.get(HEADER_SIGNATURE) or b"").decode("utf-8", "replace")
        if not producer or not signature:
            return self._refuse(record, "unsigned", "unsigned message (no medserl-producer/medserl-sig header)")
        allowed = TOPIC_PRODUCERS.get(base_topic(record.topic, self.topic_suffix), ())
        if producer not in allowed:
            return self._refuse(record, "producer", f"producer {producer[:40]!r} does not write this topic "
                                                    f"(only {', '.join(allowed)})")
        keys = self.keys.get(producer)
        if not keys:
            return self._refuse(record, "no_key", f"no key to verify messages from {producer}")
        expected = [_mac(k, producer, record.topic, type_name, record.key or b"", record.value) for k in keys]
        if not any(hmac.compare_digest(e, signature) for e in expected):
            return self._refuse(record, "signature", f"bad signature for a message from {producer}")
        return ""

    def _refuse(self, record: Record, kind: str, reason: str) -> str:
        metrics.AUTH_REFUSED.labels(self.service, "bus", kind).inc()
        return f"unauthenticated: {reason}"


def message_auth_for(service: str, settings) -> MessageAuth | None:
    """The MessageAuth a service's settings ask for; None when nothing is signed or verified."""
    mode = getattr(settings, "message_auth", "auto")
    if mode == "off":
        return None
    keys = load_message_keys(getattr(settings, "message_keys_dir", ""))
    if not keys and mode == "auto":
        return None
    return MessageAuth(service, keys, mode, getattr(settings, "topic_suffix", ""))


class SecureBus(Bus):
    """A view of a bus whose producers sign as one service; consumers are the bus's own (the stream
    worker and the learner check each record with ``message_auth``)."""

    def __init__(self, inner: Bus, auth: MessageAuth):
        self.inner = inner
        self.message_auth = auth
        self.kind = inner.kind

    def producer(self) -> Producer:
        return _SigningProducer(self.inner.producer(), self.message_auth)

    def consumer(self, topics_: Sequence[str], group_id: str, client_id: str | None = None) -> Consumer:
        return self.inner.consumer(topics_, group_id, client_id)

    def ensure_topics(self, topics_, partitions=DEFAULT_PARTITIONS) -> None:
        self.inner.ensure_topics(topics_, partitions)

    def end_offsets(self, topic: str) -> list[int]:
        return self.inner.end_offsets(topic)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):  # set_available, bootstrap_servers, max_message_bytes, ...
        return getattr(self.inner, name)


class _SigningProducer(Producer):
    def __init__(self, inner: Producer, auth: MessageAuth):
        self.inner = inner
        self.auth = auth

    def publish(self, topic, value, key=None, headers=()):
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        signed = [h for h in headers if h[0] not in (HEADER_PRODUCER, HEADER_TYPE, HEADER_SIGNATURE)]
        signed += self.auth.headers(topic, bytes(value) if isinstance(value, bytearray) else value, raw_key)
        self.inner.publish(topic, value, key=key, headers=signed)

    def flush(self, timeout_s=None):
        self.inner.flush(timeout_s)

    def close(self):
        self.inner.close()


def secure_bus(bus: Bus, service: str, settings) -> Bus:
    """``bus`` as ``service`` sees it: signing and checking when keys are configured, else unchanged."""
    if isinstance(bus, SecureBus):
        bus = bus.inner
    auth = message_auth_for(service, settings)
    return bus if auth is None else SecureBus(bus, auth)


def bus_auth(bus: Bus) -> MessageAuth | None:
    return getattr(bus, "message_auth", None) if isinstance(bus, SecureBus) else None


_KEY_PATTERN = re.compile(r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{12,}|Bearer\s+[A-Za-z0-9._~+/=-]{12,})")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without API keys or bearer tokens: the given secrets, $OPENAI_API_KEY and anything shaped
    like a key (an upstream 401 body echoes the key it refused; issue 12)."""
    if not text:
        return text
    known = [v for v in (*secrets, os.environ.get("OPENAI_API_KEY", "")) if v and len(v) >= 8]
    for secret in known:
        text = text.replace(secret, "<redacted>")
    return _KEY_PATTERN.sub("<redacted>", text)


# ---------------------------------------------------------------------------------------------
# gRPC callers


@dataclass(frozen=True)
class Caller:
    """Who made a gRPC call: a token's caller name, a certificate's subject, or an anonymous peer."""

    name: str
    authenticated: bool
    via: str  # token | certificate | anonymous


def load_tokens(tokens_file: str = "", env: Mapping[str, str] | None = None) -> dict[str, str]:
    """sha256(token) -> caller name, from the file (``caller:token`` or ``token`` a line) and
    ``$MEDSERL_GRPC_TOKENS``. Only digests are kept, so a token never sits in memory dumps or reprs."""
    env = os.environ if env is None else env
    lines: list[tuple[str, str]] = []
    if tokens_file:
        path = Path(tokens_file)
        if not path.is_file():
            raise AuthConfigError(f"grpc_tokens_file {tokens_file} does not exist")
        lines += [(line, str(path)) for line in path.read_text().splitlines()]
    if env.get("MEDSERL_GRPC_TOKENS"):
        lines += [(item, "$MEDSERL_GRPC_TOKENS") for item in env["MEDSERL_GRPC_TOKENS"].split(",")]
    tokens: dict[str, str] = {}
    for n, (line, where) in enumerate(lines):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = f"caller-{n}", line
        token = token.strip()
        if len(token) < MIN_KEY_BYTES:
            raise AuthConfigError(f"{where}: a gRPC token must have at least {MIN_KEY_BYTES} characters")
        tokens[hashlib.sha256(token.encode()).hexdigest()] = name.strip() or f"caller-{n}"
    return tokens


def token_caller(tokens: Mapping[str, str], metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The caller a request's ``authorization: Bearer`` token names; None when absent or unknown."""
    for name, value in metadata or ():
        if name.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, caller in tokens.items():
            if hmac.compare_digest(known, digest):
                return caller
        return None
    return None


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str = ""):
    """TLS for a gRPC server; with ``client_ca`` clients must present a certificate it signed."""
    import grpc

    if bool(cert) != bool(key):
        raise AuthConfigError("grpc_tls_cert and grpc_tls_key go together")
    pair = [(_read(key, "grpc_tls_key"), _read(cert, "grpc_tls_cert"))]
    if client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=_read(client_ca, "grpc_tls_client_ca"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def channel(target: str, *, ca: str = "", cert: str = "", key: str = "", token: str = "", options=()):
    """A gRPC channel to a MedSeRL service: TLS when ``ca`` is given (a client certificate with
    ``cert``/``key``), the bearer ``token`` on every call. Plaintext only without ``ca``."""
    import grpc

    if not ca:
        ch = grpc.insecure_channel(target, options=list(options))
        return grpc.intercept_channel(ch, _TokenInterceptor(token)) if token else ch
    creds = grpc.ssl_channel_credentials(root_certificates=_read(ca, "CA"),
                                         private_key=_read(key, "client key") if key else None,
                                         certificate_chain=_read(cert, "client certificate") if cert else None)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target, creds, options=list(options))


def _token_interceptor_base():
    import grpc

    return (grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
            grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor)


class _TokenInterceptor(*_token_interceptor_base()):
    """Adds the bearer token to a plaintext channel (loopback tests; gRPC refuses call credentials there)."""

    def __init__(self, token: str):
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        import grpc

        class _Details(grpc.ClientCallDetails):
            pass

        new = _Details()
        new.method, new.timeout, new.credentials = details.method, details.timeout, details.credentials
        new.metadata = [*(details.metadata or ()), self._metadata]
        new.wait_for_ready, new.compression = getattr(details, "wait_for_ready", None), getattr(details, "compression", None)
        return new

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)
