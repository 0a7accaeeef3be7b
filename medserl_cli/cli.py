"""``medserl``: one command for every MedSeRL job. ``medserl <command> --help`` explains each."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from typing import NoReturn

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
    "medserl_cli.commands.up",  # up, down: the distributed pipeline on one machine
    "medserl_cli.commands.status",
    "medserl_cli.commands.client",
    "medserl_cli.commands.deadletter",
)
SIGPIPE_EXIT = 141  # what a shell reports for a command whose reader went away (128 + SIGPIPE)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class MedserlParser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped command, choice or flag (Python 3.11 has none)."""

    def error(self, message: str) -> NoReturn:
        return super().error(message + suggestion(message, self))


def suggestion(message: str, parser: argparse.ArgumentParser) -> str:
    """``; did you mean 'x'?`` for argparse's invalid-choice and unrecognized-argument messages."""
    choice = re.search(r"invalid choice: '?([^' ]+)'? \(choose from (.+)\)", message)
    if choice:
        options = re.findall(r"'([^']+)'", choice.group(2)) or [o.strip() for o in choice.group(2).split(",")]
        close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
        return f"; did you mean {close[0]!r}?" if close else ""
    if message.startswith("unrecognized arguments:"):
        flags = [s for s in parser._option_string_actions if s.startswith("--")]
        hints = []
        for word in message.split(":", 1)[1].split():
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{close[0]} (not {word})")
        return f"; did you mean {', '.join(hints)}?" if hints else ""
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = MedserlParser(
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
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command the user picked, so an error shows that command's usage."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action else None
        if action is None or name not in action.choices:
            return parser
        parser = action.choices[name]


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["train"]:
        from medserl_cli.commands import train

        if train.wants_rl(argv[1:]):
            return train.run_rl(argv[1:])
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv[1:]  # what followed the command, for a command that hands it on (train --phase rl)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "medserl")
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return code
    except CliError as exc:
        print(f"medserl {command}: error: {exc}", file=sys.stderr)
        return exc.code
    except RuntimeError as exc:
        from services.common.bus import BusError

        if not isinstance(exc, BusError):
            raise
        print(f"medserl {command}: error: {exc}", file=sys.stderr)  # the broker: its address and how to start one
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (``| head``) went away: stop quietly, and keep the exit-time flush from failing too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
