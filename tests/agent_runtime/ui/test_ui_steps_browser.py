"""The chat page shows a run's activity: progress lines, tool calls, child runs.

Debian's ``chromium`` driven by playwright against a real hub (fixtures of
``test_ui_browser.py``). Tool calls and child runs are collapsed ``<details>`` blocks
above the run's reply, expandable to the streamed arguments / the child's relayed text
and a link to its thread; progress lines are muted lines above the bubble.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from ..steps_helpers import TOOLS
from .test_ui_browser import (  # noqa: F401  (fixtures)
    MODEL,
    OpenTab,
    StartHub,
    browser,
    open_tab,
    pytestmark,
    session,
    start_ui_hub,
    stored_assistant_texts,
)
from .ui_fixtures import write_ui_agents

STEP_AGENTS = {
    "ui-steps": f"""
TOOLS = {TOOLS!r}

async def run(env):
    messages = await env.alist_messages()
    await env.astream_text("Looking up the weather…")
    handler = await env.acompletion(messages, stream=True, tools=TOOLS, tool_choice="required")
    async for _chunk in handler:
        pass
    await env.astream_text("Asking a colleague.")
    await env.arun_agent("ui-child", "What is courage?", relay=True)
    await env.aadd_reply(await env.acompletion(messages, stream=True))
""",
    "ui-child": """
async def run(env):
    await env.aadd_reply(await env.acompletion(await env.alist_messages(), stream=True))
""",
}


@pytest.fixture(scope="module")
def agents_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's test agents plus the agents of this module (overrides the fixture
    ``start_ui_hub`` reads)."""
    root = write_ui_agents(tmp_path_factory.mktemp("ui-step-agents"))
    for name, source in STEP_AGENTS.items():
        folder = root / name
        folder.mkdir()
        (folder / "agent.py").write_text(textwrap.dedent(source))
        metadata = {"name": name, "version": "0.0.1", "details": {"display_name": name}}
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return root


async def test_tool_calls_and_child_runs_are_collapsed_blocks_that_expand(
    start_ui_hub: StartHub,  # noqa: F811
    open_tab: OpenTab,  # noqa: F811
    session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    hub = await start_ui_hub(model=MODEL)
    tab = await open_tab(f"{hub.url}/?agent=ui-steps")
    page = tab.page
    await tab.send("What is the weather in Paris?")
    run_id = await tab.run_id()
    thread_id = tab.thread_id

    activity = page.locator(f'.activity[data-run-id="{run_id}"]')
    await expect(activity.locator(".progress-line").first).to_have_text("Looking up the weather…")
    tool = activity.locator("details.step.tool-call")
    await expect(tool).to_have_count(1)
    await expect(tool.locator("summary .step-label")).to_have_text("Tool call: get_weather")
    await expect(tool).to_have_attribute("data-status", "completed")
    # Collapsed by default: the arguments are there but not shown until expanded.
    assert await tool.get_attribute("open") is None
    await expect(tool.locator(".tool-args")).to_be_hidden()
    await tool.locator("summary").click()
    await expect(tool).to_have_attribute("open", "")
    await expect(tool.locator(".tool-args")).to_be_visible()
    arguments = json.loads(await tool.locator(".tool-args").inner_text())
    assert arguments == {"city": "the weather in Paris", "days": 1}

    child = activity.locator("details.step.child-run")
    await expect(child).to_have_count(1)
    await expect(child.locator("summary .step-label")).to_have_text("Child run: ui-child")
    assert await child.get_attribute("open") is None
    await tab.wait_run_end(run_id)
    await expect(child).to_have_attribute("data-status", "completed")
    await expect(child.locator("summary .step-status")).to_have_text("done")
    await expect(activity.locator(".progress-line")).to_have_text(
        ["Looking up the weather…", "Asking a colleague."]
    )
    child_thread = await child.get_attribute("data-child-thread")
    assert child_thread is not None and child_thread != thread_id
    [child_text] = await stored_assistant_texts(session, hub.url, child_thread)
    await expect(child.locator(".child-relay")).to_be_hidden()
    await child.locator("summary").click()
    await expect(child.locator(".child-relay")).to_have_text(child_text)
    link = child.get_by_role("link", name="Open the child thread")
    await expect(link).to_be_visible()

    # The activity sits above the run's reply; the reply is the stored one.
    stored = await stored_assistant_texts(session, hub.url, thread_id)
    assert await tab.assistant_texts() == stored and len(stored) == 1
    order = await page.evaluate(
        """() => [...document.querySelectorAll('#messages > li')].map(
            (li) => li.classList.contains('activity') ? 'activity' : li.dataset.role)"""
    )
    assert order == ["user", "activity", "assistant"]
    assert await tab.app.get_attribute("data-mismatches") is None
    tab.check_clean((hub.url,))

    # The link opens the child's thread: its question and its answer.
    await link.click()
    await expect(tab.app).to_have_attribute("data-ready", "true")
    await expect(page).to_have_url(f"{hub.url}/?agent=ui-child&thread={child_thread}")
    await expect(page.locator(".msg.user .text")).to_have_text("What is courage?")
    await expect(page.locator(".msg.assistant .text")).to_have_text(child_text)
    tab.check_clean((hub.url,))
