"""The chat page (``agent_runtime/ui``) in a real browser, against a real hub.

Debian's ``chromium`` driven by playwright; the hub is a :class:`~agent_runtime.server.Server`
on a real socket running the test agents of :mod:`.ui_fixtures` on the simulated model. What
the page shows is checked against what the hub stores (``GET …/messages``) and against an
independent subscriber reading the same run with aiohttp. Resuming is tested with the hub
behind a loopback proxy whose connections the test cuts.

Mid-stream screenshots are saved under the test's ``tmp_path``; their paths are printed
(``pytest -s``) and recorded as the ``screenshot`` property (``--junitxml``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from agent_runtime.config import HubConfig
from agent_runtime.server import Server

from ..agent_sources import with_examples
from .ui_fixtures import (
    CHROMIUM,
    CHROMIUM_ARGS,
    UNIT,
    CuttableProxy,
    count_run,
    ms,
    write_ui_agents,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]

MODEL = "simulated:tokens=40,rate=40"
"""About a second per message: long enough to watch, short enough for the suite."""
LONG_MODEL = f"simulated:tokens={max(240, int(240 * UNIT))},rate=40"
"""Six seconds per message: still live after a browser's reconnection delay, and long
enough for a browser on a busy machine to render the text growing several times."""
QUESTION = "What is virtue?"
RUN_ID = re.compile(r"^run_[0-9a-f]{24}$")

expect.set_options(timeout=ms(10))


# -- fixtures --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def agents_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ui_agents(tmp_path_factory.mktemp("ui-agents"))


StartHub = Callable[..., Awaitable[Server]]


@pytest_asyncio.fixture(loop_scope="module")
async def start_ui_hub(agents_root: Path) -> AsyncIterator[StartHub]:
    """``await start_ui_hub(**HubConfig settings)``: a hub on a real socket serving the UI
    test agents on :data:`MODEL`; stopped at teardown."""
    servers: list[Server] = []

    async def start(**settings: Any) -> Server:
        settings.setdefault("port", 0)
        settings.setdefault("agents", (agents_root,))
        settings["force_model"] = settings.pop("model", MODEL)
        settings.setdefault("shutdown_timeout", 2 * UNIT)
        server = Server(HubConfig(**settings))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30 * UNIT)) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def proxies() -> AsyncIterator[list[CuttableProxy]]:
    started: list[CuttableProxy] = []
    yield started
    for proxy in started:
        await proxy.close()


@dataclass
class Tab:
    """A page of the chat UI, with what it reported."""

    page: Page
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def app(self) -> Any:
        return self.page.locator("#app")

    @property
    def thread_id(self) -> str:
        return parse_qs(urlsplit(self.page.url).query)["thread"][0]

    async def run_id(self) -> str:
        await expect(self.app).to_have_attribute("data-run-id", RUN_ID)
        value = await self.app.get_attribute("data-run-id")
        assert value is not None
        return value

    async def count(self) -> int:
        return int(await self.page.locator("#delta-count").inner_text())

    async def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")

    async def wait_count(self, at_least: int) -> int:
        handle = await self.page.wait_for_function(
            "n => { const c = Number(document.getElementById('delta-count').textContent);"
            " return c >= n ? c : null }",
            arg=at_least,
        )
        value: int = await handle.json_value()
        return value

    async def wait_run_end(self, run_id: str, status: str = "completed") -> None:
        # A run of LONG_MODEL lasts twelve seconds: its end may be that far off.
        await expect(self.page.locator("#run-status")).to_have_attribute(
            "data-status", status, timeout=ms(30)
        )
        # Set once the stream is closed and the stored messages are shown.
        await expect(self.app).to_have_attribute("data-stream-done", run_id)
        await expect(self.page.locator(".msg[data-state=streaming]")).to_have_count(0)

    async def assistant_texts(self) -> list[str]:
        texts: list[str] = await self.page.locator(".msg.assistant .text").all_inner_texts()
        return texts

    async def provisional(self, longer_than: int = 0, message_id: str | None = None) -> Any:
        """Wait for a streaming bubble whose text is longer than ``longer_than``:
        ``[message_id, text]``."""
        handle = await self.page.wait_for_function(
            """([n, mid]) => {
                const sel = mid ? `.msg[data-message-id="${mid}"]` : '.msg';
                const el = document.querySelector(`${sel}[data-state=streaming] .text`);
                if (!el || el.textContent.length <= n) return null;
                return [el.closest('.msg').dataset.messageId, el.textContent];
            }""",
            arg=[longer_than, message_id],
        )
        return await handle.json_value()

    def check_clean(self, hub_urls: tuple[str, ...], *, console: bool = True) -> None:
        assert not self.page_errors, self.page_errors
        if console:
            assert not self.console_errors, self.console_errors
        outside = [u for u in self.requests if not u.startswith((*hub_urls, "data:"))]
        assert not outside, f"requests outside the hub: {outside}"


OpenTab = Callable[..., Awaitable[Tab]]


@pytest_asyncio.fixture(loop_scope="module")
async def open_tab(browser: Browser) -> AsyncIterator[OpenTab]:
    """``await open_tab(url, width=, height=, context=)`` → a :class:`Tab` whose page has
    loaded (``#app[data-ready=true]``). ``context`` reuses another tab's browser context
    (a second tab of the same window)."""
    contexts: list[Any] = []

    async def open_(url: str, *, width: int = 1100, height: int = 800, context: Any = None) -> Tab:
        if context is None:
            context = await browser.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(ms(10))
            contexts.append(context)
        page = await context.new_page()
        tab = Tab(page)
        page.on("pageerror", lambda exc: tab.page_errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: tab.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("request", lambda request: tab.requests.append(request.url))
        await page.goto(url)
        await expect(tab.app).to_have_attribute("data-ready", "true")
        return tab

    yield open_
    for context in contexts:
        await context.close()


async def stored_assistant_texts(
    session: aiohttp.ClientSession, hub_url: str, thread_id: str
) -> list[str]:
    url = f"{hub_url}/v1/threads/{thread_id}/messages"
    async with session.get(url, params={"order": "asc", "limit": "100"}) as response:
        assert response.status == 200
        body = await response.json()
    return [
        "".join(p["text"]["value"] for p in m["content"] if p["type"] == "text")
        for m in body["data"]
        if m["role"] == "assistant"
    ]


async def get_run(
    session: aiohttp.ClientSession, hub_url: str, thread_id: str, run_id: str
) -> dict[str, Any]:
    async with session.get(f"{hub_url}/v1/threads/{thread_id}/runs/{run_id}") as response:
        assert response.status == 200
        run: dict[str, Any] = await response.json()
        return run


def report_screenshot(path: Path, record_property: Callable[[str, object], None]) -> None:
    assert path.stat().st_size > 0
    record_property("screenshot", str(path))
    print(f"\nscreenshot: {path}")


# -- the page itself -------------------------------------------------------------------------


async def test_page_and_assets_are_served_by_the_hub(
    start_ui_hub: StartHub, session: aiohttp.ClientSession
) -> None:
    hub = await start_ui_hub()
    async with session.get(f"{hub.url}/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-cache"
        html = await response.text()
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/app.css", "text/css")):
        assert asset in html
        async with session.get(hub.url + asset) as response:
            assert response.status == 200, asset
            assert kind in response.content_type
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "an external resource"
    async with session.get(f"{hub.url}/ui/missing.js") as response:
        assert response.status == 404  # aiohttp's static files answer an empty 404


async def test_streams_live_and_replaces_the_bubble_with_the_stored_message(
    start_ui_hub: StartHub,
    open_tab: OpenTab,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    hub = await start_ui_hub(model=LONG_MODEL)  # it watches the text grow three times
    tab = await open_tab(f"{hub.url}/?agent=ui-chat")
    page = tab.page

    # The agent as its metadata describes it.
    await expect(page.get_by_label("Agent")).to_have_value("ui-chat")
    await expect(page.locator("#agent-select option:checked")).to_have_text("Socratic Streamer")
    await expect(page.locator("#welcome-title")).to_have_text("Ask the philosophers")
    await expect(page.locator("#welcome-description")).to_have_text(
        "I answer as Socrates, then as Plato."
    )
    await expect(page.locator("#run-status")).to_have_text("Ready")

    # Keyboard: Shift+Enter is a new line, Enter sends.
    box = page.get_by_label("Message", exact=True)
    await expect(box).to_be_focused()
    await page.keyboard.type(QUESTION)
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("Answer briefly.")
    await expect(box).to_have_value(f"{QUESTION}\nAnswer briefly.")
    await page.keyboard.press("Enter")

    run_id = await tab.run_id()
    await expect(page).to_have_url(re.compile(r"[?&]thread=thread_[0-9a-f]{24}"))
    thread_id = tab.thread_id
    independent = asyncio.create_task(count_run(session, hub.url, thread_id, run_id))
    await expect(page.locator(".msg.user .text")).to_have_text(f"{QUESTION}\nAnswer briefly.")
    await expect(box).to_have_value("")

    # The text grows while streaming, in a provisional bubble; the counter counts.
    message_id, first = await tab.provisional()
    _, second = await tab.provisional(len(first), message_id)
    _, third = await tab.provisional(len(second), message_id)
    assert 0 < len(first) < len(second) < len(third)
    assert second.startswith(first) and third.startswith(second)
    assert await tab.count() > 0
    await expect(page.locator("#run-status")).to_have_attribute("data-status", "in_progress")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
    await expect(page.get_by_role("button", name="Send message")).to_be_disabled()
    shot = tmp_path / "mid-stream.png"
    await page.screenshot(path=str(shot))
    report_screenshot(shot, record_property)

    # The second message streams after the first, which is final by then.
    await tab.provisional(0, None)
    await tab.wait_run_end(run_id)
    sent = await independent
    assert sent.terminal.name == "thread.run.completed"
    assert await tab.count() == sent.deltas
    stored = await stored_assistant_texts(session, hub.url, thread_id)
    assert len(stored) == 2
    assert await tab.assistant_texts() == stored == sent.texts
    assert third in stored[0] and stored[0].startswith(third)
    await expect(page.locator(".msg")).to_have_count(3)
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    await expect(page.get_by_role("button", name="Send message")).to_be_enabled()
    assert await tab.app.get_attribute("data-mismatches") is None
    tab.check_clean((hub.url,))

    # The thread's URL reopens it: the stored messages and the last run's status.
    await page.reload()
    await expect(tab.app).to_have_attribute("data-ready", "true")
    await expect(page.locator("#run-status")).to_have_attribute("data-status", "completed")
    assert await tab.assistant_texts() == stored
    assert await tab.app.get_attribute("data-stream-opens") is None  # nothing to join
    tab.check_clean((hub.url,))


async def test_hidden_streaming_text_still_counts_the_deltas(
    start_ui_hub: StartHub, open_tab: OpenTab, session: aiohttp.ClientSession
) -> None:
    hub = await start_ui_hub(model=LONG_MODEL)  # it watches the counter grow twice
    tab = await open_tab(f"{hub.url}/?agent=ui-quiet")
    page = tab.page
    await expect(page.locator("#welcome-title")).to_have_text("Thinking in private")
    await tab.send(QUESTION)
    run_id = await tab.run_id()
    independent = asyncio.create_task(count_run(session, hub.url, tab.thread_id, run_id))

    streaming = page.locator(".msg[data-state=streaming]")
    first = await tab.wait_count(3)
    await expect(streaming).to_have_attribute("data-visibility", "hidden")
    await expect(streaming.locator(".typing")).to_have_text("Writing a reply…")
    await expect(streaming.locator(".text")).to_have_count(0)
    second = await tab.wait_count(first + 3)
    await expect(page.locator(".msg.assistant[data-state=streaming] .text")).to_have_count(0)
    assert second > first

    await tab.wait_run_end(run_id)
    sent = await independent
    assert await tab.count() == sent.deltas
    stored = await stored_assistant_texts(session, hub.url, tab.thread_id)
    assert await tab.assistant_texts() == stored == sent.texts
    tab.check_clean((hub.url,))


@pytest.mark.parametrize(
    ("how", "settings"),
    [
        pytest.param("reconnect", {}, id="browser-reconnects-with-last-event-id"),
        pytest.param(
            "gap", {"broker": {"max_events_per_stream": 8}}, id="resume-behind-buffer-gap-snapshot"
        ),
        pytest.param("reopen", {}, id="browser-gives-up-page-reopens-with-cursor"),
    ],
)
async def test_resumes_after_the_server_drops_the_connection(
    how: str,
    settings: dict[str, Any],
    start_ui_hub: StartHub,
    open_tab: OpenTab,
    session: aiohttp.ClientSession,
    proxies: list[CuttableProxy],
) -> None:
    hub = await start_ui_hub(model=LONG_MODEL, **settings)
    proxy = await CuttableProxy(hub.port).start()
    proxies.append(proxy)
    tab = await open_tab(f"{proxy.url}/?agent=ui-chat")
    await tab.send(QUESTION)
    run_id = await tab.run_id()
    independent = asyncio.create_task(count_run(session, hub.url, tab.thread_id, run_id))

    before = await tab.wait_count(10)
    if how == "reopen":
        proxy.refuse_streams = 1  # the browser's own reconnect gets a 503: it gives up
    assert proxy.cut() >= 1
    await expect(tab.page.locator("#connection")).to_be_visible()

    # Resumed: the text goes on growing from where it was, nothing repeated.
    after = await tab.wait_count(before + 10)
    _message_id, resumed = await tab.provisional()
    await tab.wait_run_end(run_id)
    sent = await independent
    stored = await stored_assistant_texts(session, hub.url, tab.thread_id)
    assert await tab.assistant_texts() == stored == sent.texts
    assert any(text.startswith(resumed) for text in stored), (resumed, stored)
    assert await tab.app.get_attribute("data-mismatches") is None

    resumes = proxy.stream_heads()[1:]
    assert resumes, proxy.heads
    if how == "reopen":
        assert proxy.refused and "last-event-id:" in proxy.refused[0].lower()
        assert "last_event_id=" in resumes[-1].split("\r\n", 1)[0], resumes
        assert await tab.app.get_attribute("data-stream-opens") == "2"
    else:
        assert "last-event-id:" in resumes[0].lower(), resumes[0]
        assert await tab.app.get_attribute("data-stream-opens") == "1"
    if how == "gap":
        assert int(await tab.app.get_attribute("data-gaps") or 0) >= 1
    else:
        # An exact resume: every delta counted once.
        assert await tab.app.get_attribute("data-gaps") is None
        assert await tab.count() == sent.deltas
    assert after > before
    tab.check_clean((proxy.url,), console=False)  # the cut connection is a console error


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="whole-run-from-event-1"),
        pytest.param({"broker": {"max_events_per_stream": 8}}, id="gap-and-snapshot"),
    ],
)
async def test_a_second_tab_joins_the_run_mid_way(
    settings: dict[str, Any],
    start_ui_hub: StartHub,
    open_tab: OpenTab,
    session: aiohttp.ClientSession,
) -> None:
    hub = await start_ui_hub(**settings)
    first = await open_tab(f"{hub.url}/?agent=ui-chat")
    await first.send(QUESTION)
    run_id = await first.run_id()
    independent = asyncio.create_task(count_run(session, hub.url, first.thread_id, run_id))
    await first.wait_count(15)
    message_id, before_join = await first.provisional()

    url = first.page.url
    assert f"thread={first.thread_id}" in url
    second = await open_tab(url, context=first.page.context)
    assert await second.run_id() == run_id
    await expect(second.page.locator(".msg.user .text")).to_have_text(QUESTION)
    # It joins with the whole text so far (not only what follows), then the live tail.
    handle = await second.page.wait_for_function(
        "mid => document.querySelector(`.msg[data-message-id='${mid}'] .text`)?.textContent",
        arg=message_id,
    )
    so_far = await handle.json_value()
    assert so_far.startswith(before_join), (so_far, before_join)

    await first.wait_run_end(run_id)
    await second.wait_run_end(run_id)
    sent = await independent
    stored = await stored_assistant_texts(session, hub.url, first.thread_id)
    assert sent.texts == stored
    assert await first.assistant_texts() == await second.assistant_texts() == stored
    assert any(text.startswith(so_far) for text in stored), (so_far, stored)
    for tab in (first, second):
        assert await tab.app.get_attribute("data-mismatches") is None
        tab.check_clean((hub.url,))
    if settings:
        assert int(await second.app.get_attribute("data-gaps") or 0) >= 1
    else:
        assert await second.count() == sent.deltas == await first.count()


async def test_a_failed_run_shows_its_error(
    start_ui_hub: StartHub, open_tab: OpenTab, session: aiohttp.ClientSession
) -> None:
    hub = await start_ui_hub()
    tab = await open_tab(f"{hub.url}/?agent=ui-raiser")
    await tab.send(QUESTION)
    run_id = await tab.run_id()
    await tab.wait_run_end(run_id, "failed")
    error = tab.page.locator("#run-error")
    await expect(error).to_be_visible()
    await expect(error).to_have_attribute("role", "alert")
    await expect(error).to_contain_text("the oracle is silent 42")
    await expect(tab.page.locator("#run-status")).to_have_text("Failed")
    run = await get_run(session, hub.url, tab.thread_id, run_id)
    assert run["status"] == "failed"
    await expect(error).to_contain_text(run["last_error"]["message"])
    stored = await stored_assistant_texts(session, hub.url, tab.thread_id)
    assert stored and await tab.assistant_texts() == stored
    tab.check_clean((hub.url,))


async def test_the_cancel_button_cancels_the_run(
    start_ui_hub: StartHub, open_tab: OpenTab, session: aiohttp.ClientSession
) -> None:
    hub = await start_ui_hub(model=LONG_MODEL)
    tab = await open_tab(f"{hub.url}/?agent=ui-chat")
    await tab.send(QUESTION)
    run_id = await tab.run_id()
    await tab.wait_count(5)
    await tab.page.get_by_role("button", name="Cancel run").click()
    await tab.wait_run_end(run_id, "cancelled")
    await expect(tab.page.locator("#run-status")).to_have_text("Cancelled")
    await expect(tab.page.locator("#run-error")).to_be_hidden()
    run = await get_run(session, hub.url, tab.thread_id, run_id)
    assert run["status"] == "cancelled"
    stored = await stored_assistant_texts(session, hub.url, tab.thread_id)
    assert await tab.assistant_texts() == stored
    # The thread takes the next question.
    await tab.send("And what is courage?")
    next_run = await tab.run_id()
    await expect(tab.app).not_to_have_attribute("data-run-id", run_id)
    assert next_run
    tab.check_clean((hub.url,))


async def test_narrow_screen_and_accessible_controls(
    start_ui_hub: StartHub,
    open_tab: OpenTab,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    hub = await start_ui_hub()
    tab = await open_tab(f"{hub.url}/?agent=ui-chat", width=375, height=740)
    page = tab.page
    await expect(page.get_by_label("Agent")).to_be_visible()
    await expect(page.get_by_label("Message", exact=True)).to_be_focused()
    await expect(page.get_by_role("button", name="New chat")).to_be_visible()
    await expect(page.get_by_role("heading", name="Ask the philosophers")).to_be_visible()
    await tab.send(QUESTION)
    run_id = await tab.run_id()
    await tab.provisional(40)
    await expect(page.get_by_role("status")).to_contain_text("deltas received")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_visible()

    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways: {width}px"
    for selector in ("#composer-input", "#send", "#cancel-run", ".msg.assistant .bubble"):
        box = await page.locator(selector).first.bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, (selector, box)
        assert box["y"] + box["height"] <= 740, (selector, box)
    shot = tmp_path / "mid-stream-375px.png"
    await page.screenshot(path=str(shot))
    report_screenshot(shot, record_property)
    await tab.wait_run_end(run_id)
    tab.check_clean((hub.url,))


async def test_a_thread_url_that_does_not_exist(start_ui_hub: StartHub, open_tab: OpenTab) -> None:
    hub = await start_ui_hub()
    tab = await open_tab(f"{hub.url}/?agent=ui-chat&thread=thread_{'0' * 24}")
    await expect(tab.page.locator("#page-error")).to_contain_text("does not exist")
    await expect(tab.page).not_to_have_url(re.compile("thread="))
    tab.check_clean((hub.url,), console=False)  # the 404 of the thread is logged


async def test_a_hub_with_api_keys_asks_for_one_in_the_page_and_streams_with_it(
    start_ui_hub: StartHub, browser: Browser, session: aiohttp.ClientSession
) -> None:
    """The key is asked for in an in-page form (no ``window.prompt``, which blocks the
    page and headless browsers); a refused key is asked for again, saying why."""
    key = "sk-ui-" + "7" * 24
    hub = await start_ui_hub(api_keys=(key,))
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(ms(10))
    try:
        page = await context.new_page()
        dialogs: list[str] = []

        async def dismiss(dialog: Any) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", dismiss)
        tab = Tab(page)
        page.on("request", lambda request: tab.requests.append(request.url))
        page.on("pageerror", lambda exc: tab.page_errors.append(str(exc)))
        await page.goto(f"{hub.url}/?agent=ui-chat")
        form = page.locator("#key-form")
        await expect(form).to_be_visible()
        await expect(tab.app).to_have_attribute("data-ready", "false")  # waits for the key
        field = page.get_by_label("This hub needs an API key")
        await expect(field).to_be_focused()
        await field.fill("sk-wrong")
        await field.press("Enter")
        await expect(page.locator("#key-message")).not_to_be_empty()
        await expect(form).to_be_visible()  # refused: asked again
        await field.fill(key)
        await page.get_by_role("button", name="Use key").click()
        await expect(form).to_be_hidden()
        await expect(tab.app).to_have_attribute("data-ready", "true")
        await tab.send(QUESTION)
        run_id = await tab.run_id()
        await tab.wait_run_end(run_id)
        # The stream went out with the key as ?token= (EventSource sends no headers).
        streams = [u for u in tab.requests if f"/stream/{run_id}" in u]
        assert streams and all("token=" in u for u in streams)
        url = f"{hub.url}/v1/threads/{tab.thread_id}/messages"
        headers = {"Authorization": f"Bearer {key}"}
        async with session.get(url, params={"order": "asc"}, headers=headers) as response:
            body = await response.json()
        stored = [
            "".join(p["text"]["value"] for p in m["content"])
            for m in body["data"]
            if m["role"] == "assistant"
        ]
        assert stored and await tab.assistant_texts() == stored
        # Remembered: a reload asks nothing.
        await page.reload()
        await expect(tab.app).to_have_attribute("data-ready", "true")
        await expect(form).to_be_hidden()
        assert dialogs == []
        assert not tab.page_errors
    finally:
        await context.close()


async def test_the_default_agent_is_the_streaming_example(
    start_ui_hub: StartHub, agents_root: Path, open_tab: OpenTab
) -> None:
    hub = await start_ui_hub(agents=with_examples(agents_root))
    tab = await open_tab(f"{hub.url}/")
    await expect(tab.app).to_have_attribute("data-ready", "true")
    await expect(tab.page.locator("#agent-select")).to_have_value("streaming-example")
    await expect(tab.page).to_have_url(re.compile("agent=streaming-example"))
