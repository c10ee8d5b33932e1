"""``seqkit serve``: trained runs behind an HTTP JSON API (see ``seqkit.serve``)."""

from __future__ import annotations

import re

import click

from ..errors import SeqkitError
from ..recipe import PRECISIONS
from . import cli

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


class _Size(click.ParamType):
    """Bytes: ``1048576``, ``512k``, ``1MB``, ``10m`` (powers of 1024)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not found or found.group(2).lower() not in _UNITS:
            self.fail(f"{value!r} is not a size; write bytes or a size such as 512k, 1MB, 10m", param, ctx)
        size = int(float(found.group(1)) * _UNITS[found.group(2).lower()])
        if size < 1:
            self.fail(f"{value!r}: must be at least 1 byte", param, ctx)
        return size


@cli.command("serve")
@click.argument("runs", nargs=-1, required=True, metavar="RUN [RUN...]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the URL line says which).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N], mps or auto.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=0),
              help="torch intra-op threads of each model's thread (0: torch's default). Called from a thread "
                   "other than the main one, torch's OpenMP threads cost more than they give: 2 were 3x slower "
                   "than 1 for an MSRA sentence on 2 cores (docs/deploying.md).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS),
              help="The recurrences' precision. bf16 pays on CPUs with AVX512-BF16 or AMX and on GPUs "
                   "(MSRA tagger on such a CPU: 1.2-1.4x fp32's requests/s; docs/deploying.md).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Server processes, each with its own copy of the models, all on one port. One Python process "
                   "uses about one core (HTTP and the model share its GIL); on more cores, more workers serve "
                   "more. Limits, micro-batches and /metrics are per worker.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Micro-batching: texts per model call for /tag, /score, /embed (1: off).")
@click.option("--max-wait-ms", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Micro-batching: how long a request waits for others to join its batch (0: never; a batch "
                   "is what gathered while the model was busy).")
@click.option("--max-queue", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Texts that may wait per model and endpoint; past it: 503.")
@click.option("--max-body", default="1MB", show_default=True, type=_Size(), help="Largest JSON request body.")
@click.option("--max-audio-body", default="10MB", show_default=True, type=_Size(),
              help="Largest /transcribe upload.")
@click.option("--max-chars", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Characters per text (and per prompt).")
@click.option("--max-texts", default=256, show_default=True, type=click.IntRange(min=1), help="Texts per request.")
@click.option("--max-audio-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Longest /transcribe audio.")
@click.option("--max-tokens", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Most tokens one /generate may ask for.")
@click.option("--max-frames", default=512, show_default=True, type=click.IntRange(min=1),
              help="Most frames one /generate of a piano-roll model may ask for (\"frames\", or \"seconds\" "
                   "of music).")
@click.option("--rate-limit", default=50.0, show_default=True, type=click.FloatRange(min=0),
              help="Requests/s per client IP, token bucket (0: off; /health and /metrics are not limited).")
@click.option("--rate-burst", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Requests a client may send at once (0: twice --rate-limit, at least 1).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
def serve_cmd(runs: tuple[str, ...], host: str, port: int, device: str, threads: int, precision: str, workers: int,
              max_batch: int,
              max_wait_ms: float, max_queue: int, max_body: int, max_audio_body: int, max_chars: int, max_texts: int,
              max_audio_seconds: float, max_tokens: int, max_frames: int, rate_limit: float, rate_burst: float,
              log_level: str, access_log: bool) -> None:
    """Serve the models in RUN folders over HTTP: POST /tag, /transcribe, /generate (text
    streamed; for a piano-roll model of the seqkit-music plugin, its picture and MIDI), /score
    and /embed take and give JSON; GET /health, /metrics (Prometheus) and / (a page to try each
    model).

    Each model is named by its folder (or NAME=RUN), which a request's "model" field picks; it
    may be left out when only one loaded model answers the endpoint. Concurrent /tag, /score and
    /embed requests for one model are run as one call (micro-batching). Every refused request
    gets a 4xx JSON {"error": ...}. Prints the URL, then serves until Ctrl-C. See
    docs/deploying.md.
    """
    try:
        from ..serve import Limits, WorkerSpec, load_runs, run_server, run_workers
    except ImportError as exc:
        raise SeqkitError(f"seqkit serve needs {exc.name or 'the serve extra'}: pip install 'seqkit[serve]' "
                          "(starlette, uvicorn, python-multipart, prometheus-client)") from None
    import torch

    if threads:
        torch.set_num_threads(threads)
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_body=max_body,
                    max_audio_body=max_audio_body, max_chars=max_chars, max_texts=max_texts,
                    max_audio_seconds=max_audio_seconds, max_tokens=max_tokens, max_frames=max_frames,
                    rate_limit=rate_limit,
                    rate_burst=rate_burst)
    models = load_runs(runs, device=device, precision=precision)  # every error and warning here, once
    if workers == 1:
        run_server(models, limits, host=host, port=port, log_level=log_level, access_log=access_log)
        return
    names = list(models)
    for served in models.values():
        served.executor.shutdown()
    del models, served
    spec = WorkerSpec(runs, device, precision, threads, limits, log_level, access_log)
    run_workers(spec, workers, host=host, port=port, names=names)
