"""``medserl serve <service>``: run one service (gRPC + health + reflection + /metrics + bus workers).

Every setting of the service is a flag (``--grpc-port 0``, ``--topic-suffix .exp42``) and a ``--set
name=value``; ``medserl serve <service> --help`` lists them all with their defaults and meanings.
Precedence: dataclass defaults < ``--config`` file < MEDSERL_<NAME> environment < flags.
"""

from __future__ import annotations

import argparse
import errno
import socket

from medserl_cli.registry import SERVICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service until SIGTERM", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("service", choices=sorted(SERVICES), metavar="<service>",
                   help=f"which service to run: {', '.join(sorted(SERVICES))}")
    # parsed by the service's own parser (built from its settings class only once the service is known)
    p.add_argument("options", nargs=argparse.REMAINDER, metavar="...",
                   help="--config FILE, --set KEY=VALUE, --<setting> VALUE; see medserl serve <service> --help")
    p.set_defaults(func=run)


def service_parser(name: str, settings_cls: type) -> argparse.ArgumentParser:
    """``medserl serve <name>``'s flags: one per field of the service's settings dataclass."""
    from medserl_cli.cli import MedserlParser
    from services.common.settings import add_dataclass_arguments

    parser = MedserlParser(prog=f"medserl serve {name}", description=__doc__,
                           usage=f"medserl serve {name} [--config FILE] [--set KEY=VALUE] [--<setting> VALUE ...]",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML/JSON settings file (defaults < file < MEDSERL_* env < flags)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting by name; repeatable")
    group = parser.add_argument_group(f"settings ({settings_cls.__name__}; also MEDSERL_<NAME> and --set name=value)")
    add_dataclass_arguments(group, settings_cls, defaults=False, choices={"bus": ("memory", "kafka")})
    return parser


def check_ports_free(settings) -> None:
    """A port another process holds is one line naming the setting, not a traceback from the bind."""
    from medserl_cli.cli import CliError

    for name in ("grpc_port", "metrics_port"):
        port = getattr(settings, name)
        if port <= 0:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((settings.grpc_host if name == "grpc_port" else getattr(settings, "metrics_host", "0.0.0.0"),
                            port))
            except OSError as exc:
                flag = "--" + name.replace("_", "-")
                raise CliError(f"port {port} ({flag}) is already in use ({exc.strerror}): is this service "
                               f"already running? Pick another with {flag} N (0: any free port)") from None


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from medserl_cli.registry import load_service_class
    from services.common.logs import setup_logging
    from services.common.runtime import ServiceRuntime, make_bus
    from services.common.settings import SettingsError, given_settings, load_settings, parse_set_flags

    cls = load_service_class(args.service)
    options = service_parser(args.service, cls.settings_cls).parse_args(args.options)
    try:
        overrides = {**parse_set_flags(options.set), **given_settings(options, cls.settings_cls)}
        settings = load_settings(cls.settings_cls, options.config, overrides)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    setup_logging(cls.name, settings.log_level, settings.log_json, settings.log_phi)
    from services.common.bus import BusError

    check_ports_free(settings)
    try:
        bus = make_bus(settings)
        service = cls(settings, bus)
        runtime = ServiceRuntime(service)
        runtime.install_signal_handlers()
        runtime.start()
    except (ValueError, FileNotFoundError, BusError) as exc:
        raise CliError(f"cannot start {args.service}: {exc}") from exc
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise CliError(f"cannot start {args.service}: a port is already in use ({exc}); "
                       "pick others with --grpc-port N --metrics-port N (0: any free port)") from exc
    # a line a supervisor (or a test) can wait for; ports are real even when 0 was asked for
    print(f"READY service={cls.name} grpc_port={runtime.grpc_port} metrics_port={runtime.metrics_port}", flush=True)
    runtime.wait()
    bus.close()
    return 1 if runtime.failed else 0
