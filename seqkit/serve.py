"""``seqkit serve``: trained runs behind an HTTP JSON API (Starlette on uvicorn).

Endpoints: ``POST /tag``, ``/transcribe``, ``/generate`` (text streamed; a piano-roll model's
picture and MIDI), ``/score``, ``/embed``; ``GET /health``, ``/metrics`` (Prometheus) and ``/``
(a page to try each model). Concurrent text requests for one model are micro-batched
(:mod:`seqkit.microbatch`); every bad request gets a 4xx JSON ``{"error": ...}``. Needs the
``serve`` extra.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from torch import nn

from .build import load
from .errors import SeqkitError
from .microbatch import MicroBatcher, QueueFull
from .serve_api import (
    ApiError,
    Metrics,
    RateLimiter,
    audio_waveform,
    generate_options,
    json_body,
    read_audio_request,
    roll_options,
    sampling_options,
    text_items,
)

__all__ = ["Limits", "Served", "create_app", "load_runs", "run_server"]

log = logging.getLogger("seqkit.serve")
ENDPOINTS = ("tag", "transcribe", "generate", "score", "embed")
_BATCHED = ("tag", "score", "embed")
_DOING = {"tag": "tag text", "transcribe": "transcribe speech", "generate": "generate",
          "score": "score text", "embed": "embed text", "text": "generate text", "piano-roll": "generate piano rolls"}
_MAKES = {"text": "text", "piano-roll": "piano rolls"}
# /generate's fields of one kind of model only: they pick the kind when "model" is left out
_KIND_FIELDS = {"text": ("prompt", "max_tokens", "top_k", "top_p"), "piano-roll": ("frames", "seconds", "format")}
_GENERATE_FIELDS = ("model", "prompt", "max_tokens", "frames", "seconds", "temperature", "top_k", "top_p", "seed",
                    "format")
_PICTURES = threading.Lock()  # matplotlib's pyplot keeps global state: one picture at a time, whichever model
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_END = object()  # the end of a token stream


@dataclass
class Limits:
    """What one request may ask for, micro-batching and the per-client rate limit (the
    ``seqkit serve`` flags of the same names)."""

    max_batch: int = 32  # texts per model call; 1: no micro-batching
    max_wait_ms: float = 0.0  # how long the oldest waiting request waits for others (0: never)
    max_queue: int = 4096  # texts waiting per model and endpoint before 503
    max_body: int = 1 << 20  # bytes of a JSON request body
    max_audio_body: int = 10 << 20  # bytes of an audio upload
    max_chars: int = 10_000  # characters per text
    max_texts: int = 256  # texts per request
    max_audio_seconds: float = 60.0
    max_tokens: int = 1000  # tokens per /generate
    max_frames: int = 512  # piano-roll frames per /generate
    max_beam: int = 64  # /transcribe beam width
    rate_limit: float = 50.0  # requests/s per client IP (0: off)
    rate_burst: float = 0.0  # requests at once per client IP (0: twice rate_limit, at least 1)


@dataclass
class Served:
    """A loaded run: its name in requests, the endpoints it answers and its one worker thread."""

    name: str
    run: Path
    model: nn.Module
    task: str
    endpoints: tuple[str, ...]
    executor: ThreadPoolExecutor = field(repr=False)
    generates: Optional[str] = None  # what /generate gives: "text" or "piano-roll"
    frame_seconds: Optional[float] = None  # a piano-roll model's frame length (at its default tempo)

    def describe(self) -> dict[str, Any]:
        found = {"name": self.name, "task": self.task, "endpoints": list(self.endpoints)}
        return {**found, "generates": self.generates} if self.generates else found


def _works(call: Callable[[], Any]) -> bool:
    try:
        call()
        return True
    except SeqkitError:
        return False


def _generates(model: nn.Module) -> tuple[Optional[str], Optional[float]]:
    """What ``/generate`` gives for a model, tried once on a tiny input: ``("text", None)`` for
    one that streams tokens (``generate_tokens``; a melody model is one, its tokens are note
    events), ``("piano-roll", seconds a frame)`` for one whose ``generate(frames, seed=...)``
    returns a piano roll that saves a picture and MIDI (``save_png``, ``save_midi``), else
    ``(None, None)`` (a split language model cannot generate)."""
    tokens = getattr(model, "generate_tokens", None)
    if callable(tokens):
        return ("text", None) if _works(lambda: list(tokens("", max_tokens=0))) else (None, None)
    generate = getattr(model, "generate", None)
    if not callable(generate):
        return None, None
    try:
        roll = generate(0, seed=0)
    except (SeqkitError, TypeError):  # TypeError: a generate() that takes something else
        return None, None
    seconds = getattr(roll, "frame_seconds", None)
    if all(callable(getattr(roll, name, None)) for name in ("save_png", "save_midi")) \
            and isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
        return "piano-roll", float(seconds)
    return None, None


def _answers(model: nn.Module, generates: Optional[str]) -> tuple[str, ...]:
    """The endpoints a model can answer (a forward-only language model cannot embed: tried once
    on a tiny input; ``generates``: see :func:`_generates`)."""
    found = []
    if callable(getattr(model, "tag", None)):
        found.append("tag")
    if callable(getattr(model, "transcribe", None)):
        found.append("transcribe")
    if generates:
        found.append("generate")
    if callable(getattr(model, "score", None)):
        found.append("score")
    embed = getattr(model, "embed_texts", None)
    if callable(embed) and _works(lambda: embed(["a"])):
        found.append("embed")
    return tuple(found)


def load_runs(specs: Sequence[str], *, device: str = "cpu", precision: str = "fp32") -> dict[str, Served]:
    """Load each ``RUN`` (named by its folder) or ``NAME=RUN``; one clear error for a folder that
    is not a run, a model that answers no endpoint, or two runs of the same name."""
    served: dict[str, Served] = {}
    # each model's thread sets torch's intra-op threads (--threads) itself: OpenMP keeps the count per thread,
    # and a thread that ran torch before the count was set keeps its own (in a first version a piano-roll
    # model's 64 frames took 0.4-0.9 s in the server against 0.02 s once its thread set the count)
    threads = torch.get_num_threads()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            name, path = "", spec
        run = Path(path).expanduser()
        name = name or run.resolve().name
        if not _NAME.fullmatch(name):
            raise SeqkitError(f"{spec}: {name!r} is not a model name (letters, digits, '.', '_', '-'); "
                              "name it with NAME=RUN")
        if name in served:
            raise SeqkitError(f"{spec}: two runs are named {name!r} ({served[name].run} and {run}); "
                              f"name one with NAME=RUN")
        model = load(run, device=device, precision=precision)
        generates, frame_seconds = _generates(model)
        endpoints = _answers(model, generates)
        task = getattr(getattr(getattr(model, "recipe", None), "task", None), "name", type(model).__name__)
        if not endpoints:
            raise SeqkitError(f"{run}: its model (task {task}) answers none of /{', /'.join(ENDPOINTS)}")
        served[name] = Served(name, run, model, task, endpoints,
                              ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"seqkit-{name}",
                                                 initializer=torch.set_num_threads, initargs=(threads,)),
                              generates, frame_seconds)
    return served


def _vectors(result: dict[str, Any]) -> dict[str, Any]:
    """An ``embed_texts`` result as JSON: per-token vectors and their mean (None for no tokens)."""
    vectors = result["vectors"]
    mean = vectors.float().mean(0).tolist() if len(vectors) else None
    return {**{k: v for k, v in result.items() if k != "vectors"}, "vectors": vectors.tolist(), "vector": mean}


def _kind_fields(kind: Optional[str]) -> tuple[str, ...]:
    return (*_KIND_FIELDS.get(kind or "", ()), "temperature", "seed")


def _sample_roll(model: Any, frames: int, options: dict[str, Any], files: Sequence[str]) -> dict[str, Any]:
    """``model.generate(frames, ...)`` and the ``files`` ("png", "midi") of the roll it gives, as
    bytes; run in the model's thread."""
    started = time.perf_counter()
    roll = model.generate(frames, **options)
    took = time.perf_counter() - started
    count = getattr(roll, "note_count", None)
    found: dict[str, Any] = {"notes": int(count()) if callable(count) else None, "time_s": round(took, 4)}
    with tempfile.TemporaryDirectory(prefix="seqkit-serve-") as tmp:
        for kind in files:
            path = Path(tmp) / f"roll.{'mid' if kind == 'midi' else kind}"
            if kind == "png":
                with _PICTURES:
                    roll.save_png(path)
            else:
                roll.save_midi(path)
            found[kind] = path.read_bytes()
    return found


_CALLS: dict[str, Callable[[Any, list[str]], list[Any]]] = {
    "tag": lambda model, texts: model.tag(texts),
    "score": lambda model, texts: model.score(texts),
    "embed": lambda model, texts: [_vectors(r) for r in model.embed_texts(texts)],
}


class Api:
    """The endpoints over a set of loaded models."""

    def __init__(self, models: dict[str, Served], limits: Limits) -> None:
        self.models, self.limits = models, limits
        self.metrics = Metrics()
        self.html = resources.files("seqkit").joinpath("serve_page.html").read_text(encoding="utf-8")
        burst = limits.rate_burst or max(1.0, 2 * limits.rate_limit)
        self.rate = RateLimiter(limits.rate_limit, burst) if limits.rate_limit > 0 else None
        self.batchers: dict[tuple[str, str], MicroBatcher] = {}
        for served in models.values():
            for endpoint in _BATCHED:
                if endpoint in served.endpoints:
                    self.batchers[served.name, endpoint] = self._batcher(served, endpoint)

    def _batcher(self, served: Served, endpoint: str) -> MicroBatcher:
        m, labels = self.metrics, (served.name, endpoint)

        def on_batch(requests: int, texts: int) -> None:
            m.batch_requests.labels(*labels).observe(requests)
            m.batch_texts.labels(*labels).observe(texts)

        return MicroBatcher(
            functools.partial(_CALLS[endpoint], served.model), served.executor, max_batch=self.limits.max_batch,
            max_wait=self.limits.max_wait_ms / 1000, max_queue=self.limits.max_queue, on_batch=on_batch,
            on_depth=lambda depth: m.queue_depth.labels(*labels).set(depth))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        try:
            yield
        finally:
            for batcher in self.batchers.values():
                await batcher.close()
            for served in self.models.values():
                served.executor.shutdown(wait=False, cancel_futures=True)

    # -- choosing a model and calling it ------------------------------------------------------

    def pick(self, name: Any, endpoint: str, kind: Optional[str] = None) -> Served:
        """The model a request names, or the only one that answers ``endpoint`` (``kind``: and
        generates that, "text" or "piano-roll")."""
        able = [s.name for s in self.models.values() if endpoint in s.endpoints and kind in (None, s.generates)]
        if name is not None:
            if not isinstance(name, str):
                raise ApiError(422, f'"model": expected a model name (a string), got {type(name).__name__}')
            if name not in self.models:
                raise ApiError(404, f'"model": no model named {name!r} is loaded; loaded: '
                                    f'{", ".join(self.models)} (GET /health lists them)')
            served = self.models[name]
            if endpoint not in served.endpoints:
                others = f"; models that do: {', '.join(able)}" if able else ""
                raise ApiError(422, f"model {name!r} (task {served.task}) does not {_DOING[endpoint]}: it answers "
                                    f"/{', /'.join(served.endpoints)}{others}")
            if kind not in (None, served.generates):
                fields = ", ".join(f'"{f}"' for f in _KIND_FIELDS[kind])
                others = f"; models that do: {', '.join(able)}" if able else ""
                raise ApiError(422, f"model {name!r} (task {served.task}) does not {_DOING[kind]} ({fields} are for "
                                    f"those): it generates {_MAKES.get(served.generates or '', '')}, from "
                                    f"{', '.join(_kind_fields(served.generates))}{others}")
            return served
        doing = _DOING[kind or endpoint]
        if len(able) == 1:
            return self.models[able[0]]
        if not able:
            loaded = ", ".join(f"{s.name} ({s.task})" for s in self.models.values())
            raise ApiError(422, f"no loaded model can {doing} (loaded: {loaded})")
        raise ApiError(422, f'several models can {doing} ({", ".join(able)}); name one with "model"')

    async def call(self, served: Served, endpoint: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the model's thread; a user error is 422, anything else 500 (logged)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(served.executor, fn)
        except Exception as exc:
            raise self._failure(served, endpoint, exc) from None

    def _failure(self, served: Served, endpoint: str, exc: Exception) -> ApiError:
        if isinstance(exc, SeqkitError):
            return ApiError(422, f"/{endpoint}: {exc}")
        if isinstance(exc, QueueFull):
            return ApiError(503, f"/{endpoint}: model {served.name!r} is busy ({exc}); retry shortly",
                            headers={"Retry-After": "1"})
        log.error("model %r failed on /%s", served.name, endpoint, exc_info=exc)
        return ApiError(500, f"/{endpoint}: model {served.name!r} failed with {type(exc).__name__} (an internal "
                             "error, logged on the server); the server is still up")

    # -- endpoints ----------------------------------------------------------------------------

    async def texts(self, request: Request, endpoint: str) -> Response:
        body = await json_body(request, ("model", "text", "texts"))
        items, single = text_items(body, self.limits)
        served = self.pick(body.get("model"), endpoint)
        try:
            results = await self.batchers[served.name, endpoint].submit(items)
        except Exception as exc:
            raise self._failure(served, endpoint, exc) from None
        if single:
            return JSONResponse({"model": served.name, **results[0]})
        return JSONResponse({"model": served.name, "results": results})

    async def tag(self, request: Request) -> Response:
        return await self.texts(request, "tag")

    async def score(self, request: Request) -> Response:
        return await self.texts(request, "score")

    async def embed(self, request: Request) -> Response:
        return await self.texts(request, "embed")

    async def transcribe(self, request: Request) -> Response:
        data, options = await read_audio_request(request, self.limits)
        served = self.pick(options.get("model"), "transcribe")
        beam = options.get("beam", 0)
        rate = int(served.model.sample_rate)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        wave = await loop.run_in_executor(None, audio_waveform, data, rate, self.limits)
        result = await self.call(served, "transcribe",
                                 lambda: served.model.transcribe(wave, sample_rate=rate, beam=beam))  # type: ignore
        return JSONResponse({"model": served.name, "text": result["text"], "duration_s": result["duration_s"],
                             "time_s": result["time_s"]})

    async def generate(self, request: Request) -> Response:
        body = await json_body(request, _GENERATE_FIELDS)
        sampling_options(body)  # checked first: the same for every kind of model
        given = {kind: [f for f in fields if f in body] for kind, fields in _KIND_FIELDS.items()}
        if given["text"] and given["piano-roll"]:
            text, roll = given["text"][0], given["piano-roll"][0]
            raise ApiError(422, f'"{text}" is for text models and "{roll}" for piano-roll models: give the fields '
                                "of one")
        kind = next((k for k, fields in given.items() if fields), None)
        served = self.pick(body.get("model"), "generate", kind)
        if served.generates == "piano-roll":
            return await self.piano_roll(served, body)
        prompt, options = generate_options(body, self.limits)
        tokens = served.model.generate_tokens(prompt, **options)  # type: ignore[operator]
        first = await self.call(served, "generate", lambda: next(tokens, _END))  # errors come before the 200
        loop, counter = asyncio.get_running_loop(), self.metrics.tokens.labels(served.name)

        async def chunks():
            piece, count = first, 0
            try:
                while piece is not _END:
                    count += 1
                    counter.inc()
                    yield json.dumps({"text": piece}, ensure_ascii=False) + "\n"
                    piece = await loop.run_in_executor(served.executor, next, tokens, _END)
                yield json.dumps({"done": True, "tokens": count}) + "\n"
            except Exception as exc:  # the status is sent already: the error is the last line
                yield json.dumps({"error": self._failure(served, "generate", exc).message}) + "\n"
            finally:  # a client that went away stops the sampling
                with contextlib.suppress(RuntimeError):  # the server is stopping: nothing to close it in
                    served.executor.submit(tokens.close)  # in its own thread, after any step still running

        return StreamingResponse(chunks(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def piano_roll(self, served: Served, body: dict[str, Any]) -> Response:
        """A piano-roll model's ``/generate``: the roll sampled, its picture and MIDI written by the
        model's own ``save_png``/``save_midi``, all in the model's thread; JSON with both base64,
        or one file as is (``"format": "png"`` or ``"midi"``)."""
        each = served.frame_seconds or 1.0  # set for every piano-roll model (load_runs)
        frames, answer, options = roll_options(body, self.limits, each)
        if options["seed"] is None:  # drawn here, so that the answer can say it (below 2**31: JSON numbers)
            options["seed"] = secrets.randbelow(2**31)
        wanted = ("png", "midi") if answer == "json" else (answer,)
        result = await self.call(served, "generate", lambda: _sample_roll(served.model, frames, options, wanted))
        self.metrics.frames.labels(served.name).inc(frames)
        headers = {"X-Seqkit-Model": served.name, "X-Seqkit-Seed": str(options["seed"])}
        if answer == "png":
            return Response(result["png"], media_type="image/png", headers=headers)
        if answer == "midi":
            return Response(result["midi"], media_type="audio/midi", headers=headers)
        files = {key: base64.b64encode(result.pop(key)).decode("ascii") for key in wanted}
        return JSONResponse({"model": served.name, "frames": frames, "seconds": round(frames * each, 3), **result,
                             "seed": options["seed"], **files})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": [s.describe() for s in self.models.values()],
                             "pid": os.getpid()})

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def page(self, request: Request) -> Response:
        # nothing from elsewhere: the page's own script and style, requests to this server only
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src data:")
        return HTMLResponse(self.html, headers={"Content-Security-Policy": csp})


def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
    if isinstance(exc, HTTPException):
        message = {404: f"no endpoint {request.url.path}; the API has POST /{', POST /'.join(ENDPOINTS)}, "
                        "GET /health, GET /metrics and GET / (a page)",
                   405: f"{request.method} {request.url.path}: method not allowed; use "
                        f"{(exc.headers or {}).get('Allow', 'another method')}"}.get(exc.status_code, exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"{request.method} {request.url.path}: internal error ({type(exc).__name__}, "
                                  "logged on the server)"}, status_code=500)


class _Guard:
    """Outermost ASGI layer: per-client rate limit, request body size, and the request metrics."""

    def __init__(self, app: Starlette, api: Api) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        name = path.strip("/") or "page"
        endpoint = name if name in (*ENDPOINTS, "health", "metrics", "page") else "other"
        limit = self.api.limits.max_audio_body if endpoint == "transcribe" else self.api.limits.max_body
        status: list[int] = []
        started = time.perf_counter()

        async def watched_send(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            refused = self._refuse(scope, endpoint, limit)
            if refused is not None:
                await refused(scope, receive, watched_send)
            else:
                await self.app(scope, _limited(receive, limit), watched_send)
        except Exception as exc:
            if not status:  # not answered yet (an error outside the app): answer it here
                log.error("unexpected error on %s", path, exc_info=exc)
                await JSONResponse({"error": f"{path}: internal error ({type(exc).__name__}, logged on the server)"},
                                   status_code=500)(scope, receive, watched_send)
            # else: answered (a JSON 500) and logged by _error already
        finally:
            status = status or [500]
            self.api.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.api.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _refuse(self, scope, endpoint: str, limit: int) -> Optional[Response]:
        if self.api.rate is not None and endpoint not in ("health", "metrics"):
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.api.rate.take(client, time.monotonic())
            if wait > 0:
                return JSONResponse({"error": f"too many requests from {client}: at most {self.api.rate.rate:g}/s "
                                              f"(bursts of {self.api.rate.burst:g}); retry in {wait:.2f} s"},
                                    status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return _too_large(int(length), limit, endpoint)
        return None


def _too_large(size: int, limit: int, endpoint: str) -> JSONResponse:
    flag = "--max-audio-body" if endpoint == "transcribe" else "--max-body"
    return JSONResponse({"error": f"request body of {size} bytes is too large: "
                                  f"this server takes at most {limit} bytes on /{endpoint} ({flag})"},
                        status_code=413)


def _limited(receive, limit: int):
    """``receive`` that stops a body (sent without Content-Length) once it passes ``limit``."""
    total = 0

    async def wrapped():
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise ApiError(413, f"request body of over {limit} bytes is too large: this server takes at most "
                                    f"{limit} bytes here (--max-body, --max-audio-body for /transcribe)")
        return message

    return wrapped


def create_app(models: dict[str, Served], limits: Limits) -> _Guard:
    """The ASGI application serving ``models`` (see :func:`load_runs`)."""
    api = Api(models, limits)
    routes = [Route("/", api.page), Route("/health", api.health), Route("/metrics", api.prometheus)]
    routes += [Route(f"/{name}", getattr(api, name), methods=["POST"]) for name in ENDPOINTS]
    app = Starlette(routes=routes, lifespan=api.lifespan,
                    exception_handlers={ApiError: _error, HTTPException: _error, Exception: _error})
    return _Guard(app, api)


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising Ctrl-C/SIGTERM once it has stopped cleanly."""

    signals = (signal.SIGINT, signal.SIGTERM)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.signal(sig, self.handle_exit) for sig in self.signals}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def listen(host: str, port: int, *, reuse_port: bool = False, backlog: Optional[int] = 2048) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or one clear error. ``reuse_port``:
    with SO_REUSEPORT, which lets worker processes each listen on the port (the kernel spreads
    the connections over them); ``backlog`` None: bound only, not listening (the port is held
    but gets no connections)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise SeqkitError(f"--host {host}: cannot resolve it ({exc.strerror}); try 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        if backlog is not None:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise SeqkitError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose "
                          "another --port (0: any free port)") from None
    return sock


def _url_line(sock: socket.socket, names: Sequence[str], workers: int = 1) -> str:
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    processes = f" in {workers} worker processes" if workers > 1 else ""
    return f"seqkit serve: http://{shown}:{bound[1]}/ serving {', '.join(names)}{processes} (Ctrl-C stops)"


@contextlib.contextmanager
def _logging_to_stderr():
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = True


def _config(models: dict[str, Served], limits: Limits, log_level: str, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(create_app(models, limits), log_level=log_level, access_log=access_log,
                          timeout_graceful_shutdown=5, lifespan="on")


def run_server(models: dict[str, Served], limits: Limits, *, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "warning", access_log: bool = False) -> None:
    """Serve until Ctrl-C or SIGTERM; prints the URL first."""
    sock = listen(host, port)
    config = _config(models, limits, log_level, access_log)
    print(_url_line(sock, list(models)), flush=True)
    try:
        with _logging_to_stderr():
            _Server(config).run(sockets=[sock])
    finally:
        sock.close()
    print("seqkit serve: stopped", file=sys.stderr, flush=True)


@dataclass
class WorkerSpec:
    """What each worker process of ``seqkit serve --workers N`` needs to load and serve."""

    runs: tuple[str, ...]
    device: str
    precision: str
    threads: int
    limits: Limits
    log_level: str
    access_log: bool


def _worker(spec: WorkerSpec, host: str, port: int, ready) -> None:
    """One worker process: load the runs, listen on the port with SO_REUSEPORT, say so (or say
    why not) through ``ready``, and serve until the parent's SIGTERM (Ctrl-C goes to the parent,
    which stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the parent loaded the runs first and showed any warning
            models = load_runs(spec.runs, device=spec.device, precision=spec.precision)
        sock = listen(host, port, reuse_port=True)
    except Exception as exc:  # noqa: BLE001 - reported by the parent as one line
        ready.send(str(exc) or type(exc).__name__)
        return
    ready.send("")
    server = _Server(_config(models, spec.limits, spec.log_level, spec.access_log))
    server.signals = (signal.SIGTERM,)
    with _logging_to_stderr():
        server.run(sockets=[sock])


def run_workers(spec: WorkerSpec, workers: int, *, host: str = "127.0.0.1", port: int = 8000,
                names: Sequence[str] = ()) -> None:
    """``workers`` processes, each with its own copy of the models, its own event loop and
    micro-batcher, and its own listening socket on the one port (SO_REUSEPORT: the kernel
    spreads connections over them; with a shared socket, whichever worker woke first took
    them all): one Python process uses about one core (its event loop and model threads share
    the GIL), so several use more. The parent holds the port, bound but not listening, prints
    the URL once every worker listens; Ctrl-C or SIGTERM stops them all; a worker that dies
    stops the rest."""
    import multiprocessing
    from multiprocessing.connection import wait

    if not hasattr(socket, "SO_REUSEPORT"):
        raise SeqkitError("--workers: this system has no SO_REUSEPORT for the workers to share a port; "
                          "use --workers 1")
    sock = listen(host, port, reuse_port=True, backlog=None)
    bound_host, bound_port = sock.getsockname()[:2]
    context = multiprocessing.get_context("spawn")  # never fork a process that has run torch
    procs = []
    stopping = threading.Event()

    def stop(*_):
        stopping.set()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: each worker's uvicorn shuts down gracefully

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        pipes = []
        for i in range(workers):
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(target=_worker, args=(spec, bound_host, bound_port, send),
                                   name=f"seqkit-serve-{i}", daemon=False)
            proc.start()
            procs.append(proc)
            pipes.append(receive)
        for i, (proc, receive) in enumerate(zip(procs, pipes)):
            message = receive.recv() if wait([receive, proc.sentinel]) and receive.poll() else "exited while loading"
            if stopping.is_set():
                break  # Ctrl-C while loading
            if message:
                stop()
                raise SeqkitError(f"worker {i}: {message}")
        else:
            print(_url_line(sock, names, workers), flush=True)
            gone = wait([proc.sentinel for proc in procs])
            if not stopping.is_set():
                dead = next(proc for proc in procs if proc.sentinel in gone)
                dead.join(timeout=10)  # its pipe closes as it dies, a moment before its exit status is there
                stop()
                code = dead.exitcode or 0
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
                raise SeqkitError(f"worker {dead.name} {how}; stopped the other workers")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in before.items():
            signal.signal(sig, handler)
        sock.close()
    print("seqkit serve: stopped", file=sys.stderr, flush=True)
