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
    path = write(tmp_path, "task: tagging\nencoder:\n  num_layers: 2\n  hidden_size: 64\ntrain:\n  lr: 0.01\n")
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
        ("head: {name: ctc, crf: true}\n", [], r"r\.yaml: head\.crf: unknown key; expected one of beam_size, bpe_size, "
         r"dropout, lexicon, lm, lm_beam_size, lm_order, lm_rescore, lm_tune, lm_tune_beam, lm_weight, "
         r"lm_weight_grid, name, sil_score, sil_score_grid, vocab, word_score, word_score_grid "
         r"\(options of head 'ctc'\)"),
        ("head: {name: tagger, beam_size: 4}\n", [], r"head\.beam_size: unknown key.*options of head 'tagger'"),
        ("task: tagging\ndata: {dataset: msra-ner, train: x.conll}\n", [], r"data\.train: unknown key.*'msra-ner'"),
        ("task: tagging\nfeatures: {kind: tokens, n_mels: 40}\n", [], r"features\.n_mels: unknown key"),
        ("task: {name: language-model, bptt: many}\n", [], r"task\.bptt: expected an integer, got 'many'"),
        ("task: nosuchtask\n", [], r"r\.yaml: task\.name: unknown task 'nosuchtask'; registered tasks: "
         r"language-model, tagging, transcription"),
        ("encoder: {}\n", [], r"r\.yaml: task: missing; name the task, e.g. `task: tagging`"),
        ("data: {dataset: synth-speech, synth: {train: 10}}\n", [], r"data\.synth: moved: the synth-speech options "
         r"now sit directly in the data section"),
        ("head: {name: ctc}\nencoder: {directions: sideways}\n", [], r"encoder\.directions: expected one of"),
    ],
)
def test_bad_recipes_are_one_clear_line(tmp_path, text, overrides, message, plugin_manager):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=message) as info:
        Recipe.load(path, overrides)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.load(tmp_path / "nope.yaml")


def test_each_component_reads_its_own_options(tmp_path, plugin_manager):
    recipe = Recipe.load(write(tmp_path, "head: {name: ctc, beam_size: 64}\n"), ["data.train=100"])
    assert recipe.task.name == "transcription"  # implied by the head
    assert recipe.head.beam_size == 64 and not hasattr(recipe.head, "crf")
    assert recipe.data.dataset == "synth-speech" and recipe.data.train == 100  # the task's default dataset
    assert recipe.features.kind == "fbank" and recipe.features.n_mels == 80
    shown = yaml.safe_load(recipe.to_yaml())
    assert shown["head"] == {"name": "ctc", "dropout": 0.0, "vocab": "chars", "bpe_size": 256, "beam_size": 64,
                             "lexicon": None, "lm": None, "lm_order": 4, "lm_weight": 0.5, "word_score": 0.0,
                             "sil_score": 0.0, "lm_tune": True, "lm_weight_grid": [0.25, 0.5, 1.0, 1.5, 2.0, 3.0],
                             "word_score_grid": [-2.0, -1.0, 0.0, 1.0, 2.0], "sil_score_grid": [0.0],
                             "lm_beam_size": 0, "lm_tune_beam": 0, "lm_rescore": False}
    assert list(shown["data"])[0] == "dataset"


def test_a_run_folders_old_recipe_still_loads(tmp_path, plugin_manager):
    old = {  # as seqkit wrote recipe.yaml before per-component options: every option everywhere
        "description": "", "data": {"dataset": "synth-speech", "train": None, "valid": None, "test": None,
                                    "valid_fraction": 0.0, "limit": 0, "tokenize": "chars", "cache_dir": "/c",
                                    "synth": {"text": "kjv", "train": 12600, "valid": 200}},
        "features": {"kind": "fbank", "embedding_dim": 100, "n_mels": 80, "subsampling": 4},
        "encoder": {"cell": "lstm", "num_layers": 3, "hidden_size": 256, "bidirectional": True, "dropout": 0.1,
                    "engine": "auto"},
        "head": {"name": "ctc", "crf": True, "scheme": "auto", "dropout": 0.0, "vocab": "chars", "beam_size": 64,
                 "lexicon": "train"},
        "train": {"epochs": 9}, "device": "auto"}
    path = write(tmp_path, yaml.safe_dump(old))
    with pytest.raises(RecipeError, match=r"data\.synth: moved"):
        Recipe.load(path)  # a user's recipe gets told what moved where
    recipe = Recipe.load(path, saved=True)
    assert recipe.task.name == "transcription" and recipe.data.train == 12600 and recipe.data.cache_dir == "/c"
    assert recipe.head.beam_size == 64 and recipe.head.lexicon == "train"


def test_unknown_names_and_devices(tmp_path, plugin_manager):
    for key, value, message in [
        ("encoder.cell", "nocell", r"r\.yaml: encoder\.cell: unknown cell 'nocell'; registered cells: gru, lstm"),
        ("head.name", "nohead", r"head\.name: unknown head 'nohead'"),
        ("data.dataset", "nodata", r"data\.dataset: unknown dataset 'nodata'"),
        ("device", "cuda:7", r"device: cuda:7 is not available"),
        ("device", "tpu", r"device: 'tpu' is not a device"),
        ("train.ema_decay", "1.5", r"r\.yaml: train\.ema_decay: must be < 1, got 1\.5"),
        ("train.average_last", "-2", r"r\.yaml: train\.average_last: must be >= 0, got -2"),
    ]:
        with pytest.raises(SeqkitError, match=message):
            check_recipe(Recipe.load(write(tmp_path, "task: tagging\n"), [f"{key}={value}", "data.train=x"]))


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


def test_every_shipped_recipe_validates():
    """Every shipped recipe loads; those of first-party task plugins (plugins/*) with the plugins
    found through their entry points, as an installed seqkit finds them."""
    from seqkit import plugins

    paths = sorted(RECIPES.rglob("*.yaml"))
    assert paths
    plugins.reset(plugins._make_manager(load_entry_points=True))
    try:
        _validate_all(paths)
    finally:
        plugins.reset(None)


def _validate_all(paths):
    from seqkit import registry

    for path in paths:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        task = raw["task"]["name"] if isinstance(raw.get("task"), dict) else raw.get("task")
        if task not in registry.tasks.names():
            continue  # a first-party plugin that is not installed here (install.sh installs it)
        recipe = Recipe.load(path, ["device=cpu"])
        assert recipe.task is not None and recipe.head is not None
        assert recipe.description, f"{path} needs a description for `seqkit recipe list`"


@given(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(alphabet="abcxyz_-", min_size=1)))
def test_set_values_are_typed_like_yaml(value):
    text = yaml.safe_dump(value, default_style=None).strip()
    if text.endswith("..."):
        text = text[: -3].strip()
    assert parse_value(text) == value


def test_list_options_are_checked_item_by_item():
    from dataclasses import dataclass, field

    from seqkit.recipe import from_dict

    @dataclass
    class Options:
        names: list[str] = field(default_factory=list)
        sizes: list[int] = field(default_factory=lambda: [1])

    assert from_dict(Options, {"names": ["a", "b"]}) == Options(["a", "b"], [1])
    with pytest.raises(RecipeError, match=r"x.yaml: task.sizes\[1\]: expected an integer, got"):
        from_dict(Options, {"sizes": [1, "two"]}, source="x.yaml", prefix="task")
    with pytest.raises(RecipeError, match="task.names: expected a list of a string, got"):
        from_dict(Options, {"names": "a"}, source="x.yaml", prefix="task")
