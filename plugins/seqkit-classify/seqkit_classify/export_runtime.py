"""Post-processing of an exported seqkit-classify model, with numpy only (``seqkit export``
copies this file beside the graph; ``runtime.load(folder)`` returns a :class:`Classifier`).

    clf = runtime.load("DIR")
    clf.classify("a gripping film")   # {'text', 'label', 'probs', 'tokens', 'attention'?}
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from typing import Any, Sequence, Union

import numpy as np

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")  # as seqkit_classify.model.tokenize


@functools.lru_cache(maxsize=200_000)
def char_ngrams(token: str, buckets: int, low: int, high: int) -> tuple[int, ...]:
    """The character n-grams (``low``..``high`` characters) of ``<token>``, as fastText cuts them,
    each hashed with CRC-32 into 1..buckets (0 is padding); sorted, one id per distinct n-gram.
    seqkit_classify.model uses this same function, so the exported model hashes as it trained;
    a bounded cache, as words repeat."""
    word = f"<{token}>"
    grams = {word[i: i + n] for n in range(low, high + 1) for i in range(len(word) - n + 1)}
    return tuple(sorted(zlib.crc32(g.encode("utf-8")) % buckets + 1 for g in grams))


def pad_ngrams(rows: Sequence[Sequence[Sequence[int]]], longest: int) -> np.ndarray:
    """(N, L, K) int64 n-gram ids from each text's list of per-token id lists, zero-padded."""
    width = max((len(g) for row in rows for g in row), default=0) or 1
    out = np.zeros((len(rows), longest, width), dtype=np.int64)
    for r, row in enumerate(rows):
        for t, grams in enumerate(row):
            out[r, t, : len(grams)] = grams
    return out


def load(graph: Any) -> "Classifier":
    return Classifier(graph)


class Classifier:
    """``classify(text | [texts])`` as ``seqkit.load(run).classify``: the label, every class's
    probability, the tokens and (attention pooling) their attention weights averaged over heads."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        info = json.loads((graph.folder / "classify.json").read_text(encoding="utf-8"))
        self.tokens, self.labels = info["tokens"], info["labels"]
        self.lowercase, self.multi_label = info["lowercase"], info["multi_label"]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.subwords = info.get("subwords")  # [buckets, low, high] or None

    def _encode(self, text: str) -> tuple[list[str], list[int]]:
        toks = _TOKEN.findall(text.lower() if self.lowercase else text) or ["<unk>"]
        return toks, [self.index.get(t, 1) for t in toks]

    def classify(self, texts: Union[str, Sequence[str]], *, batch_size: int = 64) -> Any:
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        results = []
        for start in range(0, len(items), batch_size):
            chunk = items[start: start + batch_size]
            encoded = [self._encode(t) for t in chunk]
            lengths = np.array([len(ids) for _, ids in encoded], dtype=np.int64)
            ids = np.zeros((len(chunk), int(lengths.max())), dtype=np.int64)
            for row, (_, seq) in enumerate(encoded):
                ids[row, : len(seq)] = seq
            feed = {"ids": ids, "lengths": lengths}
            if self.subwords:
                feed["grams"] = pad_ngrams([[char_ngrams(t, *self.subwords) for t in toks] for toks, _ in encoded],
                                           ids.shape[1])
            probs, *attention = self.graph.run(feed)
            for row, (toks, _) in enumerate(encoded):
                p = {label: round(float(probs[row, i]), 4) for i, label in enumerate(self.labels)}
                label: Any = [k for k, v in p.items() if v > 0.5] if self.multi_label else max(p, key=p.get)
                result = {"text": chunk[row], "label": label, "probs": p, "tokens": toks}
                if attention:
                    result["attention"] = [round(float(w), 4) for w in attention[0][row].mean(0)[: len(toks)]]
                results.append(result)
        return results[0] if single else results
