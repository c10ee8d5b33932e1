"""Deployment figures: exported (ONNX Runtime) vs eager latency and throughput, latency with
several client threads on one model, and streaming transcription (CER, chunk-to-text latency).

    python bench/deploy.py export runs/msra                 # tagger: ONNX Runtime vs eager torch
    python bench/deploy.py export runs/ctc-stream           # speech model: the same
    python bench/deploy.py threads runs/msra                # 1, 2, 4 client threads sharing one model
    python bench/deploy.py stream runs/ctc-stream           # streaming CER and latency, 100 ms chunks
    python bench/deploy.py batching runs/msra               # tag() one sentence a call vs 64 a call
    python bench/deploy.py batching runs/msra --batch 32 --device cuda   # the same on a GPU
    python bench/deploy.py padding runs/msra --batch 32     # one length n times a call: what padding costs

Each figure is end to end, as an app sees it: text to entities (tokenising, network, Viterbi)
or waveform to text (log-mel features, network, greedy CTC). ``export`` and ``stream`` use one
intra-op thread (``--threads``) for torch and for ONNX Runtime alike; ``threads`` gives each of
the client threads' calls that many. ``batching`` is the most that micro-batching (``seqkit
serve``) can gain for a tagger, with no HTTP at all: sentences per second tagged one per call
against ``--batch`` per call (default 64; 32 is the server's ``--max-batch``), and the same
for the time inside the encoder (the recurrence), whose ratio bounds the whole one's. Run it
with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import seqkit
from seqkit.export import export_run
from seqkit.export_runtime import tokens_with_offsets
from seqkit.recipe import PRECISIONS


def _inputs(model, limit: int) -> tuple[str, list]:
    """Test sentences (a tagger) or test waveforms (a speech model) of the run's recipe."""
    if hasattr(model, "tag"):
        from seqkit.models.tagging import load_splits

        split = load_splits(model.recipe)["test"]
        return "sentences", [" ".join(words) if model.vocab.tokenize != "chars" else "".join(words)
                             for words, _ in split.sentences[:limit]]
    from seqkit.features.audio import read_audio
    from seqkit.models.speech import load_splits

    utts = load_splits(model.recipe)["test"].utterances[:limit]
    return "utterances", [(read_audio(u.audio, model.sample_rate).numpy(), u.text) for u in utts]


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = sorted(1000 * t for t in times)
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2)}


def _runtime(folder: Path, threads: int):
    spec = importlib.util.spec_from_file_location("bench_runtime", folder / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(folder, threads=threads)


def bench_export(run: Path, limit: int, threads: int, batch: int, precision: str = "fp32") -> dict:
    torch.set_num_threads(threads)
    model = seqkit.load(run, precision=precision)
    kind, items = _inputs(model, limit)
    with tempfile.TemporaryDirectory() as tmp:
        export_run(run, "onnx", Path(tmp) / "onnx", log=lambda m: None)
        exported = _runtime(Path(tmp) / "onnx", threads)
        if kind == "sentences":
            calls = {"eager torch": lambda xs: model.tag(xs, batch_size=batch),
                     "onnxruntime": lambda xs: exported.tag(xs, batch_size=batch)}
        else:
            rate = model.sample_rate
            calls = {"eager torch": lambda xs: [r["text"] for r in model.transcribe([w for w, _ in xs],
                                                                                   sample_rate=rate, batch_size=batch)],
                     "onnxruntime": lambda xs: exported.transcribe([w for w, _ in xs])}
        result = {"run": str(run), kind: len(items), "threads": threads, "torch": torch.__version__,
                  "eager_precision": precision}
        answers = {}
        for name, call in calls.items():
            call(items[:3])  # warm up
            times = []
            for item in items:
                started = time.perf_counter()
                call([item])
                times.append(time.perf_counter() - started)
            started = time.perf_counter()
            answers[name] = [call(items[i: i + batch]) for i in range(0, len(items), batch)]
            wall = time.perf_counter() - started
            result[name] = {"batch1": _percentiles(times), f"batch{batch}_per_s": round(len(items) / wall, 1)}
            print(f"{name:>12}: batch 1 p50 {result[name]['batch1']['p50_ms']} ms, p99 "
                  f"{result[name]['batch1']['p99_ms']} ms; batch {batch}: {result[name][f'batch{batch}_per_s']} "
                  f"{kind}/s", flush=True)
        result["same_answers"] = answers["eager torch"] == answers["onnxruntime"]
        print(f"same answers: {result['same_answers']} ({len(items)} {kind}, {threads} thread(s))")
    return result


def bench_threads(run: Path, limit: int, clients: list[int], rounds: int, threads: int,
                  precision: str = "fp32", device: str = "cpu") -> dict:
    model = seqkit.load(run, threads=threads, precision=precision, device=device)
    kind, items = _inputs(model, limit)
    call = model.tag if kind == "sentences" else (lambda x: model.transcribe(x[0], sample_rate=model.sample_rate))
    call(items[0])
    result = {"run": str(run), "torch_threads": torch.get_num_threads(), kind: len(items), "precision": precision,
              "device": device}
    def work(part: list) -> list[float]:
        times = []
        for item in part:
            started = time.perf_counter()
            call(item)
            times.append(time.perf_counter() - started)
        return times

    for n in clients:
        jobs = items * rounds
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            times = [t for part in pool.map(work, [jobs[k::n] for k in range(n)]) for t in part]
        wall = time.perf_counter() - started
        result[f"{n} clients"] = {**_percentiles(times), "per_s": round(len(jobs) / wall, 1)}
        print(f"{n} client thread(s): p50 {result[f'{n} clients']['p50_ms']} ms, p99 "
              f"{result[f'{n} clients']['p99_ms']} ms, {result[f'{n} clients']['per_s']} {kind}/s", flush=True)
    return result


def bench_stream(run: Path, limit: int, threads: int, chunk_ms: int) -> dict:
    from seqkit.heads.ctc import error_rates

    torch.set_num_threads(threads)
    model = seqkit.load(run)
    _, items = _inputs(model, limit)
    step = model.sample_rate * chunk_ms // 1000
    refs, whole, streamed, latencies = [], [], [], []
    for wave, text in items:
        refs.append(text)
        whole.append(model.transcribe(wave, sample_rate=model.sample_rate)["text"])
        session = model.stream()
        for start in range(0, len(wave), step):
            started = time.perf_counter()
            session.feed(wave[start: start + step])
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        streamed.append(session.finish())
        latencies.append(time.perf_counter() - started)
    result = {"run": str(run), "utterances": len(refs), "chunk_ms": chunk_ms, "threads": threads,
              "streamed": error_rates(refs, streamed), "whole": error_rates(refs, whole),
              "identical": sum(a == b for a, b in zip(streamed, whole, strict=True)),
              "chunk_to_text": _percentiles(latencies)}
    print(f"{len(refs)} utterances in {chunk_ms} ms chunks: streamed CER {result['streamed']['cer']:.2f} "
          f"(whole {result['whole']['cer']:.2f}; {result['identical']} transcripts identical); from a chunk's "
          f"arrival to its text p50 {result['chunk_to_text']['p50_ms']} ms, p99 {result['chunk_to_text']['p99_ms']} ms")
    return result


def bench_batching(run: Path, limit: int, threads: int, batch: int, precision: str = "fp32",
                   device: str = "cpu") -> dict:
    model = seqkit.load(run, threads=threads, precision=precision, device=device)
    kind, items = _inputs(model, limit)
    if kind != "sentences":
        raise SystemExit("batching: a tagging run is needed")
    encoder = next(m for m in model.modules() if isinstance(m, seqkit.Encoder))
    inside = [0.0]  # seconds in the encoder's forward (the recurrence), timed by two hooks

    def clock() -> float:  # a GPU's queued kernels finish first
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    encoder.register_forward_pre_hook(lambda *_: inside.__setitem__(0, inside[0] - clock()))
    encoder.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] + clock()))
    model.tag(items[:batch])  # warm-up
    inside[0] = 0.0
    started = time.perf_counter()
    for item in items:
        model.tag(item)
    one, one_encoder = len(items) / (time.perf_counter() - started), inside[0] / len(items)
    inside[0] = 0.0
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        model.tag(items[start: start + batch])
    many, many_encoder = len(items) / (time.perf_counter() - started), inside[0] / len(items)
    result = {"run": str(run), "threads": threads, "precision": precision, "device": device,
              "sentences": len(items), "batch": batch,
              "one_per_call_per_s": round(one, 1), "batched_per_s": round(many, 1), "ratio": round(many / one, 2),
              "encoder_ms_one_per_call": round(one_encoder * 1e3, 3),
              "encoder_ms_batched": round(many_encoder * 1e3, 3),
              "encoder_ratio": round(one_encoder / many_encoder, 2)}
    print(f"{len(items)} sentences, {threads} thread(s): {result['one_per_call_per_s']}/s one per call, "
          f"{result['batched_per_s']}/s {batch} per call: {result['ratio']}x")
    print(f"the encoder alone: {result['encoder_ms_one_per_call']} ms a sentence one per call, "
          f"{result['encoder_ms_batched']} ms {batch} per call: {result['encoder_ratio']}x")
    return result


def bench_padding(run: Path, limit: int, threads: int, batch: int, precision: str = "fp32",
                  device: str = "cpu", lengths: tuple[int, ...] = (15, 30, 60, 100)) -> dict:
    """What padding costs a batch: ``tag()`` on n copies of one test sentence of about each
    length (no padding at all), ms a call for n = 1, 16 and ``batch``; and how many padded steps
    ``batch`` test sentences as they come hold for each real one."""
    model = seqkit.load(run, threads=threads, precision=precision, device=device)
    kind, items = _inputs(model, limit)
    if kind != "sentences":
        raise SystemExit("padding: a tagging run is needed")
    sizes = [len(tokens_with_offsets(t, model.vocab.tokenize)[0]) for t in items]  # tokens as tag() cuts them
    chunks = [sizes[i: i + batch] for i in range(0, len(sizes), batch)]
    result = {"run": str(run), "threads": threads, "precision": precision, "device": device, "batch": batch,
              "padded_per_real": round(sum(max(c) * len(c) for c in chunks) / max(1, sum(sizes)), 2),
              "ms_per_call": {}}
    print(f"{len(items)} sentences {batch} a call as they come: {result['padded_per_real']} padded steps "
          f"per real one")
    for want in lengths:
        pick = min(range(len(items)), key=lambda i: abs(sizes[i] - want))
        row = {}
        for n in sorted({1, 16, batch}):
            texts = [items[pick]] * n
            model.tag(texts)  # warm-up
            reps = max(3, 64 // n)
            started = time.perf_counter()
            for _ in range(reps):
                model.tag(texts)
            row[n] = round((time.perf_counter() - started) / reps * 1e3, 2)
        result["ms_per_call"][sizes[pick]] = row
        gains = ", ".join(f"n={n} {ms} ms ({row[1] * n / ms:.1f}x)" for n, ms in row.items() if n > 1)
        print(f"{sizes[pick]} tokens: n=1 {row[1]} ms; {gains}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python bench/deploy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["export", "threads", "stream", "batching", "padding"])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=300, help="test items (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="torch's (and onnxruntime's) intra-op threads "
                                                                "(default 1)")
    parser.add_argument("--batch", type=int, default=64,
                        help="the throughput batch (export, batching, padding; default 64)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4], help="client threads (threads)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the items per client count (threads)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="streamed chunk (stream; default 100)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the eager model's precision (export, threads, batching; default fp32)")
    parser.add_argument("--device", default="cpu",
                        help="the eager model's device (threads, batching, padding; default cpu; cuda for a GPU)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.what == "export":
        result = bench_export(args.run, args.limit, args.threads, args.batch, args.precision)
    elif args.what == "threads":
        result = bench_threads(args.run, args.limit, args.clients, args.rounds, args.threads, args.precision,
                               args.device)
    elif args.what == "batching":
        result = bench_batching(args.run, args.limit, args.threads, args.batch, args.precision, args.device)
    elif args.what == "padding":
        result = bench_padding(args.run, args.limit, args.threads, args.batch, args.precision, args.device)
    else:
        result = bench_stream(args.run, args.limit, args.threads, args.chunk_ms)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
