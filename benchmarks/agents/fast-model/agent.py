"""Benchmark workload (``python -m benchmarks.fast_model``): a model as fast as possible.

One streamed completion on ``simulated:tokens=2000,rate=0`` (the run's ``model`` may name
another spec, e.g. with ``delay=`` so that subscribers attach before the first token),
iterated as the async example does, then added to the thread. What the hub does per
token (pump, run log, broker publish, flush to every subscriber) is what it measures.
"""

from nearai.agents.environment import Environment


async def run(env: Environment) -> None:
    handler = await env.acompletion(await env.alist_messages(), stream=True)
    async for _chunk in handler:
        pass
    await env.aadd_reply(handler)
