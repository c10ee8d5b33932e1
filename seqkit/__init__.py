"""seqkit: recurrent sequence models on one shared stacked bidirectional encoder.

Public names: ``Cell`` (the recurrent cell contract), ``Encoder`` (the shared encoder),
``hookimpl`` (the plugin marker), ``Recipe`` (typed recipes), ``bounded`` (an option with a
range, for a component's ``Config``), ``run_recipe`` (train a recipe), ``load`` (a trained model
from a run folder), ``Task`` and ``ModelOutput`` (the task contract; helpers in ``seqkit.tasks``)
and the errors a user can cause (``SeqkitError``, ``RecipeError``, ``DataError``).
"""

from pathlib import Path
from typing import Optional

from .hookspecs import hookimpl

__version__ = "0.1.0"

from . import tasks  # noqa: E402
from .cells import Cell  # noqa: E402
from .encoder import Encoder  # noqa: E402
from .errors import DataError, RecipeError, SeqkitError  # noqa: E402
from .recipe import Recipe, bounded  # noqa: E402
from .tasks import ModelOutput, Task  # noqa: E402


def load(run_dir, *, device: str = "cpu", checkpoint: str = "best", threads: Optional[int] = None,
         precision: str = "fp32"):
    """Load a trained model from a run folder (``seqkit recipe run ... --out DIR``).

    ``device``: where the model runs (``cpu``, ``cuda[:N]``, ``mps``, ``auto``); ``checkpoint``:
    ``best`` (the best validation weights; ``last`` when the run has not validated yet) or
    ``last`` (the latest training state). Anything else is one clear error. ``threads``: torch's
    intra-op threads for inference, set once here for the process (None: leave torch's setting;
    threads pick it up when they first run torch, so load before starting them); a model never
    changes it while it runs, so one model can serve many threads. ``precision``: ``fp32`` or
    ``bf16``, the recurrences' precision (bf16 pays on CPUs with AVX512-BF16 or AMX and on
    GPUs; everything around them stays fp32; docs/deploying.md has what it gains and costs).
    A run trained with other versions of seqkit or its plugins loads with a warning.

    Example::

        tagger = seqkit.load("runs/msra")
        tagger.tag(["张三在北京大学工作"])
    """
    from .build import load as _load

    if threads is not None:
        if threads < 1:
            raise SeqkitError(f"threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    return _load(run_dir, device=device, checkpoint=checkpoint, precision=precision)


def run_recipe(recipe, out, *, resume: bool = False, progress: bool = True, log=None):
    """Train and test a resolved ``Recipe`` in run folder ``out`` (what ``seqkit recipe run`` does;
    the folder is locked meanwhile) and return the final metrics. ``resume`` continues its last
    checkpoint. For drivers such as cross-validation that run several recipes."""
    from .build import run_recipe as _run

    return _run(recipe, Path(out), resume=resume, progress=progress, log=log)


__all__ = ["Cell", "DataError", "Encoder", "ModelOutput", "Recipe", "RecipeError", "SeqkitError", "Task",
           "__version__", "bounded", "hookimpl", "load", "run_recipe", "tasks"]
