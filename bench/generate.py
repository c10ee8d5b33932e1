"""Generation speed: tokens/s of a trained language model at batch 1, beside a plain step loop.

    python bench/generate.py runs/kjv                    # 1 thread, 500 tokens, 5 repeats
    python bench/generate.py runs/kjv --threads 2 --tokens 1000 --json out.json

Both loops sample the same number of tokens one at a time at batch 1: ``seqkit.load(run).generate``
(embedding, seqkit's encoder with the carried state, tied softmax head, top-k sampling through
``seqkit.sampling``), and a plain ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear`` loop of the same
sizes sampling with ``torch.multinomial``, the baseline a user would write by hand.  The figure is
the median of the repeats; ratio = seqkit's tokens/s over the plain loop's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import seqkit


def _plain_loop(vocab: int, emb: int, hidden: int, layers: int, tokens: int, seed: int) -> float:
    embed, lstm = nn.Embedding(vocab, emb), nn.LSTM(emb, hidden, layers, batch_first=True)
    out = nn.Linear(hidden, vocab)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        ids, state = torch.tensor([[1]]), None
        started = time.perf_counter()
        for _ in range(tokens):
            h, state = lstm(embed(ids), state)
            probs = out(h[:, -1]).div(0.8).softmax(-1)
            ids = torch.multinomial(probs, 1, generator=gen)
        return tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python bench/generate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of a language-model recipe (forward encoder)")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per repeat (default 500)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    lm = seqkit.load(args.run)
    enc = lm.encoder
    sizes = dict(vocab=len(lm.vocab), emb=lm.embed.embedding_dim, hidden=enc.hidden_size, layers=enc.num_layers)
    ours, plain = [], []
    lm.generate("", max_tokens=20, seed=0)  # warm up both
    _plain_loop(**sizes, tokens=20, seed=0)
    for k in range(args.repeats):
        started = time.perf_counter()
        count = sum(1 for _ in lm.generate_tokens("", max_tokens=args.tokens, seed=k, temperature=0.8))
        ours.append(count / (time.perf_counter() - started))
        plain.append(_plain_loop(**sizes, tokens=args.tokens, seed=k))
    result = {"run": str(args.run), "threads": args.threads, "tokens": args.tokens, "repeats": args.repeats, **sizes,
              "seqkit_tokens_per_s": round(statistics.median(ours), 1),
              "plain_lstm_tokens_per_s": round(statistics.median(plain), 1)}
    result["ratio"] = round(result["seqkit_tokens_per_s"] / result["plain_lstm_tokens_per_s"], 3)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
