"""The Starlette application: one static page, an upload that answers with server-sent events.

``POST /api/explain`` takes the image as the request body (or ``?sample=NAME``) and the
settings in the query string (``method``, ``noise``, ``samples``, ``strip``, ``seed``, and
``target``: a class index or label, by default the prediction). A bad request is answered
at once with a JSON ``error`` (size limit, non-image, truncated file, decompression bomb,
bad setting, unknown class); otherwise the response is an event stream
(``text/event-stream``, one JSON ``data:`` line per event) that lasts as long as the job.
When the page goes, the stream is cancelled and so is the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from smoothgrad import images
from smoothgrad.config import DEFAULT_NOISE
from smoothgrad.models import LoadedModel, ModelError
from smoothgrad.web.jobs import MAX_SAMPLES, METHODS, Job, Results, Scheduler, Settings

__all__ = ["MAX_UPLOAD", "create_app"]

MAX_UPLOAD = 20 * 1024 * 1024
"""Uploads larger than this many bytes are refused."""
_FINAL = ("done", "error", "stopped")
_KEEP_ALIVE_SECONDS = 5.0
_MEDIA = {"png": "image/png", "npy": "application/octet-stream"}


class BadRequest(Exception):
    """A request the page must explain to the user; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def create_app(model: LoadedModel, *, model_name: str, workdir: Path,
               max_upload: int = MAX_UPLOAD, allowed_hosts: list[str] | None = None) -> Starlette:
    """The page for `model` (from `smoothgrad.models.load`).

    Uploads are written to `workdir` only while they are decoded. `allowed_hosts` guards
    against DNS rebinding (None allows any ``Host`` header).
    """
    results = Results()
    scheduler = Scheduler(model, results)
    app = Starlette(
        routes=[
            Route("/", _page),
            Route("/api/info", _info),
            Route("/api/samples/{name}", _sample),
            Route("/api/explain", _explain, methods=["POST"]),
            Route("/api/results/{job}/{name:str}", _download),
            Mount("/static", StaticFiles(directory=str(_static())), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])],
        lifespan=_lifespan,
    )
    app.state.served = _Served(model_name, workdir, max_upload, results, scheduler)
    app.state.scheduler = scheduler
    return app


@dataclass(frozen=True)
class _Served:
    """What the page's handlers share (kept on the app's state)."""

    model_name: str
    workdir: Path
    max_upload: int
    results: Results
    scheduler: Scheduler


def _served(request: Request) -> _Served:
    served: _Served = request.app.state.served
    return served


def _static() -> Any:
    return resources.files("smoothgrad.web") / "static"


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await asyncio.to_thread(app.state.scheduler.close)


async def _page(_: Request) -> Response:
    return FileResponse(str(_static() / "index.html"), headers={"Cache-Control": "no-cache"})


async def _info(request: Request) -> Response:
    served = _served(request)
    return JSONResponse({"model": served.model_name, "methods": METHODS,
                         "samples": sorted(images.sample_images()),
                         "labels": served.scheduler.model.labels,
                         "max_upload": served.max_upload, "max_samples": MAX_SAMPLES})


async def _sample(request: Request) -> Response:
    paths = images.sample_images()
    name = request.path_params["name"]
    if name not in paths:
        return JSONResponse({"error": f"no sample photo {name!r}"}, status_code=404)
    return FileResponse(paths[name])


async def _download(request: Request) -> Response:
    results = _served(request).results
    name = request.path_params["name"]
    data = results.get(request.path_params["job"], name)
    if data is None:
        return JSONResponse({"error": "no such result (results are kept for the last "
                             f"{results.keep} jobs)"}, status_code=404)
    return Response(data, media_type=_MEDIA[name.rsplit(".", 1)[-1]], headers={
        "Content-Disposition": f'attachment; filename="smoothgrad-{name}"'})


async def _explain(request: Request) -> Response:
    served = _served(request)
    try:
        settings = _settings(request.query_params, served.scheduler.model)
        image, name = await _image(request, served.workdir, served.max_upload)
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(event: dict[str, Any]) -> None:  # called from the worker thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(events.put_nowait, event)

    job = Job(image, name, settings, emit)
    return StreamingResponse(_stream(job, served.scheduler, events),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(job: Job, scheduler: Scheduler,
                  events: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[str]:
    """Submit the job and relay its events; closing the stream (page gone) cancels it."""
    try:
        scheduler.submit(job)
        while True:
            try:
                event = await asyncio.wait_for(events.get(), _KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield ": waiting\n\n"  # a comment line: keeps proxies and the page patient
                continue
            yield f"data: {json.dumps(event)}\n\n"
            if event["type"] in _FINAL:
                return
    finally:
        scheduler.cancel(job)


def _settings(query: Any, model: LoadedModel) -> Settings:
    try:
        target = query.get("target", "").strip()
        return Settings(method=query.get("method", "gradient"),
                        noise=float(query.get("noise", DEFAULT_NOISE)),
                        samples=int(query.get("samples", "50")),
                        strip=query.get("strip", "1") not in ("0", "false", ""),
                        seed=int(query.get("seed", "0")),
                        target=model.class_index(target) if target else None)
    except ModelError as exc:  # an unknown class: the message names it and close matches
        raise BadRequest(str(exc)) from None
    except ValueError as exc:
        raise BadRequest(str(exc) if "must" in str(exc) or "unknown" in str(exc)
                         else f"bad setting: {exc}") from None


async def _image(request: Request, workdir: Path, limit: int) -> tuple[Image.Image, str]:
    """The request's image (uploaded body, or a bundled sample) decoded as RGB, and its name."""
    sample = request.query_params.get("sample")
    if sample:
        try:
            return await asyncio.to_thread(images.load, images.sample_path(sample)), sample
        except images.ImageError as exc:
            raise BadRequest(str(exc)) from None
    name = Path(request.query_params.get("filename", "upload")).name or "upload"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(_too_large(name, int(declared), limit), 413)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BadRequest(_too_large(name, len(data), limit), 413)
    if not data:
        raise BadRequest("no image: drop a file on the page or pick a sample photo")
    return await asyncio.to_thread(_decode, bytes(data), name, workdir), name


def _decode(data: bytes, name: str, workdir: Path) -> Image.Image:
    path = workdir / f"upload-{secrets.token_hex(6)}"
    try:
        path.write_bytes(data)
        return images.load(path)
    except images.ImageError as exc:
        raise BadRequest(str(exc).replace(str(path), name)) from None
    finally:
        path.unlink(missing_ok=True)


def _too_large(name: str, size: int, limit: int) -> str:
    return f"'{name}' is {_size(size)} or more; the limit is {_size(limit)}"


def _size(count: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 2**10:.0f} kB"
