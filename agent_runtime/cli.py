"""The ``agentstream`` command line: ``serve``, ``agent interactive``, ``agent task``, ``bench``.

CLI → :func:`main` → :class:`~agent_runtime.config.HubConfig` → the hub. ``agent …``
commands run the hub in-process (no HTTP) and follow the run's stream exactly as an SSE
subscriber would; ``--stream`` prints text as it arrives, otherwise the final messages.
Unlike a bare ``--stream`` printer, an agent that does not stream still shows its final
messages under ``--stream``: a reply written with ``add_reply(text)`` is published as one
delta holding its whole text.

Under ``--stream`` the run's activity is printed too, each on lines of its own, indented
(and dim on a terminal): progress lines (``env.stream_text``) as ``… text``, each tool
call once complete as ``[tool] name(arguments)``, child runs as ``[child agent NAME] …``
lines (started, relayed text, how it ended).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .agents import load_agent
from .bench import add_bench_parser, run_bench
from .config import HubConfig
from .errors import AgentRuntimeError
from .hub import Hub
from .logs import LOG_FORMAT, RunContextFilter
from .objects import Message, Thread, new_id, now
from .protocol import delta_text
from .serve_flags import add_serve_flags, config_from_flags
from .server import serve

__all__ = ["main"]

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentstream",
        description="Run LLM agents and stream their output to any number of clients.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="logging level (default INFO for serve, WARNING for agent commands)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_p = commands.add_parser("serve", help="run the hub's HTTP API")
    add_serve_flags(serve_p)

    agent_p = commands.add_parser("agent", help="run one agent in this terminal")
    agent_cmds = agent_p.add_subparsers(dest="agent_command", required=True)
    for name, help_text in (
        ("interactive", "chat with an agent"),
        ("task", "send one message, print the reply, exit"),
    ):
        sub = agent_cmds.add_parser(name, help=help_text)
        sub.add_argument("agent_dir", type=Path, metavar="AGENT_DIR")
        if name == "task":
            sub.add_argument("message", metavar="MESSAGE")
        sub.add_argument(
            "--stream",
            type=_bool,
            nargs="?",
            const=True,
            default=False,
            help="show text as it arrives (--stream or --stream=True)",
        )
        sub.add_argument("--model", help="force every completion onto MODEL")
    add_bench_parser(commands)
    return parser


class _Printer:
    """Writes message text inline and activity on lines of its own."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.mid_line = False
        self.child_message: str | None = None
        dim = getattr(out, "isatty", lambda: False)()
        self.dim, self.reset = ("\x1b[2m", "\x1b[0m") if dim else ("", "")

    def text(self, text: str) -> None:
        if self.child_message is not None:
            self._newline()
            self.child_message = None
        self.out.write(text)
        self.mid_line = not text.endswith("\n") if text else self.mid_line
        self.out.flush()

    def _newline(self) -> None:
        if self.mid_line:
            self.out.write("\n")
            self.mid_line = False

    def line(self, text: str) -> None:
        self._newline()
        self.child_message = None
        self.out.write(f"{self.dim}  {text}{self.reset}\n")
        self.out.flush()

    def child_text(self, label: str, message_id: str, text: str) -> None:
        if self.child_message != message_id:
            self._newline()
            self.out.write(f"{self.dim}  {label} ")
            self.child_message = message_id
        else:
            self.out.write(self.dim)
        self.out.write(text.replace("\n", "\n    ") + self.reset)
        self.mid_line = True
        self.out.flush()

    def activity(self, name: str, payload: dict[str, Any], children: dict[str, str]) -> None:
        """Print one activity event (progress, tool calls, child runs)."""
        if name == "thread.agent.progress":
            self.line(f"… {payload.get('text', '')}")
        elif name == "thread.agent.child_delta":
            label = children.get(payload.get("step_id", ""), "[child agent]")
            self.child_text(label, payload.get("message_id", ""), payload.get("text", ""))
        elif name.startswith("thread.run.step.") and name != "thread.run.step.delta":
            details = payload.get("step_details") or {}
            status = payload.get("status")
            if details.get("type") == "tool_calls" and status != "in_progress":
                for call in details.get("tool_calls") or []:
                    function = call.get("function") or {}
                    suffix = "" if status == "completed" else f" [{status}]"
                    call_text = f"{function.get('name', '')}({function.get('arguments', '')})"
                    self.line(f"[tool] {call_text}{suffix}")
            elif details.get("type") == "child_run":
                child = details.get("child_run") or {}
                label = f"[child agent {child.get('assistant_id', '')}]"
                if name == "thread.run.step.created":
                    children[payload["id"]] = label
                    self.line(
                        f"{label} started on thread {child.get('thread_id')} "
                        f"(run {child.get('run_id')})"
                    )
                elif status != "in_progress":
                    self.line(f"{label} {child.get('status', status)}")


async def _follow(hub: Hub, thread_id: str, text: str, stream: bool, out: TextIO) -> str:
    """Run the agent on one user message; print its messages; the run's final status."""
    await hub.store.add_message(
        Message(
            id=new_id("msg"),
            thread_id=thread_id,
            role="user",
            content=text,
            created_at=now(),
            completed_at=now(),
        )
    )
    agent = hub.catalog.list()[0]
    ctx = await hub.runs.create(thread_id, agent.id)
    printed = 0
    status = "failed"
    run: dict[str, Any] = {}
    printer = _Printer(out)
    children: dict[str, str] = {}
    async for event in ctx.stream.follow():
        payload = event.payload()
        name = event.name
        if name == "thread.message.created":
            if printed and not stream:
                out.write("\n\n")
            elif printed:
                printer.text("\n\n" if printer.mid_line else "\n")
            printed += 1
        elif name == "thread.message.delta" and stream:
            printer.text(delta_text(payload))
        elif stream and (name.startswith("thread.agent.") or name.startswith("thread.run.step.")):
            printer.activity(name, payload, children)
        elif name == "thread.message.completed" and not stream:
            parts = payload.get("content") or []
            out.write("".join(p["text"]["value"] for p in parts if p.get("type") == "text"))
            out.flush()
        elif name.startswith("thread.run.") and name.count(".") == 2:
            run = payload
            status = payload.get("status", status)
    if printed:
        out.write("\n")
    if status == "failed":
        error = (run.get("last_error") or {}).get("message", "unknown error")
        print(f"run failed: {error}", file=sys.stderr)
    elif status not in ("completed", "requires_action"):
        print(f"run ended {status}", file=sys.stderr)
    out.flush()
    return status


async def _agent_command(args: argparse.Namespace) -> int:
    agent = load_agent(args.agent_dir)
    config = HubConfig(agents=(args.agent_dir,), force_model=args.model)
    hub = Hub(config)
    try:
        await hub.start()
        thread = Thread(id=new_id("thread"), created_at=now())
        await hub.store.create_thread(thread)
        if args.agent_command == "task":
            status = await _follow(hub, thread.id, args.message, args.stream, sys.stdout)
            return 0 if status in ("completed", "requires_action") else 1
        welcome = agent.metadata.details.agent.welcome
        print(f"{agent.display_name} — type a message, or 'exit' to leave.")
        if welcome is not None and welcome.description:
            print(welcome.description)
        loop = asyncio.get_running_loop()
        while True:
            try:
                line = await loop.run_in_executor(None, input, "> ")
            except EOFError:
                print()
                return 0
            if line.strip().lower() in ("exit", "quit"):
                return 0
            if line.strip():
                await _follow(hub, thread.id, line, args.stream, sys.stdout)
    finally:
        await hub.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    handler = logging.StreamHandler()
    handler.addFilter(RunContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    try:
        if args.command == "bench":
            return run_bench(args)
        if args.command == "serve":
            config = config_from_flags(args)
            asyncio.run(serve(config))
            return 0
        return asyncio.run(_agent_command(args))
    except AgentRuntimeError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
