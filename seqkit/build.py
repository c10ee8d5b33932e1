"""The one place that maps a recipe onto objects (data, model, trainer) and a run folder back
onto a ready-to-use model (``seqkit.load``)."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import resource
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from . import distributed, plugins, registry
from .checkpoint import load_checkpoint
from .encoder import Encoder
from .errors import RecipeError, SeqkitError
from .fsio import write_text_atomic
from .recipe import PRECISIONS, Recipe, parse_overrides
from .tasks import Task, get_task, recipe_base, write_json
from .train import Trainer, check_train_config, cpu_has_native_bf16, reuse_freed_memory

__all__ = ["check_recipe", "evaluate_run", "load", "resolve_device", "resume_recipe", "run_folder_lock", "run_recipe"]

RECIPE_FILE = "recipe.yaml"
VERSIONS_FILE = "versions.json"  # seqkit, torch and plugin versions that trained the run
LOCK_FILE = ".lock"
# what `recipe run` writes into a run folder (a fresh run may clear these when no checkpoint exists)
_RUN_ITEMS = (RECIPE_FILE, VERSIONS_FILE, "vocab", "checkpoints", "metrics.jsonl", "metrics.json")
# train keys a resumed run may change: how long to train and how to run it, not what is trained
_HOW_LONG = ("epochs", "max_steps", "max_minutes", "patience")
_RESUMABLE_CHANGES = {*_HOW_LONG, "threads", "log_every", "checkpoint_every", "eval_batch_size"}


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


def _extends(task: Task, name: str) -> bool:
    """Whether ``task`` is a subclass of the task registered as ``name`` (a plugin's melody task
    extends ``language-model`` and takes its heads and datasets)."""
    parent = registry.tasks.get(name) if name in registry.tasks.names() else None
    return isinstance(parent, type) and isinstance(task, parent)


def check_recipe(recipe: Recipe) -> Task:
    """Everything about a recipe that can be checked before its data is read: registered names,
    the pairing of task, head and dataset, the device, the train settings, the programs the
    dataset needs and the task's own checks. ``seqkit recipe validate`` and ``seqkit recipe run``
    both call this, so they accept exactly the same recipes. Returns the task."""
    src = recipe.source
    registry.cells.get(recipe.encoder.cell, where=f"{src}: encoder.cell")
    task = get_task(recipe)
    head = registry.heads.get(recipe.head.name, where=f"{src}: head.name")
    provider = registry.datasets.get(recipe.data.dataset, where=f"{src}: data.dataset")
    for what, key, component in (("head", f"head.name: {recipe.head.name!r}", head),
                                 ("dataset", f"data.dataset: {recipe.data.dataset!r}", provider)):
        serves = getattr(component, "task", None)
        if serves and serves != recipe.task.name and not _extends(task, serves):
            raise RecipeError(f"{src}: {key.split(':')[0]}: {what} {key.split(': ', 1)[1]} serves task {serves!r}, "
                              f"but the recipe's task is {recipe.task.name!r}")
    resolve_device(recipe.device, where=f"{src}: device")
    try:
        check_train_config(recipe.train)
    except SeqkitError as exc:
        raise RecipeError(f"{src}: {exc}") from None
    check = getattr(provider, "check", None)
    if check is not None:  # e.g. system programs or files the dataset needs
        takes_base = "base" in inspect.signature(check).parameters
        check(recipe.data, **({"base": recipe_base(recipe)} if takes_base else {}))
    task.check(recipe)
    return task


def _absolute_paths(recipe: Recipe) -> None:
    """Path options are read relative to the recipe's folder; the run folder keeps them absolute.
    A path option is a string field named like a file (train/valid/test/lexicon/...) whose value
    exists there; ``cache_dir`` and ``encoder.init_from`` are relative to the current folder, like --out."""
    base = recipe_base(recipe)
    for section in (recipe.data, recipe.head, recipe.task, recipe.features):
        if section is None:
            continue
        for name, value in vars(section).items():
            if not isinstance(value, str) or name in ("name", "dataset", "kind") or value == "train":
                continue
            path = Path(value).expanduser()
            if name == "cache_dir":
                setattr(section, name, str(path.resolve()))
            elif not path.is_absolute() and (base / path).exists():
                setattr(section, name, str((base / path).resolve()))
    if recipe.encoder.init_from:
        recipe.encoder.init_from = str(Path(recipe.encoder.init_from).expanduser().resolve())


def _check_resume(recipe: Recipe, run_dir: Path) -> None:
    saved = Recipe.load(run_dir / RECIPE_FILE, saved=True).to_dict()
    for section, values in recipe.to_dict().items():
        if not isinstance(values, dict):
            if saved.get(section) != values and section not in ("device", "description"):
                raise RecipeError(f"{recipe.source}: {section}: is {values!r} but the run in {run_dir} used "
                                  f"{saved.get(section)!r}; resume with the same recipe or choose another --out")
            continue
        for key, value in values.items():
            if saved.get(section, {}).get(key) != value and not (section == "train" and key in _RESUMABLE_CHANGES):
                raise RecipeError(
                    f"{recipe.source}: {section}.{key}: is {value!r} but the run in {run_dir} used "
                    f"{saved.get(section, {}).get(key)!r}; resume with the same recipe or choose another --out"
                )


def resume_recipe(recipe: Recipe, run_dir: Path, overrides: tuple[str, ...] | list[str] = (), *,
                  log=None) -> Recipe:
    """The recipe a ``--resume`` continues with: the run's own resolved ``recipe.yaml`` plus this
    command's ``--set`` overrides and device. ``recipe`` (the file given on the command line, with
    the overrides) must describe the same training (only how long to train, the device, threads
    and logging may change); where it differs in how long to train and no ``--set`` says so, the
    run's own value is kept, with a note."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _absolute_paths(recipe)
    _check_resume(recipe, run_dir)  # what is trained may not change
    resumed = Recipe.load(run_dir / RECIPE_FILE, [*overrides, f"device={recipe.device}"], saved=True)
    given = {".".join(keys) for keys, _ in parse_overrides(overrides)}
    for key in _HOW_LONG:
        mine, theirs = getattr(recipe.train, key), getattr(resumed.train, key)
        if mine != theirs and f"train.{key}" not in given:
            log(f"note: train.{key}: the run in {run_dir} uses {theirs!r} (its recipe.yaml), not {recipe.source}'s "
                f"{mine!r}; add --set train.{key}={mine} to change it")
    resumed.source = recipe.source
    return resumed


@contextlib.contextmanager
def run_folder_lock(out: Path):
    """Hold an OS lock on ``out`` (released when the process ends, however it ends), or refuse at
    once when another process holds it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeqkitError(f"{out}: cannot create the run folder ({exc.strerror or exc})") from None
    path = out / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise SeqkitError(f"{out}: cannot write in the run folder ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SeqkitError(f"{out}: in use by another seqkit run ({holder}); wait for it to finish or "
                              "choose another --out") from None
        try:  # who holds it, for the message above; a full disk only loses the note
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
        except OSError:
            pass
        yield
    finally:
        try:
            handle.close()  # closing releases the lock
        except OSError:
            pass


def _prepare_folder(out: Path, *, resume: bool, log) -> bool:
    """Check what ``out`` holds against what was asked; returns whether training resumes.
    Never deletes a trained model: only a run that never saved a checkpoint is cleared."""
    ckpts = out / "checkpoints"
    saved = sorted(p.name for p in ckpts.glob("*.safetensors")) if ckpts.is_dir() else []
    has_run = (out / RECIPE_FILE).exists()
    if resume:
        if (ckpts / "last.safetensors").exists():
            return True
        if saved:
            raise SeqkitError(f"{out}: no checkpoints/last.safetensors to resume from (it has {', '.join(saved)}, "
                              "which are kept); copy the run folder elsewhere to keep its model, or train into "
                              "another --out")
        log(f"note: no checkpoint to resume from in {out}; starting a fresh run")
    elif saved:
        raise SeqkitError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name not in _RUN_ITEMS and p.name != LOCK_FILE
                    and not p.name.startswith(".")) if out.is_dir() else []
    if others and not has_run:
        raise SeqkitError(f"{out}: not empty and not a seqkit run folder (it holds {', '.join(others[:3])}"
                          f"{', ...' if len(others) > 3 else ''}); choose a new or empty --out")
    if has_run:  # a run that stopped before its first checkpoint: nothing trained to lose
        if not resume:
            log(f"note: {out} holds a run that never saved a checkpoint; starting it afresh")
        for name in _RUN_ITEMS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    return False


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, progress: bool = True,
               log=None) -> dict[str, Any]:
    """Train and test a recipe in run folder ``out``; returns the final metrics. The folder is
    locked while this runs; ``resume`` continues its last checkpoint (see ``resume_recipe`` for
    the recipe it should continue with)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _absolute_paths(recipe)
    task = check_recipe(recipe)
    device = resolve_device(recipe.device, where=f"{recipe.source}: device")
    ctx = distributed.setup(device)  # under torchrun with more than one process
    together = True  # whether every process leaves at the same point (finished, or interrupted at one step)
    try:
        if ctx is None:
            with run_folder_lock(out):
                resume = _prepare_folder(out, resume=resume, log=log)
                if resume:
                    _check_resume(recipe, out)
                return _run(recipe, task, device, out, resume=resume, progress=progress, log=log)
        # Data-parallel: rank 0 holds the folder's lock and alone writes into it; it checks the
        # folder, then tells the others whether the run resumes.
        lock = run_folder_lock(out) if ctx.main else contextlib.nullcontext()
        with lock:
            if ctx.main:
                resume = _prepare_folder(out, resume=resume, log=log)
                if resume:
                    _check_resume(recipe, out)
            resume = ctx.broadcast(resume)
            return _run(recipe, task, ctx.device, out, resume=resume, progress=progress,
                        log=log if ctx.main else (lambda msg: None), ctx=ctx)
    except Interrupted:
        raise
    except BaseException:
        together = False  # an error in this process alone: the others must not wait for it
        raise
    finally:
        distributed.teardown(together=together)


def _run(recipe: Recipe, task: Task, device: torch.device, out: Path, *, resume: bool, progress: bool,
         log, ctx: Optional[distributed.Context] = None) -> dict[str, Any]:
    started = time.perf_counter()
    main = ctx is None or ctx.main
    if main:
        write_text_atomic(out / RECIPE_FILE, recipe.to_yaml())
        write_json(out / VERSIONS_FILE, plugins.versions(recipe))
    if recipe.train.threads > 0:
        torch.set_num_threads(recipe.train.threads)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if ctx is not None else 1
    if local * torch.get_num_threads() > (os.cpu_count() or 1) and device.type == "cpu":
        log(f"note: {local} processes of {torch.get_num_threads()} threads each on {os.cpu_count()} cores "
            f"slow each other down; add --set train.threads={max(1, (os.cpu_count() or 1) // local)}")
    reuse_freed_memory()
    if ctx is not None and not ctx.main:
        ctx.barrier()  # rank 0 builds the vocabularies and data caches; the others then read them
    prepared = task.prepare(recipe, out, log=log)
    if ctx is not None and ctx.main:
        ctx.barrier()
    model = prepared.model
    if recipe.encoder.init_from and not resume:
        init_from_run(model, Path(recipe.encoder.init_from), log=log)
    model = model.to(device)
    trainer = Trainer(
        model, recipe.train, out, device=device, train_batches=prepared.train_batches,
        valid_batches=prepared.valid_batches, monitor=task.monitor, mode=task.mode,
        progress=progress, meta={"recipe": recipe.to_dict()}, distributed=ctx,
    )
    summary = trainer.fit(resume=resume)
    if summary.get("stopped") == "interrupted":
        stopped = Interrupted(f"interrupted; continue with: seqkit recipe run {recipe.source} --out {out} --resume")
        if trainer.stop_signal == signal.SIGTERM:
            stopped.exit_code = 143
        if not main:
            stopped.quiet = True  # rank 0 says it
        raise stopped
    if not main:  # rank 0 tests the best checkpoint and writes metrics.json
        return {}
    metrics: dict[str, Any] = {}
    if prepared.final_eval is not None:
        trainer.restore("best")
        metrics.update(prepared.final_eval(trainer.model))
    elif prepared.test_batches:
        metrics.update(trainer.evaluate(prepared.test_batches, checkpoint="best"))
    metrics.update({
        "stopped": summary.get("stopped"), "steps": summary.get("steps"), "epochs": summary.get("epochs"),
        "best_valid": summary.get("best"), "device": str(device), "threads": torch.get_num_threads(),
        "processes": ctx.world if ctx is not None else 1,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    write_json(out / "metrics.json", metrics)
    return metrics


def load(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "best",
         precision: str = "fp32") -> nn.Module:
    """A trained model from a run folder, in eval mode, ready to use (``model.tag([...])``)."""
    model, _ = _load(Path(run_dir), device=device, checkpoint=checkpoint, precision=precision)
    return model


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SeqkitError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")


def set_inference_precision(model: nn.Module, precision: str) -> None:
    """Every encoder of ``model`` runs its eval-mode recurrences in ``precision`` (``fp32`` or
    ``bf16``; see :class:`seqkit.Encoder`'s ``inference_dtype``). bf16 on a CPU without native
    bf16 works but is slow, and says so; on a GPU without bf16 it is an error."""
    _check_precision(precision)
    dtype = torch.bfloat16 if precision == "bf16" else None
    if dtype is not None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SeqkitError(f"precision: bf16 needs a GPU that computes in bf16 (Ampere or newer); "
                              f"{torch.cuda.get_device_name(device)} does not: use precision=fp32")
        if device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); "
                          "bf16 recurrences run far slower than fp32 here", stacklevel=3)
    for module in model.modules():
        if isinstance(module, Encoder):
            module.inference_dtype = dtype


def _load(run: Path, *, device: str = "cpu", checkpoint: str = "best",
          precision: str = "fp32") -> tuple[nn.Module, Task]:
    if checkpoint not in ("best", "last"):
        raise SeqkitError(f"checkpoint: expected 'best' or 'last', got {checkpoint!r}")
    _check_precision(precision)  # before the (slow) load
    if not run.is_dir():
        raise SeqkitError(f"{run}: no such run folder; train one with `seqkit recipe run`")
    if not (run / RECIPE_FILE).exists():
        raise SeqkitError(f"{run}: not a seqkit run folder (no {RECIPE_FILE}); train one with `seqkit recipe run`")
    recipe = Recipe.load(run / RECIPE_FILE, saved=True)
    ckpt = run / "checkpoints" / f"{checkpoint}.safetensors"
    if not ckpt.exists() and checkpoint == "best":  # a run stopped before its first validation
        ckpt = run / "checkpoints" / "last.safetensors"
    if not ckpt.exists():
        raise SeqkitError(f"{run}: no {checkpoint} checkpoint in {run / 'checkpoints'}; the run has not saved one yet")
    if not ckpt.is_file():
        raise SeqkitError(f"{ckpt}: not a regular file")
    task = get_task(recipe)
    _warn_versions(run)
    model = task.build_model(recipe, run)
    load_checkpoint(ckpt, model)
    model = model.to(resolve_device(device)).eval()
    set_inference_precision(model, precision)
    return model, task


def _warn_versions(run: Path) -> None:
    """Warn when the run was trained with other versions of seqkit or its plugins than these."""
    path = run / VERSIONS_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        warnings.warn(f"{path}: unreadable; cannot tell which versions trained this run", stacklevel=3)
        return
    differ = plugins.version_mismatch(saved)
    if differ:
        warnings.warn(f"{run} was trained with {', '.join(differ)}; results may differ", stacklevel=3)


def evaluate_run(run_dir: Path, data: Optional[Path] = None, *, batch_size: int = 128,
                 precision: str = "fp32") -> tuple[dict[str, Any], Task]:
    """Metrics of a trained model on a data file, or on its recipe's test split, and its task
    (which knows how to print them); ``precision`` as :func:`seqkit.load`'s."""
    model, task = _load(Path(run_dir), precision=precision)
    try:
        return task.evaluate_data(model, data, batch_size=batch_size), task
    except IsADirectoryError:  # a folder given to a task that reads one file
        raise SeqkitError(f"{data}: is a folder; task {model.recipe.task.name} reads a data file") from None


def init_from_run(model: nn.Module, run: Path, *, log=print) -> None:
    """Start ``model``'s encoder from the encoder of the model in ``run`` (``encoder.init_from``),
    and its token embeddings where both models have them (``embedding_tokens()``), mapped token by
    token: rows of tokens the two vocabularies share are copied, the others keep their init."""
    source, _ = _load(run)
    target_enc, source_enc = getattr(model, "encoder", None), getattr(source, "encoder", None)
    if target_enc is None or source_enc is None:
        raise SeqkitError(f"encoder.init_from: {run}: both models need an `encoder` attribute")
    mine, theirs = target_enc.state_dict(), source_enc.state_dict()
    # A recipe whose input puts more features after the same token embedding (a tagger's bigrams
    # and word-list ids) takes the source's input columns and starts the extra ones fresh.
    src_in, tgt_in = getattr(source_enc, "input_size", None), getattr(target_enc, "input_size", None)
    wider = {k for k in mine if k in theirs and src_in is not None and tgt_in is not None and src_in < tgt_in
             and theirs[k].dim() == 2 and tuple(theirs[k].shape) == (mine[k].size(0), src_in)
             and mine[k].size(1) == tgt_in}
    wrong = [k for k in mine if k not in wider and (k not in theirs or theirs[k].shape != mine[k].shape)]
    if wrong or set(theirs) - set(mine):
        raise SeqkitError(f"encoder.init_from: {run}: its encoder does not fit this recipe's "
                          f"(cell, num_layers, hidden_size and directions must match, and the input size "
                          f"too or be larger here; first mismatch: {(wrong or sorted(set(theirs) - set(mine)))[0]})")
    merged = dict(theirs)
    for k in wider:
        merged[k] = mine[k].clone()
        merged[k][:, :src_in] = theirs[k].to(mine[k].dtype)
    target_enc.load_state_dict(merged)
    copied = f" (its {src_in} input columns; the other {tgt_in - src_in} start fresh)" if wider else ""
    if hasattr(model, "embedding_tokens") and hasattr(source, "embedding_tokens"):
        (emb, tokens), (src_emb, src_tokens) = model.embedding_tokens(), source.embedding_tokens()
        if emb.weight.size(1) != src_emb.weight.size(1):
            raise SeqkitError(f"encoder.init_from: {run}: its token embeddings have {src_emb.weight.size(1)} "
                              f"features, this recipe's {emb.weight.size(1)}")
        where = {t: i for i, t in enumerate(src_tokens)}
        pairs = [(i, where[t]) for i, t in enumerate(tokens) if t in where]
        if pairs:
            rows, src_rows = zip(*pairs)
            with torch.no_grad():
                emb.weight[list(rows)] = src_emb.weight[list(src_rows)].to(emb.weight.dtype)
        copied += f" and {len(pairs)} of {len(tokens)} token embeddings"
    log(f"encoder.init_from: started the encoder{copied} from {run}")
