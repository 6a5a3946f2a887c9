"""Benchmark agent: the asynchronous reference for ``sync-ticker``.

``async def run(env)`` on the hub's loop: ``rate`` times a second, ``ticks`` times, after
``warmup`` seconds, either ``await env.aemit("tick", {"stamp": time.time()})`` (``"mode":
"emit"``, the default: one event per tick) or ``await env.aadd_reply(str(time.time()))``
(``"mode": "reply"``). Settings: the thread's last user message as JSON, as for
``sync-ticker``.
"""

import asyncio
import json
import time

from nearai.agents.environment import Environment


async def run(env: Environment) -> None:
    messages = await env.alist_messages()
    try:
        settings = json.loads(messages[-1]["content"]) if messages else {}
    except ValueError:
        settings = {}
    ticks = int(settings.get("ticks", 16))
    rate = float(settings.get("rate", 8))
    reply = settings.get("mode") == "reply"
    loop = asyncio.get_running_loop()
    start = loop.time() + float(settings.get("warmup", 0))
    for i in range(ticks):
        wait = start + i / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if reply:
            await env.aadd_reply(str(time.time()))
        else:
            await env.aemit("tick", {"stamp": time.time()})
