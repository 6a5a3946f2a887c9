"""``agentstream agent task|interactive`` and ``agentstream agents``.

``agent …`` commands run the hub in-process (no HTTP) and follow the run's stream exactly
as an SSE subscriber would; ``--stream`` prints text as it arrives, otherwise the final
messages. Unlike a bare ``--stream`` printer, an agent that does not stream still shows
its final messages under ``--stream``: a reply written with ``add_reply(text)`` is
published as one delta holding its whole text.

Under ``--stream`` the run's activity is printed too, each on lines of its own, indented
(and dim on a terminal): progress lines (``env.stream_text``) as ``… text``, each tool
call once complete as ``[tool] name(arguments)``, child runs as ``[child agent NAME] …``
lines (started, relayed text, how it ended).

Before a run starts, the model it would use is checked (:func:`check_model`), so a
missing API key or a mistyped model is one line, not a failed run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

from .agents import Agent, bundled_examples_dir, discover_agents, load_agent
from .config import HubConfig
from .errors import ConfigError, InvalidRequest
from .hub import Hub
from .models.openai_compat import PROVIDERS
from .models.router import ModelRouter
from .models.simulated import is_simulated
from .objects import Message, Thread, new_id, now
from .protocol import delta_text

__all__ = ["agent_command", "check_model", "list_agents"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


async def _follow(
    hub: Hub,
    thread_id: str,
    text: str,
    stream: bool,
    out: TextIO,
    *,
    agent_id: str | None = None,
) -> str:
    """Run the agent ``agent_id`` (default: the catalog's first) on one user message;
    print its messages; the run's final status. Cancelling the run (not this coroutine)
    ends it ``cancelled``, printed as such; cancelling this coroutine stops following."""
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
    ctx = await hub.runs.create(thread_id, agent_id or hub.catalog.list()[0].id)
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


def check_model(hub: Hub, agent: Agent) -> None:
    """Raise :class:`ConfigError` (one line, what to do) unless the model a run of
    ``agent`` would use can be served: a known provider with its API key set, a valid
    ``simulated:`` spec, and for a bare ``--model NAME`` (no ``provider::``) the default
    provider's key set (else the name is refused with the list of providers)."""
    router = hub.models
    defaults = agent.defaults
    model = router.model_for_run(None, defaults.model).strip()
    if router.force_model is not None:
        check_forced_model(model, router.default_provider, env=router.env)
        return
    _check(router, model, defaults.model_provider, f"agent {agent.id!r} (model {model!r})")


def check_forced_model(
    model: str, default_provider: str, *, env: Mapping[str, str] | None = None
) -> None:
    """:func:`check_model` for ``--model MODEL`` (``agent …`` and ``serve``): every
    completion would use it, so one that cannot be served is refused before anything
    starts."""
    router = ModelRouter(default_provider=default_provider, env=env)
    if not is_simulated(model) and "::" not in model:
        info = PROVIDERS.get(router.default_provider)
        if info is not None and not info.is_configured(router.env):
            known = ", ".join(router.known_providers())
            raise ConfigError(
                f"unknown model {model!r}: name its provider as PROVIDER::MODEL "
                f"(providers: {known}), {_OFFLINE}"
            )
    _check(router, model, None, f"--model {model}")


_OFFLINE = "or run offline with --model simulated"


def _check(router: ModelRouter, model: str, provider: str | None, what: str) -> None:
    try:
        router.check(model, provider)
    except InvalidRequest as exc:
        if exc.code == "model_not_found":
            needed = str(exc).rpartition(": set ")[2]
            raise ConfigError(f"{what} needs an API key: set {needed}, {_OFFLINE}") from None
        raise ConfigError(f"{what}: {exc}") from None


def agent_config(args: argparse.Namespace) -> HubConfig:
    """The in-process hub of ``agent task|interactive``: ``AGENT_DIR`` and every
    ``--agents DIR`` (so child runs resolve), the forced model if any."""
    return HubConfig(agents=(args.agent_dir, *(args.agents or ())), force_model=args.model)


async def agent_command(args: argparse.Namespace) -> int:
    """Run ``agent task`` or ``agent interactive``; the exit status."""
    agent = load_agent(args.agent_dir)
    hub = Hub(agent_config(args))
    check_model(hub, agent)
    try:
        await hub.start()
        thread = Thread(id=new_id("thread"), created_at=now())
        await hub.store.create_thread(thread)
        if args.agent_command == "task":
            status = await _follow(
                hub, thread.id, args.message, args.stream, sys.stdout, agent_id=agent.id
            )
            return EXIT_OK if status in ("completed", "requires_action") else EXIT_FAILED
        return await _interactive(hub, agent, thread.id, args.stream)
    finally:
        await hub.aclose()


def _read_line(loop: asyncio.AbstractEventLoop, prompt: str) -> asyncio.Future[str]:
    """``input(prompt)`` in a daemon thread (exiting never waits for it); its line, or
    :class:`EOFError`."""
    future: asyncio.Future[str] = loop.create_future()

    def settle(line: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(line or "")

    def read() -> None:
        try:
            line = input(prompt)
        except BaseException as exc:  # EOFError, or stdin closed
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, line, None)

    threading.Thread(target=read, name="agentstream-input", daemon=True).start()
    return future


async def _interactive(hub: Hub, agent: Agent, thread_id: str, stream: bool) -> int:
    """The chat loop. Ctrl-C during a reply cancels that run and returns to the prompt;
    Ctrl-C again (during the cancelled reply or at the prompt) exits 130; Ctrl-D or
    ``exit`` exits 0. SIGINT is taken by the event loop while this runs."""
    welcome = agent.metadata.details.agent.welcome
    print(f"{agent.display_name} — type a message, or 'exit' to leave.")
    if welcome is not None and welcome.description:
        print(welcome.description)
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    interrupts: asyncio.Queue[None] = asyncio.Queue()
    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, interrupts.put_nowait, None)
        handled = True
    try:
        while True:
            line_read = _read_line(loop, "> ")
            interrupted = asyncio.ensure_future(interrupts.get())
            waiting: set[asyncio.Future[Any]] = {line_read, interrupted}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if interrupted.done():
                print()
                return EXIT_INTERRUPTED
            interrupted.cancel()
            try:
                line = line_read.result()
            except EOFError:
                print()
                return EXIT_OK
            if line.strip().lower() in ("exit", "quit"):
                return EXIT_OK
            if line.strip() and not await _reply(hub, agent, thread_id, line, stream, interrupts):
                return EXIT_INTERRUPTED
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


async def _reply(
    hub: Hub,
    agent: Agent,
    thread_id: str,
    line: str,
    stream: bool,
    interrupts: asyncio.Queue[None],
) -> bool:
    """Follow one reply; the first interrupt cancels its run, a second stops following.
    False if the user asked to exit (a second interrupt)."""
    follow = asyncio.create_task(
        _follow(hub, thread_id, line, stream, sys.stdout, agent_id=agent.id)
    )
    cancelling = False
    while not follow.done():
        interrupted = asyncio.ensure_future(interrupts.get())
        waiting: set[asyncio.Future[Any]] = {follow, interrupted}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not interrupted.done():
            interrupted.cancel()
            continue
        if cancelling:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            print()
            return False
        cancelling = True
        ctx = hub.runs.live_on_thread(thread_id)
        if ctx is not None:
            with contextlib.suppress(InvalidRequest):
                await hub.runs.cancel(thread_id, ctx.run.id)
    await follow
    return True


def list_agents(args: argparse.Namespace, out: TextIO) -> int:
    """``agentstream agents``: a table of name, version, display name, description."""
    agents = discover_agents(list(args.agents or ()) or [bundled_examples_dir()])
    rows = [("NAME", "VERSION", "DISPLAY NAME", "DESCRIPTION")]
    rows += [(a.name, a.version, a.display_name, a.metadata.description) for a in agents]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[3]]).rstrip() + "\n")
    out.flush()
    return EXIT_OK
