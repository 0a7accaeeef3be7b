"""``medserl``: one command for every MedSeRL job. ``medserl <command> --help`` explains each."""

from __future__ import annotations

import argparse
import importlib
import sys

# command modules; each exposes ``register(subparsers)`` and sets ``func`` on its parser.
# Heavy libraries (torch, transformers) are imported inside the commands, never at module level,
# so ``medserl --help`` stays fast.
COMMAND_MODULES = (
    "medserl_cli.commands.run",
    "medserl_cli.commands.serve",
    "medserl_cli.commands.data",
    "medserl_cli.commands.verify",
    "medserl_cli.commands.generate",
    "medserl_cli.commands.model",
    "medserl_cli.commands.train",
    "medserl_cli.commands.eval",
)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medserl",
        description="MedSeRL: adversarial self-play for clinical-note error detection "
        "(SFT data, verifier, injector, assessor, trainer).",
    )
    parser.add_argument("--version", action="version", version="medserl 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"medserl {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
