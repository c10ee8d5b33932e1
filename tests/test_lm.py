"""The language-modelling task: truncated BPTT with carried state, exact resume, generation,
scoring, the split bi-LM, and encoder.init_from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import seqkit
from seqkit.build import init_from_run, run_recipe
from seqkit.errors import RecipeError, SeqkitError
from seqkit.recipe import Recipe

WORDS = "the a cat dog bird sat ran flew on under over mat log tree and then".split()


def _sentence(rng: random.Random) -> str:
    subject = f"{rng.choice(['the', 'a'])} {rng.choice(['cat', 'dog', 'bird'])}"
    verb = {"cat": "sat", "dog": "ran", "bird": "flew"}[subject.split()[1]]
    place = f"{rng.choice(['on', 'under', 'over'])} the {rng.choice(['mat', 'log', 'tree'])}"
    return f"{subject} {verb} {place}" + (f" and then {verb}" if rng.random() < 0.3 else "")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small grammar's text: an LM can learn it, an n-gram would too."""
    folder = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    for name, count in (("train", 600), ("valid", 60), ("test", 60)):
        (folder / f"{name}.txt").write_text("\n".join(_sentence(rng) for _ in range(count)) + "\n", encoding="utf-8")
    return folder


def _recipe(corpus: Path, tmp_path: Path, *overrides: str) -> Recipe:
    path = tmp_path / "lm.yaml"
    path.write_text(f"""
description: tiny LM
task: {{name: language-model, bptt: 12, eval_streams: 2}}
data: {{dataset: text, train: {corpus}/train.txt, valid: {corpus}/valid.txt, test: {corpus}/test.txt}}
features: {{kind: lm-tokens, units: words, embedding_dim: 16, dropout: 0.1, embedding_dropout: 0.05}}
encoder: {{directions: forward, num_layers: 2, hidden_size: 24, dropout: 0.1, locked_dropout: true, weight_drop: 0.1}}
head: {{name: lm, dropout: 0.1}}
train: {{epochs: 2, batch_size: 4, lr: 0.01, log_every: 5, checkpoint_every: 0, seed: 3}}
device: cpu
""", encoding="utf-8")
    return Recipe.load(path, list(overrides))


def _final(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("wall_time_s", "peak_rss_mb")}


def test_tbptt_learns_and_reports_every_unit(corpus, tmp_path):
    metrics = run_recipe(_recipe(corpus, tmp_path), tmp_path / "run", progress=False, log=lambda m: None)
    assert metrics["ppl"] < 6, metrics  # 16 words; the grammar leaves about 2-3 choices a word
    assert metrics["ppl_word"] == pytest.approx(metrics["ppl"], rel=1e-9)  # words are the units
    assert 0 < metrics["bpc"] < 1.5
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["event"] == "valid"] == [1, 2]


def test_resume_after_a_stop_mid_epoch_is_exact(corpus, tmp_path):
    """The carried state and the stream position are part of the checkpoint: a run stopped
    mid-epoch and resumed ends bit-identical to one that never stopped."""
    whole = run_recipe(_recipe(corpus, tmp_path), tmp_path / "whole", progress=False, log=lambda m: None)
    part = run_recipe(_recipe(corpus, tmp_path, "train.max_steps=37"), tmp_path / "part", progress=False,
                      log=lambda m: None)
    assert part["stopped"] == "max_steps"
    resumed = run_recipe(_recipe(corpus, tmp_path), tmp_path / "part", resume=True, progress=False,
                         log=lambda m: None)
    assert _final(resumed) == _final(whole)


def test_the_state_is_carried_from_batch_to_batch(corpus, tmp_path):
    from seqkit.models.lm import LanguageModelTask

    prepared = LanguageModelTask().prepare(_recipe(corpus, tmp_path), None, log=lambda m: None)
    model, batches = prepared.model.eval(), prepared.train_batches(0)
    first = model(batches[0])
    assert first.state is not None and first.state[0].shape == (2, 4, 24)
    carried = model(batches[1], state=first.state).loss
    assert not torch.equal(carried, model(batches[1]).loss)  # the state changes what the next chunk predicts


def test_generate_score_and_load(corpus, tmp_path):
    run_recipe(_recipe(corpus, tmp_path), tmp_path / "run", progress=False, log=lambda m: None)
    lm = seqkit.load(tmp_path / "run")
    before = torch.get_rng_state()
    a = lm.generate("the cat", max_tokens=30, seed=7, temperature=0.8, top_k=5)
    assert torch.equal(before, torch.get_rng_state())  # sampling leaves torch's RNG alone
    assert a == lm.generate("the cat", max_tokens=30, seed=7, temperature=0.8, top_k=5)
    assert a != lm.generate("the cat", max_tokens=30, seed=8, temperature=0.8, top_k=5)
    assert lm.generate("the", max_tokens=1, temperature=0) in {" cat", " dog", " bird"}
    good, bad = lm.score(["the cat sat on the mat", "mat the on sat cat the"])
    assert good["tokens"] == 7 and good["logprob"] > bad["logprob"] + 5
    with pytest.raises(SeqkitError, match="embed needs a bidirectional"):
        lm.embed_texts("the cat")


def test_split_bilm_predicts_both_ways_and_embeds(corpus, tmp_path):
    recipe = _recipe(corpus, tmp_path, "encoder.directions=split", "train.epochs=1")
    metrics = run_recipe(recipe, tmp_path / "bi", progress=False, log=lambda m: None)
    assert metrics["ppl_forward"] < 10 and metrics["ppl_backward"] < 10
    bi = seqkit.load(tmp_path / "bi")
    out = bi.embed_texts("the dog ran")
    assert out["tokens"] == ["the", "dog", "ran"] and out["vectors"].shape == (3, 48)
    with pytest.raises(SeqkitError, match="cannot generate: its backward half"):
        bi.generate("the")


def test_a_bidirectional_encoder_cannot_be_a_language_model(corpus, tmp_path):
    from seqkit.build import check_recipe

    with pytest.raises(RecipeError, match="must never see the token it predicts"):
        check_recipe(_recipe(corpus, tmp_path, "encoder.directions=bidirectional"))


def test_init_from_copies_the_encoder_and_shared_embeddings(corpus, tmp_path):
    from seqkit.models.lm import LanguageModelTask

    run_recipe(_recipe(corpus, tmp_path, "train.epochs=1"), tmp_path / "pre", progress=False, log=lambda m: None)
    source = seqkit.load(tmp_path / "pre")
    fresh = LanguageModelTask().prepare(_recipe(corpus, tmp_path, "train.seed=9"), None, log=lambda m: None).model
    assert not torch.equal(fresh.encoder.cells["l0"].weight_hh, source.encoder.cells["l0"].weight_hh)
    init_from_run(fresh, tmp_path / "pre", log=lambda m: None)
    for name, tensor in source.encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[name], tensor), name
    cat = source.vocab.stoi["cat"]
    assert torch.equal(fresh.embed.weight[fresh.vocab.stoi["cat"]], source.embed.weight[cat])
    wide = LanguageModelTask().prepare(_recipe(corpus, tmp_path, "encoder.hidden_size=32"), None,
                                       log=lambda m: None).model
    with pytest.raises(SeqkitError, match="its encoder does not fit this recipe's"):
        init_from_run(wide, tmp_path / "pre")


def test_a_split_lm_pretrains_a_taggers_encoder(corpus, tmp_path):
    """Pretrain with the LM head, fine-tune with another: a tagger starts from a bi-LM's encoder
    and from its embeddings of the words both vocabularies know."""
    from seqkit.models.tagging import TaggingTask

    conll = Path(__file__).resolve().parents[1] / "recipes" / "ner" / "example" / "train.conll"
    text = tmp_path / "text.txt"
    sentences = conll.read_text(encoding="utf-8").split("\n\n")
    text.write_text("\n".join(" ".join(line.split()[0] for line in s.splitlines() if line.strip())
                              for s in sentences if s.strip()) + "\n", encoding="utf-8")
    lm = _recipe(corpus, tmp_path, f"data.train={text}", f"data.valid={text}", f"data.test={text}",
                 "encoder.directions=split", "train.epochs=1")
    run_recipe(lm, tmp_path / "bilm", progress=False, log=lambda m: None)
    source = seqkit.load(tmp_path / "bilm")
    tagging = Recipe.load(Path(__file__).resolve().parents[1] / "recipes" / "ner" / "conll.yaml",
                          ["device=cpu", "features.embedding_dim=16", "encoder.directions=split",
                           "encoder.num_layers=2", "encoder.hidden_size=24", f"encoder.init_from={tmp_path / 'bilm'}"])
    tagger = TaggingTask().prepare(tagging, None, log=lambda m: None).model
    init_from_run(tagger, tmp_path / "bilm", log=lambda m: None)
    assert torch.equal(tagger.encoder.cells["l1_reverse"].weight_ih, source.encoder.cells["l1_reverse"].weight_ih)
    embedding, tokens = tagger.embedding_tokens()
    shared = [t for t in tokens if t in source.vocab.stoi]
    assert len(shared) > 50
    for token in shared[:20]:
        assert torch.equal(embedding.weight[tokens.index(token)], source.embed.weight[source.vocab.stoi[token]])
    # a tagger whose input has more features after the token embedding (bigrams) takes the
    # LM's input columns and starts the others fresh; the recurrent weights are the LM's
    wider = Recipe.load(Path(__file__).resolve().parents[1] / "recipes" / "ner" / "conll.yaml",
                        ["device=cpu", "features.embedding_dim=16", "features.bigram_dim=6", "encoder.directions=split",
                         "encoder.num_layers=2", "encoder.hidden_size=24", "data.tokenize=chars"])
    tagger = TaggingTask().prepare(wider, None, log=lambda m: None).model
    fresh = tagger.encoder.cells["l0"].weight_ih.detach().clone()
    said = []
    init_from_run(tagger, tmp_path / "bilm", log=said.append)
    mine, theirs = tagger.encoder.cells["l0"].weight_ih, source.encoder.cells["l0"].weight_ih
    assert mine.shape == (96, 22) and theirs.shape == (96, 16)
    assert torch.equal(mine[:, :16], theirs) and torch.equal(mine[:, 16:], fresh[:, 16:])
    assert torch.equal(tagger.encoder.cells["l1"].weight_ih, source.encoder.cells["l1"].weight_ih)
    assert "its 16 input columns; the other 6 start fresh" in said[0]
    narrower = Recipe.load(Path(__file__).resolve().parents[1] / "recipes" / "ner" / "conll.yaml",
                           ["device=cpu", "features.embedding_dim=12", "encoder.directions=split",
                            "encoder.num_layers=2", "encoder.hidden_size=24"])
    with pytest.raises(SeqkitError, match="does not fit"):  # fewer input columns than the LM: no
        init_from_run(TaggingTask().prepare(narrower, None, log=lambda m: None).model, tmp_path / "bilm")


def test_the_shared_sampler_takes_a_draw_function_and_keeps_its_own_random_stream():
    from seqkit.sampling import sample_steps

    def step(inputs, state):  # (N, 3) in, the same out: a "frame" model
        return inputs + 0.5, state

    def draw(output, generator):
        return torch.bernoulli(torch.sigmoid(output), generator=generator)

    before = torch.get_rng_state()
    runs = [torch.stack(list(sample_steps(step, torch.zeros(2, 3), None, 6, seed=s, draw=draw))) for s in (4, 4, 5)]
    assert torch.equal(before, torch.get_rng_state())
    assert runs[0].shape == (6, 2, 3) and torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    logits = torch.tensor([[0.0, 5.0, 1.0]])  # without draw: categorical ids, greedy at temperature 0
    ids = list(sample_steps(lambda i, s: (logits, s), torch.tensor([0]), None, 3, temperature=0))
    assert [int(i) for i in ids] == [1, 1, 1]


def test_a_subclass_of_a_task_takes_its_parents_heads_and_datasets(corpus, tmp_path):
    """A plugin's task built on the language-model machinery (seqkit-music's melody task does this)."""
    from seqkit.build import check_recipe
    from seqkit.models import LanguageModel, LanguageModelTask
    from seqkit.testing import registered_plugin

    class Shouting(LanguageModel):
        def shout(self):
            return self.generate("the", max_tokens=3, temperature=0).upper()

    class ShoutingTask(LanguageModelTask):
        model_class = Shouting

    class Unrelated(LanguageModelTask.__mro__[1]):  # a plain Task: it does not take the LM's head
        pass

    class Plugin:
        @staticmethod
        @seqkit.hookimpl
        def register_tasks(register):
            register("shouting-lm", ShoutingTask)
            register("unrelated", Unrelated)

    with registered_plugin(Plugin, name="shouting"):
        recipe = _recipe(corpus, tmp_path, "task.name=shouting-lm", "train.epochs=1")
        check_recipe(recipe)
        run_recipe(recipe, tmp_path / "run", progress=False, log=lambda m: None)
        model = seqkit.load(tmp_path / "run")
        assert isinstance(model, Shouting) and model.shout().strip().split()[0] in {"CAT", "DOG", "BIRD"}
        with pytest.raises(RecipeError, match="head 'lm' serves task 'language-model'"):
            other = tmp_path / "other.yaml"
            other.write_text(f"task: unrelated\ndata: {{dataset: text, train: {corpus}/train.txt}}\n"
                             "features: {kind: lm-tokens}\nhead: {name: lm}\n", encoding="utf-8")
            check_recipe(Recipe.load(other))


def test_generate_writes_text_with_out_and_refuses_music_options(corpus, tmp_path):
    import subprocess
    import sys

    run_recipe(_recipe(corpus, tmp_path, "train.epochs=1"), tmp_path / "run", progress=False, log=lambda m: None)
    done = subprocess.run([sys.executable, "-m", "seqkit", "generate", str(tmp_path / "run"), "--prompt", "the",
                           "--max-tokens", "5", "--seed", "1", "--out", str(tmp_path / "g.txt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g.txt").read_text(encoding="utf-8") == done.stdout
    done = subprocess.run([sys.executable, "-m", "seqkit", "generate", str(tmp_path / "run"), "--png", "x.png"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--png" in done.stderr and "music models" in done.stderr
