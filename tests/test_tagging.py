"""NER end to end on the shipped English example: train, load, tag, evaluate, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import seqkit
import seqkit.errors
from seqkit.build import evaluate_run, run_recipe
from seqkit.data.conll import read_conll
from seqkit.recipe import Recipe

CONLL = Path(__file__).resolve().parents[1] / "recipes" / "ner" / "conll.yaml"


def train(out: Path, *overrides: str) -> dict:
    recipe = Recipe.load(CONLL, ["device=cpu", "train.threads=1", *overrides])
    return run_recipe(recipe, out, progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "ner"
    train(out, "train.epochs=6")
    return out


def test_run_folder_and_metrics(run_dir):
    for name in ("recipe.yaml", "metrics.json", "metrics.jsonl", "vocab/tokens.json", "vocab/vocab.json",
                 "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/best.json"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["f1"] >= 90.0  # the example is easy: a model that learns nothing scores ~0
    assert set(metrics["per_type"]) == {"PER", "LOC", "ORG"}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for line in lines if line["event"] == "valid") == 6
    # the logged training time is the real time, however many checkpoints were written
    assert max(line["time"] for line in lines if line["event"] == "train") <= metrics["wall_time_s"] + 1
    assert load_file(run_dir / "checkpoints" / "best.safetensors")  # safetensors, not a pickle


def test_tag_raw_text_with_offsets(run_dir):
    tagger = seqkit.load(run_dir)
    text = "Yesterday Mira Okafor met Jon at Norden Bank ."
    (result,) = tagger.tag([text])
    found = {(e["type"], e["text"]) for e in result["entities"]}
    assert found == {("PER", "Mira Okafor"), ("PER", "Jon"), ("ORG", "Norden Bank")}
    for e in result["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]


def test_tag_edge_cases(run_dir):
    tagger = seqkit.load(run_dir)
    long_text = " ".join(["Paris"] * 2000)  # 11,999 characters
    empty, spaces, long, pretok = tagger.tag(["", "   ", long_text, ["Ada", "Brook", "moved"]])
    assert empty == {"tokens": [], "tags": [], "entities": []}
    assert spaces["entities"] == []
    assert len(long["tags"]) == 2000
    assert pretok["entities"][0] == {"type": "PER", "text": "Ada Brook", "start": 0, "end": 2}


def test_batch_size_does_not_change_tags(run_dir):
    tagger = seqkit.load(run_dir)
    test = read_conll(CONLL.parent / "example" / "test.conll")
    sentences = [words for words, _ in test.sentences] + ["", "Paris"]
    one = tagger.tag(sentences, batch_size=1)
    many = tagger.tag(sentences, batch_size=64)
    assert one == many


def test_evaluate_other_file_with_unseen_tags(run_dir, tmp_path):
    data = tmp_path / "other.conll"
    data.write_text("Ada B-PER\nBrook I-PER\nsings O\nin O\nHollis B-MISC\n\n", encoding="utf-8")
    metrics, _ = evaluate_run(run_dir, data)
    assert metrics["per_type"]["PER"]["f1"] == 100.0
    assert metrics["per_type"]["MISC"]["recall"] == 0.0  # a type the model never saw still counts
    assert metrics["sentences"] == 1


def test_same_seed_same_metrics(tmp_path):
    a = train(tmp_path / "a", "train.epochs=2")
    b = train(tmp_path / "b", "train.epochs=2")
    assert a["f1"] == b["f1"] and a["best_valid"] == b["best_valid"]


def test_resume_reaches_the_same_result(tmp_path):
    full = train(tmp_path / "full", "train.epochs=3")
    part = train(tmp_path / "part", "train.epochs=3", "train.max_steps=37")  # stops mid-epoch 2
    assert part["stopped"] == "max_steps"
    resumed = run_recipe(Recipe.load(CONLL, ["device=cpu", "train.threads=1", "train.epochs=3"]),
                         tmp_path / "part", resume=True, progress=False, log=lambda m: None)
    assert resumed["steps"] == full["steps"]
    assert resumed["f1"] == full["f1"] and resumed["best_valid"] == full["best_valid"]
    a = load_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "part" / "checkpoints" / "last.safetensors")
    model_keys = [k for k in a if k.startswith("model.")]
    assert model_keys and all(torch.equal(a[k], b[k]) for k in model_keys)


def test_refuses_to_overwrite_a_run(run_dir):
    with pytest.raises(seqkit.errors.SeqkitError, match="already holds a run; add --resume"):
        train(run_dir)


def test_resume_with_a_different_model_is_refused(tmp_path):
    train(tmp_path / "r", "train.max_steps=3")
    recipe = Recipe.load(CONLL, ["device=cpu", "encoder.hidden_size=32"])
    with pytest.raises(seqkit.errors.SeqkitError, match=r"encoder\.hidden_size: is 32 but the run"):
        run_recipe(recipe, tmp_path / "r", resume=True, progress=False)


def test_sortagrad_takes_the_first_epoch_shortest_first(tmp_path):
    from seqkit.models.tagging import TaggingTask

    prepare = TaggingTask().prepare

    def lengths(batches):
        return [int(b.lengths.max()) for b in batches]

    plain = prepare(Recipe.load(CONLL, ["device=cpu"]), tmp_path / "a", log=lambda msg: None)
    sorted_ = prepare(Recipe.load(CONLL, ["device=cpu", "train.sortagrad=true"]), tmp_path / "b", log=lambda msg: None)
    first = lengths(sorted_.train_batches(0))
    assert first == sorted(first) and first[0] < first[-1]
    assert lengths(plain.train_batches(0)) != first  # without it the first epoch is shuffled
    # later epochs are shuffled as usual, the same batches as without sortagrad
    assert [b.index for b in sorted_.train_batches(1)] == [b.index for b in plain.train_batches(1)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=120), st.integers(1, 9), st.integers(0, 5), st.booleans())
def test_length_groups_cover_every_index_once(lengths, batch_size, seed, shortest_first):
    from seqkit.models import length_groups

    groups = length_groups(lengths, batch_size, seed, shortest_first=shortest_first)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= batch_size for g in groups)
    if shortest_first:  # every batch no longer than the next one's shortest
        assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(groups, groups[1:]))
