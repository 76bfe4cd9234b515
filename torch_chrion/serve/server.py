"""The embedded server: the app on uvicorn, one process, no cluster.

SIGTERM or SIGINT stops accepting connections, lets every request already received finish
(uvicorn's graceful shutdown), then runs the app's shutdown, which waits for running batches.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port; read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, *, log_level: str = "warning") -> uvicorn.Server:
    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=False)
    return uvicorn.Server(config)


def serve(app: Any, *, host: str, port: int, name: str, log_level: str = "warning") -> None:
    """Serve ``app`` until SIGTERM/SIGINT; prints the address it listens on first."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    print(f"serving model {name!r} on http://{host}:{bound}/v2/models/{name}", flush=True)
    sys.stdout.flush()
    make_server(app, log_level=log_level).run(sockets=[sock])
