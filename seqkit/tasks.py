"""The task API: what a task implements, and the helpers every task uses.

A task turns a recipe into data, vocabularies, a model and metrics, and a run folder back into a
ready-to-use model.  The built-in tasks (``tagging``, ``transcription``, ``language-model``)
register through ``register_tasks`` exactly as a third party's task would::

    @seqkit.hookimpl
    def register_tasks(register):
        register("my-task", MyTask)

Contracts (documented once, here):

- a **batch** has ``to(device)``, ``num_items`` (tokens or frames, for throughput) and ``len()``;
- a **model** is an ``nn.Module`` whose ``forward(batch, state=None)`` returns a
  :class:`ModelOutput` with the mean training loss (and, for a task that carries recurrent state
  across batches, the state to hand to the next batch), and whose ``evaluate(batches)`` returns a
  dict of metrics (floats, or nested dicts of them);
- a **task** is a :class:`Task` subclass; its ``Config`` dataclass holds the options of the
  recipe's ``task`` section.

Shape legend: N batch, L length, I input features.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Optional, Protocol, Sequence, TypeVar

import torch
from torch import Tensor, nn

from . import registry
from .data.lm import cache_root
from .errors import RecipeError, SeqkitError
from .fsio import fsync_dir, fsync_file, write_text_atomic
from .recipe import NoOptions, brief

if TYPE_CHECKING:
    from .encoder import Encoder
    from .recipe import Recipe, TrainConfig

__all__ = [
    "Batch",
    "ModelOutput",
    "Prepared",
    "Task",
    "TaskModel",
    "build_encoder",
    "cache_root",
    "check_batch_size",
    "epoch_order",
    "get_task",
    "head_class",
    "length_groups",
    "load_splits",
    "not_a",
    "persist_vocab",
    "read_vocab",
    "recipe_base",
    "resolve_path",
    "seed_everything",
    "text_inputs",
    "write_json",
    "write_text_atomic",
]

State = tuple[Tensor, ...]


class Batch(Protocol):
    """What the trainer needs of a batch."""

    @property
    def num_items(self) -> int: ...  # tokens or frames, for throughput

    def to(self, device: torch.device) -> "Batch": ...

    def __len__(self) -> int: ...


@dataclass
class ModelOutput:
    """What a task model's ``forward(batch, state=None)`` returns.

    loss: the mean training loss of the batch (a scalar tensor).
    state: recurrent state to carry into the next batch (truncated backpropagation through
        time), or None. The trainer detaches it, passes it back as ``state``, starts each epoch
        with None and keeps it in the ``last`` checkpoint so that resuming stays exact. Its
        tensors hold one column per batch row in dimension 1, as the encoder's
        ``(num_layers * D, N, H)`` do (data-parallel training splits and joins them there).
    extra: anything else the model wants to hand back (logits, per-item losses).
    count: what ``loss`` is a mean over (tokens, frames, target units, sequences), or None for
        ``batch.num_items``. Data-parallel training weights each process's share of a batch by
        it, so N processes follow the gradient of the whole batch's mean, as one process does.
    """

    loss: Tensor
    state: Optional[State] = None
    extra: Optional[dict[str, Any]] = None
    count: Optional[float] = None


class TaskModel(Protocol):
    """A trained or trainable model of a task (an ``nn.Module``)."""

    recipe: "Recipe"

    def __call__(self, batch: Any, state: Optional[State] = None) -> ModelOutput: ...

    def evaluate(self, batches: Sequence[Any]) -> dict[str, Any]: ...


@dataclass
class Prepared:
    """Everything ``seqkit recipe run`` needs from a task to train and test."""

    model: nn.Module
    train_batches: Callable[[int], Sequence[Any]]  # epoch (0-based) -> batches, deterministic
    valid_batches: Optional[Sequence[Any]]
    test_batches: Optional[Sequence[Any]]
    # the final evaluation with the best weights, when the task has more to report than
    # ``model.evaluate(test_batches)`` (beam search, other test sets, a baseline); it then replaces that
    final_eval: Optional[Callable[[nn.Module], dict[str, Any]]] = None


class Task:
    """Base class of tasks. Subclass it, set the class attributes, implement the three methods.

    Class attributes:
        Config: dataclass of the options of the recipe's ``task`` section (default: none).
        default_head, default_dataset, default_features: the component a recipe gets when its
            section does not name one (``default_features = None``: the task reads no
            ``features`` section).
        monitor, mode: the validation metric that picks the best checkpoint, and whether higher
            (``"max"``) or lower (``"min"``) is better.
        summary: metric names that ``seqkit recipe run`` and ``seqkit evaluate`` print first.
    """

    Config: ClassVar[type] = NoOptions
    default_head: ClassVar[Optional[str]] = None
    default_dataset: ClassVar[Optional[str]] = None
    default_features: ClassVar[Optional[str]] = None
    monitor: ClassVar[str] = "loss"
    mode: ClassVar[Literal["min", "max"]] = "min"
    summary: ClassVar[tuple[str, ...]] = ()

    def check(self, recipe: "Recipe") -> None:
        """Refuse a recipe this task cannot run, before any data is read (one clear error)."""

    def prepare(self, recipe: "Recipe", run_dir: Optional[Path], *, log: Callable[[str], None]) -> Prepared:
        """Data, vocabularies (kept in ``run_dir``), model and batches of a recipe."""
        raise NotImplementedError(f"{type(self).__name__}.prepare")

    def build_model(self, recipe: "Recipe", run_dir: Path) -> nn.Module:
        """An untrained model shaped like the one in ``run_dir`` (its vocabularies read from it);
        ``seqkit.load`` loads the weights into it."""
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def evaluate_data(self, model: nn.Module, data: Optional[Path], *, batch_size: int) -> dict[str, Any]:
        """Metrics of a trained model on a data file, or (``data`` None) on its recipe's test split."""
        raise NotImplementedError(f"{type(self).__name__}.evaluate_data")

    def format_notes(self, metrics: dict[str, Any]) -> list[str]:
        """Lines ``seqkit evaluate`` prints on stderr under the metrics (where the data came from)."""
        return [f"data: {metrics['data']}"] if "data" in metrics else []

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        """How ``seqkit evaluate`` prints metrics: by default one ``name  value`` line each."""
        keys = [k for k in self.summary if k in metrics] + sorted(k for k in metrics if k not in self.summary)
        lines = []
        for key in keys:
            value = metrics[key]
            if isinstance(value, float):
                lines.append(f"{key:<16}{value:.4g}")
            elif isinstance(value, (int, str)):
                lines.append(f"{key:<16}{value}")
        return "\n".join(lines)


def get_task(recipe: "Recipe") -> Task:
    """The task object of a resolved recipe."""
    cls = registry.tasks.get(recipe.task.name, where=f"{recipe.source}: task.name")
    return cls()


def head_class(recipe: "Recipe") -> Any:
    """The registered head class the recipe names."""
    return registry.heads.get(recipe.head.name, where=f"{recipe.source}: head.name")


def build_encoder(recipe: "Recipe", input_size: int) -> "Encoder":
    """The shared encoder of a recipe's ``encoder`` section, batch first."""
    from .encoder import Encoder

    enc = recipe.encoder
    return Encoder(
        input_size, enc.hidden_size, num_layers=enc.num_layers, cell=enc.cell, directions=enc.direction_mode,
        dropout=enc.dropout, locked_dropout=enc.locked_dropout, input_dropout=enc.input_dropout,
        output_dropout=enc.output_dropout, weight_drop=enc.weight_drop, batch_first=True, engine=enc.engine,
    )


def recipe_base(recipe: "Recipe") -> Path:
    """The folder that a recipe's relative data paths are read from: the recipe file's own."""
    return Path(recipe.source).parent if recipe.source not in ("", "<defaults>", "<recipe>") else Path.cwd()


def resolve_path(value: Optional[str], base: Path, key: str, *, hint: str = "") -> Optional[Path]:
    """A recipe's path option, relative ones read from ``base``; a missing file is one error
    naming the key (and ``hint``: where to get it)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise RecipeError(f"{key}: file not found: {path}" + (f"; {hint}" if hint else ""))
    return path


def load_splits(recipe: "Recipe", splits: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The recipe's data splits, from the dataset provider it names.  With ``splits``, a
    provider that takes a ``splits`` argument (like ``synth-speech``, which renders its audio)
    builds only those; any other provider returns all of its splits as usual."""
    provider = registry.datasets.get(recipe.data.dataset, where=f"{recipe.source}: data.dataset")
    if splits is not None and "splits" in inspect.signature(provider).parameters:
        return provider(recipe.data, base=recipe_base(recipe), splits=tuple(splits))
    return provider(recipe.data, base=recipe_base(recipe))


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and (when imported) NumPy: the one place seeds are set."""
    torch.manual_seed(seed)
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)


V = TypeVar("V")


def persist_vocab(run_dir: Optional[Path], marker: str, build: Callable[[], V], load: Callable[[Path], V],
                  save: Callable[[V, Path], None]) -> V:
    """A vocabulary kept in ``run_dir/vocab``: loaded (``read_vocab``) when ``marker`` (a file
    name) is there (a resumed run), else built and saved (``run_dir`` None: built only). Saving is
    atomic: ``save`` writes into a scratch folder, each file is synced and renamed into ``vocab/``,
    ``marker`` last, so a crash or a full disk never leaves a half-written vocabulary behind."""
    folder = run_dir / "vocab" if run_dir is not None else None
    if folder is not None and (folder / marker).exists():
        return read_vocab(folder, load, marker=marker)
    vocab = build()
    if folder is None:
        return vocab
    scratch = folder.parent / f".vocab-{marker}.tmp"
    try:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        save(vocab, scratch)
        folder.mkdir(exist_ok=True)
        for path in sorted(scratch.iterdir(), key=lambda f: f.name == marker):  # the marker last
            if path.is_file():
                fsync_file(path)
            os.replace(path, folder / path.name)
        fsync_dir(folder)
    except OSError as exc:
        raise SeqkitError(f"{folder}: could not save the vocabulary ({exc.strerror or exc}); "
                          "free some space or choose another --out") from None
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return vocab


def read_vocab(folder: Path, load: Callable[[Path], V], *, marker: Optional[str] = None) -> V:
    """``load(folder)``, or one error naming the folder when it is missing, damaged or holds
    something that is not a regular file (a FIFO would block the reader forever)."""
    if marker is not None and not (folder / marker).exists():
        raise SeqkitError(f"{folder / marker}: missing; the run folder is incomplete (train it again "
                          "with `seqkit recipe run`)")
    if not folder.is_dir():
        raise SeqkitError(f"{folder}: missing; the run folder is incomplete (train it again with "
                          "`seqkit recipe run`)")
    for path in folder.iterdir():
        if not path.is_file():
            raise SeqkitError(f"{path}: not a regular file; the run folder's vocabulary is damaged")
        if path.stat().st_size == 0:
            raise SeqkitError(f"{path}: empty file; the run folder's vocabulary is damaged (a full disk?); "
                              "train it again")
    try:
        return load(folder)
    except SeqkitError:
        raise
    except Exception as exc:  # json, tokenizers and KeyErrors alike: the files are not what we wrote
        raise SeqkitError(f"{folder}: the vocabulary is unreadable ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); the run folder is damaged") from None


def text_inputs(texts: Any, what: str, *, tokens: bool = False) -> tuple[list[Any], bool]:
    """The inputs of a text method (``tag``, ``score``, ...) as a list, and whether one text was
    given (a ``str`` is one text, never a sequence of characters). ``tokens``: a list of token
    strings counts as one pre-tokenised text inside the list. Anything else is one clear error."""
    if isinstance(texts, str):
        return [texts], True
    if texts is None or isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(texts, (bytes, bytearray)) else ""
        raise SeqkitError(f"{what}: expected a string or a list of strings, got {type(texts).__name__}{hint}")
    items = list(texts)
    for i, item in enumerate(items):
        if isinstance(item, str):
            continue
        if tokens and isinstance(item, (list, tuple)) and all(isinstance(t, str) for t in item):
            continue
        expected = "a string or a list of token strings" if tokens else "a string"
        raise SeqkitError(f"{what}: item {i} is {type(item).__name__} ({brief(item)}); expected {expected}")
    return items, False


def check_batch_size(batch_size: Any, what: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SeqkitError(f"{what}: expected a positive integer, got {batch_size!r}")
    return batch_size


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False))


def epoch_order(train: "TrainConfig", epoch: int) -> dict[str, Any]:
    """How the training batches of ``epoch`` (0-based) are ordered, as keyword arguments: shuffled
    by a seed of their own, or shortest first in the first epoch with ``train.sortagrad``."""
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


def not_a(model: nn.Module, what: str, run: Any) -> SeqkitError:
    """The error for a command used with the wrong kind of model (``seqkit tag`` on a speech run)."""
    task = getattr(getattr(getattr(model, "recipe", None), "task", None), "name", type(model).__name__)
    return SeqkitError(f"{run}: this model does not {what} (its task is {task})")
