"""Fan-out benchmarks: the broker against a naive aiohttp-sse baseline and a raw asyncio limit.

Run ``python -m benchmarks.fanout --quick`` (see ``benchmarks/README.md``).
"""
