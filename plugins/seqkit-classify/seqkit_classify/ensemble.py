"""Seed ensembles: the same recipe trained with different ``train.seed`` values, their class
probabilities averaged. ``seqkit classify RUN --with RUN2 ...`` classifies with one, and
``seqkit classify-cv --seeds 1,2,3`` scores one per fold."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

import seqkit
from seqkit.tasks import not_a


def check_members(models: Sequence[Any], runs: Sequence[Any]) -> None:
    """Every member classifies, with the same classes in the same order."""
    for model, run in zip(models, runs):
        if not hasattr(model, "classify"):
            raise not_a(model, "classify text", run)
    first = models[0]
    for model, run in zip(models[1:], runs[1:]):
        if model.vocab.labels != first.vocab.labels or model.multi_label != first.multi_label:
            raise seqkit.SeqkitError(
                f"{run}: classes {model.vocab.labels} (multi-label {model.multi_label}) differ from {runs[0]}'s "
                f"{first.vocab.labels} (multi-label {first.multi_label}); an ensemble needs the same classes")


def ensemble_probabilities(models: Sequence[Any], texts: list[str], *, batch_size: int = 256) -> Tensor:
    """The mean of the members' class probabilities ``(N, C)``."""
    return torch.stack([m.probabilities(texts, batch_size=batch_size) for m in models]).mean(0)


def ensemble_classify(models: Sequence[Any], texts: list[str], *, batch_size: int = 256) -> list[dict[str, Any]]:
    """The first model's results (tokens, attention) with ``probs`` the mean of every model's
    probabilities and ``label`` chosen from that mean."""
    results = models[0].classify(texts, batch_size=batch_size)
    if len(models) == 1:
        return results
    probs = ensemble_probabilities(models, texts, batch_size=batch_size)
    labels = models[0].vocab.labels
    for result, row, label in zip(results, probs.tolist(), models[0].decide(probs)):
        result.update(label=label, probs={lab: round(p, 4) for lab, p in zip(labels, row)}, members=len(models))
    return results


def accuracy(predicted: list[Any], gold: list[Any]) -> float:
    """Percent of texts whose label (or, multi-label, whose whole set of labels) is right."""
    def norm(item: Any) -> Any:
        return sorted(item) if isinstance(item, list) else item

    return 100.0 * sum(norm(p) == norm(g) for p, g in zip(predicted, gold)) / max(len(gold), 1)
