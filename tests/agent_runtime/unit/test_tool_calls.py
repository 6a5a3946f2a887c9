"""The one fold of streamed tool-call fragments. Plain unit tests."""

from __future__ import annotations

from openai.types.chat.chat_completion_chunk import (
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

from agent_runtime.tool_calls import ToolCallFold


def fragment(
    index: int, *, id: str | None = None, name: str | None = None, args: str = ""
) -> ChoiceDeltaToolCall:
    return ChoiceDeltaToolCall(
        index=index, id=id, function=ChoiceDeltaToolCallFunction(name=name, arguments=args)
    )


def test_fragments_fold_into_calls_and_step_delta_entries() -> None:
    fold = ToolCallFold()
    assert not fold
    first = fold.add_deltas([fragment(0, id="call_a", name="get_weather", args='{"ci')])
    assert first == [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"ci', "output": None},
        }
    ]
    assert fold.add_deltas([fragment(0, args='ty": "Argos"}')]) == [
        {"index": 0, "type": "function", "function": {"arguments": 'ty": "Argos"}'}}
    ]
    assert fold.add_deltas([fragment(0)]) == []  # nothing added: no entry
    fold.add_deltas([fragment(1, name="now")])
    [a, b] = fold.message_calls()
    assert (a.id, a.function.name, a.function.arguments) == (
        "call_a",
        "get_weather",
        '{"city": "Argos"}',
    )
    assert (b.id, b.function.name, b.function.arguments) == ("call_1", "now", "")
    assert [c["index"] for c in fold.step_calls()] == [0, 1]
    assert "index" not in fold.step_calls(indexed=False)[0]


def test_entries_fold_like_the_fragments_they_came_from() -> None:
    source = ToolCallFold()
    entries = source.add_deltas([fragment(0, id="call_a", name="f", args="{")])
    entries += source.add_deltas([fragment(0, args="}")])
    again = ToolCallFold()
    again.add_entries(entries)
    assert again.step_calls() == source.step_calls()
