"""The one fold of streamed tool-call fragments into whole calls.

A model streams a tool call in fragments: the first carries its index, id and name, the
rest pieces of its arguments (the SDK concatenates repeated strings). :class:`ToolCallFold`
folds each fragment once and answers in the shapes its users need: the run step delta
entry a fragment makes, the assembled calls as the ``openai`` package's objects, or as a
run step's ``tool_calls``. Used by the :class:`~agent_runtime.stream_handler.StreamHandler`
(and so the pump), the run log's step snapshots and both fake models. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletionMessageToolCall
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall
from openai.types.chat.chat_completion_message_tool_call import Function

__all__ = ["ToolCallFold"]


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    arguments: str


class ToolCallFold:
    """Tool calls assembled from their fragments, by index."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(
        self, index: int, call_id: str | None, name: str | None, arguments: str | None
    ) -> dict[str, Any] | None:
        """Fold one fragment. Returns the ``thread.run.step.delta`` tool call entry it
        makes: the call's first fragment carries its id, type and name; later ones what
        they add (``None`` if nothing)."""
        first = index not in self._calls
        call = self._calls.setdefault(index, _Call("", "", ""))
        if call_id:
            call.id = call_id
        if name:
            call.name += name
        if arguments:
            call.arguments += arguments
        if first:
            return {
                "index": index,
                "id": call_id or f"call_{index}",
                "type": "function",
                "function": {"name": name or "", "arguments": arguments or "", "output": None},
            }
        if not (arguments or name):
            return None
        function: dict[str, Any] = {"arguments": arguments or ""}
        if name:
            function["name"] = name
        return {"index": index, "type": "function", "function": function}

    def add_deltas(self, deltas: Iterable[ChoiceDeltaToolCall] | None) -> list[dict[str, Any]]:
        """Fold a chunk's ``delta.tool_calls``; the step delta entries they make."""
        entries = []
        for call in deltas or ():
            function = call.function
            entry = self.add(
                call.index,
                call.id,
                function.name if function is not None else None,
                function.arguments if function is not None else None,
            )
            if entry is not None:
                entries.append(entry)
        return entries

    def add_entries(self, entries: Iterable[dict[str, Any]]) -> None:
        """Fold step delta entries (as :meth:`add` made them)."""
        for entry in entries:
            function = entry.get("function") or {}
            self.add(
                int(entry.get("index", 0)),
                entry.get("id"),
                function.get("name"),
                function.get("arguments"),
            )

    def message_calls(self) -> list[ChatCompletionMessageToolCall]:
        """The calls as the ``openai`` package's objects, in index order."""
        return [
            ChatCompletionMessageToolCall(
                id=call.id or f"call_{index}",
                type="function",
                function=Function(name=call.name, arguments=call.arguments),
            )
            for index, call in sorted(self._calls.items())
        ]

    def step_calls(self, *, indexed: bool = True) -> list[dict[str, Any]]:
        """The calls as a run step's ``tool_calls`` (with their ``index`` in a delta)."""
        out = []
        for index, call in sorted(self._calls.items()):
            entry: dict[str, Any] = {
                "id": call.id or f"call_{index}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments, "output": None},
            }
            out.append({"index": index, **entry} if indexed else entry)
        return out
