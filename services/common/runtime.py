"""The runtime every service shares: bus, gRPC (health + reflection), /metrics, graceful shutdown.

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
from services.common.bus import Bus, MemoryBus
from services.common.settings import ServiceSettings
from services.common.topics import ALL_TOPICS
from services.common.worker import StreamWorker

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


def make_bus(settings: ServiceSettings) -> Bus:
    """The bus the settings name. Switching embedded <-> distributed is configuration, not code."""
    if settings.bus == "memory":
        return MemoryBus()
    if settings.bus == "kafka":
        from services.common.kafka_bus import KafkaBus

        return KafkaBus(settings.kafka_bootstrap, client_id="medserl")
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
        self.bus = bus

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

    def start(self) -> ServiceRuntime:
        s = self.settings
        name = self.service.name
        if s.metrics_port >= 0:
            self._metrics_server, _thread = start_http_server(s.metrics_port, addr="0.0.0.0")
            self.metrics_port = self._metrics_server.server_port
        self.service.bus.ensure_topics(list(self.service.topics()))
        bindings = list(self.service.grpc_bindings())
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=s.grpc_workers, thread_name_prefix=f"{name}-grpc"),
                                  options=GRPC_OPTIONS)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for binding in bindings:
            binding.add_to_server(binding.servicer, self.server)
        names = [b.full_name for b in bindings]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.grpc_port = self.server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        if self.grpc_port == 0:
            raise RuntimeError(f"could not bind gRPC to {s.grpc_host}:{s.grpc_port}")
        self.server.start()
        self._workers = list(self.service.workers())
        for worker in self._workers:
            worker.start(self.stop_event)
        for full_name in ["", *names]:
            self.health.set(full_name, health_pb2.HealthCheckResponse.SERVING)
        metrics.SERVICE_UP.labels(name).set(1)
        log.info("service started", extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
                                           "bus": self.service.bus.kind, "workers": len(self._workers)})
        return self

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
        self.service.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("service stopped", extra={"processed": sum(w.processed for w in self._workers)})

    @property
    def failed(self) -> bool:
        return any(w.error is not None for w in self._workers)
