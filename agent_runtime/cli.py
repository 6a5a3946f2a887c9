"""The ``agentstream`` command line: ``serve``, ``agent interactive``, ``agent task``,
``agents``, ``bench``.

CLI → :func:`main` → :class:`~agent_runtime.config.HubConfig` → the hub. The agent
commands live in :mod:`agent_runtime.cli_agent`.

Errors are one line (two at most) saying what to do, never a traceback unless
``--log-level debug``; exit statuses are :data:`EXIT_STATUSES`. ``--log-level`` and
``--log-format`` are accepted before or after any subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .bench import add_bench_parser, run_bench
from .cli_agent import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _follow,
    agent_command,
    check_forced_model,
    list_agents,
)
from .errors import AgentRuntimeError
from .logs import configure
from .serve_flags import add_serve_flags, config_from_flags
from .server import serve

__all__ = ["EXIT_STATUSES", "_follow", "main"]

EXIT_STATUSES = (
    (EXIT_OK, "success"),
    (EXIT_FAILED, "the run failed (or an unexpected error)"),
    (EXIT_USAGE, "usage or configuration error (bad flag, missing API key, busy port…)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)
_EPILOG = "exit statuses:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_STATUSES)
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _add_log_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--log-level`` and ``--log-format``. Below the top level they default to
    ``SUPPRESS``, so a value given before the subcommand is kept unless repeated after."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LEVELS,
        metavar="LEVEL",
        default=None if top else argparse.SUPPRESS,
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL; debug also shows tracebacks "
        "(default: INFO for serve, WARNING otherwise)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if top else argparse.SUPPRESS,
        help="text lines, or one JSON object per line (default: text)",
    )


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from _subparsers(sub)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: …)`` to every option's help that does not state its default."""
    for action in parser._actions:
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        help_text = str(action.help)
        default: Any = action.default
        if "default" in help_text.lower() or default is argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            shown = "off"
        elif default is None or default == []:
            shown = "none"
        elif isinstance(default, float):
            shown = f"{default:g}"
        else:
            shown = str(default)
        if help_text.endswith(f"({shown})"):
            continue
        action.help = f"{help_text} (default: {shown})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentstream",
        description="Run LLM agents and stream their output to any number of clients.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_log_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)

    raw = argparse.RawDescriptionHelpFormatter
    serve_p = commands.add_parser(
        "serve", help="run the hub's HTTP API", epilog=_EPILOG, formatter_class=raw
    )
    add_serve_flags(serve_p)
    serve_p.add_argument(
        "--no-access-log",
        action="store_true",
        help="no line per HTTP request (method, path, status, duration) (default: off)",
    )

    agents_p = commands.add_parser(
        "agents", help="list the agents (name, version, display name, description)"
    )
    agents_p.add_argument(
        "--agents",
        action="append",
        type=Path,
        metavar="DIR",
        help="an agent folder or a folder of agent folders (repeatable) "
        "(default: the bundled examples)",
    )

    agent_p = commands.add_parser("agent", help="run one agent in this terminal")
    _add_log_flags(agent_p, top=False)
    agent_cmds = agent_p.add_subparsers(dest="agent_command", required=True)
    for name, help_text in (
        ("interactive", "chat with an agent (Ctrl-C cancels a reply, Ctrl-D leaves)"),
        ("task", "send one message, print the reply, exit"),
    ):
        sub = agent_cmds.add_parser(name, help=help_text, epilog=_EPILOG, formatter_class=raw)
        sub.add_argument("agent_dir", type=Path, metavar="AGENT_DIR", help="the agent's folder")
        if name == "task":
            sub.add_argument("message", metavar="MESSAGE", help="the user message to send")
        sub.add_argument(
            "--stream",
            type=_bool,
            nargs="?",
            const=True,
            default=False,
            metavar="BOOL",
            help="show text and activity as they arrive (--stream or --stream=True) "
            "(default: False)",
        )
        sub.add_argument(
            "--model",
            help="force every completion onto MODEL: simulated[:key=value,…] or "
            "PROVIDER::MODEL (default: the agent's own)",
        )
        sub.add_argument(
            "--agents",
            action="append",
            type=Path,
            metavar="DIR",
            help="more agents, for the child runs AGENT_DIR starts: an agent folder or a "
            "folder of agent folders (repeatable) (default: none)",
        )
        _add_log_flags(sub, top=False)
    bench_p = add_bench_parser(commands)
    for sub in (serve_p, agents_p, bench_p):
        _add_log_flags(sub, top=False)
    for sub in _subparsers(parser):
        _show_defaults(sub)
    return parser


def _debug(args: argparse.Namespace) -> bool:
    return bool(args.log_level == "DEBUG")


def _run(args: argparse.Namespace) -> int:
    if args.command == "bench":
        return run_bench(args)
    if args.command == "agents":
        return list_agents(args, sys.stdout)
    if args.command == "serve":
        config = config_from_flags(args)
        if config.force_model is not None:
            check_forced_model(config.force_model, config.default_provider)
        try:
            asyncio.run(serve(config, access_log=not args.no_access_log))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(
                f"agentstream: port {config.port} on {config.host} is already in use: "
                "stop what holds it, or pick another with --port (--port 0: any free port)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return EXIT_OK
    return asyncio.run(agent_command(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (see :data:`EXIT_STATUSES`)."""
    args = _parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    configure(level, args.log_format, tracebacks=args.command == "serve" or level == "DEBUG")
    try:
        return _run(args)
    except AgentRuntimeError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if _debug(args):
            raise
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(
            f"agentstream: {type(exc).__name__}: {exc}\n"
            "  (run again with --log-level debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
