"""Leader election for ``ctl scheduler``: a Redis lease with a TTL and a fencing token.

Any number of schedulers may run; the one holding the lease creates scheduled runs, the others
wait. The leader renews the lease every third of its TTL; when it dies, the lease expires and a
standby, which sleeps until exactly that moment, takes it over (the default TTL is 10 s, so a
failover takes at most ~10 s plus a few ms). Each new leadership gets a higher fencing token.
Scheduled runs are also idempotent per DAG and logical date, so even two leaders at once (a
paused process waking up after its lease expired) cannot create a run twice.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

import redis

from scheduler.keys import Keys

DEFAULT_TTL = 10.0

# KEYS: 1 lease, 2 token counter.  ARGV: 1 my id, 2 ttl ms.
# Returns the fencing token while this id holds the lease (new or renewed), else 0.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local holder, token = string.match(current, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: 1 lease.  ARGV: 1 my id.  Releases the lease only if this id holds it.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and string.match(current, '^(.*)|%d+$') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Lease:
    client: redis.Redis
    keys: Keys
    ttl: float = DEFAULT_TTL
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    token: int = 0

    def __post_init__(self) -> None:
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Take or renew the lease; True while we lead."""
        self.token = int(self._acquire(keys=[self.keys.leader(), self.keys.leader_token()],
                                       args=[self.identity, int(self.ttl * 1000)]))
        return self.token > 0

    def seconds_left(self) -> float:
        """Until the current lease (anyone's) expires; 0 when there is none."""
        ms = self.client.pttl(self.keys.leader())
        return max(0.0, ms / 1000) if ms and ms > 0 else 0.0

    def holder(self) -> str | None:
        value = self.client.get(self.keys.leader())
        return value.rsplit("|", 1)[0] if value else None

    def release(self) -> None:
        self._release(keys=[self.keys.leader()], args=[self.identity])
        self.token = 0
