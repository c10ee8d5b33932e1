"""The built-in tasks' models: tagging, transcription and language modelling.

Each module holds a model and its :class:`seqkit.tasks.Task`, registered from
``seqkit/default_plugins/tasks.py`` like any plugin's task.

Public for plugins: the language-modelling machinery (truncated backpropagation through time with
a carried state, the tied softmax head, sampling, perplexity) can carry other tokens. A plugin
subclasses :class:`LanguageModelTask` (set ``model_class`` to its :class:`LanguageModel`
subclass and ``default_dataset`` to its provider) and gives its dataset provider's splits as
:class:`TextCorpus` objects, one sequence of space-separated tokens a line (``seqkit-music``'s
melody task does this).
"""

from ..data.lm import TextCorpus
from ..tasks import Prepared, epoch_order, length_groups, load_splits, recipe_base
from .lm import LanguageModel, LanguageModelTask

__all__ = ["LanguageModel", "LanguageModelTask", "Prepared", "TextCorpus", "epoch_order", "length_groups",
           "load_splits", "recipe_base"]
