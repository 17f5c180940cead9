"""Settings from the environment, and the Redis connections built from them.

Every ``CONVEYOR_*`` variable and ``REDIS_URL`` is read and checked here, when a command starts, so
that a bad value is one :class:`ConfigError` (exit 2) naming the variable, the value and the forms it
accepts, never a traceback later. A variable set to the empty string counts as unset. Durations take
``15s``, ``1m``, ``1h30m`` or plain seconds (``10``, ``2.5``), through the parser DAG files use.

Options of ``ctl scheduler`` and ``ctl worker`` that read an environment variable (``--lease-ttl``
and ``CONVEYOR_LEASE_TTL``, say) parse it with :func:`scheduler.durations.setting_seconds` too
(``scheduler/cli/common.py``), so the same text means the same time whichever way it is given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from scheduler.durations import SETTING_FORMS, DurationError, setting_seconds
from scheduler.errors import ConfigError
from scheduler.model import memory_bytes

if TYPE_CHECKING:  # redis is imported where a connection is made: commands that need none start faster
    import redis

DEFAULT_LOG_CAP = 1024 * 1024
DEFAULT_LOOKAHEAD = 60.0  # seconds: how far ahead runs are staged (see scheduler/staging.py)
REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_FORMS = ("redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH/TO/redis.sock[?db=N]")
RUNTIMES = ("docker", "kubernetes")
SIZE_FORMS = "a size like 512k, 1m or 1g, or plain bytes like 1048576"
FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

Environ = Mapping[str, str]


@dataclass(frozen=True)
class Settings:
    """Where state lives and how workers behave. ``repr`` never shows the Redis password."""

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
    def from_env(cls, redis_url: str | None = None, environ: Environ | None = None) -> Settings:
        """Every setting from the environment (``redis_url`` wins over ``REDIS_URL``); raises ConfigError."""
        env = os.environ if environ is None else environ
        url = redis_url or env.get("REDIS_URL", "")
        if url:
            check_redis_url(url)
        runtime_kind(env)  # checked at start, although the runtime is chosen where it is built
        return cls(
            redis_url=url,
            prefix=_get(env, "CONVEYOR_PREFIX") or "conveyor",
            log_cap=env_size(env, "CONVEYOR_LOG_CAP", DEFAULT_LOG_CAP) or DEFAULT_LOG_CAP,
            attempt_lease=env_seconds(env, "CONVEYOR_ATTEMPT_LEASE", 15.0, positive=True),
            lost_counts=env_flag(env, "CONVEYOR_LOST_COUNTS", True),
            shutdown_grace=env_seconds(env, "CONVEYOR_SHUTDOWN_GRACE", 30.0),
            default_cpus=env_cpus(env, "CONVEYOR_DEFAULT_CPUS"),
            default_memory=env_size(env, "CONVEYOR_DEFAULT_MEMORY", None),
            allowed_mounts=env_paths(env, "CONVEYOR_ALLOW_MOUNTS"),
            signing_key=signing_key_from_env(env),
        )

    @property
    def safe_url(self) -> str:
        return redact(self.redis_url)

    def __repr__(self) -> str:
        return f"Settings(redis_url={self.safe_url!r}, prefix={self.prefix!r})"

    def connect(self, *, decode: bool = True) -> redis.Redis:
        """A client for this URL (``redis://``, ``rediss://``, ``unix://``) with retries on blips."""
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        from scheduler import redis_url  # Sentinel URLs: a separate module (scheduler/redis_url.py)

        if redis_url.is_sentinel(self.redis_url):
            return redis_url.connect(self.redis_url, decode=decode)
        check_redis_url(self.redis_url)
        return redis.Redis.from_url(
            self.redis_url,
            decode_responses=decode,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )


# --- one parser per kind of value ------------------------------------------------------------------


def _get(env: Environ, name: str) -> str:
    return env.get(name, "").strip()


def _bad(name: str, raw: str, forms: str, why: str = "") -> ConfigError:
    return ConfigError(f"{name}={raw!r} {why or 'is not valid'}: use {forms}")


def env_seconds(env: Environ, name: str, default: float, *, positive: bool = False) -> float:
    """A duration in seconds: ``15s``, ``1m``, ``1h30m`` or plain seconds (``10``, ``2.5``)."""
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = setting_seconds(raw)
    except DurationError:
        raise _bad(name, raw, SETTING_FORMS, "is not a duration") from None
    if positive and value <= 0:
        raise _bad(name, raw, SETTING_FORMS, "must be more than 0")
    return value


def env_flag(env: Environ, name: str, default: bool) -> bool:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        return FLAG_VALUES[raw.lower()]
    except KeyError:
        raise _bad(name, raw, "1 or 0 (true/false, yes/no, on/off)", "is not a yes or no") from None


def env_cpus(env: Environ, name: str) -> float | None:
    """A CPU limit (``0.5``, ``2``); unset or 0 means none."""
    raw = _get(env, name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise _bad(name, raw, "a number of CPUs like 0.5 or 2 (0: no limit)", "is not a number of CPUs")
    return value or None


def env_size(env: Environ, name: str, default: int | None) -> int | None:
    raw = _get(env, name)
    if not raw:
        return default
    return parse_size(raw, name)


def parse_size(raw: str, name: str) -> int:
    """Bytes from ``512k``, ``1m``, ``1g`` or plain bytes; ``name`` is what the message calls the value."""
    if not re.fullmatch(r"\d+[bkmg]?", raw.strip().lower()):
        raise _bad(name, raw, SIZE_FORMS, "is not a size")
    return memory_bytes(raw) or 0


def env_paths(env: Environ, name: str) -> tuple[str, ...]:
    """Absolute host paths separated by ``:``."""
    raw = _get(env, name)
    paths = tuple(p for p in raw.split(os.pathsep) if p)
    relative = [p for p in paths if not p.startswith("/")]
    if relative:
        raise _bad(name, raw, "absolute paths separated by ':', like /data:/srv/shared",
                   f"has a relative path ({relative[0]!r})")
    return paths


def signing_key_from_env(environ: Environ | None = None) -> bytes | None:
    """``CONVEYOR_SIGNING_KEY`` (the key itself) or ``CONVEYOR_SIGNING_KEY_FILE`` (a file holding it)."""
    env = os.environ if environ is None else environ
    value = _get(env, "CONVEYOR_SIGNING_KEY")
    path = _get(env, "CONVEYOR_SIGNING_KEY_FILE")
    if not value and path:
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"CONVEYOR_SIGNING_KEY_FILE={path!r}: cannot read it ({exc.strerror}): use the "
                              "path of a readable file holding the key") from None
    return value.encode() if value else None


def runtime_kind(environ: Environ | None = None) -> str:
    """``CONVEYOR_RUNTIME``: ``docker`` (the default) or ``kubernetes``."""
    env = os.environ if environ is None else environ
    raw = _get(env, "CONVEYOR_RUNTIME")
    kind = raw.lower() or "docker"
    if kind not in RUNTIMES:
        raise _bad("CONVEYOR_RUNTIME", raw, " or ".join(RUNTIMES), "is not a runtime")
    return kind


def debug_enabled(environ: Environ | None = None) -> bool:
    """``CONVEYOR_DEBUG``: show tracebacks of unexpected errors. Read where an error is already being
    handled, so any value but empty and 0/false/no/off turns it on (never an error of its own)."""
    env = os.environ if environ is None else environ
    return FLAG_VALUES.get(_get(env, "CONVEYOR_DEBUG").lower(), bool(_get(env, "CONVEYOR_DEBUG")))


# --- Redis URLs ----------------------------------------------------------------------------------------


def check_redis_url(url: str, name: str = "REDIS_URL", *, options: bool = True) -> str:
    """``url`` if redis-py can use it, else a ConfigError naming ``name`` and the accepted forms (the
    password never shown). ``options=False``: its form only (scheme, host, port, database), without
    importing redis, for a command that may not need Redis at all; :meth:`Settings.connect` checks it all."""
    problem = _redis_url_problem(url, options)
    if problem:
        raise ConfigError(f"{name}={_shown(url)!r} is not a Redis URL ({problem}): use {REDIS_FORMS}")
    return url


def _redis_url_problem(url: str, options: bool = True) -> str | None:
    if url.startswith("redis+sentinel://"):
        from scheduler import redis_url  # scheduler/redis_url.py (it imports redis)

        return redis_url.problem(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES or not url.lower().startswith(f"{scheme}://"):
        return f"unknown scheme {parts.scheme!r}" if "://" in url else "no redis://, rediss:// or unix:// scheme"
    if scheme == "unix":
        if not parts.path:
            return "no socket path"
    else:
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:
            return "the port is not a number from 0 to 65535"
        db = parts.path.strip("/")
        if db and not db.isdigit():
            return f"the database {db!r} is not a number"
    if not options:
        return None
    import redis

    try:
        redis.ConnectionPool.from_url(url).make_connection()  # builds the connection; connects to nothing
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        return f"unknown option {unknown.group(1)!r}" if unknown else str(exc)
    except ValueError as exc:
        return str(exc).rstrip(".")
    return None


def _shown(url: str) -> str:
    try:
        return redact(url)
    except ValueError:
        return "(not shown: it may hold a password)"


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


# --- ctl through a server --------------------------------------------------------------------------

SERVER_FORMS = "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH] (the URL ctl server answers on)"


@dataclass(frozen=True)
class ServerEndpoint:
    """``CONVEYOR_SERVER`` and ``CONVEYOR_TOKEN``: where ``ctl`` sends its commands instead of Redis, and the
    bearer token it sends. ``repr`` never shows the token."""

    url: str
    token: str | None = field(default=None, repr=False)


def server_from_env(environ: Environ | None = None) -> ServerEndpoint | None:
    """The server ``ctl`` should talk to, or None (talk to Redis); a bad URL is a ConfigError (exit 2)."""
    env = os.environ if environ is None else environ
    raw = _get(env, "CONVEYOR_SERVER")
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("CONVEYOR_SERVER", raw, SERVER_FORMS)
    if parts.username or parts.password:  # not echoed: it may be a secret
        raise ConfigError("CONVEYOR_SERVER must not hold a user or password: put the token in CONVEYOR_TOKEN")
    if parts.query or parts.fragment:
        raise _bad("CONVEYOR_SERVER", raw, SERVER_FORMS, "has a query or fragment")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise _bad("CONVEYOR_SERVER", raw, SERVER_FORMS, "has a bad port") from None
    return ServerEndpoint(raw.rstrip("/"), _get(env, "CONVEYOR_TOKEN") or None)
