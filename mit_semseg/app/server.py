"""The web server: one static page, and a small JSON API over the models and the jobs.

``GET /`` is the page (``static/index.html`` with ``app.js`` and ``app.css``: no build step,
nothing fetched from elsewhere, so it works offline). The API it calls:

* ``GET /api/models``: the models (key, label, classes with their colours, epochs, scales),
  the example photos, the modes and the upload limits;
* ``GET /api/examples/{key}``: an example photo;
* ``POST /api/jobs`` (multipart form: ``model``, ``epoch`` (optional, default the latest),
  ``mode`` (``single`` or ``multi``), and ``photo`` (a file) or ``example`` (a key)): the
  photo is checked and read at once (a bad one is answered 4xx with ``{"error": "..."}``),
  then waits for its model: 202 with the job's status;
* ``GET /api/jobs/{id}``: the job's status (place in line, bytes downloaded, time, classes
  present); ``DELETE`` takes a waiting job out of line;
* ``GET /api/results/{id}/maps`` (labels and confidence as raw arrays), ``image.jpg`` (the
  photo upright, as the model saw it), ``labels.png`` and ``panel.png`` (what ``test.py``
  writes, as downloads).

The client only ever names a model by its key and a photo by its bytes or an example's key:
no path travels. Request bodies are limited (:class:`BodyLimit`) before they are parsed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mit_semseg.app.catalog import MODES, ModelChoice
from mit_semseg.app.jobs import Job, JobBoard
from mit_semseg.app.photos import (
    EXAMPLES,
    Limits,
    PhotoError,
    display_name,
    example_photo,
    file_size,
    read_photo,
)

__all__ = ["STATIC_DIR", "BodyLimit", "create_app"]

STATIC_DIR = Path(__file__).parent / "static"
# room for the form's other fields and the multipart framing around the photo
_FORM_OVERHEAD = 64 << 10


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with a 413, from ``Content-Length`` or while
    they arrive (a body without one, or one that lies), before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int, message: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _error(413, self.message)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error(error.status_code, error.detail)


def _model_json(choice: ModelChoice) -> dict[str, Any]:
    return {
        "key": choice.key, "label": choice.label, "kind": choice.kind,
        "architecture": f"{choice.arch_encoder} + {choice.arch_decoder}",
        "classes": list(choice.class_names),
        "colors": ["#" + "".join(f"{int(v):02x}" for v in rgb) for rgb in choice.palette],
        "epochs": list(choice.epochs), "latest_epoch": choice.latest_epoch,
        "scales": {mode: list(choice.scales(mode)) for mode in MODES},
        "needs_download": choice.needs_download(),
    }


class _PageApi:
    """The page's handlers over the models offered and their jobs."""

    def __init__(self, choices: Sequence[ModelChoice], board: JobBoard, limits: Limits,
                 keep_results: int) -> None:
        self.choices = list(choices)
        self.by_key = {choice.key: choice for choice in choices}
        if len(self.by_key) != len(self.choices):
            raise ValueError("model keys must be unique")
        self.board = board
        self.limits = limits
        self.keep_results = keep_results

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html")

    async def models(self, request: Request) -> Response:
        return JSONResponse({
            "models": [_model_json(choice) for choice in self.choices],
            "examples": [{"key": e.key, "title": e.title, "credit": e.credit}
                         for e in EXAMPLES],
            "modes": MODES,
            "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels,
                       "text": self.limits.describe()},
        })

    async def example(self, request: Request) -> Response:
        try:
            found = example_photo(request.path_params["key"])
        except PhotoError as error:
            return _error(error.status, str(error))
        return FileResponse(found.path)

    async def submit(self, request: Request) -> Response:
        async with request.form(max_files=1, max_fields=8) as form:
            choice = self.by_key.get(str(form.get("model", "")))
            if choice is None:
                return _error(400, f"unknown model {form.get('model')!r}; choose one from the "
                                   "list (reload the page if the server was restarted)")
            epoch_text = str(form.get("epoch") or choice.latest_epoch)
            if not epoch_text.isdigit() or int(epoch_text) not in choice.epochs:
                return _error(400, f"{choice.label} has no epoch {epoch_text!r}; choose one "
                                   f"of {', '.join(map(str, choice.epochs))}")
            mode = str(form.get("mode") or "single")
            if mode not in MODES:
                return _error(400, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
            photo = form.get("photo")
            try:
                if isinstance(photo, UploadFile):
                    name, data = display_name(photo.filename), await photo.read()
                elif form.get("example"):
                    found = example_photo(str(form.get("example")))
                    name, data = found.file, found.path.read_bytes()
                else:
                    return _error(400, "no photo: upload one (JPEG, PNG or WebP) or pick an "
                                       "example")
                sample = await run_in_threadpool(read_photo, data, name,
                                                 choice.dataset_options(mode), self.limits)
            except PhotoError as error:
                return _error(error.status, str(error))
        job = self.board.submit(choice, int(epoch_text), mode, name, sample)
        request.app.state.tasks.start_soon(self.board.run, job)
        return JSONResponse(self.board.status(job), status_code=202)

    def _job_or_404(self, request: Request) -> Job:
        job = self.board.job(request.path_params["job"])
        if job is None:
            raise HTTPException(404, "no such job (the server forgets old ones, and all of "
                                     "them when it restarts); run the photo again")
        return job

    async def job_status(self, request: Request) -> Response:
        job = self._job_or_404(request)
        if request.method == "DELETE":
            await self.board.cancel(job)
        return JSONResponse(self.board.status(job))

    async def result_file(self, request: Request) -> Response:
        result = self.board.result(request.path_params["job"])
        if result is None:
            raise HTTPException(404, f"this result is no longer kept (the server keeps the "
                                     f"last {self.keep_results}); run the photo again")
        what = request.path_params["what"]
        makers = {"maps": (result.maps, "application/octet-stream", None),
                  "image.jpg": (result.image_jpeg, "image/jpeg", None),
                  "labels.png": (result.label_png, "image/png", "labels"),
                  "panel.png": (result.panel_png, "image/png", "panel")}
        if what not in makers:
            raise HTTPException(404, f"no {what!r} in a result; one of {', '.join(makers)}")
        make, media_type, download = makers[what]
        headers = {"Cache-Control": "private, max-age=3600"}
        if download:
            headers["Content-Disposition"] = (
                f'attachment; filename="{_ascii(result.file_stem())}_{download}.png"')
        return Response(await run_in_threadpool(make), media_type=media_type, headers=headers)

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.index),
            Route("/api/models", self.models),
            Route("/api/examples/{key}", self.example),
            Route("/api/jobs", self.submit, methods=["POST"]),
            Route("/api/jobs/{job}", self.job_status, methods=["GET", "DELETE"]),
            Route("/api/results/{job}/{what}", self.result_file),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tasks:
        app.state.tasks = tasks
        yield
        tasks.cancel_scope.cancel()


def create_app(choices: Sequence[ModelChoice], device: torch.device,
               limits: Limits | None = None, keep_results: int = 16) -> Starlette:
    """The page and its API over ``choices`` (see the module docstring).

    Args:
        choices: the models offered, keys unique.
        device: where the models run.
        limits: the largest photo taken (default: :class:`Limits`' defaults).
        keep_results: how many results are kept for the page.
    """
    limits = limits or Limits()
    board = JobBoard(device, keep_results=keep_results)
    api = _PageApi(choices, board, limits, keep_results)
    too_large = (f"the upload is over this server's limit of {file_size(limits.max_bytes)} "
                 "(mit-semseg-app --max-upload-mb)")
    middleware = [Middleware(BodyLimit, max_bytes=limits.max_bytes + _FORM_OVERHEAD,
                             message=too_large),
                  Middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)]
    app = Starlette(routes=api.routes(), middleware=middleware, lifespan=_lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.board = board
    return app


def _ascii(text: str) -> str:
    """A file name safe in a header: ASCII letters, digits and ``._-`` only."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in text)
