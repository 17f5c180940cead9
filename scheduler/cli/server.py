"""``ctl server``: the HTTP API and web UI (scheduler/server), served by uvicorn."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import typer

from scheduler.cli import common, views
from scheduler.errors import ConveyorError


def is_loopback(host: str) -> bool:
    """Does ``host`` (an address or a name) mean this machine only?"""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def server(
    host: str = typer.Option("127.0.0.1", "--host", envvar="CONVEYOR_HOST", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", envvar="CONVEYOR_PORT", min=0, max=65535, help="Port to listen on."),
    tokens_file: Path | None = typer.Option(None, "--tokens-file", envvar="CONVEYOR_TOKENS_FILE",
                                            help="Lines of 'viewer TOKEN' or 'operator TOKEN'. Without it the "
                                                 "server has no authentication and listens on loopback only."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Serve the HTTP API (/api/v1), the web UI and /healthz, /readyz."""
    import logging

    import uvicorn

    from scheduler import logs
    from scheduler.server.app import create_app
    from scheduler.server.auth import Tokens
    from scheduler.server.ops import Ops

    tokens = Tokens.load(tokens_file)
    if not tokens.enabled and not is_loopback(host):
        raise ConveyorError(f"refusing to listen on {host} without a tokens file: anyone who can reach it could "
                            "trigger and cancel runs. Give --tokens-file FILE (or CONVEYOR_TOKENS_FILE), or "
                            "listen on 127.0.0.1")
    current = common.settings()
    ops = Ops(current)
    logs.setup(log_level.upper())
    log = logging.getLogger("conveyor.server")
    if tokens.enabled:
        log.info("authentication on: tokens from %s", tokens_file)
    else:
        views.err.print(f"no tokens file: no authentication, listening on loopback ({host}) only", highlight=False)
        log.warning("no tokens file: no authentication; listening on loopback only")
    log.info("serving http://%s:%d (Redis %s)", host if ":" not in host else f"[{host}]", port, current.safe_url)
    uvicorn.run(create_app(ops, tokens), host=host, port=port, log_level=log_level.lower(), log_config=None,
                proxy_headers=True, server_header=False)
