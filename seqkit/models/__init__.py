"""The built-in tasks' models: tagging, transcription and language modelling.

Each module holds a model and its :class:`seqkit.tasks.Task`, registered from
``seqkit/default_plugins/tasks.py`` like any plugin's task.
"""

from ..tasks import Prepared, epoch_order, length_groups, load_splits, recipe_base

__all__ = ["Prepared", "epoch_order", "length_groups", "load_splits", "recipe_base"]
