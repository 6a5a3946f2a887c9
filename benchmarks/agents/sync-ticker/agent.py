"""Benchmark agent: a synchronous ticker, written as the description's agents are.

Module-level code using ``env`` (run in the agent's own thread): it replies
``env.add_reply(str(time.time()))`` ``rate`` times a second, ``ticks`` times, after
``warmup`` seconds (time for the benchmark's subscribers to connect). Its settings come
from the thread's last user message, as JSON: ``{"ticks": 160, "rate": 8, "warmup": 6}``.
Used by ``python -m benchmarks.replies`` (stamp -> receipt of thread.message.completed).
"""

import json
import time

env = globals().get("env")

if env is not None:
    messages = env.list_messages()
    try:
        settings = json.loads(messages[-1]["content"]) if messages else {}
    except ValueError:
        settings = {}
    ticks = int(settings.get("ticks", 16))
    rate = float(settings.get("rate", 8))
    start = time.monotonic() + float(settings.get("warmup", 0))
    for i in range(ticks):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        env.add_reply(str(time.time()))
