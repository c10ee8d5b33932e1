"""Task models: each task module turns a recipe into a model, batches and metrics.

A task module provides ``prepare(recipe, run_dir, log) -> Prepared``,
``build_model(recipe, run_dir) -> nn.Module`` (weights are loaded by the caller) and
``evaluate_data(model, path, batch_size) -> dict``.  ``seqkit.build`` picks the module by the
head's ``task`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from torch import nn

__all__ = ["Prepared"]


@dataclass
class Prepared:
    model: nn.Module  # has loss(batch), evaluate(batches), monitor, mode
    train_batches: Callable[[int], Sequence[Any]]  # epoch -> batches, deterministic
    valid_batches: Optional[Sequence[Any]]
    test_batches: Optional[Sequence[Any]]
    # more test metrics (e.g. other test sets), computed with the best weights after the test split
    extra_eval: Optional[Callable[[nn.Module], dict[str, Any]]] = None
