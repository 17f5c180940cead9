"""The ASGI application: the API, the pages, static assets, health probes, security headers, and one
mapping from engine errors to HTTP answers. :func:`create_app` builds it around an :class:`Ops`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import redis
import redis.asyncio
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.errors import ConveyorError
from scheduler.server import api, pages
from scheduler.server.auth import Tokens
from scheduler.server.errors import message_of, status_of
from scheduler.server.ops import Ops

log = logging.getLogger("conveyor.server")

# No inline script or style anywhere: every script and stylesheet is a file under /static.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response that does not set them itself. A plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each request through a task
    group and memory streams, which cost more CPU than a status request's own work."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in self.headers if name not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(ops: Ops, tokens: Tokens) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.async_redis = redis.asyncio.Redis.from_url(ops.settings.redis_url, decode_responses=True,
                                                             socket_connect_timeout=5)
        yield
        await app.state.async_redis.aclose()

    app = FastAPI(title="Conveyor", version="1", summary="DAGs of containers: the HTTP API of ctl server.",
                  openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.ops = ops
    app.state.tokens = tokens
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ConveyorError)
    @app.exception_handler(redis.RedisError)
    async def engine_error(request: Request, exc: Exception) -> Response:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, message_of(exc))
        if is_api(request):
            return JSONResponse({"detail": message_of(exc)}, status_code=status)
        return pages.error_page(request, status, message_of(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if is_api(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        if exc.status_code == 401:
            return RedirectResponse(pages.login_url(request), status_code=303)
        return pages.error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        if is_api(request):
            return JSONResponse({"detail": problems, "errors": jsonable_encoder(exc.errors())}, status_code=422)
        return pages.error_page(request, 422, problems)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        ready = ops.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(resources.files("scheduler.server") / "static")), name="static")
    return app
