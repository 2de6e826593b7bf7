"""`smoothgrad serve`: a local page to explore σ and n on your own images.

Needs the ``web`` extra (``pip install "smoothgrad[web]"``: Starlette and uvicorn). The page
is one static HTML file with its script and style, served from the package: nothing is
fetched from the internet. Run it with ``smoothgrad serve`` or `serve`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from smoothgrad import models
from smoothgrad.web.app import MAX_UPLOAD, create_app

__all__ = ["MAX_UPLOAD", "create_app", "serve"]

_LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]


def serve(model: str = models.DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 8000,
          weights: str | Path | None = None, device: str | None = None,
          max_upload: int = MAX_UPLOAD, quiet: bool = False) -> None:
    """Serve the page for `model` (a `smoothgrad.models.load` name) until interrupted.

    Binds to `host` (loopback by default: the page is for you, not your network). Uploads
    are decoded in a temporary folder that is removed on exit; results stay in memory.
    """
    import uvicorn

    loaded = models.load(model, weights=weights, device=device)
    allowed = None if host in ("0.0.0.0", "::", "") else [*_LOOPBACK, host]
    with tempfile.TemporaryDirectory(prefix="smoothgrad-serve-") as workdir:
        app = create_app(loaded, model_name=model, workdir=Path(workdir),
                         max_upload=max_upload, allowed_hosts=allowed)
        shown = f"[{host}]" if ":" in host else host
        if not quiet:
            print(f"smoothgrad serve: http://{shown}:{port}/ ({model}; Ctrl-C stops it)",
                  flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=2)
