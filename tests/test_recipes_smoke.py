"""Every shipped recipe runs for a couple of steps on small data (SpeechBrain-style recipe tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from seqkit import plugins, registry
from seqkit.build import run_recipe
from seqkit.data.conll import msra_files
from seqkit.errors import DataError
from seqkit.recipe import Recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
SMALL = ["device=cpu", "train.max_steps=2", "train.threads=1", "data.limit=40"]
MADE_BY = {"msra-bilm": "ner/msra-bilm.yaml"}  # run folders that chained recipes start from (encoder.init_from)


@pytest.fixture
def first_party_plugins():
    """Recipes of first-party task plugins (plugins/*) need them found through their entry points."""
    pm = plugins._make_manager(load_entry_points=True)
    plugins.reset(pm)
    yield
    plugins.reset(None)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_two_steps(path, tmp_path, first_party_plugins):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    task = raw["task"]["name"] if isinstance(raw.get("task"), dict) else raw.get("task")
    if task not in registry.tasks.names():
        pytest.skip(f"task {task!r} comes from a first-party plugin that is not installed (install.sh installs it)")
    small = SMALL if task != "classification" else [*SMALL[:3], "task.baseline=none"]
    if task == "forecasting":  # the baselines have tests of their own (plugins/seqkit-forecast)
        small = [*SMALL[:3], "task.baselines=[]"] + (["data.limit=3"] if raw["data"]["dataset"] == "m4" else [])
    if task in ("classification", "forecasting") and not (path.parent / raw["data"].get("folder", ".")).exists():
        pytest.skip(f"{raw['data']['folder']} is absent (benchmark data, not shipped)")
    if task == "piano-roll" and "path" in raw["data"] and not (path.parent / raw["data"]["path"]).exists():
        pytest.skip(f"{raw['data']['path']} is absent (benchmark data, not shipped)")
    if task == "melody":  # one small collection of music21's folk songs, not all of them (minutes to parse)
        small = [*small, "data.collections=[erk5]"]
    try:
        recipe = Recipe.load(path, small)
        if recipe.data.dataset == "msra-ner":
            msra_files()
        if recipe.task.name in ("language-model", "melody"):
            recipe.task.baseline = "none"  # the n-gram baseline has tests of its own (test_ngram.py)
            for key in ("train", "valid", "test"):  # benchmark data that is not shipped (PTB)
                path_value = getattr(recipe.data, key, None)
                if path_value and not (path.parent / path_value).exists():
                    pytest.skip(f"{path.parent / path_value} is absent (benchmark data, not shipped)")
    except DataError as exc:
        pytest.skip(str(exc))
    if recipe.encoder.init_from and Path(recipe.encoder.init_from).name in MADE_BY:
        # a chained recipe starts from another recipe's run: make that one too, two steps
        first = Recipe.load(path.parent.parent / MADE_BY[Path(recipe.encoder.init_from).name], SMALL)
        run_recipe(first, tmp_path / "first", progress=False, log=lambda m: None)
        recipe.encoder.init_from = str(tmp_path / "first")
    metrics = run_recipe(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    assert metrics["steps"] == 2 and metrics["stopped"] == "max_steps"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
