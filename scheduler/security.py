"""Start-up checks of how exposed the Redis a process uses is.

Redis is Conveyor's trust boundary: whoever can write it can queue work for the workers. A Redis
without a password is acceptable only where nobody else can reach it: on loopback or on a unix
socket. Anything else gets one warning line at start (``ctl scheduler``, ``ctl worker``), so that an
open Redis on a shared network does not go unnoticed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

import redis

log = logging.getLogger("conveyor.security")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure(connection_kwargs: Mapping[str, Any]) -> str | None:
    """Why this connection's Redis looks open to others, or None when it does not.

    ``connection_kwargs`` are redis-py's (``client.connection_pool.connection_kwargs``): ``path`` for a
    unix socket, else ``host``; ``password`` when one is set.
    """
    if connection_kwargs.get("password"):
        return None
    if connection_kwargs.get("path"):
        return None  # a unix socket: file permissions decide who reaches it
    host = str(connection_kwargs.get("host") or "localhost")
    if is_loopback(host):
        return None
    return (f"Redis at {host}:{connection_kwargs.get('port', 6379)} has no password and is not on loopback or a "
            "unix socket: anyone who can reach it can make the workers run containers. Set a password "
            "(REDIS_URL=redis://:PASSWORD@host:port/0, or an ACL user) or keep Redis on a private network; "
            "see the README's Security section")


def warn_if_exposed(client: redis.Redis, logger: logging.Logger = log) -> str | None:
    """Log :func:`exposure`'s warning once for ``client``'s Redis; returns it (None: nothing to say)."""
    warning = exposure(client.connection_pool.connection_kwargs)
    if warning:
        logger.warning(warning)
    return warning
