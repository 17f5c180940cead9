"""How engine errors become HTTP statuses: one table, used by the API (JSON) and the pages (HTML)."""

from __future__ import annotations

import redis

from scheduler.errors import ConveyorError, NotFoundError, ParamError, SpecError, UnavailableError


class BadInput(ConveyorError):
    """A request whose values do not parse (a date, a cursor, a duration): 422."""


def status_of(exc: Exception) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, (ParamError, SpecError, BadInput, ValueError)):
        return 422
    if isinstance(exc, (UnavailableError, redis.RedisError)):
        return 503
    if isinstance(exc, ConveyorError):
        return 409  # the request is fine but the state does not allow it (a run still running, nothing to rerun)
    return 500


def message_of(exc: Exception) -> str:
    if isinstance(exc, redis.RedisError):
        return "Redis is unavailable; try again shortly"
    if isinstance(exc, (ConveyorError, ValueError)):
        return str(exc)
    return "unexpected error; see the server's log"
