"""``ctl`` through ``ctl server``: with ``CONVEYOR_SERVER`` (and ``CONVEYOR_TOKEN``) set, the commands that
read or drive runs ask the HTTP API instead of Redis, so a team member needs a token, not Redis's password.

Each method returns the same plain data the local path builds (the API returns what ``ctl ... -o json``
prints, from the same functions), so a command only chooses its source and renders as before. Every
failure is a :class:`ConveyorError` with one line to print: the server unreachable, the token refused,
or the server's own message (an unknown run, a bad param) with the exit code the local path gives.
The token goes in the ``Authorization`` header and nowhere else: no message, log or ``repr`` shows it.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from scheduler.errors import ConveyorError, NotFoundError, ParamError, UnavailableError
from scheduler.settings import ServerEndpoint

TIMEOUT_SECONDS = 30.0
PAGE = 500  # the API's largest page of runs
POLL_SECONDS = 0.5  # --wait/--watch through the server: a status request every half second
FOLLOW_TIMEOUT = 3600.0  # logs -f: a step may print nothing for long; the server ends the stream


class Remote:
    """The API of one ``ctl server`` (``/api/v1``), as ``ctl``'s commands need it."""

    def __init__(self, endpoint: ServerEndpoint, timeout: float = TIMEOUT_SECONDS):
        self.url = endpoint.url
        self._token = endpoint.token
        self.timeout = timeout
        self.poll_seconds = POLL_SECONDS

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    # --- runs -----------------------------------------------------------------------------------

    def trigger(self, dag: str, params: dict[str, Any], priority: str | None) -> str:
        body = {"params": params, **({"priority": priority} if priority else {})}
        return str(self._json("POST", f"/dags/{_seg(dag)}/runs", body=body)["run_id"])

    def runs(self, dag: str | None, limit: int) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """The newest ``limit`` runs (pages of the API joined) and, for a DAG, the scheduler's error about
        it as ``(message, since)`` (what ``ctl runs DAG`` warns about)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        problem: tuple[str, str] | None = None
        while len(found) < limit:
            query = {"limit": min(PAGE, limit - len(found)), **({"dag": dag} if dag else {}),
                     **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", "/runs", query=query)
            if page.get("dag_error"):
                problem = (page["dag_error"]["message"], page["dag_error"]["since"])
            found += page["runs"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return found, problem

    def status(self, run_id: str) -> dict[str, Any]:
        """``ctl status RUN -o json``."""
        return dict(self._json("GET", f"/runs/{_seg(run_id)}"))

    def log(self, run_id: str, step: str, attempt: int | None) -> bytes:
        """The attempt's stored output, raw bytes (the last attempt by default)."""
        query = {"attempt": attempt} if attempt else None
        return self._call("GET", f"/runs/{_seg(run_id)}/steps/{_seg(step)}/logs", query=query)[1]

    def log_attempt(self, run_id: str, step: str, attempt: int | None) -> int:
        """The attempt ``ctl logs`` shows (the one asked for, else the last); NotFoundError when there is none."""
        query = {"attempt": attempt} if attempt else None
        _, headers, _ = self._exchange("GET", f"/runs/{_seg(run_id)}/steps/{_seg(step)}/logs", query=query)
        return int(headers["X-Conveyor-Attempt"])

    def follow_log(self, run_id: str, step: str, attempt: int) -> Iterator[bytes]:
        """The attempt's output so far, then each new chunk, until the attempt ends (the server decides)."""
        path = f"/runs/{_seg(run_id)}/steps/{_seg(step)}/logs"
        with self._open("GET", path, query={"attempt": attempt, "follow": "true"}, timeout=FOLLOW_TIMEOUT) as response:
            while True:
                try:
                    chunk = response.read1(65536)
                except (OSError, http.client.HTTPException) as exc:
                    raise self._unreachable(exc) from None
                if not chunk:
                    return
                yield chunk

    def rerun(self, run_id: str, *, step: str | None, downstream: bool, everything: bool,
              latest: bool) -> dict[str, Any]:
        """``{"run_id", "rerun": [steps], "version", "notes": [...]}``."""
        body = {"step": step, "no_downstream": not downstream, "all": everything, "latest": latest}
        return dict(self._json("POST", f"/runs/{_seg(run_id)}/rerun", body=body))

    def cancel(self, run_id: str, step: str | None) -> dict[str, Any]:
        """``{"run_id", "state", "stopping", "ended"}`` (with ``step``: ``{"run_id", "step", "state", "ended"}``);
        ``ended`` is True when there was nothing left to cancel (the server answers 409 then)."""
        status, payload = self._call("POST", f"/runs/{_seg(run_id)}/cancel", body={"step": step}, ok=(200, 409))
        data = _decode(payload)
        if status == 409 and "ended" not in data:
            raise ConveyorError(str(data.get("detail") or "the server refused to cancel"))
        return dict(data)

    # --- DAGs -----------------------------------------------------------------------------------

    def dags(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``ctl dags``: every DAG's row, and the import errors of files that never defined a DAG."""
        data = self._json("GET", "/catalog")
        return data["dags"], data["import_errors"]

    def next_fires(self, dag: str, count: int, after: datetime | None) -> dict[str, Any]:
        """``ctl next DAG -o json``."""
        query: dict[str, Any] = {"n": count, **({"from": after.isoformat()} if after else {})}
        return dict(self._json("GET", f"/dags/{_seg(dag)}/next", query=query))

    def set_paused(self, dag: str, paused: bool) -> None:
        self._json("POST", f"/dags/{_seg(dag)}/{'pause' if paused else 'unpause'}")

    # --- HTTP -----------------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, query: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None) -> Any:
        return _decode(self._call(method, path, query=query, body=body)[1])

    def _call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 201)) -> tuple[int, bytes]:
        status, _, payload = self._exchange(method, path, query=query, body=body, ok=ok)
        return status, payload

    def _exchange(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                  body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 201)
                  ) -> tuple[int, Mapping[str, str], bytes]:
        """One request, read whole: status, headers, body."""
        with self._open(method, path, query=query, body=body, ok=ok) as response:
            try:
                return response.status, response.headers, response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from None

    def _open(self, method: str, path: str, *, query: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 201),
              timeout: float | None = None) -> Any:
        """The response, open (for a stream); any other status than ``ok`` raised as its ConveyorError."""
        url = f"{self.url}/api/v1{path}" + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return exc
            raise self._refusal(exc.code, exc.read()) from None
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> UnavailableError:
        reason = getattr(exc, "reason", None) or exc
        return UnavailableError(f"cannot reach ctl server at {self.url}: {reason} (check CONVEYOR_SERVER)")

    def _refusal(self, status: int, payload: bytes) -> ConveyorError:
        detail = _detail(payload) or f"HTTP {status}"
        if status == 401:
            what = "no CONVEYOR_TOKEN was sent" if not self._token else "it does not know CONVEYOR_TOKEN"
            return ConveyorError(f"ctl server at {self.url} refused the request: {what} (401)")
        if status == 403:
            return ConveyorError(f"ctl server at {self.url} refused the request: {detail} (403)")
        if status == 404:
            return NotFoundError(detail)
        if status == 422:
            return ParamError(detail)
        if status >= 500:
            return UnavailableError(f"ctl server at {self.url}: {detail} ({status})")
        return ConveyorError(detail)


def _seg(value: str) -> str:
    """One path segment: a name with ``/`` or ``?`` cannot reach another endpoint."""
    return quote(value, safe="")


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        raise ConveyorError("the server's answer is not JSON: is CONVEYOR_SERVER the URL of ctl server?") from None


def _detail(payload: bytes) -> str | None:
    try:
        detail = json.loads(payload).get("detail")
    except (ValueError, AttributeError):
        return None
    if isinstance(detail, str):
        return detail
    return json.dumps(detail) if detail else None
