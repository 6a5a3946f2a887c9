"""A run's events projected into Responses events. Pure and synchronous.

:class:`Projector` is fed the events a run publishes (``thread.run.*``,
``thread.message.*``, ``thread.run.step.*``, ``thread.agent.*``, in order) and returns
the Responses events they make, each numbered (``sequence_number``, from 0, consecutive).
It keeps the response object through a :class:`~.fold.ResponseFold` of what it has
produced, so the lifecycle events carry the whole response.

The mapping (``docs/responses.md``):

==================================  ======================================================
run event                           Responses events
==================================  ======================================================
``thread.run.created``              ``response.created``
``thread.run.in_progress``          ``response.in_progress``
``thread.message.created``          ``response.output_item.added`` (a ``message`` item),
                                    ``response.content_part.added`` (``output_text``)
``thread.message.delta``            ``response.output_text.delta``
``thread.message.completed`` /      ``response.output_text.done``,
``.incomplete``                     ``response.content_part.done``,
                                    ``response.output_item.done``
tool-call step deltas               ``response.output_item.added`` (a ``function_call``
                                    item) for each new call, then
                                    ``response.function_call_arguments.delta``
tool-call step's end                ``response.function_call_arguments.done``,
                                    ``response.output_item.done`` for each call
child-run step created / ended      ``response.agent.child_run``
``thread.agent.child_delta``        ``response.agent.child_delta``
``thread.agent.progress``           ``response.agent.progress``
``thread.agent.<name>``             ``response.agent.event`` (``name``, ``data``)
terminal ``thread.run.<status>``    ``response.completed`` / ``response.failed``
                                    (failed, expired, cancelled: ``status`` says which)
==================================  ======================================================

Nothing else makes an event (``thread.run.queued``, ``thread.run.cancelling``, …).
``response.agent.*`` events never touch the output: a client that does not know them can
drop them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from .fold import ResponseFold, terminal_event_for

__all__ = ["Projector", "message_text"]

_FINAL_RUN_STATUS = {
    "completed": "completed",
    "requires_action": "completed",
    "failed": "failed",
    "expired": "failed",
    "cancelled": "cancelled",
}


def message_text(message: dict[str, Any]) -> str:
    """The text of a ``thread.message`` object."""
    parts = message.get("content") or []
    return "".join(
        str((p.get("text") or {}).get("value", ""))
        for p in parts
        if isinstance(p, dict) and p.get("type") == "text"
    )


@dataclass(slots=True)
class _Message:
    index: int
    parts: list[str] = field(default_factory=list)
    length: int = 0
    done: bool = False

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


@dataclass(slots=True)
class _Call:
    index: int
    item_id: str
    call_id: str
    name: str
    arguments: str = ""
    done: bool = False


@dataclass(slots=True)
class _Step:
    calls: dict[int, _Call] = field(default_factory=dict)


def _usage(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's token usage in the Responses shape (``None`` when the run has none)."""
    usage = run.get("usage")
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


class Projector:
    """Run events in, Responses events out (see the module docstring).

    ``response``: the response object as created (``status``, ``output: []``, the
    request's fields); it is what ``response.created`` carries.
    """

    def __init__(self, response: dict[str, Any]) -> None:
        self.fold = ResponseFold(response)
        self._base = response
        self._messages: dict[str, _Message] = {}
        self._steps: dict[str, _Step] = {}
        self._next_index = 0
        self._ended = False

    @property
    def seq(self) -> int:
        """The next event's ``sequence_number`` (events produced so far)."""
        return self.fold.head

    @property
    def ended(self) -> bool:
        return self._ended

    def abandon(self) -> None:
        """Produce nothing more (the response's stream is ended without its terminal
        event: only after a failure of the projection itself)."""
        self._ended = True

    # -- producing -----------------------------------------------------------------------

    def _emit(self, out: list[tuple[str, dict[str, Any]]], kind: str, /, **fields: Any) -> None:
        event = {"type": kind, "sequence_number": self.fold.head, **fields}
        self.fold.record(self.fold.head + 1, kind, event)
        out.append((kind, event))

    def _lifecycle(
        self, out: list[tuple[str, dict[str, Any]]], name: str, response: dict[str, Any]
    ) -> None:
        self._emit(out, name, response=response)

    def feed(self, name: str, payload: Any) -> list[tuple[str, dict[str, Any]]]:
        """The Responses events that run event ``name`` makes (often none)."""
        out: list[tuple[str, dict[str, Any]]] = []
        if self._ended or not isinstance(payload, dict):
            return out
        if name == protocol.RUN_CREATED:
            self._lifecycle(out, "response.created", dict(self._base))
        elif name == "thread.run.in_progress":
            response = self.fold.copy_response() or dict(self._base)
            response["status"] = "in_progress"
            self._lifecycle(out, "response.in_progress", response)
        elif name in protocol.TERMINAL_RUN_EVENTS:
            self._terminal(out, payload)
        elif name == protocol.MESSAGE_CREATED:
            self._message_created(out, payload)
        elif name == protocol.MESSAGE_DELTA:
            track = self._messages.get(str(payload.get("id")))
            text = protocol.delta_text(payload)
            if track is not None and not track.done and text:
                self._delta(out, str(payload["id"]), track, text)
        elif name in protocol.MESSAGE_FINAL:
            self._message_final(out, name, payload)
        elif name == protocol.STEP_CREATED:
            self._step_created(out, payload)
        elif name == protocol.STEP_DELTA:
            self._step_delta(out, payload)
        elif name in protocol.STEP_FINAL:
            self._step_final(out, name, payload)
        elif name == protocol.AGENT_PROGRESS:
            self._emit(out, "response.agent.progress", text=str(payload.get("text", "")))
        elif name == protocol.AGENT_CHILD_DELTA:
            fields = {k: payload.get(k) for k in ("child_thread_id", "child_run_id", "message_id")}
            self._emit(out, "response.agent.child_delta", text=payload.get("text", ""), **fields)
        elif name.startswith("thread.agent."):
            self._emit(
                out, "response.agent.event", name=payload.get("name"), data=payload.get("data")
            )
        return out

    # -- messages ------------------------------------------------------------------------

    def _message_created(
        self, out: list[tuple[str, dict[str, Any]]], message: dict[str, Any]
    ) -> None:
        message_id = str(message.get("id"))
        if message_id in self._messages:
            return
        track = self._messages[message_id] = _Message(self._next_index)
        self._next_index += 1
        item = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._emit(out, "response.output_item.added", output_index=track.index, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        self._emit(
            out,
            "response.content_part.added",
            item_id=message_id,
            output_index=track.index,
            content_index=0,
            part=part,
        )
        text = message_text(message)
        if text:
            self._delta(out, message_id, track, text)

    def _delta(
        self, out: list[tuple[str, dict[str, Any]]], message_id: str, track: _Message, text: str
    ) -> None:
        track.parts.append(text)
        track.length += len(text)
        self._emit(
            out,
            "response.output_text.delta",
            item_id=message_id,
            output_index=track.index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _message_final(
        self, out: list[tuple[str, dict[str, Any]]], name: str, message: dict[str, Any]
    ) -> None:
        message_id = str(message.get("id"))
        if message_id not in self._messages:
            self._message_created(out, message | {"content": []})
        track = self._messages[message_id]
        if track.done:
            return
        final = message_text(message)
        if len(final) > track.length and final.startswith(track.text):
            self._delta(out, message_id, track, final[track.length :])
        self._close_message(out, message_id, track, name == protocol.MESSAGE_COMPLETED)

    def _close_message(
        self, out: list[tuple[str, dict[str, Any]]], message_id: str, track: _Message, ok: bool
    ) -> None:
        track.done = True
        where = {"item_id": message_id, "output_index": track.index, "content_index": 0}
        self._emit(out, "response.output_text.done", text=track.text, logprobs=[], **where)
        part = {"type": "output_text", "text": track.text, "annotations": []}
        self._emit(out, "response.content_part.done", part=part, **where)
        item = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "status": "completed" if ok else "incomplete",
            "content": [part],
        }
        self._emit(out, "response.output_item.done", output_index=track.index, item=item)

    # -- steps ---------------------------------------------------------------------------

    def _step_created(self, out: list[tuple[str, dict[str, Any]]], step: dict[str, Any]) -> None:
        if step.get("type") == "tool_calls":
            self._steps.setdefault(str(step.get("id")), _Step())
        elif step.get("type") == "child_run":
            self._emit(out, "response.agent.child_run", step=step)

    def _call(
        self, out: list[tuple[str, dict[str, Any]]], step_id: str, at: int, entry: dict[str, Any]
    ) -> _Call:
        step = self._steps.setdefault(step_id, _Step())
        call = step.calls.get(at)
        if call is None:
            function = entry.get("function") or {}
            call_id = str(entry.get("id") or f"call_{at}")
            call = step.calls[at] = _Call(
                self._next_index, f"fc_{call_id}", call_id, str(function.get("name") or "")
            )
            self._next_index += 1
            item = {
                "id": call.item_id,
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": "",
                "status": "in_progress",
            }
            self._emit(out, "response.output_item.added", output_index=call.index, item=item)
        return call

    def _arguments(self, out: list[tuple[str, dict[str, Any]]], call: _Call, text: str) -> None:
        if not text or call.done:
            return
        call.arguments += text
        self._emit(
            out,
            "response.function_call_arguments.delta",
            item_id=call.item_id,
            output_index=call.index,
            delta=text,
        )

    def _step_delta(self, out: list[tuple[str, dict[str, Any]]], payload: dict[str, Any]) -> None:
        details = (payload.get("delta") or {}).get("step_details") or {}
        step_id = str(payload.get("id"))
        for entry in details.get("tool_calls") or []:
            call = self._call(out, step_id, int(entry.get("index", 0)), entry)
            function = entry.get("function") or {}
            if function.get("name") and not call.name:
                call.name = str(function["name"])
            self._arguments(out, call, str(function.get("arguments") or ""))

    def _step_final(
        self, out: list[tuple[str, dict[str, Any]]], name: str, step: dict[str, Any]
    ) -> None:
        if step.get("type") == "child_run":
            self._emit(out, "response.agent.child_run", step=step)
            return
        if step.get("type") != "tool_calls":
            return
        step_id = str(step.get("id"))
        calls = (step.get("step_details") or {}).get("tool_calls") or []
        for at, entry in enumerate(calls):
            call = self._call(out, step_id, int(entry.get("index", at)), entry)
            arguments = str((entry.get("function") or {}).get("arguments") or "")
            if arguments.startswith(call.arguments):
                self._arguments(out, call, arguments[len(call.arguments) :])
        ok = name == "thread.run.step.completed"
        for call in self._steps.get(step_id, _Step()).calls.values():
            self._close_call(out, call, ok)

    def _close_call(self, out: list[tuple[str, dict[str, Any]]], call: _Call, ok: bool) -> None:
        if call.done:
            return
        call.done = True
        self._emit(
            out,
            "response.function_call_arguments.done",
            item_id=call.item_id,
            output_index=call.index,
            name=call.name,
            arguments=call.arguments,
        )
        item = {
            "id": call.item_id,
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed" if ok else "incomplete",
        }
        self._emit(out, "response.output_item.done", output_index=call.index, item=item)

    # -- the end -------------------------------------------------------------------------

    def _terminal(self, out: list[tuple[str, dict[str, Any]]], run: dict[str, Any]) -> None:
        for message_id, track in self._messages.items():
            if not track.done:
                self._close_message(out, message_id, track, False)
        for step in self._steps.values():
            for call in step.calls.values():
                self._close_call(out, call, False)
        run_status = str(run.get("status"))
        status = _FINAL_RUN_STATUS.get(run_status, "failed")
        response = self.fold.copy_response() or dict(self._base)
        response["status"] = status
        response["usage"] = _usage(run)
        if status == "failed":
            error = run.get("last_error") or {}
            message = str(error.get("message") or f"the run {run_status}")
            response["error"] = {"code": "server_error", "message": message}
        self._ended = True
        self._lifecycle(out, terminal_event_for(status), response)
