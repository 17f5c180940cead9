"""``redis+sentinel://`` URLs: a Redis primary found through Sentinel, followed across failovers.

    REDIS_URL=redis+sentinel://[:password@]host1:26379,host2:26379/service_name[/db]

The hosts are Sentinels; ``service_name`` is the monitored primary's name (``sentinel monitor NAME``);
``db`` defaults to 0; the password is the data nodes' (``requirepass``/``masterauth``). Add
``?sentinel_password=...`` when the Sentinels themselves require one. Every process (``ctl``,
schedulers, workers, RQ under them) connects through :func:`connect`, so after a failover each
client asks the Sentinels for the new primary: a connection error, or ``READONLY`` from a demoted
primary (redis-py turns it into a connection error), is retried with back-off for up to
``FAILOVER_PATIENCE`` seconds before it reaches the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from scheduler.errors import ConveyorError

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
RETRIES = 12  # 0.1 s doubling to 2 s, then 2 s: ~17 s in all, beyond a failover with the documented timeouts
FAILOVER_PATIENCE = 17.0


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:  # never the passwords
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelUrl({hosts}/{self.service}/{self.db})"


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


def parse(url: str) -> SentinelUrl:
    """The parts of a ``redis+sentinel://`` URL; a malformed one is a :class:`ConveyorError` saying why."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ConveyorError(f"not a {SCHEME}:// URL")
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[1]) if ":" in credentials else unquote(credentials)
    sentinels = []
    for item in filter(None, netloc.split(",")):
        if item.startswith("["):  # [::1]:26379
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.partition(":")
        try:
            sentinels.append((host, int(port) if port else DEFAULT_PORT))
        except ValueError:
            raise ConveyorError(f"{SCHEME}: bad port in {item!r} (expected host:port)") from None
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ConveyorError(f"REDIS_URL: expected {SCHEME}://[:password@]host1:26379,host2:26379/service_name/db")
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError:
        raise ConveyorError(f"{SCHEME}: the database must be a number, not {path[1]!r}") from None
    query = parse_qs(parts.query)
    return SentinelUrl(tuple(sentinels), unquote(path[0]), db, password or None,
                       next(iter(query.get("sentinel_password") or []), None))


def problem(url: str) -> str | None:
    """What is wrong with a ``redis+sentinel://`` URL, or None."""
    try:
        parse(url)
    except (ConveyorError, ValueError) as exc:
        return str(exc)
    return None


def connect(url: str, *, decode: bool = True) -> redis.Redis:
    """A client of the current primary of the URL's service, that follows failovers (see the module)."""
    parsed = parse(url)
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), RETRIES)
    sentinel = Sentinel(list(parsed.sentinels), socket_timeout=2, socket_connect_timeout=2,
                        sentinel_kwargs={"password": parsed.sentinel_password, "socket_timeout": 2,
                                         "socket_connect_timeout": 2})
    return sentinel.master_for(
        parsed.service, db=parsed.db, password=parsed.password, decode_responses=decode, socket_connect_timeout=2,
        socket_timeout=10, health_check_interval=30, retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def redact(url: str) -> str:
    """The URL with its passwords replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = ":***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{k}=***" if k == "sentinel_password" else f"{k}={v[0]}"
                     for k, v in parse_qs(parts.query).items())
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
