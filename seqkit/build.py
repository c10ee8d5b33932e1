"""The one place that maps a recipe onto objects (data, model, trainer) and a run folder back
onto a ready-to-use model (``seqkit.load``)."""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from . import registry
from .checkpoint import load_checkpoint
from .errors import RecipeError, SeqkitError
from .models import recipe_base
from .recipe import Recipe
from .train import Trainer, check_train_config, reuse_freed_memory

__all__ = ["check_recipe", "evaluate_run", "load", "resolve_device", "run_recipe"]

RECIPE_FILE = "recipe.yaml"
# the task modules, by the ``task`` attribute of a registered head
TASKS = {"tagging": "seqkit.models.tagging", "transcription": "seqkit.models.speech"}
# keys a resumed run may change: how long to train, not what is trained
_RESUMABLE_CHANGES = {"epochs", "max_steps", "patience"}


class Interrupted(SeqkitError):
    """Training stopped by Ctrl-C after saving its last checkpoint."""

    exit_code = 130


def resolve_device(spec: str, where: str = "device") -> torch.device:
    """``auto|cpu|cuda[:N]|mps`` to a torch device, or one clear error."""
    spec = spec.strip().lower()
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not has_mps:
            raise RecipeError(f"{where}: mps is not available on this machine; use device=cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = "0" if spec == "cuda" else spec.split(":", 1)[1]
        if not index.isdigit():
            raise RecipeError(f"{where}: {spec!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index) >= count:
            raise RecipeError(
                f"{where}: {spec} is not available ({count} CUDA device(s) found); use device=cpu or auto"
            )
        return torch.device(f"cuda:{index}")
    raise RecipeError(f"{where}: {spec!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")


def task_module(recipe: Recipe, where: str):
    """The task module for the recipe's head (``seqkit.models.tagging`` for ``tagger``)."""
    head = registry.heads.get(recipe.head.name, where=f"{where}: head.name")
    task = getattr(head, "task", None)
    if task not in TASKS:
        raise RecipeError(f"{where}: head.name: head {recipe.head.name!r} has unknown task {task!r}")
    return importlib.import_module(TASKS[task])


def check_recipe(recipe: Recipe) -> None:
    """Check the names a recipe uses against the registries and its device; raise one clear error."""
    src = recipe.source
    registry.cells.get(recipe.encoder.cell, where=f"{src}: encoder.cell")
    head = registry.heads.get(recipe.head.name, where=f"{src}: head.name")
    provider = registry.datasets.get(recipe.data.dataset, where=f"{src}: data.dataset")
    head_task = getattr(head, "task", None)
    data_task = getattr(provider, "task", None)
    if head_task and data_task and head_task != data_task:
        raise RecipeError(
            f"{src}: data.dataset: {recipe.data.dataset!r} provides {data_task} data but head "
            f"{recipe.head.name!r} does {head_task}"
        )
    resolve_device(recipe.device, where=f"{src}: device")
    try:
        check_train_config(recipe.train)
    except SeqkitError as exc:
        raise RecipeError(f"{src}: {exc}") from None
    check = getattr(provider, "check", None)
    if check is not None:  # e.g. system programs the dataset needs
        check(recipe.data)


def _absolute_data_paths(recipe: Recipe) -> None:
    """Data paths are read relative to the recipe's folder; the run folder keeps them absolute."""
    base = recipe_base(recipe)
    for key in ("train", "valid", "test"):
        value = getattr(recipe.data, key, None)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            setattr(recipe.data, key, str((base / Path(value)).resolve()))
    if recipe.data.cache_dir:  # relative to the current folder, like --out
        recipe.data.cache_dir = str(Path(recipe.data.cache_dir).expanduser().resolve())


def _check_resume(recipe: Recipe, run_dir: Path) -> None:
    saved = Recipe.load(run_dir / RECIPE_FILE).to_dict()
    for section, values in recipe.to_dict().items():
        if not isinstance(values, dict):
            if saved.get(section) != values:
                raise RecipeError(f"{recipe.source}: {section}: is {values!r} but the run in {run_dir} used "
                                  f"{saved.get(section)!r}; resume with the same recipe or choose another --out")
            continue
        for key, value in values.items():
            if saved.get(section, {}).get(key) != value and not (section == "train" and key in _RESUMABLE_CHANGES):
                raise RecipeError(
                    f"{recipe.source}: {section}.{key}: is {value!r} but the run in {run_dir} used "
                    f"{saved[section][key]!r}; resume with the same recipe or choose another --out"
                )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, progress: bool = True,
               log=None) -> dict[str, Any]:
    """Train and test a recipe in run folder ``out``; returns the final metrics."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _absolute_data_paths(recipe)
    check_recipe(recipe)
    device = resolve_device(recipe.device, where=f"{recipe.source}: device")
    started = time.perf_counter()
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()) and not resume:
        raise SeqkitError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    if resume and (out / RECIPE_FILE).exists():
        _check_resume(recipe, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")
    if recipe.train.threads > 0:
        torch.set_num_threads(recipe.train.threads)
    reuse_freed_memory()
    task = task_module(recipe, recipe.source)
    prepared = task.prepare(recipe, out, log=log)
    model = prepared.model.to(device)
    trainer = Trainer(
        model, recipe.train, out, device=device, train_batches=prepared.train_batches,
        valid_batches=prepared.valid_batches, monitor=model.monitor, mode=model.mode,
        progress=progress, meta={"recipe": recipe.to_dict()},
    )
    summary = trainer.fit(resume=resume)
    if summary.get("stopped") == "interrupted":
        raise Interrupted(f"interrupted; continue with: seqkit recipe run {recipe.source} --out {out} --resume")
    metrics: dict[str, Any] = {}
    if prepared.final_eval is not None:
        trainer.restore("best")
        metrics.update(prepared.final_eval(trainer.model))
    elif prepared.test_batches:
        metrics.update(trainer.evaluate(prepared.test_batches, checkpoint="best"))
    metrics.update({
        "stopped": summary.get("stopped"), "steps": summary.get("steps"), "epochs": summary.get("epochs"),
        "best_valid": summary.get("best"), "device": str(device), "threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    _write_json(out / "metrics.json", metrics)
    return metrics


def load(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "best") -> nn.Module:
    """A trained model from a run folder, in eval mode, ready to use (``model.tag([...])``)."""
    run = Path(run_dir)
    if not (run / RECIPE_FILE).exists():
        raise SeqkitError(f"{run}: not a seqkit run folder (no {RECIPE_FILE}); train one with `seqkit recipe run`")
    recipe = Recipe.load(run / RECIPE_FILE)
    ckpt = run / "checkpoints" / f"{checkpoint}.safetensors"
    if not ckpt.exists():
        ckpt = run / "checkpoints" / "last.safetensors"
    if not ckpt.exists():
        raise SeqkitError(f"{run}: no checkpoint in {run / 'checkpoints'}; the run has not saved one yet")
    model = task_module(recipe, str(run / RECIPE_FILE)).build_model(recipe, run)
    load_checkpoint(ckpt, model)
    return model.to(resolve_device(device)).eval()


def evaluate_run(run_dir: Path, data: Optional[Path] = None, *, batch_size: int = 128) -> dict[str, Any]:
    """Metrics of a trained model on a data file, or on its recipe's test split."""
    model = load(run_dir)
    task = task_module(model.recipe, str(Path(run_dir) / RECIPE_FILE))
    return task.evaluate_data(model, data, batch_size=batch_size)
