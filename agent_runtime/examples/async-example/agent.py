"""An asynchronous agent: it streams one reply and lets the hub persist it.

agentstream runs an agent with a top-level ``async def run(env)`` on its event loop, so the
agent awaits the ``a``-prefixed twins of the Environment's methods (``alist_messages``,
``acompletion``, ``aadd_reply``): the blocking ones are for agents run in a worker thread.
"""

import logging

from nearai.agents.environment import Environment

logger = logging.getLogger(__name__)


async def run(env: Environment) -> None:
    prompt = {"role": "system", "content": "You are a concise, friendly assistant."}
    messages = [prompt, *await env.alist_messages()]

    # stream=True: every chunk reaches the UI and /threads/{thread_id}/stream/{run_id}
    handler = await env.acompletion(messages, stream=True)
    chunks = 0
    async for _chunk in handler:
        chunks += 1
    logger.debug("streamed %d chunks", chunks)

    await env.aadd_reply(handler)  # write the full message to the thread
