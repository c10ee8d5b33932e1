"""The one place that maps a recipe onto objects: data, vocabulary, model, trainer; and back
from a run folder to a ready-to-use model (``seqkit.load``)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import registry
from .checkpoint import load_checkpoint
from .errors import RecipeError, SeqkitError
from .features.text import TextVocab
from .heads.scheme import detect_scheme
from .metrics.spans import span_scores
from .models.tagging import TaggingModel, make_batches, normalise_tags
from .recipe import Recipe
from .train import Trainer

__all__ = ["check_recipe", "load", "resolve_device", "run_recipe"]

RECIPE_FILE = "recipe.yaml"
# sections a resumed run may change: how long to train, not what is trained
_RESUMABLE_CHANGES = {"epochs", "max_steps", "patience"}


def resolve_device(spec: str, where: str = "device") -> torch.device:
    """``auto|cpu|cuda[:N]|mps`` to a torch device, or one clear error."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RecipeError(f"{where}: mps is not available on this machine; use device=cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if spec == "cuda" else spec.split(":", 1)[1]
        if not str(index).isdigit():
            raise RecipeError(f"{where}: {spec!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")
        if int(index) >= count:
            raise RecipeError(
                f"{where}: {spec} is not available ({count} CUDA device(s) found); use device=cpu or auto"
            )
        return torch.device(f"cuda:{index}")
    raise RecipeError(f"{where}: {spec!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")


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


@dataclass
class TaggingRun:
    model: TaggingModel
    splits: dict[str, Any]
    encoded: dict[str, tuple]


def _load_splits(recipe: Recipe) -> dict[str, Any]:
    provider = registry.datasets.get(recipe.data.dataset, where=f"{recipe.source}: data.dataset")
    base = Path(recipe.source).parent if recipe.source not in ("", "<defaults>") else Path.cwd()
    return provider(recipe.data, base=base)


def _scheme(recipe: Recipe, sentences) -> str:
    if recipe.head.scheme != "auto":
        return recipe.head.scheme
    return detect_scheme(t for _, tags in sentences for t in tags)


def _chunk(sentences, max_length: int):
    """Split training sentences longer than ``max_length`` at span boundaries."""
    out = []
    for words, tags in sentences:
        start = 0
        while len(words) - start > max_length:
            cut = start + max_length
            while cut > start + 1 and tags[cut][:2] in ("I-", "E-"):
                cut -= 1  # never cut inside an entity
            out.append((words[start:cut], tags[start:cut]))
            start = cut
        out.append((words[start:], tags[start:]))
    return out


def prepare_tagging(recipe: Recipe, run_dir: Optional[Path], *, log=print) -> TaggingRun:
    splits = _load_splits(recipe)
    train = splits["train"].sentences
    if not train:
        raise SeqkitError(f"{splits['train'].path}: no training sentences")
    scheme = _scheme(recipe, train)
    fixed = [(w, normalise_tags(t, scheme)) for w, t in train]
    repaired = sum(1 for (_, a), (_, b) in zip(train, fixed) if a != b)
    if recipe.train.max_length > 0:
        fixed = _chunk(fixed, recipe.train.max_length)
    vocab_dir = run_dir / "vocab" if run_dir is not None else None
    if vocab_dir is not None and (vocab_dir / "vocab.json").exists():
        vocab = TextVocab.load(vocab_dir)
    else:
        vocab = TextVocab.build(fixed, recipe.features, recipe.data.tokenize)
        if vocab_dir is not None:
            vocab.save(vocab_dir)
    log(
        f"data: {len(fixed)} train / {len(splits['valid'].sentences)} valid / "
        f"{len(splits['test'].sentences)} test sentences; scheme {scheme}; "
        f"{vocab.tokens.get_vocab_size()} tokens"
        + (f", {vocab.bigrams.get_vocab_size()} bigrams" if vocab.bigrams is not None else "")
        + f"; {len(vocab.labels)} tags; {repaired} ill-formed tag sequences repaired; "
        f"{splits['train'].skipped_empty} empty sentences skipped"
    )
    head_cls = registry.heads.get(recipe.head.name, where=f"{recipe.source}: head.name")
    torch.manual_seed(recipe.train.seed)
    model = TaggingModel(recipe, vocab, head_cls, scheme)
    encoded = {"train": model.encode_corpus(fixed, f"{splits['train'].path}: ")}
    for name in ("valid", "test"):
        encoded[name] = model.encode_corpus(splits[name].sentences, f"{splits[name].path}: ")
    return TaggingRun(model, splits, encoded)


def _check_resume(recipe: Recipe, run_dir: Path) -> None:
    saved = Recipe.load(run_dir / RECIPE_FILE).to_dict()
    now = recipe.to_dict()
    for section, values in now.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if saved.get(section, {}).get(key) != value and not (
                    section == "train" and key in _RESUMABLE_CHANGES
                ):
                    raise RecipeError(
                        f"{recipe.source}: {section}.{key}: is {value!r} but the run in {run_dir} used "
                        f"{saved[section][key]!r}; resume with the same recipe or choose another --out"
                    )


def _absolute_data_paths(recipe: Recipe) -> None:
    """Data paths are read relative to the recipe's folder; the run folder keeps them absolute."""
    base = Path(recipe.source).parent if recipe.source not in ("", "<defaults>") else Path.cwd()
    for key in ("train", "valid", "test"):
        value = getattr(recipe.data, key)
        if value is not None and not Path(value).expanduser().is_absolute():
            setattr(recipe.data, key, str((base / Path(value)).resolve()))


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, progress: bool = True,
               log=None) -> dict[str, Any]:
    """Train and test a recipe in run folder ``out``; returns the final metrics."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _absolute_data_paths(recipe)
    check_recipe(recipe)
    device = resolve_device(recipe.device, where=f"{recipe.source}: device")
    started = time.perf_counter()
    has_run = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if has_run and not resume:
        raise SeqkitError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    if resume and (out / RECIPE_FILE).exists():
        _check_resume(recipe, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")
    if recipe.train.threads > 0:
        torch.set_num_threads(recipe.train.threads)
    run = prepare_tagging(recipe, out, log=log)
    model = run.model.to(device)
    cfg = recipe.train
    ids, big, tags = run.encoded["train"]
    valid = make_batches(*run.encoded["valid"], cfg.eval_batch_size) if run.encoded["valid"][0] else None
    trainer = Trainer(
        model, cfg, out, device=device,
        train_batches=lambda epoch: make_batches(ids, big, tags, cfg.batch_size, seed=cfg.seed * 1000 + epoch),
        valid_batches=valid, monitor=model.monitor, mode=model.mode, progress=progress,
        meta={"recipe": recipe.to_dict()},
    )
    summary = trainer.fit(resume=resume)
    metrics: dict[str, Any] = {}
    if run.encoded["test"][0]:
        test = make_batches(*run.encoded["test"], cfg.eval_batch_size)
        metrics.update(trainer.evaluate(test, checkpoint="best"))
    metrics.update({
        "stopped": summary.get("stopped"), "steps": summary.get("steps"), "epochs": summary.get("epochs"),
        "best_valid": summary.get("best"), "device": str(device), "threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / "metrics.json")
    return metrics


def load(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "best") -> TaggingModel:
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
    vocab = TextVocab.load(run / "vocab")
    head_cls = registry.heads.get(recipe.head.name, where=f"{run / RECIPE_FILE}: head.name")
    scheme = recipe.head.scheme if recipe.head.scheme != "auto" else detect_scheme(vocab.labels)
    model = TaggingModel(recipe, vocab, head_cls, scheme)
    load_checkpoint(ckpt, model)
    return model.to(resolve_device(device)).eval()


def evaluate_run(run_dir: Path, data: Optional[Path] = None, *, batch_size: int = 128) -> dict[str, Any]:
    """Span metrics of a trained model on a CoNLL file, or on its recipe's test split."""
    from .data.conll import read_conll

    model = load(run_dir)
    if data is not None:
        corpus = read_conll(data)
    else:
        corpus = _load_splits(model.recipe)["test"]
    if not corpus.sentences:
        raise SeqkitError(f"{corpus.path}: no sentences to evaluate")
    results = model.tag([words for words, _ in corpus.sentences], batch_size=batch_size)
    gold = [tags for _, tags in corpus.sentences]
    metrics = span_scores(gold, [r["tags"] for r in results], model.scheme)
    return {**metrics, "sentences": len(corpus.sentences), "data": str(corpus.path)}
