"""A browser ``EventSource`` (Debian's chromium, driven by playwright) running the
description's React snippet, ported to a plain page: it receives the deltas live, clears
the text on ``thread.message.completed`` and stops on the run's terminal event without
reconnecting.

The page is served from the hub's own origin, without touching the hub: playwright
fulfils ``GET {hub}/clients-test-page`` itself, so the snippet's relative URL
(``/api/v1/threads/…/stream/…``) reaches the hub same-origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..clients_helpers import live_model
from ..conftest import SLOW_MODEL, UNIT, HubClient, StartHub, check_run

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")

PAGE_PATH = "/clients-test-page"

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>agentstream EventSource</title></head>
<body>
<pre id="streaming-text"></pre>
<script>
// React state, as plain variables; `window.seen` records what the page did.
window.seen = {text: '', latestChunk: '', isStreaming: false, cleared: [], stops: 0,
               errors: 0, deltas: 0, source: null};
const seen = window.seen;
const setIsStreaming = (value) => { seen.isStreaming = value; };
const setStreamingText = (update) => {
  const next = typeof update === 'function' ? update(seen.text) : update;
  if (next === '' && seen.text !== '') seen.cleared.push(seen.text);
  seen.text = next;
  document.getElementById('streaming-text').textContent = next;
};
const setStreamingTextLatestChunk = (chunk) => { seen.latestChunk = chunk; };
const setStream = (eventSource) => { seen.source = eventSource; };
const stopStreaming = (eventSource) => {
  seen.stops += 1;
  eventSource.close();
  setIsStreaming(false);
};

// The description's snippet, its TypeScript annotations removed.
const startStreaming = (threadId, runId) => {
    if (!threadId) return;
    if (!runId) return;

    setIsStreaming(true);

    const eventSource = new EventSource(
      `/api/v1/threads/${threadId}/stream/${runId}`,
    );

    eventSource.addEventListener('message', (event) => {
      const data = JSON.parse(event.data);
      const eventType = data.event;

      switch (eventType) {
        case 'thread.message.delta':
          if (!data?.data?.delta?.content) return;
          const content = data.data.delta.content;
          if (content.length === 0 || !content[0]?.text?.value) return;
          const latestChunk = data.data.delta.content[0].text.value;
          setStreamingText((prevText) => prevText + latestChunk);
          setStreamingTextLatestChunk(latestChunk);
          seen.deltas += 1;

          // Force React to rerender immediately rather than batching
          setTimeout(() => {}, 0);
          break;

        case 'thread.message.completed':
          setStreamingText('');
          setStreamingTextLatestChunk('');
          break;
        case 'thread.run.completed':
        case 'thread.run.error':
        case 'thread.run.canceled':
        case 'thread.run.expired':
        case 'thread.run.requires_action':
          stopStreaming(eventSource);
          break;
      }
    });

    eventSource.onerror = (error) => {
      console.log('SSE error:', error);
      seen.errors += 1;
      eventSource.close();
      setIsStreaming(false);
    };

    setStream(eventSource);

    return () => {
      eventSource.close();
    };
};

// Not the snippet: a bare EventSource, with no error handler.
window.bare = {events: [], opens: 0, errors: 0, source: null};
window.startBare = (threadId, runId) => {
  const source = new EventSource(`/api/v1/threads/${threadId}/stream/${runId}`);
  source.onopen = () => { window.bare.opens += 1; };
  source.onerror = () => { window.bare.errors += 1; };
  source.onmessage = (event) => {
    window.bare.events.push([event.lastEventId, JSON.parse(event.data).event]);
  };
  window.bare.source = source;
};
</script>
</body>
</html>
"""


def ms(units: float) -> float:
    return units * UNIT * 1000


@dataclass
class Browser:
    page: Any
    stream_requests: list[dict[str, str]] = field(default_factory=list)
    stream_statuses: list[int] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def seen(self, what: str = "seen") -> Any:
        return await self.page.evaluate(f"""() => {{
            const s = window.{what};
            return {{...s, source: undefined, readyState: s.source ? s.source.readyState : null}};
        }}""")

    async def until(self, condition: str, units: float = 5) -> None:
        await self.page.wait_for_function(condition, timeout=ms(units))


@pytest.fixture
async def open_page() -> AsyncIterator[Any]:
    """``await open_page(hub)`` → a :class:`Browser` on the test page at the hub's origin."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        async def open_(hub: HubClient) -> Browser:
            page = await browser.new_page()
            opened = Browser(page)

            async def on_request(request: Any) -> None:
                if "/stream/" in request.url:
                    opened.stream_requests.append(await request.all_headers())

            page.on("request", on_request)
            page.on(
                "response",
                lambda response: (
                    opened.stream_statuses.append(response.status)
                    if "/stream/" in response.url
                    else None
                ),
            )
            page.on("console", lambda message: opened.console.append(message.text))
            page.on("pageerror", lambda error: opened.page_errors.append(str(error)))
            await page.route(
                hub.url + PAGE_PATH,
                lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE),
            )
            await page.goto(hub.url + PAGE_PATH)
            return opened

        try:
            yield open_
        finally:
            await browser.close()


async def test_the_descriptions_snippet_streams_clears_and_stops(
    start_hub: StartHub, open_page: Any
) -> None:
    hub = await start_hub(model=live_model(seconds=0.4))
    tab = await open_page(hub)
    thread_id, run_id = await hub.start("streaming-example")
    await tab.page.evaluate(
        "([t, r]) => { window.cleanup = startStreaming(t, r); }",
        [
            thread_id,
            run_id,
        ],
    )

    # Text arrives while the run is live; what the element shows is read in the same
    # check (read later, the message could be complete and cleared by then).
    shown_now = await tab.page.wait_for_function(
        "() => { const t = document.querySelector('#streaming-text').innerText.trim();"
        " return t.length > 0 && window.seen.text.length > 0 ? t : false; }",
        timeout=ms(5),
    )
    shown = str(await shown_now.json_value())
    assert hub.hub.runs.live(run_id) is not None

    await tab.until("window.seen.stops === 1")
    seen = await tab.seen()
    texts = await hub.assistant_texts(thread_id)
    # What was shown then is part of a message (the run has two: the first may be
    # complete, and stored, by the time the page shows the second one's text).
    assert shown.strip() and any(text.startswith(shown.strip()) for text in texts), shown
    assert seen["cleared"] == texts  # each message's deltas, cleared at its completion
    assert seen["text"] == "" and seen["latestChunk"] == ""
    assert seen["isStreaming"] is False
    assert seen["readyState"] == 2  # EventSource.CLOSED: it will never reconnect
    trace = check_run(await hub.events(thread_id, run_id))
    assert seen["deltas"] == sum(len(m.deltas) for m in trace.messages)
    assert seen["errors"] == 0 and tab.page_errors == []
    assert len(tab.stream_requests) == 1 and tab.stream_statuses == [200]


async def test_a_cancelled_run_ends_the_snippet_through_its_error_handler(
    start_hub: StartHub, open_page: Any
) -> None:
    """The snippet listens for ``thread.run.canceled`` (and ``thread.run.error``); OpenAI
    and agentstream send ``thread.run.cancelled`` (and ``thread.run.failed``). The hub
    ends the response after the terminal event, the EventSource reports an error, and the
    snippet's ``onerror`` closes it: no reconnect either way."""
    hub = await start_hub(model=SLOW_MODEL)
    tab = await open_page(hub)
    thread_id, run_id = await hub.start("streaming-example")
    await tab.page.evaluate("([t, r]) => startStreaming(t, r)", [thread_id, run_id])
    await tab.until("window.seen.deltas >= 3")

    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert reply.status == 200
    await tab.until("window.seen.errors === 1")

    seen = await tab.seen()
    assert seen["stops"] == 0  # the snippet did not recognise the terminal event
    assert seen["readyState"] == 2 and seen["isStreaming"] is False
    assert seen["cleared"] == []  # the message ended incomplete, never completed
    assert seen["text"]  # so the partial text stays on screen
    assert any(line.startswith("SSE error:") for line in tab.console)
    assert len(tab.stream_requests) == 1
    check_run(await hub.events(thread_id, run_id), "thread.run.cancelled")


async def test_a_bare_event_source_reconnects_once_and_stops_on_204(
    start_hub: StartHub, open_page: Any
) -> None:
    """Without the snippet's handlers, the browser reconnects when the hub ends the
    response (after the ``retry:`` the hub sends), with ``Last-Event-ID`` of the terminal
    event; the hub answers 204, which tells the EventSource to stop for good."""
    hub = await start_hub()
    tab = await open_page(hub)
    thread_id, run_id = await hub.start("streaming-example")
    last = check_run(await hub.events(thread_id, run_id)).last_id

    await tab.page.evaluate("([t, r]) => startBare(t, r)", [thread_id, run_id])
    await tab.until("window.bare.source.readyState === 2", units=10)

    bare = await tab.seen("bare")
    assert [int(i) for i, _name in bare["events"]] == list(range(1, last + 1))
    assert bare["events"][-1][1] == "thread.run.completed"
    assert bare["opens"] == 1 and bare["errors"] == 2  # the end of the response, the 204
    # The reconnect carried the cursor (the browser's own Last-Event-ID, which playwright
    # does not list among the request's headers): no event came twice, and it was a 204.
    assert len(tab.stream_requests) == 2
    assert tab.stream_statuses == [200, 204]
