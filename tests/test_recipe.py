"""Recipes: typed loading, one-line errors naming file and key path, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from seqkit.build import check_recipe, resolve_device
from seqkit.errors import RecipeError, SeqkitError
from seqkit.recipe import Recipe, parse_value

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_file_and_overrides_precedence(tmp_path):
    path = write(tmp_path, "encoder:\n  num_layers: 2\n  hidden_size: 64\ntrain:\n  lr: 0.01\n")
    r = Recipe.load(path, ["encoder.num_layers=3", "train.seed=7", "encoder.cell=gru", "device=cpu"])
    assert r.encoder.num_layers == 3  # --set beats the file
    assert r.encoder.hidden_size == 64  # the file beats the defaults
    assert r.encoder.bidirectional is True  # default kept
    assert r.train.lr == 0.01 and r.train.seed == 7 and r.encoder.cell == "gru" and r.device == "cpu"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("encoder:\n  num_layer: 2\n", [], r"r\.yaml: encoder\.num_layer: unknown key; expected one of"),
        ("encoder:\n  num_layers: two\n", [], r"r\.yaml: encoder\.num_layers: expected an integer, got 'two'"),
        ("encoder:\n  bidirectional: 1\n", [], r"encoder\.bidirectional: expected true or false"),
        ("train:\n  optimizer: adagrad\n", [], r"train\.optimizer: expected one of 'adam', 'adamw', 'sgd'"),
        ("encoder: 3\n", [], r"r\.yaml: encoder: expected a mapping, got an integer"),
        ("- a\n- b\n", [], r"r\.yaml: a recipe must be a mapping"),
        ("encoder: [\n", [], r"r\.yaml:\d+: invalid YAML"),
        ("", ["train.epochs=many"], r"train\.epochs: expected an integer, got 'many'"),
        ("", ["nonsense"], r"--set 'nonsense': expected KEY\.PATH=VALUE"),
        ("", ["bogus.key=1"], r"bogus: unknown key"),
    ],
)
def test_bad_recipes_are_one_clear_line(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=message) as info:
        Recipe.load(path, overrides)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.load(tmp_path / "nope.yaml")


def test_unknown_names_and_devices(tmp_path, plugin_manager):
    for key, value, message in [
        ("encoder.cell", "nocell", r"r\.yaml: encoder\.cell: unknown cell 'nocell'; registered cells: gru, lstm"),
        ("head.name", "nohead", r"head\.name: unknown head 'nohead'"),
        ("data.dataset", "nodata", r"data\.dataset: unknown dataset 'nodata'"),
        ("device", "cuda:7", r"device: cuda:7 is not available"),
        ("device", "tpu", r"device: 'tpu' is not a device"),
        ("train.ema_decay", "1.5", r"r\.yaml: train\.ema_decay must be at least 0 and below 1, got 1\.5"),
        ("train.average_last", "-2", r"r\.yaml: train\.average_last must be 0 or more"),
    ]:
        recipe = Recipe.load(write(tmp_path, ""), [f"{key}={value}", "data.train=x"])
        with pytest.raises(SeqkitError, match=message):
            check_recipe(recipe)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(RecipeError, match="mps is not available"):
        import torch

        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            pytest.skip("this machine has mps")
        resolve_device("mps")


def test_round_trip_of_resolved_recipe(tmp_path):
    r = Recipe.load(RECIPES / "ner" / "msra.yaml", ["encoder.num_layers=3"])
    again = Recipe.load(write(tmp_path, r.to_yaml()))
    assert again.to_dict() == r.to_dict()


def test_every_shipped_recipe_validates(plugin_manager):
    paths = sorted(RECIPES.rglob("*.yaml"))
    assert paths
    for path in paths:
        recipe = Recipe.load(path, ["device=cpu"])
        assert recipe.description, f"{path} needs a description for `seqkit recipe list`"


@given(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(alphabet="abcxyz_-", min_size=1)))
def test_set_values_are_typed_like_yaml(value):
    text = yaml.safe_dump(value, default_style=None).strip()
    if text.endswith("..."):
        text = text[: -3].strip()
    assert parse_value(text) == value
