"""Seed ensembles: the same recipe trained with different ``train.seed`` values, their class
probabilities averaged. ``seqkit classify RUN --with RUN2 ...`` (``model.classify(texts,
members=[...])``) classifies with one, and ``seqkit classify-cv --seeds 1,2,3`` scores one per fold."""

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


def accuracy(predicted: list[Any], gold: list[Any], labels: list[str]) -> float:
    """Percent of texts whose label (or, multi-label, whose whole set of labels) is right."""
    from sklearn.metrics import accuracy_score
    from sklearn.preprocessing import MultiLabelBinarizer

    if any(isinstance(item, list) for item in [*predicted, *gold]):  # multi-label: exact set match
        binarizer = MultiLabelBinarizer(classes=labels).fit([labels])
        predicted = binarizer.transform([p if isinstance(p, list) else [p] for p in predicted])
        gold = binarizer.transform([g if isinstance(g, list) else [g] for g in gold])
    return 100.0 * accuracy_score(gold, predicted)
