"""What ``seqkit serve`` checks and counts: request bodies read against the limits (one clear
4xx :class:`ApiError` each), the per-client rate limit and the Prometheus metrics."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any, Optional

import soundfile
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from torch import Tensor

from .errors import DataError
from .features.audio import as_waveform

if TYPE_CHECKING:
    from .serve import Limits

__all__ = ["ApiError", "Metrics", "RateLimiter", "audio_waveform", "generate_options", "json_body",
           "read_audio_request", "roll_options", "sampling_options", "text_items"]

_MAX_SEED = 2**63 - 1
ROLL_FORMATS = ("json", "png", "midi")  # a piano roll's /generate answer: both files in JSON, or one file


class ApiError(Exception):
    """A request the server refuses: an HTTP status and one line saying what, where and how to fix."""

    def __init__(self, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _media(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object, holding only ``fields``."""
    path = request.url.path
    media = _media(request)
    if media != "application/json":
        raise ApiError(415, f"{path}: expected a JSON body with Content-Type: application/json, got "
                            f"{media or 'no Content-Type'} (curl: -H 'Content-Type: application/json')")
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, f"{path}: empty body; send a JSON object with {' / '.join(fields[1:])}")

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, f"{path}: the body is not UTF-8; send JSON as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"{path}: the body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, f"{path}: the body is not valid JSON ({reason})") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"{path}: expected a JSON object with fields {', '.join(fields)}; got {_kind(body)}")
    for key in body:
        if key not in fields:
            raise ApiError(422, f'{path}: unknown field "{key}"; {path} takes {", ".join(fields)}')
    return body


def text_items(body: dict[str, Any], limits: "Limits") -> tuple[list[str], bool]:
    """The texts of a ``{"text": ...}`` or ``{"texts": [...]}`` body, and whether it gave one."""
    if ("text" in body) == ("texts" in body):
        raise ApiError(422, 'give either "text" (a string) or "texts" (a list of strings), '
                            f'{"not both" if "text" in body else "none was given"}')
    if "text" in body:
        if not isinstance(body["text"], str):
            raise ApiError(422, f'"text": expected a string, got {_kind(body["text"])}; for several use "texts"')
        items, single, where = [body["text"]], True, lambda i: '"text"'
    else:
        items, single, where = body["texts"], False, lambda i: f'"texts"[{i}]'
        if not isinstance(items, list):
            raise ApiError(422, f'"texts": expected a list of strings, got {_kind(items)}')
        if not items:
            raise ApiError(422, '"texts": empty list; give at least one string')
        if len(items) > limits.max_texts:
            raise ApiError(413, f'"texts": {len(items)} texts; this server takes at most {limits.max_texts} per '
                                "request (--max-texts); split them over several requests")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ApiError(422, f"{where(i)}: expected a string, got {_kind(item)}")
        if len(item) > limits.max_chars:
            raise ApiError(413, f"{where(i)}: {len(item)} characters; this server takes at most {limits.max_chars} "
                                "per text (--max-chars); split the text")
    return items, single


def _integer(body: dict[str, Any], key: str, default: Any, low: int, high: int, hint: str = "") -> Any:
    value = body.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f'"{key}": expected an integer, got {_kind(value)}')
    if not low <= value <= high:
        raise ApiError(422, f'"{key}": {value} is out of range; expected {low} to {high}{hint}')
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, *, open_low: bool = False,
            hint: str = "") -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(422, f'"{key}": expected a number, got {_kind(value)}')
    value = float(value)
    if not (low < value if open_low else low <= value) or not value <= high:
        raise ApiError(422, f'"{key}": {value:g} is out of range; expected {"more than " if open_low else ""}{low:g} '
                            f"to {high:g}{hint}")
    return value


def sampling_options(body: dict[str, Any]) -> dict[str, Any]:
    """``temperature`` and ``seed`` of a ``/generate`` body: the same for text and piano rolls."""
    return {"temperature": _number(body, "temperature", 1.0, 0.0, 100.0, hint=" (0: always the most likely)"),
            "seed": _integer(body, "seed", None, 0, _MAX_SEED, " (or null for a random seed)")}


def generate_options(body: dict[str, Any], limits: "Limits") -> tuple[str, dict[str, Any]]:
    """The prompt and sampling options of a ``/generate`` body for a text model."""
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise ApiError(422, f'"prompt": expected a string, got {_kind(prompt)}')
    if len(prompt) > limits.max_chars:
        raise ApiError(413, f'"prompt": {len(prompt)} characters; this server takes at most {limits.max_chars} '
                            "(--max-chars)")
    options = {
        "max_tokens": _integer(body, "max_tokens", min(100, limits.max_tokens), 0, limits.max_tokens,
                               " on this server (--max-tokens)"),
        **sampling_options(body),
        "top_k": _integer(body, "top_k", 0, 0, 2**31 - 1, " (0: no limit)"),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, open_low=True, hint=" (1: no limit)"),
    }
    return prompt, options


def roll_options(body: dict[str, Any], limits: "Limits", frame_seconds: float) -> tuple[int, str, dict[str, Any]]:
    """The frames to sample (``frames``, or ``seconds`` of music at ``frame_seconds`` a frame), the
    answer's ``format`` and the sampling options of a ``/generate`` body for a piano-roll model."""
    if "frames" in body and "seconds" in body:
        raise ApiError(422, 'give "frames" or "seconds", not both')
    cap = limits.max_frames
    if "seconds" in body:
        seconds = _number(body, "seconds", 0.0, 0.0, cap * frame_seconds, open_low=True,
                          hint=f" for this model on this server ({cap} frames of {frame_seconds:g} s, --max-frames)")
        frames = min(cap, max(1, round(seconds / frame_seconds)))
    else:
        frames = _integer(body, "frames", min(32, cap), 1, cap, " on this server (--max-frames)")
    answer = body.get("format", "json")
    if answer not in ROLL_FORMATS:
        shown = repr(answer) if isinstance(answer, str) else _kind(answer)
        raise ApiError(422, f'"format": expected "json" (the picture and the MIDI, base64), "png" or "midi" '
                            f"(the file itself), got {shown}")
    return frames, answer, sampling_options(body)


async def read_audio_request(request: Request, limits: "Limits") -> tuple[bytes, dict[str, Any]]:
    """The audio bytes of a ``/transcribe`` request (raw body or multipart field ``audio``) and
    its options ``model`` and ``beam`` (query parameters, or form fields)."""
    media = _media(request)
    if media == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_audio_body)
        except HTTPException as exc:
            raise ApiError(400, f"/transcribe: the multipart body cannot be read ({exc.detail})") from None
        upload = form.get("audio")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, '/transcribe: the multipart form has no file field "audio" (curl: -F audio=@a.wav)')
        data = await upload.read()
        given = {k: v for k, v in form.multi_items() if k != "audio"}
    elif media.startswith("audio/") or media == "application/octet-stream":
        data = await request.body()
        given = dict(request.query_params)
    else:
        raise ApiError(415, f"/transcribe: expected audio (Content-Type audio/wav, audio/flac, audio/ogg or "
                            f"application/octet-stream) or a multipart form with a file field \"audio\"; got "
                            f"{media or 'no Content-Type'}")
    for key in given:
        if key not in ("model", "beam"):
            raise ApiError(422, f'/transcribe: unknown option "{key}"; it takes model and beam')
    options: dict[str, Any] = {}
    if "model" in given:
        options["model"] = given["model"]
    if "beam" in given:
        beam = str(given["beam"])
        if not beam.isdigit() or int(beam) > limits.max_beam:
            raise ApiError(422, f'/transcribe: "beam": expected a beam width from 0 (greedy) to {limits.max_beam}, '
                                f"got {beam!r}")
        options["beam"] = int(beam)
    if not data:
        raise ApiError(422, "/transcribe: no audio (the body is empty); send a WAV, FLAC or OGG file")
    return data, options


def audio_waveform(data: bytes, sample_rate: int, limits: "Limits") -> Tensor:
    """Decoded audio as a mono (T,) waveform at ``sample_rate``; too long or unreadable is a 4xx."""
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.frames > 0 and info.duration > limits.max_audio_seconds:
            raise ApiError(413, f"/transcribe: {info.duration:.1f} s of audio; this server takes at most "
                                f"{limits.max_audio_seconds:g} s (--max-audio-seconds); cut it into parts")
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except ApiError:
        raise
    except Exception as exc:  # anything libsndfile cannot decode
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ApiError(422, f"/transcribe: cannot read the audio ({reason}); send WAV, FLAC or OGG") from None
    try:
        return as_waveform(samples, rate, sample_rate, where="/transcribe: audio", channels_last=True)
    except DataError as exc:
        raise ApiError(422, str(exc)) from None


class RateLimiter:
    """A token bucket per client: ``rate`` requests/s, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)

    def take(self, client: str, now: float) -> float:
        """0 when ``client`` may go ahead (one token taken), else the seconds until it may."""
        if len(self.buckets) > 10_000:  # forget clients whose bucket has refilled
            self.buckets = {k: v for k, v in self.buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst}
        tokens, when = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("seqkit_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("seqkit_request_seconds", "Request latency (to the last byte) by endpoint",
                                 ["endpoint"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256)
        self.batch_requests = Histogram("seqkit_batch_requests", "Requests answered by one model call "
                                        "(micro-batching)", ["model", "endpoint"], buckets=sizes, registry=r)
        self.batch_texts = Histogram("seqkit_batch_texts", "Texts in one model call", ["model", "endpoint"],
                                     buckets=sizes, registry=r)
        self.queue_depth = Gauge("seqkit_queue_depth", "Requests waiting for a micro-batch", ["model", "endpoint"],
                                 registry=r)
        self.tokens = Counter("seqkit_generated_tokens", "Tokens streamed by /generate", ["model"], registry=r)
        self.frames = Counter("seqkit_generated_frames", "Piano-roll frames sampled by /generate", ["model"],
                              registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
