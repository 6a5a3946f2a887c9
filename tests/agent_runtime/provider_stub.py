"""A stub OpenAI-compatible provider on loopback, for fault injection through the hub.

A real aiohttp server answering ``POST /v1/chat/completions`` the way a provider does
(JSON, or an SSE stream of ``chat.completion.chunk`` objects ending ``data: [DONE]``). Its
behaviour is chosen by the requested model name (the part after the last ``/`` or ``::``):

``ok``            streams :data:`STUB_TEXT` in :data:`STUB_PIECES` and finishes
``rate-limited``  answers 429 with an OpenAI-style error body
``broken``        answers 500 with an OpenAI-style error body
``cut``           streams the first :data:`CUT_AFTER` pieces, then drops the connection
``stall``         never answers (until the stub stops, or the client goes away)
``stall-after``   streams the first :data:`CUT_AFTER` pieces, then sends nothing more

The hub reaches it through the ``local`` provider (``AGENTSTREAM_LOCAL_BASE_URL`` set to
:attr:`ProviderStub.url`). :func:`closed_port_url` is the URL of a port nobody listens on.

:class:`ServeProcess` is the other real thing the reliability tests drive from outside:
``agentstream serve`` in a child process (``--port 0``; its URL read from its
``agentstream listening on …`` log line), signalled, killed and measured (VmRSS).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = [
    "CUT_AFTER",
    "STUB_PIECES",
    "STUB_TEXT",
    "ProviderStub",
    "ServeProcess",
    "call",
    "closed_port_url",
    "spawn_serve",
]

STUB_PIECES = ("Know", " thyself", ", said", " the", " oracle", " at", " Delphi.")
STUB_TEXT = "".join(STUB_PIECES)
CUT_AFTER = 3
"""Content pieces sent before a ``cut`` stream drops its connection."""
CUT_TEXT = "".join(STUB_PIECES[:CUT_AFTER])
RETRY_AFTER_MS = "10"
"""What error answers ask the client to wait before retrying (keeps retries fast)."""


def chunk(content: str | None = None, *, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "stub",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


class ProviderStub:
    """See the module docstring. ``await start()``, then ``url``; ``await stop()``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        """Every request body received, in order (retries included)."""
        self.behaviours: list[str] = []
        self.release = asyncio.Event()
        """Set by :meth:`stop`: stalled handlers end."""
        self.abandoned = asyncio.Event()
        """Set when a stalled request's client went away (its handler was cancelled)."""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def count(self, behaviour: str) -> int:
        return self.behaviours.count(behaviour)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "stub_error", "code": f"stub_{status}"}}
        return web.json_response(body, status=status, headers={"retry-after-ms": RETRY_AFTER_MS})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        behaviour = str(body.get("model", "")).rsplit("/", 1)[-1].rsplit("::", 1)[-1]
        self.behaviours.append(behaviour)
        if behaviour == "rate-limited":
            return self._error(429, "stub: rate limit reached for requests")
        if behaviour == "broken":
            return self._error(500, "stub: the upstream GPU caught fire")
        if behaviour == "stall":
            await self._stall()
            return self._error(503, "stub: stopped")
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": "stub",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": STUB_TEXT},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk("", role=True))
        partial = behaviour in ("cut", "stall-after")
        for piece in STUB_PIECES[:CUT_AFTER] if partial else STUB_PIECES:
            await response.write(chunk(piece))
        if behaviour == "cut":
            assert request.transport is not None
            request.transport.abort()  # the connection drops in the middle of the body
            return response
        if behaviour == "stall-after":
            await self._stall()
            return response
        await response.write(chunk(finish="stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stall(self) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.abandoned.set()
            raise


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, status: int = 200
) -> Any:
    """A JSON request that must answer ``status``; its JSON body (``None`` for 204)."""
    async with session.request(method, url, json=body) as response:
        data = await response.read()
        assert response.status == status, (method, url, response.status, data[:300])
        return None if status == 204 else await response.json()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


_LIMITED = (
    "import resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, resource.getrlimit("
    "resource.RLIMIT_NOFILE)[1])); "
    "from agent_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""The CLI under a lowered open-files limit (``python -c``; its arguments follow)."""
_LISTENING = re.compile(r"agentstream listening on (http://\S+)")
ROOT = Path(__file__).resolve().parents[2]


async def spawn_serve(
    *args: str, command: tuple[str, ...] = ("-m", "agent_runtime.cli")
) -> asyncio.subprocess.Process:
    """``python COMMAND serve --port 0 ARGS…`` in a child process, its stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        "serve",
        "--port",
        "0",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


class ServeProcess:
    """``python -m agent_runtime.cli serve --port 0 ARGS…`` in a child process (``nofile``:
    with that open-files limit).

    ``await start()`` returns its URL once it listens (bounded by ``timeout``); its log
    lines are kept (:attr:`log`). :meth:`aclose` kills it if it still runs and reaps it:
    call it in a ``finally``.
    """

    def __init__(self, *args: str, timeout: float = 30.0, nofile: int | None = None) -> None:
        self.args = args
        self.timeout = timeout
        self.nofile = nofile
        """The child's open-files limit (``RLIMIT_NOFILE``), set before it starts."""
        self.log_bytes = 0
        """Bytes the child wrote to stderr so far (its log)."""
        self.url = ""
        self.port = 0
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def start(self) -> str:
        command: tuple[str, ...] = ("-m", "agent_runtime.cli")
        if self.nofile is not None:
            command = ("-c", _LIMITED.format(nofile=self.nofile))
        self.proc = await spawn_serve(*self.args, command=command)
        assert self.proc.stderr is not None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    raw = await self.proc.stderr.readline()
                    if not raw:
                        raise AssertionError(f"serve exited first:\n{self.output}")
                    self.log_bytes += len(raw)
                    line = raw.decode(errors="replace").rstrip()
                    self.log.append(line)
                    found = _LISTENING.search(line)
                    if found:
                        break
        except TimeoutError:
            raise AssertionError(f"serve did not listen in time:\n{self.output}") from None
        self.url = found.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self._drain = asyncio.create_task(self._read_log())
        return self.url

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.log_bytes += len(raw)
            self.log.append(raw.decode(errors="replace").rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.log)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """The exit status, bounded by ``timeout``; the log is read to its end."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            if self._drain is not None:
                await self._drain
        return code

    def rss_kib(self) -> int:
        """The child's resident set size (``VmRSS`` of ``/proc/<pid>/status``), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    async def aclose(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
