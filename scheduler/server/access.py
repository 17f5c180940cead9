"""Who is asking, per request: a bearer token (API clients), a session cookie (the UI) or, without a
tokens file, any local client. FastAPI dependencies that answer 401/403, and the CSRF checks."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from scheduler.server.auth import SESSION_COOKIE, Role, Session, Tokens

CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Principal:
    role: Role
    session: Session | None  # set when the request came with the UI's cookie
    via: str  # bearer | cookie | open

    @property
    def can_write(self) -> bool:
        return self.role.can_write


def tokens_of(request: Request) -> Tokens:
    return request.app.state.tokens


def identify(request: Request) -> Principal | None:
    tokens = tokens_of(request)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        role = tokens.role_of(token.strip()) if scheme.lower() == "bearer" and tokens.enabled else None
        if role is None and not tokens.enabled and scheme.lower() == "bearer":
            role = Role.OPERATOR  # no tokens file: loopback only, everyone local operates
        return Principal(role, None, "bearer") if role else None
    session = tokens.session(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        return Principal(session.role, session, "cookie")
    if not tokens.enabled:
        return Principal(Role.OPERATOR, None, "open")
    return None


def same_origin(request: Request) -> bool:
    """A browser's cross-site POST carries another Origin: refused whatever the credentials."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


# The two dependencies are coroutines although they only compare tokens held in memory: FastAPI runs a
# plain ``def`` dependency in its thread pool, and that hand-off costs more than the check itself.
async def api_reader(request: Request) -> Principal:
    who = identify(request)
    if who is None:
        raise HTTPException(401, "a token is required: send Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


async def api_writer(request: Request) -> Principal:
    who = await api_reader(request)
    if not who.can_write:
        raise HTTPException(403, f"the {who.role.value} role cannot change anything; an operator token can")
    if not same_origin(request):
        raise HTTPException(403, "cross-origin request refused")
    if who.via == "cookie" and who.session is not None and not tokens_of(request).csrf_ok(
            who.session.sid, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
    return who
