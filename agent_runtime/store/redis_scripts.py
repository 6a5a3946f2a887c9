"""The Lua scripts of the Redis store (:mod:`agent_runtime.store.redis_store`), sent by
digest (``EVALSHA``).

Every write of the store is one of these scripts, so every write is atomic and costs one
command. Each script's digest is computed here (the SHA-1 of its text, as Redis computes
it), so a write needs no answer from Redis before it is sent: the store's writer puts a
``SCRIPT LOAD`` of every script ahead of its first pipeline (the same connection, in
order, so no extra round trip), and again ahead of the writes it resends after a
``NOSCRIPT`` reply (Redis restarted or flushed its script cache: all scripts are lost
together, so the writes of a pipeline fail or succeed together and are never reordered).

Key layout: see :mod:`agent_runtime.store.redis_store`; the claim keys
(``threads:live``, ``runs:live``) are :mod:`agent_runtime.cluster`'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["Script", "SCRIPTS", "CLAIM", "CREATE_RUN", "CREATE_THREAD"]


@dataclass(frozen=True, slots=True)
class Script:
    """A script's text and its digest (what ``EVALSHA`` names it by)."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


# A helper for the scripts below: add (or replace in place) one item of an index.
# KEYS: index, hash, seq. ARGV: id, json.
_PUT_ITEM = """
local function put(index, hash, seq, id, json)
  if redis.call('HEXISTS', hash, id) == 0 then
    redis.call('ZADD', index, redis.call('INCR', seq), id)
  end
  redis.call('HSET', hash, id, json)
end
"""

# KEYS: thread, index, hash, seq. ARGV: id, json. 0: no thread.
PUT = Script(
    _PUT_ITEM
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
put(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2])
return 1
"""
)

# As PUT, but -1 when the object does not exist yet.
REPLACE = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return -1 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: thread, logs hash. ARGV: run id, json. 0: no thread.
PUT_LOG = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)

# As PUT, for a run step. KEYS: as PUT, then the runs hash. ARGV: id, json, run id.
# 0: no thread; -1: no run.
PUT_STEP = Script(
    _PUT_ITEM
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[5], ARGV[3]) == 0 then return -1 end
put(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2])
return 1
"""
)

DELETE_THREAD = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"""
)

# KEYS: thread. ARGV: owner. 1: the thread had no owner and now has this one.
ADOPT = Script(
    """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local thread = cjson.decode(raw)
if thread.owner ~= nil and thread.owner ~= cjson.null then return 0 end
thread.owner = ARGV[1]
redis.call('SET', KEYS[1], cjson.encode(thread))
return 1
"""
)

# A new thread with its first messages. KEYS: thread, messages index, hash, seq.
# ARGV: thread json, then id, json per message.
CREATE_THREAD = Script(
    _PUT_ITEM
    + """
redis.call('SET', KEYS[1], ARGV[1])
for i = 2, #ARGV, 2 do
  put(KEYS[2], KEYS[3], KEYS[4], ARGV[i], ARGV[i + 1])
end
return 1
"""
)

# A claim of a thread for a run across every node (agent_runtime.cluster). KEYS: threads
# live, runs live. ARGV: thread id, run id, node id. The holder's run id, or false.
_CLAIM_BODY = """
local function claim(threads, runs, thread_id, run_id, node)
  local holder = redis.call('HGET', threads, thread_id)
  if holder and holder ~= run_id then return holder end
  redis.call('HSET', threads, thread_id, run_id)
  redis.call('HSET', runs, run_id, node .. ' ' .. thread_id)
  return false
end
"""

CLAIM = Script(_CLAIM_BODY + "return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])\n")

# A new run, in one step: the thread checked (or created: ARGV[1] is its json), the
# thread claimed for the run across nodes (ARGV[4] not empty: this node's id; KEYS[7],
# KEYS[8]: the claim keys), the run's messages added in order, then the run.
# KEYS: thread, messages index, messages hash, seq, runs index, runs hash[, threads live,
# runs live]. ARGV: thread json or '', run id, run json, node id or '', thread id, then id,
# json per message. Returns 1; 0: no thread; the holder's run id: the thread is claimed
# by another live run (nothing is written).
CREATE_RUN = Script(
    _PUT_ITEM
    + _CLAIM_BODY
    + """
if ARGV[1] == '' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[4] ~= '' then
  local holder = claim(KEYS[7], KEYS[8], ARGV[5], ARGV[2], ARGV[4])
  if holder then return holder end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1]) end
for i = 6, #ARGV, 2 do
  put(KEYS[2], KEYS[3], KEYS[4], ARGV[i], ARGV[i + 1])
end
put(KEYS[5], KEYS[6], KEYS[4], ARGV[2], ARGV[3])
return 1
"""
)

SCRIPTS = (PUT, REPLACE, PUT_LOG, PUT_STEP, DELETE_THREAD, ADOPT, CREATE_THREAD, CREATE_RUN)
"""Every script the store's writer sends (loaded together, see the module docstring)."""
