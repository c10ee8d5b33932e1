"""Span-level precision, recall and F1 for BIO/BIOES tag sequences (conlleval-style).

A span is ``(type, start, end_exclusive)``.  Reading is lenient, so ill-formed gold or
predicted sequences still give well-defined spans:

* ``B-T`` and ``S-T`` always start a new span (``S-T`` is one token and ends at once);
* ``I-T`` continues an open span of type ``T``; otherwise it starts a new one (after ``O``,
  after a finished span, or after an open span of another type);
* ``E-T`` ends an open span of type ``T``; otherwise it is a one-token span of its own;
* ``O`` closes any open span, and so does the end of the sequence (``B-T I-T`` with no
  ``E-T`` is still a span under BIOES).

BIO accepts the prefixes B and I; BIOES accepts B, I, E and S.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from ..export_runtime import spans  # one reader of spans, shared with exported models

__all__ = ["span_scores", "spans"]


def _prf(correct: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1 in 0-100; 0.0 wherever a denominator is zero."""
    p = 100.0 * correct / n_pred if n_pred else 0.0
    r = 100.0 * correct / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def span_scores(
    gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]], scheme: str
) -> dict:
    """Micro and per-type span precision/recall/F1 (0-100) of ``pred`` against ``gold``.

    Returns ``{"precision", "recall", "f1", "per_type", "gold_spans", "pred_spans",
    "correct_spans"}``; ``per_type`` maps each type seen in gold or pred to
    ``{"precision", "recall", "f1", "support"}`` with support the number of gold spans.
    Raises ValueError when the two differ in number of sequences or in a sequence's length.
    """
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_correct: Counter[str] = Counter()
    gold_it, pred_it = iter(gold), iter(pred)
    index = 0
    while True:
        g = next(gold_it, None)
        p = next(pred_it, None)
        if g is None or p is None:
            if g is not None or p is not None:
                raise ValueError(
                    f"gold and pred hold different numbers of sequences "
                    f"(one ends after {index})"
                )
            break
        if len(g) != len(p):
            raise ValueError(
                f"sequence {index}: gold has {len(g)} tags but pred has {len(p)}"
            )
        g_spans, p_spans = set(spans(g, scheme)), set(spans(p, scheme))
        n_gold.update(s[0] for s in g_spans)
        n_pred.update(s[0] for s in p_spans)
        n_correct.update(s[0] for s in g_spans & p_spans)
        index += 1

    per_type = {}
    for kind in sorted(n_gold.keys() | n_pred.keys()):
        p, r, f = _prf(n_correct[kind], n_pred[kind], n_gold[kind])
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": n_gold[kind]}
    total_gold, total_pred = sum(n_gold.values()), sum(n_pred.values())
    total_correct = sum(n_correct.values())
    p, r, f = _prf(total_correct, total_pred, total_gold)
    return {
        "precision": p,
        "recall": r,
        "f1": f,
        "per_type": per_type,
        "gold_spans": total_gold,
        "pred_spans": total_pred,
        "correct_spans": total_correct,
    }
