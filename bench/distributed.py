"""Data-parallel training measured: one process against N (torchrun, DDP), same recipe, same global batch.

    python bench/distributed.py recipes/ner/msra.yaml --steps 60 --nproc 2
    python bench/distributed.py recipes/lm/kjv.yaml --steps 60 --nproc 2 --interrupt 30

Each process gets ``--threads`` threads (1 by default, so 2 processes fill a 2-core machine). Dropout
is switched off (every dropout option the recipe has is set to 0) unless --keep-dropout: with it, the
N processes draw other masks than one process does and the runs are statistically alike, not equal.
Prints, as JSON: the largest relative difference of the training loss at any step (and each
step's), the final metrics of each run, and training steps per second (steps over the training
time between the 6th logged step and the last). With ``--interrupt K`` it also sends SIGTERM
(``--signal INT``: SIGINT) to rank 1 of an N-process run after step K, resumes it with N and with
1 process, and reports their final metrics and the losses' largest differences against the
uninterrupted N-process run. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DROPOUTS = ("features.dropout", "features.embedding_dropout", "encoder.dropout", "encoder.weight_drop",
            "encoder.input_dropout", "encoder.output_dropout", "head.dropout")


def _sets(recipe: Path, args: argparse.Namespace) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from seqkit.recipe import Recipe

    resolved = Recipe.load(recipe).to_dict()
    sets = [f"train.max_steps={args.steps}", "train.log_every=1", f"train.threads={args.threads}", "device=cpu",
            "train.checkpoint_every=0"]
    if not args.keep_dropout:
        for key in DROPOUTS:
            section, name = key.split(".")
            if name in (resolved.get(section) or {}):
                sets.append(f"{key}=0")
    return sets + list(args.set)


def _command(recipe: Path, out: Path, nproc: int, sets: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "seqkit", "recipe", "run", str(recipe), "--out", str(out), "--no-progress",
            "--nproc", str(nproc), *[a for s in sets for a in ("--set", s)], *extra]


def _env(threads: int, tag: str = "") -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "SEQKIT_BENCH_RUN": tag}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _records(run) if r["event"] == "train"]


def _steps_per_s(run: Path) -> float:
    times = [r["time"] for r in _records(run) if r["event"] == "train"][5:]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def _worst(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / abs(x) for x, y in zip(a, b)), default=float("nan"))


def _final(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("peak_rss_mb",)}


def _train(recipe: Path, out: Path, nproc: int, sets: list[str], threads: int, *extra: str) -> None:
    done = subprocess.run(_command(recipe, out, nproc, sets, *extra), capture_output=True, text=True,
                          env=_env(threads), cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{out.name}: exit {done.returncode}\n{done.stderr[-2000:]}")


def _rank_pid(tag: str, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"SEQKIT_BENCH_RUN={tag}".encode() in env and f"RANK={rank}".encode() in env:
                return int(entry.name)
    return None


def _interrupted(recipe: Path, out: Path, nproc: int, sets: list[str], threads: int, after: int,
                 sig: signal.Signals) -> int:
    """Train with ``nproc`` processes, send ``sig`` to rank 1 after step ``after``; returns the step it stopped at."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(_command(recipe, out, nproc, sets), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(threads, tag), cwd=ROOT)
    while proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(_losses(out)) >= after:
            pid = _rank_pid(tag, 1)
            if pid is not None:
                os.kill(pid, sig)
                break
        time.sleep(0.05)
    _, stderr = proc.communicate()
    if proc.returncode != 128 + sig:
        sys.exit(f"the interrupted run exited {proc.returncode}, not {128 + sig}\n{stderr[-2000:]}")
    return len(_losses(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--interrupt", type=int, default=0, metavar="K",
                        help="also signal rank 1 after step K and resume with N and with 1 process")
    parser.add_argument("--signal", choices=("TERM", "INT"), default="TERM", help="the signal --interrupt sends")
    parser.add_argument("--keep-dropout", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = args.recipe.resolve()
    sets = _sets(recipe, args)
    tmp = Path(tempfile.mkdtemp(prefix="seqkit-ddp-"))
    try:
        one, many = tmp / "one", tmp / f"n{args.nproc}"
        _train(recipe, one, 1, sets, args.threads)
        _train(recipe, many, args.nproc, sets, args.threads)
        report = {"recipe": str(args.recipe), "steps": args.steps, "threads_per_process": args.threads,
                  "dropout": "kept" if args.keep_dropout else "off",
                  "loss_max_rel_diff": _worst(_losses(one), _losses(many)),
                  "loss_rel_diff_by_step": [float(f"{abs(x - y) / abs(x):.2e}")
                                            for x, y in zip(_losses(one), _losses(many))],
                  "loss_by_step": [round(x, 4) for x in _losses(one)],
                  "steps_per_s": {"1": round(_steps_per_s(one), 3), str(args.nproc): round(_steps_per_s(many), 3)},
                  "final": {"1": _final(one), str(args.nproc): _final(many)}}
        if args.interrupt:
            for resume_with in (args.nproc, 1):
                out = tmp / f"stopped-{resume_with}"
                sig = signal.Signals[f"SIG{args.signal}"]
                stopped = _interrupted(recipe, out, args.nproc, sets, args.threads, args.interrupt, sig)
                _train(recipe, out, resume_with, sets, args.threads, "--resume")
                report[f"sig{args.signal.lower()}_at_{stopped}_resumed_with_{resume_with}"] = {
                    "loss_max_rel_diff": _worst(_losses(many), _losses(out)),
                    "identical_losses": _losses(many) == _losses(out), "final": _final(out)}
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
