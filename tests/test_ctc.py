"""CTC head: output units, loss, greedy and beam decoding, CER/WER, and a tiny overfit."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from seqkit import registry
from seqkit.features.audio import read_audio
from seqkit.heads.ctc import CTC, CTCVocab, error_rates
from seqkit.models.speech import SpeechModel, collate
from seqkit.recipe import Recipe

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


def spiky(vocab: CTCVocab, ids: list[int], floor: float = -12.0) -> torch.Tensor:
    """(1, L, C) log-probabilities that say ``ids`` one frame each, a blank after each."""
    frames = [i for u in ids for i in (u, 0)]
    lp = torch.full((len(frames), len(vocab)), floor)
    lp[torch.arange(len(frames)), torch.tensor(frames)] = 0.0
    return lp.log_softmax(-1)[None]


def test_char_units_round_trip_and_save(tmp_path):
    vocab = CTCVocab.build(["and god said", "let there be light"])
    assert vocab.tokens[0] == "<blank>" and vocab.tokens[1] == "|"
    ids = vocab.encode("let  god be")
    assert 0 not in ids and vocab.decode(ids) == "let god be"
    assert vocab.decode(vocab.encode("xyz let")) == "let"  # unknown characters are dropped
    vocab.save(tmp_path)
    assert CTCVocab.load(tmp_path).tokens == vocab.tokens


def test_bpe_units_round_trip_and_save(tmp_path):
    texts = ["and god said let there be light", "and there was light", "and god saw the light"] * 5
    vocab = CTCVocab.build(texts, "bpe", 40)
    assert vocab.kind == "bpe" and vocab.tokens[0] == "<blank>" and len(vocab) <= 40
    ids = vocab.encode("god saw light")
    assert len(ids) < len("god saw light")  # pieces, not characters
    assert vocab.decode(ids) == "god saw light"
    vocab.save(tmp_path)
    again = CTCVocab.load(tmp_path)
    assert again.tokens == vocab.tokens and again.decode(ids) == "god saw light"


def test_error_rates_count_characters_and_words():
    scores = error_rates(["the cat sat", "a b"], ["the bat sat", "a"])
    # characters: 1 of 11 plus 2 of 3 ("a b" -> "a"); words: 1 of 3 plus 1 of 2
    assert scores["cer"] == pytest.approx(100 * 3 / 14)
    assert scores["wer"] == pytest.approx(100 * 2 / 5)
    assert error_rates(["same words"], ["same  words "]) == {"cer": 0.0, "wer": 0.0}


def test_greedy_collapses_repeats_but_not_across_blanks():
    vocab = CTCVocab.build(["all"])
    a, l_ = vocab.index["a"], vocab.index["l"]
    lp = torch.full((1, 6, len(vocab)), -9.0)
    for t, unit in enumerate([a, a, l_, l_, 0, l_]):  # "a a l l _ l" -> "all"
        lp[0, t, unit] = 0.0
    head = CTC(4, vocab)
    assert head.greedy(lp, torch.tensor([6])) == ["all"]
    assert head.greedy(lp, torch.tensor([4])) == ["al"]  # only the sequence's own length


def test_ctc_loss_is_small_for_the_right_text_only():
    vocab = CTCVocab.build(["hi there"])
    c = len(vocab)
    head = CTC(c, vocab)
    with torch.no_grad():  # identity projection: the features are the log-probabilities
        head.proj.weight.copy_(torch.eye(c))
        head.proj.bias.zero_()
    ids, wrong_ids = vocab.encode("hi there"), vocab.encode("hi three")
    lp = spiky(vocab, ids)  # (1, L, C)
    frames = torch.tensor([lp.size(1)])
    right = head.loss(lp, frames, torch.tensor([ids]), torch.tensor([len(ids)]))
    wrong = head.loss(lp, frames, torch.tensor([wrong_ids]), torch.tensor([len(wrong_ids)]))
    assert right < 0.01 < wrong
    # a batch: the summed loss divided by all target units, with each row's own lengths
    feats = torch.randn(2, 20, c, requires_grad=True)
    targets, lengths, tlens = torch.tensor([ids, ids]), torch.tensor([20, 15]), torch.tensor([len(ids), 5])
    loss = head.loss(feats, lengths, targets, tlens)
    expected = torch.nn.functional.ctc_loss(feats.log_softmax(-1).transpose(0, 1), targets, lengths, tlens,
                                            reduction="sum") / tlens.sum()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert feats.grad is not None and head.proj.weight.grad is not None


def test_beam_search_returns_text_and_lexicon_fixes_spelling():
    vocab = CTCVocab.build(["hi there the cat"])
    lp = spiky(vocab, vocab.encode("hi thare"), floor=-6.0)
    lengths = torch.tensor([lp.size(1)])
    assert CTC(4, vocab).beam(lp, lengths, 8) == ["hi thare"]
    assert CTC(4, vocab, lexicon=["hi", "there", "cat"]).beam(lp, lengths, 8) == ["hi there"]
    bpe = CTCVocab.build(["hi there the cat"] * 5, "bpe", 30)
    lp = spiky(bpe, bpe.encode("the cat"))
    assert CTC(4, bpe).beam(lp, torch.tensor([lp.size(1)]), 4) == ["the cat"]


def test_beam_search_sums_alignments_where_greedy_takes_the_best_path():
    # two frames, each "a" 0.4 / blank 0.6: the best single path is blank-blank (""), 0.36, but
    # "a" has three alignments (a-a, a-_, _-a) worth 0.64 together
    vocab = CTCVocab.build(["a"])
    probs = torch.full((1, 2, len(vocab)), 1e-6)
    probs[0, :, 0], probs[0, :, vocab.index["a"]] = 0.6, 0.4
    lp = probs.log().log_softmax(-1)
    head = CTC(4, vocab)
    assert head.greedy(lp, torch.tensor([2])) == [""]
    assert head.beam(lp, torch.tensor([2]), 4) == ["a"]


def _tiny_recipe() -> Recipe:
    return Recipe.from_dict({
        "task": "transcription",
        "features": {"kind": "fbank", "n_mels": 40, "subsampling": 4, "conv_channels": 8, "freq_masks": 0,
                     "time_masks": 0},
        "encoder": {"hidden_size": 64, "num_layers": 1},
        "head": {"name": "ctc"},
    })


@needs_espeak
def test_tiny_model_overfits_three_real_utterances(tmp_path):
    texts = ["yes", "no way", "go home"]
    waves = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(path), text], check=True)
        waves.append(read_audio(path))
    torch.manual_seed(0)
    vocab = CTCVocab.build(texts)
    model = SpeechModel(_tiny_recipe(), vocab, registry.heads.get("ctc"))
    feats = [model.fbank(w) for w in waves]
    batch = collate(feats, [vocab.encode(t) for t in texts], texts, [0, 1, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(300):  # about 160 steps are needed
        model.train()
        loss = model(batch).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            if model.decode(batch) == texts and model.decode(batch, beam=4) == texts:
                break
    assert float(loss.detach()) < first / 5
    with torch.no_grad():
        assert model.decode(batch) == texts
        assert model.decode(batch, beam=4) == texts
    # the application path reads the same audio to the same text
    assert [r["text"] for r in model.transcribe([tmp_path / f"{i}.wav" for i in range(3)])] == texts


def test_repeat_last_padding_extends_each_utterance_and_takes_the_fused_kernel(monkeypatch):
    torch.manual_seed(0)
    feats = [torch.randn(23, 40), torch.randn(16, 40), torch.randn(20, 40)]
    targets, texts = [[1, 2], [3], [2, 2, 1]], ["ab", "c", "bba"]
    batch = collate(feats, targets, texts, [0, 1, 2], repeat_last=True)
    assert batch.lengths.tolist() == [23, 23, 23]
    for row, f in enumerate(feats):
        assert torch.equal(batch.feats[row, : f.size(0)], f)
        assert torch.equal(batch.feats[row, f.size(0):], f[-1:].expand(23 - f.size(0), -1))
    # the same as zero-padded utterances that were that long to begin with
    longer = [torch.cat([f, f[-1:].expand(23 - f.size(0), -1)]) for f in feats]
    plain = collate(longer, targets, texts, [0, 1, 2])
    assert torch.equal(batch.feats, plain.feats) and torch.equal(batch.lengths, plain.lengths)
    # every row is full length, so the encoder runs torch's multi-layer kernel, not layer by layer
    recipe = _tiny_recipe()
    recipe.encoder.num_layers = 2
    model = SpeechModel(recipe, CTCVocab.build(["abc"]), registry.heads.get("ctc"))
    model.eval()
    with torch.no_grad():
        monkeypatch.setattr(type(model.encoder), "_layers", lambda *a: pytest.fail("layer-by-layer path"))
        assert torch.isfinite(model(batch).loss)
