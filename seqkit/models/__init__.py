"""Task models: each task module turns a recipe into a model, batches and metrics.

A task module provides ``prepare(recipe, run_dir, log) -> Prepared``,
``build_model(recipe, run_dir) -> nn.Module`` (weights are loaded by the caller) and
``evaluate_data(model, path, batch_size) -> dict``.  ``seqkit.build`` picks the module by the
head's ``task`` attribute.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from torch import nn

if TYPE_CHECKING:
    from ..recipe import Recipe, TrainConfig

__all__ = ["Prepared", "length_groups", "load_splits", "recipe_base"]


@dataclass
class Prepared:
    model: nn.Module  # has loss(batch), evaluate(batches), monitor, mode
    train_batches: Callable[[int], Sequence[Any]]  # epoch -> batches, deterministic
    valid_batches: Optional[Sequence[Any]]
    test_batches: Optional[Sequence[Any]]
    # the final evaluation with the best weights, when the task has more to report than
    # ``model.evaluate(test_batches)`` (beam search, other test sets); it then replaces that
    final_eval: Optional[Callable[[nn.Module], dict[str, Any]]] = None


def recipe_base(recipe: "Recipe") -> Path:
    """The folder that a recipe's relative data paths are read from: the recipe file's own."""
    return Path(recipe.source).parent if recipe.source not in ("", "<defaults>") else Path.cwd()


def load_splits(recipe: "Recipe", splits: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The recipe's data splits, from the dataset provider it names.  With ``splits``, a
    provider that takes a ``splits`` argument (like ``synth-speech``, which renders its audio)
    builds only those; any other provider returns all of its splits as usual."""
    from .. import registry

    provider = registry.datasets.get(recipe.data.dataset, where=f"{recipe.source}: data.dataset")
    if splits is not None and "splits" in inspect.signature(provider).parameters:
        return provider(recipe.data, base=recipe_base(recipe), splits=tuple(splits))
    return provider(recipe.data, base=recipe_base(recipe))


def epoch_order(train: TrainConfig, epoch: int) -> dict[str, Any]:
    """How the training batches of ``epoch`` (0-based) are ordered, as ``make_batches`` keyword
    arguments: shuffled by a seed of their own, or shortest first in the first epoch with
    ``train.sortagrad``."""
    return {"seed": train.seed * 1000 + epoch, "shortest_first": train.sortagrad and epoch == 0}


def length_groups(lengths: Sequence[int], batch_size: int, seed: Optional[int] = None, *,
                  shortest_first: bool = False) -> list[list[int]]:
    """Index groups of similar length: sorted when ``seed`` is None (evaluation) or
    ``shortest_first`` (SortaGrad's first epoch), else shuffled deterministically, sorted within
    pools of 50 batches, and the batches shuffled again."""
    order = list(range(len(lengths)))
    if seed is None or shortest_first:
        order.sort(key=lambda i: lengths[i])
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    pool = batch_size * 50  # sort within pools so that batches vary between epochs
    groups = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p: p + pool], key=lambda i: lengths[i])
        groups += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(groups)
    return groups
