"""Music sampling speed at batch 1: frames/s of a piano-roll run, events/s of a melody run.

    python bench/music.py runs/jsb runs/jsb-nade runs/folk        # 1 thread, 5 repeats
    python bench/music.py runs/jsb --frames 1000 --threads 2 --json out.json

A piano-roll run samples ``--frames`` frames from silence (``model.generate``: the encoder's
carried state a frame, then the head's draw: 88 Bernoulli keys, or the NADE key by key). A melody
run samples ``--events`` events without stopping at the end of a tune (the language model's
``generate_tokens``). The figure is the median of the repeats, each with its own seed, after a
warm-up. Needs the seqkit-music plugin installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import seqkit


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python bench/music.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of piano-roll or melody recipes")
    parser.add_argument("--frames", type=int, default=500, help="frames per repeat (piano-roll; default 500)")
    parser.add_argument("--events", type=int, default=500, help="events per repeat (melody; default 500)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    results = []
    for run in args.runs:
        model = seqkit.load(run)
        if hasattr(model, "generate_melody"):
            unit, count = "events", args.events

            def sample(seed: int, n: int, model=model) -> int:
                return sum(1 for _ in model.generate_tokens("", max_tokens=n, seed=seed))
        elif hasattr(model, "generate") and hasattr(model, "meta"):
            unit, count = "frames", args.frames

            def sample(seed: int, n: int, model=model) -> int:
                return len(model.generate(n, seed=seed).roll)
        else:
            raise SystemExit(f"{run}: not a piano-roll or melody run")
        sample(0, 20)  # warm up
        rates = []
        for k in range(args.repeats):
            started = time.perf_counter()
            done = sample(k + 1, count)
            rates.append(done / (time.perf_counter() - started))
        row = {"run": str(run), "task": model.recipe.task.name, "head": model.recipe.head.name, "unit": unit,
               "per_s": statistics.median(rates), "threads": args.threads, "repeats": args.repeats, "count": count}
        results.append(row)
        print(f"{run}: {row['per_s']:.0f} {unit}/s ({row['task']}, head {row['head']}, batch 1, "
              f"{args.threads} thread(s), median of {args.repeats} x {count})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
