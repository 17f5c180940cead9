"""Leader election for ``ctl scheduler``: a Redis lease with a TTL and a fencing token.

Any number of schedulers may run; the one holding the lease creates scheduled runs, the others
wait. The leader renews the lease every third of its TTL; when it dies, the lease expires and a
standby, which sleeps until exactly that moment, takes it over (the default TTL is 10 s, so a
failover takes at most ~10 s plus a few ms). Each new leadership gets a higher fencing token.
Scheduled runs are also idempotent per DAG and logical date, so even two leaders at once (a
paused process waking up after its lease expired) cannot create a run twice.

Part of the store layer (see :mod:`scheduler.store`): its scripts are ``leader_*.lua``.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.store import RunStore

DEFAULT_TTL = 10.0

@dataclass
class Lease:
    store: RunStore
    ttl: float = DEFAULT_TTL
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    token: int = 0

    def __post_init__(self) -> None:
        self.client: Any = self.store.r  # the lease is part of the store layer (leader_*.lua)
        self.keys = self.store.keys
        self._acquire = self.store.script("leader_acquire.lua")
        self._release = self.store.script("leader_release.lua")

    def hold(self) -> bool:
        """Take or renew the lease; True while we lead."""
        self.token = int(self._acquire(args=[self.store.prefix, self.identity, int(self.ttl * 1000)]))
        return self.token > 0

    def seconds_left(self) -> float:
        """Until the current lease (anyone's) expires; 0 when there is none."""
        ms = self.client.pttl(self.keys.leader())
        return max(0.0, ms / 1000) if ms and ms > 0 else 0.0

    def holder(self) -> str | None:
        value = self.client.get(self.keys.leader())
        return value.rsplit("|", 1)[0] if value else None

    def release(self) -> None:
        self._release(args=[self.store.prefix, self.identity])
        self.token = 0
