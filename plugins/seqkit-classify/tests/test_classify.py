"""seqkit-classify through the public task API: options, data, heads, training, the commands.

The plugin is found through its entry point when installed (install.sh, tox -e plugins); otherwise
each test registers it in a fresh plugin manager, the way ``seqkit.testing`` does for cells."""

from __future__ import annotations

import importlib.metadata
import json
import random
import zlib
from pathlib import Path

import pytest
import seqkit_classify
import torch
from click.testing import CliRunner
from seqkit_classify.data import Examples, mr_folds
from seqkit_classify.model import PoolingClassifier, Vocab, tokenize

import seqkit
from seqkit.cli import cli as seqkit_cli
from seqkit.testing import installed_plugin_info, registered_plugin

ROOT = Path(__file__).resolve().parents[3]
MR = ROOT.parent / "shared" / "data" / "mr"
POS = ["a gripping , funny and moving film", "wonderful acting and a smart script", "i loved every minute",
       "a delight from start to finish", "brilliant , warm and wise"]
NEG = ["a dull , lifeless mess", "boring and far too long", "i hated the clumsy script",
       "a tedious waste of time", "awful acting and a silly plot"]


def cli():
    """A fresh command group: it adds the commands of the plugins registered now."""
    return type(seqkit_cli)(name="seqkit", commands={k: v for k, v in seqkit_cli.commands.items()
                                                     if k not in ("classify", "classify-cv")})


@pytest.fixture(autouse=True)
def plugin():
    with registered_plugin(seqkit_classify, name="classify"):
        yield


def _table(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["text\tlabel"]
    for _ in range(rows):
        good = rng.random() < 0.5
        lines.append(f"{rng.choice(POS if good else NEG)} {rng.choice(['.', '!', ''])}\t{'pos' if good else 'neg'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def recipe(tmp_path):
    _table(tmp_path / "train.tsv", 400, 0)
    _table(tmp_path / "test.tsv", 60, 1)
    path = tmp_path / "r.yaml"
    path.write_text("task: {name: classification, embedding_dim: 16}\n"
                    "data: {dataset: table, train: train.tsv, test: test.tsv, valid_fraction: 0.1}\n"
                    "encoder: {hidden_size: 16, num_layers: 1}\n"
                    "head: {name: pooling, pool: attention, heads: 2, attention_size: 8}\n"
                    "train: {epochs: 4, batch_size: 16, lr: 0.01, threads: 1}\ndevice: cpu\n", encoding="utf-8")
    return path


def test_options_are_checked_by_their_own_schema(recipe):
    result = CliRunner().invoke(cli(), ["recipe", "validate", str(recipe), "--set", "head.pool=median"])
    assert result.exit_code == 2 and "head.pool: expected one of 'attention', 'mean', 'max', 'last'" in result.output
    result = CliRunner().invoke(cli(), ["recipe", "validate", str(recipe), "--set", "head.heads=0"])
    assert result.exit_code == 2 and "head.heads: must be >= 1, got 0" in result.output
    result = CliRunner().invoke(cli(), ["recipe", "validate", str(recipe), "--set", "data.train=nope.tsv"])
    assert result.exit_code == 2 and "data.train" in result.output


def test_trains_classifies_and_draws(recipe, tmp_path):
    run = tmp_path / "run"
    metrics = seqkit.run_recipe(seqkit.Recipe.load(recipe), run, progress=False, log=lambda m: None)
    assert metrics["accuracy"] >= 90.0
    model = seqkit.load(run)
    one = model.classify("a wonderful , warm film")
    assert one["label"] == "pos" and abs(sum(one["probs"].values()) - 1) < 1e-3
    assert len(one["attention"]) == len(one["tokens"]) == 5 and abs(sum(one["attention"]) - 1) < 1e-3
    png = tmp_path / "att.png"
    result = CliRunner().invoke(cli(), ["classify", str(run), "a dull mess", "brilliant acting", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("neg\t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    result = CliRunner().invoke(cli(), ["evaluate", str(run), "--json"])
    assert json.loads(result.output)["accuracy"] == metrics["accuracy"]


@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_every_pool_ignores_padding(pool):
    torch.manual_seed(0)
    head = PoolingClassifier(6, 3, pool=pool, heads=2, directions=2).eval()
    h = torch.randn(2, 7, 6)
    lengths = torch.tensor([7, 4])
    padded = h.clone()
    padded[1, 4:] = 100.0  # garbage in the padding
    assert torch.allclose(head(h, lengths)[0], head(padded, lengths)[0])


def test_attention_ignores_padding_and_sums_to_one():
    torch.manual_seed(0)
    head = PoolingClassifier(6, 3, pool="attention", heads=3).eval()
    h, lengths = torch.randn(2, 7, 6), torch.tensor([7, 4])
    logits, weights = head(h, lengths)
    assert weights.shape == (2, 3, 7) and torch.allclose(weights.sum(-1), torch.ones(2, 3))
    assert torch.all(weights[1, :, 4:] == 0)
    padded = h.clone()
    padded[1, 4:] = -50.0
    assert torch.allclose(head(padded, lengths)[0], logits)


def test_mr_folds_are_fixed_balanced_and_disjoint():
    fold = mr_folds(10662, 10, 0)
    sizes = [fold.count(k) for k in range(10)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 10662
    assert fold == mr_folds(10662, 10, 0) and fold != mr_folds(10662, 10, 1)


def test_vocab_and_tokenizer():
    assert tokenize("It's a FILM, isn't it?") == ["it's", "a", "film", ",", "isn't", "it", "?"]
    vocab = Vocab.build(Examples(["a b b", "b c"], ["x", "y"], "-"), min_count=2, max_vocab=0, lowercase=True)
    assert vocab.tokens == ["<pad>", "<unk>", "b"] and vocab.labels == ["x", "y"]
    assert vocab.encode("b zzz") == (["b", "zzz"], [2, 1])


@pytest.mark.skipif(not (MR / "rt-polarity.pos").is_file(), reason="the Movie Review files are not in "
                    "../shared/data/mr (public source: nltk/nltk_data, packages/corpora/sentence_polarity.zip)")
def test_mr_provider_reads_the_benchmark(tmp_path):
    from seqkit_classify.data import MRConfig, mr_provider

    splits = mr_provider(MRConfig(folder=str(MR), fold=3), base=tmp_path)
    total = sum(len(s) for s in splits.values())
    assert total == 10662 and 1060 <= len(splits["test"]) <= 1072
    assert splits["test"].labels.count("positive") > 450 and splits["test"].labels.count("negative") > 450


def test_missing_mr_files_are_one_line_with_the_source(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"task: classification\ndata: {{dataset: mr, folder: {tmp_path / 'none'}}}\n", encoding="utf-8")
    result = CliRunner().invoke(cli(), ["recipe", "validate", str(path)])
    assert result.exit_code == 2 and "rt-polarity.pos not found" in result.output and "nltk_data" in result.output


def test_found_through_its_entry_point_when_installed():
    try:
        infos = installed_plugin_info("seqkit-classify")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqkit-classify is not installed (install.sh or tox -e plugins installs it)")
    assert [(i["name"], i["tasks"]) for i in infos] == [("classify", ["classification"])]
    assert infos[0]["datasets"] == ["table", "mr"] and infos[0]["heads"] == ["pooling"]


def test_mr_validation_is_a_sample_of_both_classes(tmp_path):
    from seqkit_classify.data import MRConfig, mr_provider

    folder = tmp_path / "mr"
    folder.mkdir()
    (folder / "rt-polarity.pos").write_text("".join(f"good {i}\n" for i in range(200)), encoding="latin-1")
    (folder / "rt-polarity.neg").write_text("".join(f"bad {i}\n" for i in range(200)), encoding="latin-1")
    splits = mr_provider(MRConfig(folder=str(folder), fold=2), base=tmp_path)
    assert len(splits["test"]) == 40 and len(splits["valid"]) == 36
    assert 10 <= splits["valid"].labels.count("positive") <= 26  # the files list positives first


@pytest.mark.parametrize("pool, fmt, subwords", [("attention", "onnx", 0), ("last", "onnx", 0),
                                                 ("mean", "torchscript", 0), ("attention", "onnx", 500),
                                                 ("max", "torchscript", 500)])
def test_exported_classifier_classifies_as_the_model(recipe, tmp_path, pool, fmt, subwords):
    """seqkit export through the public export API: this plugin's own numpy post-processing
    ships beside the graph and gives the model's answers."""
    pytest.importorskip("onnxruntime", reason="export needs onnx, onnxscript, onnxruntime: pip install seqkit[export]")
    import importlib.util

    from seqkit.export import export_run

    run = tmp_path / "run"
    seqkit.run_recipe(seqkit.Recipe.load(recipe, [f"head.pool={pool}", "train.epochs=1", f"task.subwords={subwords}",
                                                  "encoder.directions=bidirectional"]),
                      run, progress=False, log=lambda m: None)
    manifest = export_run(run, fmt, tmp_path / "out", log=lambda m: None)
    assert manifest["max_difference"] <= 1e-4
    spec = importlib.util.spec_from_file_location("runtime_classify", tmp_path / "out" / "runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    texts = ["a wonderful , warm film", "dull", "an unknownword mess !"]
    got, want = runtime.load(tmp_path / "out").classify(texts), seqkit.load(run).classify(texts)
    for a, b in zip(got, want, strict=True):
        assert a["label"] == b["label"] and a["tokens"] == b["tokens"]
        assert a["probs"] == pytest.approx(b["probs"], abs=2e-4)
        assert a.get("attention") == pytest.approx(b.get("attention"), abs=2e-4)


def test_word_dropout_turns_words_not_padding_into_unk_in_training_only(recipe):
    from seqkit_classify.model import Classifier, make_batch

    vocab = Vocab(["<pad>", "<unk>", "a", "b"], ["x"])
    model = Classifier(seqkit.Recipe.load(recipe, ["task.word_dropout=0.5"]), vocab)
    seen = []
    model.embed.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    batch = make_batch([[2, 3] * 200, [3, 2] * 50], [0, 0])
    torch.manual_seed(0)
    model.train()
    model.logits(batch)
    model.eval()
    model.logits(batch)
    dropped, kept = seen
    assert torch.equal(kept, batch.ids)  # evaluation sees every word
    assert torch.all(dropped[1, 100:] == 0)  # padding stays padding
    real = batch.ids > 0
    assert torch.equal(dropped[real & (dropped != 1)], batch.ids[real & (dropped != 1)])  # the rest unchanged
    assert 0.4 < float((dropped[real] == 1).float().mean()) < 0.6


def test_subwords_are_fasttext_ngrams_hashed_the_same_everywhere():
    from seqkit_classify.export_runtime import char_ngrams, pad_ngrams

    # "<film>": 4 + 3 + 2 n-grams of 3, 4 and 5 characters, each CRC-32 (not Python's per-process
    # salted hash(), which would hash differently in the exported runtime's process) mod buckets, + 1
    pieces = ["<fi", "fil", "ilm", "lm>", "<fil", "film", "ilm>", "<film", "film>"]
    grams = char_ngrams("film", 1_000_000, 3, 5)
    assert grams == tuple(sorted(zlib.crc32(p.encode()) % 1_000_000 + 1 for p in pieces))
    assert char_ngrams("film", 1_000_000, 3, 3) == tuple(sorted(zlib.crc32(p.encode()) % 1_000_000 + 1
                                                               for p in pieces[:4]))
    assert char_ngrams("a", 7, 3, 5) == (zlib.crc32(b"<a>") % 7 + 1,)  # "<a>" alone; ids never 0 (padding)
    padded = pad_ngrams([[[3, 4], [5]], [[6]]], 3)
    assert padded.shape == (2, 3, 2) and padded[0, 1].tolist() == [5, 0] and padded[1, 1:].sum() == 0


def test_subword_vectors_average_word_and_ngram_rows_and_unseen_words_get_them(recipe):
    from seqkit_classify.model import Classifier, make_batch

    vocab = Vocab(["<pad>", "<unk>", "film"], ["x"], subwords=[50, 3, 4])
    model = Classifier(seqkit.Recipe.load(recipe, ["task.subwords=50", "task.subword_max=4"]), vocab)
    toks, ids = vocab.encode("film filmic")
    assert ids == [2, 1]  # "filmic" is unseen: <unk>, but with its own n-grams
    grams = vocab.grams(toks)
    assert set(grams[0]) & set(grams[1]) and grams[1] != grams[0]
    batch = make_batch([ids, [2]], [0, 0], [grams, grams[:1]])
    out = model.embed_tokens(batch.ids, batch.grams)
    for t in range(2):
        want = (model.embed.weight[ids[t]] + model.grams.weight[list(grams[t])].sum(0)) / (1 + len(grams[t]))
        assert torch.allclose(out[0, t], want)
    assert torch.all(out[1, 1] == 0)  # padding
    assert not torch.allclose(out[0, 1], model.embed.weight[1])  # an unseen word is not just <unk>


def test_subword_range_is_checked(recipe, tmp_path):
    with pytest.raises(seqkit.RecipeError, match="task.subword_min"):
        seqkit.run_recipe(seqkit.Recipe.load(recipe, ["task.subwords=10", "task.subword_min=6"]), tmp_path / "r",
                          progress=False, log=lambda m: None)


def _tiny_mr(tmp_path: Path) -> Path:
    """An MR-format folder (rt-polarity.pos/.neg) of 120 short sentences, and a 3-fold recipe on it."""
    rng = random.Random(3)
    folder = tmp_path / "mr"
    folder.mkdir()
    for name, pool in (("pos", POS), ("neg", NEG)):
        (folder / f"rt-polarity.{name}").write_text(
            "".join(f"{rng.choice(pool)} {rng.choice(['.', '!', ''])}\n" for _ in range(60)), encoding="latin-1")
    path = tmp_path / "cv.yaml"
    path.write_text("task: {name: classification, embedding_dim: 8, baseline: tfidf-lr}\n"
                    "data: {dataset: mr, folder: mr, folds: 3, fold: 0}\n"
                    "encoder: {hidden_size: 8, num_layers: 1}\nhead: {name: pooling, pool: mean}\n"
                    "train: {epochs: 1, batch_size: 16, lr: 0.01, threads: 1}\ndevice: cpu\n", encoding="utf-8")
    return path


def test_cv_with_seeds_trains_each_fold_per_seed_and_scores_their_ensemble(tmp_path):
    recipe = _tiny_mr(tmp_path)
    out = tmp_path / "cv"
    result = CliRunner().invoke(cli(), ["classify-cv", str(recipe), "--out", str(out), "--seeds", "4,5",
                                        "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "cv.json").read_text())
    assert summary["seeds"] == [4, 5] and len(summary["runs"]) == 3
    for row in summary["runs"]:
        fold = row["fold"]
        runs = [out / f"fold-{fold}-seed-{s}" for s in (4, 5)]
        singles = [json.loads((r / "metrics.json").read_text())["accuracy"] for r in runs]
        assert row["seeds"] == {"4": singles[0], "5": singles[1]}
        assert row["accuracy"] == pytest.approx(sum(singles) / 2)
        models = [seqkit.load(r) for r in runs]
        assert models[0].recipe.train.seed == 4 and models[1].recipe.train.seed == 5
        # the ensemble is the mean of the two models' probabilities on the fold's test split
        assert models[0].recipe.data.fold == fold  # the run's own recipe names its fold
        texts, labels = _fold_test(models[0])
        mean = (models[0].probabilities(texts) + models[1].probabilities(texts)) / 2
        right = sum(models[0].vocab.labels[i] == gold for i, gold in zip(mean.argmax(-1).tolist(), labels))
        assert row["ensemble_accuracy"] == pytest.approx(100.0 * right / len(labels))
    assert summary["ensemble_accuracy"] == round(sum(r["ensemble_accuracy"] for r in summary["runs"]) / 3, 2)
    paired = summary["vs_baseline"]
    differences = [r["ensemble_accuracy"] - r["baseline_accuracy"] for r in summary["runs"]]
    assert paired["compared"] == "ensemble_accuracy"
    assert paired["folds_better"] == sum(d > 1e-9 for d in differences)
    assert paired["folds_worse"] == sum(d < -1e-9 for d in differences)
    # finished folds are kept: a second call trains nothing and gives the same summary
    again = CliRunner().invoke(cli(), ["classify-cv", str(recipe), "--out", str(out), "--seeds", "4,5",
                                       "--no-progress"])
    assert again.exit_code == 0 and again.output.count("done earlier") == 6
    assert json.loads((out / "cv.json").read_text()) == summary


def test_cv_without_seeds_runs_one_model_per_fold_and_pairs_it_with_the_baseline(tmp_path):
    recipe = _tiny_mr(tmp_path)
    out = tmp_path / "cv"
    result = CliRunner().invoke(cli(), ["classify-cv", str(recipe), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "cv.json").read_text())
    assert "seeds" not in summary and "ensemble_accuracy" not in summary
    for row in summary["runs"]:
        metrics = json.loads((out / f"fold-{row['fold']}" / "metrics.json").read_text())
        assert row["accuracy"] == metrics["accuracy"] and row["baseline_accuracy"] == metrics["baseline_accuracy"]
    differences = [r["accuracy"] - r["baseline_accuracy"] for r in summary["runs"]]
    paired = summary["vs_baseline"]
    assert paired["compared"] == "accuracy"
    assert (paired["folds_better"], paired["folds_worse"], paired["folds_level"]) == (
        sum(d > 1e-9 for d in differences), sum(d < -1e-9 for d in differences),
        sum(abs(d) <= 1e-9 for d in differences))


def _fold_test(model) -> tuple[list[str], list[str]]:
    from seqkit.tasks import load_splits

    test = load_splits(model.recipe, ["test"])["test"]
    return list(test.texts), list(test.labels)


@pytest.mark.parametrize("seeds", ["1,x", "2,2", ","])
def test_bad_seed_lists_are_one_clear_error(tmp_path, seeds):
    recipe = _tiny_mr(tmp_path)
    result = CliRunner().invoke(cli(), ["classify-cv", str(recipe), "--out", str(tmp_path / "cv"), "--seeds", seeds])
    assert result.exit_code == 2 and "--seeds" in result.output and "e.g. 1,2,3" in result.output
    assert not (tmp_path / "cv").exists()


def test_classify_with_other_runs_averages_their_probabilities(recipe, tmp_path):
    runs = []
    for seed in (1, 2):
        runs.append(tmp_path / f"run{seed}")
        seqkit.run_recipe(seqkit.Recipe.load(recipe, [f"train.seed={seed}", "train.epochs=1"]), runs[-1],
                          progress=False, log=lambda m: None)
    texts = ["a dull mess", "brilliant acting"]
    single = [seqkit.load(r).probabilities(texts) for r in runs]
    result = CliRunner().invoke(cli(), ["classify", str(runs[0]), *texts, "--with", str(runs[1]), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    labels = seqkit.load(runs[0]).vocab.labels
    for row, line in enumerate(lines):
        mean = (single[0][row] + single[1][row]) / 2
        assert line["members"] == 2 and line["label"] == labels[int(mean.argmax())]
        assert line["probs"] == {lab: round(float(p), 4) for lab, p in zip(labels, mean)}
        assert single[0][row].tolist() != single[1][row].tolist()  # two different models


def test_an_ensemble_needs_the_same_classes(recipe, tmp_path):
    first, other = tmp_path / "a", tmp_path / "b"
    seqkit.run_recipe(seqkit.Recipe.load(recipe, ["train.epochs=1"]), first, progress=False, log=lambda m: None)
    rows = ["text\tlabel"] + [f"{t}\t{c}" for t, c in zip(POS + NEG, "xyzxyzxyzx")]
    (tmp_path / "three.tsv").write_text("\n".join(rows * 8) + "\n", encoding="utf-8")
    seqkit.run_recipe(seqkit.Recipe.load(recipe, ["train.epochs=1", f"data.train={tmp_path / 'three.tsv'}",
                                                  f"data.test={tmp_path / 'three.tsv'}"]), other,
                      progress=False, log=lambda m: None)
    result = CliRunner().invoke(cli(), ["classify", str(first), "fine", "--with", str(other)])
    assert result.exit_code != 0 and "an ensemble needs the same classes" in result.output


def test_ensemble_accuracy_counts_whole_label_sets():
    from seqkit_classify.ensemble import accuracy

    assert accuracy(["pos", "neg", "pos", "pos"], ["pos", "pos", "pos", "neg"], ["neg", "pos"]) == 50.0
    labels = ["a", "b", "c"]
    assert accuracy([["b", "a"], [], ["c"]], [["a", "b"], [], ["a", "c"]], labels) == pytest.approx(200 / 3)
