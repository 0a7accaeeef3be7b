"""``medserl serve <service>``: run one service (gRPC + health + reflection + /metrics + bus workers)."""

from __future__ import annotations

import argparse

from medserl_cli.registry import SERVICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service until SIGTERM", description=__doc__)
    p.add_argument("service", choices=sorted(SERVICES), help="which service to run")
    p.add_argument("--config", help="YAML/JSON settings file (defaults < file < MEDSERL_* env < flags)")
    p.add_argument("--bus", choices=["memory", "kafka"], help="message bus (default: memory)")
    p.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers host:port (also KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (0: a free one)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: a free one, -1: off)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other setting; repeatable")
    p.add_argument("--log-phi", action="store_true", default=None, help="allow note text in logs (off by default: PHI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from medserl_cli.registry import load_service_class
    from services.common.logs import setup_logging
    from services.common.runtime import ServiceRuntime, make_bus
    from services.common.settings import SettingsError, load_settings, parse_set_flags

    cls = load_service_class(args.service)
    try:
        overrides = parse_set_flags(args.set)
        for flag in ("bus", "kafka_bootstrap", "grpc_port", "metrics_port", "log_phi"):
            value = getattr(args, flag)
            if value is not None:
                overrides[flag] = value
        settings = load_settings(cls.settings_cls, args.config, overrides)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    setup_logging(cls.name, settings.log_level, settings.log_json, settings.log_phi)
    try:
        bus = make_bus(settings)
        service = cls(settings, bus)
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(f"cannot start {args.service}: {exc}") from exc
    runtime = ServiceRuntime(service)
    runtime.install_signal_handlers()
    runtime.start()
    # a line a supervisor (or a test) can wait for; ports are real even when 0 was asked for
    print(f"READY service={cls.name} grpc_port={runtime.grpc_port} metrics_port={runtime.metrics_port}", flush=True)
    runtime.wait()
    bus.close()
    return 1 if runtime.failed else 0
