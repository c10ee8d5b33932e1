"""seqkit: recurrent sequence models on one shared stacked bidirectional encoder.

Public names: ``Cell`` (the recurrent cell contract), ``Encoder`` (the shared encoder),
``hookimpl`` (the plugin marker), ``Recipe`` (typed recipes), ``bounded`` (an option with a
range, for a component's ``Config``), ``load`` (a trained model
from a run folder), ``Task`` and ``ModelOutput`` (the task contract; helpers in ``seqkit.tasks``)
and the errors a user can cause (``SeqkitError``, ``RecipeError``, ``DataError``).
"""

from .hookspecs import hookimpl

__version__ = "0.1.0"

from . import tasks  # noqa: E402
from .cells import Cell  # noqa: E402
from .encoder import Encoder  # noqa: E402
from .errors import DataError, RecipeError, SeqkitError  # noqa: E402
from .recipe import Recipe, bounded  # noqa: E402
from .tasks import ModelOutput, Task  # noqa: E402


def load(run_dir, *, device: str = "cpu", checkpoint: str = "best"):
    """Load a trained model from a run folder (``seqkit recipe run ... --out DIR``).

    Example::

        tagger = seqkit.load("runs/msra")
        tagger.tag(["张三在北京大学工作"])
    """
    from .build import load as _load

    return _load(run_dir, device=device, checkpoint=checkpoint)


__all__ = ["Cell", "DataError", "Encoder", "ModelOutput", "Recipe", "RecipeError", "SeqkitError", "Task",
           "__version__", "bounded", "hookimpl", "load", "tasks"]
