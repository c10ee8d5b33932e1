"""Tag a run's test split at batch size 1 and at batch size 64 and compare the results.

Usage: python bench/ner_invariance.py runs/msra [--limit N]
Prints the number of sentences, how many differ, and the time of each pass.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import seqkit
from seqkit.models import load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = seqkit.load(args.run)
    sentences = [words for words, _ in load_splits(model.recipe)["test"].sentences]
    if args.limit:
        sentences = sentences[: args.limit]
    timings, results = {}, {}
    for batch_size in (1, 64):
        start = time.perf_counter()
        results[batch_size] = model.tag(sentences, batch_size=batch_size)
        timings[batch_size] = round(time.perf_counter() - start, 2)
    differ = sum(1 for a, b in zip(results[1], results[64]) if a["tags"] != b["tags"])
    print(json.dumps({"sentences": len(sentences), "differing_sentences": differ,
                      "seconds_batch_1": timings[1], "seconds_batch_64": timings[64],
                      "threads": args.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
