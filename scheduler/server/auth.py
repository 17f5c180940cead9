"""Who may do what: bearer tokens from a tokens file, signed session cookies for the UI, CSRF tokens.

The tokens file holds ``ROLE TOKEN`` per line (``#`` comments); ROLE is ``viewer`` (read) or
``operator`` (also trigger, rerun, cancel, pause, backfill). Tokens are compared in constant time
against every known token and never logged or echoed. Without a tokens file every local client is an
operator, which is why the server then binds only to loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from scheduler.errors import ConveyorError

SESSION_COOKIE = "conveyor_session"
SESSION_TTL = 12 * 3600
MIN_TOKEN_LENGTH = 16


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"

    @property
    def can_write(self) -> bool:
        return self is Role.OPERATOR


@dataclass(frozen=True)
class Session:
    sid: str
    role: Role
    fingerprint: str  # which token opened it (a keyed hash, not the token): revoking the token ends it


class Tokens:
    """The known tokens by role. An empty set means no authentication (loopback only)."""

    def __init__(self, entries: list[tuple[Role, str]], secret: bytes | None = None):
        self.secret = secret or secrets.token_bytes(32)
        self._entries = [(role, token.encode()) for role, token in entries]
        self._fingerprints = {self.fingerprint(token): role for role, token in entries}

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @classmethod
    def load(cls, path: str | Path | None, secret: bytes | None = None) -> Tokens:
        if not path:
            return cls([], secret)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConveyorError(f"cannot read the tokens file {path}: {exc.strerror or exc}") from None
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            # Never quote the line: it holds a token.
            if len(parts) != 2 or parts[0] not in {r.value for r in Role}:
                raise ConveyorError(f"{path}:{number}: expected 'viewer TOKEN' or 'operator TOKEN'")
            if len(parts[1]) < MIN_TOKEN_LENGTH:
                raise ConveyorError(f"{path}:{number}: the token is shorter than {MIN_TOKEN_LENGTH} characters")
            entries.append((Role(parts[0]), parts[1]))
        if not entries:
            raise ConveyorError(f"{path}: no token in the file")
        return cls(entries, secret)

    def role_of(self, token: str | None) -> Role | None:
        """The token's role, or None. Every entry is compared (constant time), so timing tells nothing."""
        if not token:
            return None
        given = token.encode()
        found = None
        for role, known in self._entries:
            if hmac.compare_digest(given, known) and found is None:
                found = role
        return found

    def fingerprint(self, token: str) -> str:
        return hmac.new(self.secret, b"token:" + token.encode(), hashlib.sha256).hexdigest()[:32]

    # --- sessions ---------------------------------------------------------------------------------

    def open_session(self, token: str) -> tuple[str, Session] | None:
        """A signed cookie value for a valid token, else None."""
        role = self.role_of(token)
        if role is None:
            return None
        session = Session(secrets.token_urlsafe(16), role, self.fingerprint(token))
        return self._sign({"sid": session.sid, "role": role.value, "fp": session.fingerprint,
                           "exp": int(time.time()) + SESSION_TTL}), session

    def anonymous_session(self) -> tuple[str, Session]:
        """Without a tokens file: a session only so that forms carry a CSRF token."""
        session = Session(secrets.token_urlsafe(16), Role.OPERATOR, "")
        return self._sign({"sid": session.sid, "role": Role.OPERATOR.value, "fp": "",
                           "exp": int(time.time()) + SESSION_TTL}), session

    def session(self, cookie: str | None) -> Session | None:
        data = self._verify(cookie)
        if data is None or data.get("exp", 0) < time.time():
            return None
        if self.enabled:
            role = self._fingerprints.get(data.get("fp", ""))
            if role is None or role.value != data.get("role"):
                return None
        elif data.get("fp"):
            return None
        return Session(data["sid"], Role(data["role"]), data.get("fp", ""))

    def csrf_token(self, sid: str) -> str:
        return hmac.new(self.secret, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf_token(sid), given or "")

    def _sign(self, data: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
        mac = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def _verify(self, cookie: str | None) -> dict | None:
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        expected = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            return None
        try:
            return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
