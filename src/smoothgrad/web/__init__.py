"""`smoothgrad serve`: a local page to explore σ and n on your own images.

Needs the ``web`` extra (``pip install "smoothgrad[web]"``: Starlette and uvicorn). The page
is one static HTML file with its script and style, served from the package: nothing is
fetched from the internet. Run it with ``smoothgrad serve`` or `serve`.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from smoothgrad import models
from smoothgrad.web.app import MAX_UPLOAD, create_app

__all__ = ["MAX_UPLOAD", "ServeError", "create_app", "listen", "serve"]

_LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]


class ServeError(ValueError):
    """The page cannot be served where asked (port in use, unknown host); one line that
    starts with the setting at fault ("port 8000: ...")."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host` and `port` (0: any free port), ready for the server.

    Raises ServeError when the port is in use or not allowed, or the host is not an
    address of this machine.

    >>> with listen("127.0.0.1", 0) as sock:
    ...     sock.getsockname()[1] > 0
    True
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ServeError(f"host {host!r}: not an address of this machine ({exc.strerror})"
                         ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port}: in use on {host} (another server?); choose "
                             "another, or 0 for any free port") from None
        if exc.errno == errno.EACCES:
            raise ServeError(f"port {port}: not allowed for this user (ports below 1024 "
                             "need privileges); choose another, or 0 for any free port"
                             ) from None
        raise ServeError(f"host {host!r}: cannot listen there ({exc.strerror})") from None
    return sock


def serve(model: str = models.DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 8000,
          weights: str | Path | None = None, device: str | None = None,
          max_upload: int = MAX_UPLOAD, quiet: bool = False) -> None:
    """Serve the page for `model` (a `smoothgrad.models.load` name) until stopped.

    Binds to `host` (loopback by default: the page is for you, not your network) and `port`
    (0: any free port; the address is printed once the page is ready, unless `quiet`). The
    port is taken before the model loads, so a port in use fails at once (ServeError).
    Ctrl-C, SIGTERM and SIGHUP stop the server gracefully and return. Uploads are decoded in
    a temporary folder that is removed then; results stay in memory.
    """
    import uvicorn

    with listen(host, port) as listener:
        loaded = models.load(model, weights=weights, device=device)
        allowed = None if host in ("0.0.0.0", "::", "") else [*_LOOPBACK, host]
        stop = _Stop()
        with stop.installed(), tempfile.TemporaryDirectory(
                prefix="smoothgrad-serve-") as workdir:
            app = create_app(loaded, model_name=model, workdir=Path(workdir),
                             max_upload=max_upload, allowed_hosts=allowed)
            config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
            stop.server = uvicorn.Server(config)
            if not quiet:
                shown = f"[{host}]" if ":" in host else host
                print(f"smoothgrad serve: http://{shown}:{listener.getsockname()[1]}/ "
                      f"({model}; Ctrl-C stops it)", flush=True)
            # uvicorn raises Ctrl-C again once it has stopped gracefully: done
            with contextlib.suppress(KeyboardInterrupt):
                stop.server.run(sockets=[listener])


class _Stop:
    """SIGTERM and SIGHUP stop the server as Ctrl-C does (uvicorn's own graceful stop), so
    the temporary folder goes too; before the server runs they unwind like Ctrl-C."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                    if hasattr(signal, name))

    def __init__(self) -> None:
        self.server: Any = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.server is None:
            raise KeyboardInterrupt
        self.server.handle_exit(signum, frame)

    def installed(self) -> Any:
        """A context in which this object handles SIGTERM and SIGHUP (main thread only:
        elsewhere Python cannot set handlers); the previous handlers are restored."""
        stack = contextlib.ExitStack()
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                stack.callback(signal.signal, sig, signal.signal(sig, self))
        return stack
