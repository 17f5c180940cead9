"""Settings from the environment, and the Redis connections built from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import redis

from scheduler.model import memory_bytes

DEFAULT_LOG_CAP = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Where state lives. ``repr`` never shows the Redis password."""

    redis_url: str = field(repr=False)
    prefix: str = "conveyor"
    log_cap: int = DEFAULT_LOG_CAP
    attempt_lease: float = 15.0  # seconds: a dead worker's attempt is declared lost within about this long
    lost_counts: bool = True  # a lost attempt counts against the step's retries
    shutdown_grace: float = 30.0  # seconds a stopping worker lets its running step finish
    default_cpus: float | None = None  # limits for steps that set none (ctl worker --default-cpus)
    default_memory: int | None = None
    allowed_mounts: tuple[str, ...] = ()  # host paths steps may mount (ctl worker --allow-mount)
    signing_key: bytes | None = field(default=None, repr=False)  # signs and verifies step plans (signing.py)

    @classmethod
    def from_env(cls, redis_url: str | None = None) -> Settings:
        return cls(
            redis_url=redis_url or os.environ.get("REDIS_URL", ""),
            prefix=os.environ.get("CONVEYOR_PREFIX", "conveyor"),
            log_cap=int(os.environ.get("CONVEYOR_LOG_CAP", DEFAULT_LOG_CAP)),
            attempt_lease=float(os.environ.get("CONVEYOR_ATTEMPT_LEASE", 15.0)),
            lost_counts=os.environ.get("CONVEYOR_LOST_COUNTS", "1").lower() not in {"0", "false", "no"},
            shutdown_grace=float(os.environ.get("CONVEYOR_SHUTDOWN_GRACE", 30.0)),
            default_cpus=float(os.environ.get("CONVEYOR_DEFAULT_CPUS") or 0) or None,
            default_memory=memory_bytes(os.environ.get("CONVEYOR_DEFAULT_MEMORY")),
            allowed_mounts=tuple(p for p in os.environ.get("CONVEYOR_ALLOW_MOUNTS", "").split(os.pathsep) if p),
            signing_key=signing_key_from_env(),
        )

    @property
    def safe_url(self) -> str:
        return redact(self.redis_url)

    def __repr__(self) -> str:
        return f"Settings(redis_url={self.safe_url!r}, prefix={self.prefix!r})"

    def connect(self, *, decode: bool = True) -> redis.Redis:
        """A client for this URL (``redis://``, ``rediss://``, ``unix://``) with retries on blips."""
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        from scheduler import redis_url  # Sentinel URLs: a separate module (scheduler/redis_url.py)

        if redis_url.is_sentinel(self.redis_url):
            return redis_url.connect(self.redis_url, decode=decode)
        return redis.Redis.from_url(
            self.redis_url,
            decode_responses=decode,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )


def signing_key_from_env() -> bytes | None:
    """``CONVEYOR_SIGNING_KEY`` (the key itself) or ``CONVEYOR_SIGNING_KEY_FILE`` (a file holding it)."""
    value = os.environ.get("CONVEYOR_SIGNING_KEY", "").strip()
    path = os.environ.get("CONVEYOR_SIGNING_KEY_FILE", "").strip()
    if not value and path:
        from scheduler.errors import ConveyorError

        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ConveyorError(f"CONVEYOR_SIGNING_KEY_FILE={path}: cannot read it ({exc.strerror})") from None
    return value.encode() if value else None


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    from scheduler import redis_url

    if redis_url.is_sentinel(url):
        return redis_url.redact(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
