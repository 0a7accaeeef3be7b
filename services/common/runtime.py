"""The runtime every service shares: bus, gRPC (health + reflection), /metrics, graceful shutdown.

Access control (issue 12): gRPC and /metrics bind 127.0.0.1 unless told otherwise; a non-loopback
gRPC bind needs callers to authenticate (bearer tokens or client certificates) or an explicit
``grpc_insecure``. TLS when ``grpc_tls_cert``/``grpc_tls_key`` are set (mutual with
``grpc_tls_client_ca``), and then health also on a plaintext ``health_port`` for kubelet probes.
Every call passes ``services.common.guard.CallGuard`` (tokens, a concurrency limit that keeps health
answering, deadlines, status codes); bus messages are signed and checked (``services.common.auth``).

A service is a subclass of :class:`Service`. ``medserl serve <name>`` builds its settings, a bus and
a :class:`ServiceRuntime`, then blocks until SIGTERM/SIGINT. On the signal the runtime:

1. marks gRPC health NOT_SERVING (load balancers stop sending),
2. stops its stream workers after the batch in hand (flushed and committed, or handed back),
3. stops the gRPC server with a grace period for in-flight calls,
4. closes the service (flush producers, close models) and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from abc import ABC
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common import metrics
from services.common.auth import AuthConfigError, load_tokens, secure_bus, server_credentials
from services.common.bus import Bus, MemoryBus
from services.common.guard import CallGuard, GuardConfig
from services.common.settings import ServiceSettings
from services.common.topics import ALL_TOPICS
from services.common.worker import StreamWorker

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
LOOPBACK_HOSTS = ("localhost", "::1", "[::1]", "ip6-localhost")


def grpc_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    limit = int(getattr(settings, "grpc_max_message_bytes", 16 * 1024 * 1024))
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def make_bus(settings: ServiceSettings) -> Bus:
    """The bus the settings name. Switching embedded <-> distributed is configuration, not code."""
    if settings.bus == "memory":
        return MemoryBus()
    if settings.bus == "kafka":
        from services.common.kafka_bus import KafkaBus, kafka_security

        return KafkaBus(settings.kafka_bootstrap, client_id="medserl",
                        replication_factor=settings.kafka_replication_factor,
                        session_timeout_ms=settings.kafka_session_timeout_ms,
                        group_instance_id=settings.kafka_group_instance_id,
                        security=kafka_security(settings), max_message_bytes=settings.max_message_bytes)
    raise ValueError(f"unknown bus {settings.bus!r}: use 'memory' or 'kafka'")


@dataclass
class GrpcBinding:
    """One gRPC service to mount: the generated ``add_*Servicer_to_server`` and its servicer."""

    add_to_server: Callable[[object, grpc.Server], None]
    servicer: object
    full_name: str  # e.g. "medserl.v1.Verifier", used by health and reflection


class Service(ABC):  # noqa: B024 - every hook is optional
    """Base of every MedSeRL service. Override the hooks that apply."""

    name: str = "service"
    settings_cls: type[ServiceSettings] = ServiceSettings

    def __init__(self, settings: ServiceSettings, bus: Bus):
        self.settings = settings
        # this service's view of the bus: what it publishes is signed as it, when keys are configured
        self.bus = secure_bus(bus, self.name, settings)

    def topic(self, name: str) -> str:
        """A topic of services.common.topics in this deployment's namespace (``topic_suffix``)."""
        return f"{name}{self.settings.topic_suffix}"

    def grpc_bindings(self) -> Sequence[GrpcBinding]:
        return ()

    def workers(self) -> Sequence[StreamWorker]:
        return ()

    def topics(self) -> Sequence[str]:
        """Topics to create at start-up (idempotent)."""
        return [self.topic(t) for t in ALL_TOPICS]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, flush producers."""


class ServiceRuntime:
    def __init__(self, service: Service):
        self.service = service
        self.settings = service.settings
        self.stop_event = threading.Event()
        self.server: grpc.Server | None = None
        self.health: health.HealthServicer | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._workers: list[StreamWorker] = []
        self._metrics_server = None
        self._health_server: grpc.Server | None = None
        self.health_port: int | None = None
        self.guard: CallGuard | None = None

    def start(self) -> ServiceRuntime:
        s = self.settings
        name = self.service.name
        credentials, guard = self._access_control()
        if s.metrics_port >= 0:
            self._metrics_server, _thread = start_http_server(s.metrics_port, addr=getattr(s, "metrics_host", "127.0.0.1"))
            self.metrics_port = self._metrics_server.server_port
        if getattr(s, "kafka_create_topics", True):
            self.service.bus.ensure_topics(list(self.service.topics()))
        else:
            self.service.bus.require_topics(list(self.service.topics()))
        bindings = list(self.service.grpc_bindings())
        self.guard = guard
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=s.grpc_workers, thread_name_prefix=f"{name}-grpc"),
                                  options=grpc_options(s), interceptors=[guard])
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for binding in bindings:
            binding.add_to_server(binding.servicer, self.server)
        names = [b.full_name for b in bindings]
        if getattr(s, "grpc_reflection", True):
            reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{s.grpc_host}:{s.grpc_port}"
        if credentials is None:
            self.grpc_port = self.server.add_insecure_port(address)
        else:
            self.grpc_port = self.server.add_secure_port(address, credentials)
        if self.grpc_port == 0:
            raise RuntimeError(f"could not bind gRPC to {s.grpc_host}:{s.grpc_port}")
        self.server.start()
        if getattr(s, "health_port", -1) >= 0:
            # kubelet gRPC probes speak plaintext: health alone, on its own port, when the API is TLS
            self._health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-health"),
                                              options=grpc_options(s))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(f"{s.grpc_host}:{s.health_port}")
            self._health_server.start()
        self._workers = list(self.service.workers())
        for worker in self._workers:
            if isinstance(worker, StreamWorker):
                worker.configure(s)
            worker.start(self.stop_event)
        for full_name in ["", *names]:
            self.health.set(full_name, health_pb2.HealthCheckResponse.SERVING)
        metrics.SERVICE_UP.labels(name).set(1)
        log.info("service started", extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
                                           "bus": self.service.bus.kind, "workers": len(self._workers),
                                           "grpc_tls": credentials is not None, "grpc_tokens": bool(guard.config.tokens)})
        return self

    def _access_control(self) -> tuple[grpc.ServerCredentials | None, CallGuard]:
        """TLS credentials and the call guard the settings ask for; refuses an open, anonymous bind."""
        s = self.settings
        cert, key, client_ca = (getattr(s, f, "") for f in ("grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca"))
        try:
            credentials = server_credentials(cert, key, client_ca) if (cert or key) else None
            tokens = load_tokens(getattr(s, "grpc_tokens_file", ""))
        except AuthConfigError as exc:
            raise RuntimeError(f"{self.service.name}: {exc}") from None
        if client_ca and credentials is None:
            raise RuntimeError(f"{self.service.name}: grpc_tls_client_ca needs grpc_tls_cert and grpc_tls_key")
        authenticated = bool(tokens) or bool(client_ca)
        if not is_loopback(s.grpc_host) and not authenticated and not getattr(s, "grpc_insecure", False):
            raise RuntimeError(
                f"{self.service.name}: refusing to serve gRPC on {s.grpc_host} without authentication: set "
                "grpc_tokens_file (or $MEDSERL_GRPC_TOKENS) and/or grpc_tls_cert+grpc_tls_key+grpc_tls_client_ca, "
                "or grpc_insecure=true when a mesh in front does both")
        if tokens and credentials is None and not is_loopback(s.grpc_host):
            log.warning("bearer tokens over plaintext gRPC: anyone on the path can read them; set grpc_tls_cert")
        limit = int(getattr(s, "grpc_max_concurrent", 0)) or max(1, s.grpc_workers - 2)
        if limit >= s.grpc_workers:
            log.warning("grpc_max_concurrent >= grpc_workers: a flood can delay health checks",
                        extra={"limit": limit, "workers": s.grpc_workers})
        guard = CallGuard(GuardConfig(service=self.service.name, tokens=tokens, client_certificates=bool(client_ca),
                                      max_concurrent=limit, max_call_s=float(getattr(s, "grpc_max_call_s", 3600.0))))
        return credentials, guard

    def install_signal_handlers(self) -> None:
        def _on_signal(signum, _frame):
            log.info("signal received, shutting down", extra={"signal": signal.Signals(signum).name})
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    def wait(self) -> None:
        """Block until a stop is asked for or a worker dies, then shut down cleanly."""
        while not self.stop_event.wait(0.5):
            if any(w.error is not None for w in self._workers):
                log.error("a stream worker failed; stopping the service")
                self.stop_event.set()
        self.shutdown()

    def shutdown(self) -> None:
        self.stop_event.set()
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        metrics.SERVICE_UP.labels(self.service.name).set(0)
        for worker in self._workers:
            worker.join(self.settings.shutdown_grace_s)
        if self.server is not None:
            self.server.stop(grace=min(5.0, self.settings.shutdown_grace_s)).wait()
        if self._health_server is not None:
            self._health_server.stop(grace=0).wait()
        self.service.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("service stopped", extra={"processed": sum(w.processed for w in self._workers)})

    @property
    def failed(self) -> bool:
        return any(w.error is not None for w in self._workers)
