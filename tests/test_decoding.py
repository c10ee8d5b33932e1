"""CTC beam search with a word language model: a KenLM n-gram inside the search, a seqkit LSTM
LM inside the search (torchaudio's CTCDecoderLM interface) or rescoring the n-best list, the
grid search over lm_weight/word_score, and the settings kept with a run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from seqkit import decoding
from seqkit.errors import SeqkitError
from seqkit.heads.ctc import CTC, CTCVocab
from seqkit.ngram import find_lmplz
from tests.tiny import train_lm

needs_kenlm = pytest.mark.skipif(find_lmplz() is None, reason="KenLM's lmplz is not built (bash tools/build_kenlm.sh)")

WORDS = ["the", "red", "rod", "car", "cat", "sat"]
TEXT = ["the red car"] * 30 + ["the cat sat"] * 10 + ["a rod"]  # the LM text: "red car", never "rod car"


def ambiguous(vocab: CTCVocab) -> torch.Tensor:
    """(1, L, C) log-probabilities of "the r?d car" where the vowel is "o" (0.6) or "e" (0.4):
    acoustics alone say "rod"."""
    frames = []
    for ch in "the|r?d|car":
        row = torch.full((len(vocab),), 1e-4)
        if ch == "?":
            row[vocab.index["o"]], row[vocab.index["e"]] = 0.6, 0.4
        else:
            row[vocab.index[ch]] = 1.0
        frames += [row, torch.full((len(vocab),), 1e-4).index_fill(0, torch.tensor([0]), 1.0)]
    return torch.stack(frames).log().log_softmax(-1)[None]


@pytest.fixture(scope="module")
def setup():
    vocab = CTCVocab.build([" ".join(WORDS)])
    lp = ambiguous(vocab)
    return CTC(4, vocab, lexicon=WORDS), lp, torch.tensor([lp.size(1)])


def test_held_out_sentences_never_reach_the_lm_text():
    lines = ["in the beginning", "and god said", "in  the beginning ", "let there be light", "and god said"]
    kept, check = decoding.held_out_check(lines, ["in the beginning", "and god said", "not in the text"])
    assert kept == ["let there be light"]
    assert check == {"lines": 5, "removed_lines": 4, "kept_lines": 1, "held_out_sentences": 3,
                     "held_out_sentences_in_lm_text": 0, "words": 4}


@needs_kenlm
def test_kenlm_in_the_search_turns_the_acoustic_choice_into_the_likely_sentence(setup, tmp_path):
    head, lp, lengths = setup
    assert head.beam(lp, lengths, 16) == ["the rod car"]  # no LM: the acoustics win
    model = decoding.build_kenlm(TEXT, tmp_path / "lm", order=3, log=lambda m: None)
    assert (tmp_path / "lm" / "words.txt").read_text().split() == sorted({w for t in TEXT for w in t.split()})
    lm = decoding.resolve(str(model), weight=1.0, word_score=0.0)
    assert lm.kind == "kenlm" and "red" in lm.words
    assert head.beam(lp, lengths, 16, lm=lm) == ["the red car"]
    assert head.beam(lp, lengths, 16, lm=dataclasses.replace(lm, weight=0.0)) == ["the rod car"]


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory):
    """A tiny LSTM word LM that has learnt "the red car" (and never heard "rod car")."""
    return train_lm(tmp_path_factory.mktemp("lm"), steps=300, text=TEXT)


def test_an_lstm_lm_steers_the_search_and_rescores_the_n_best(setup, word_lm):
    head, lp, lengths = setup
    fused = decoding.resolve(str(word_lm), weight=1.0)
    assert fused.kind == "lstm" and {"red", "car"} <= set(fused.words)
    assert head.beam(lp, lengths, 16, lm=fused) == ["the red car"]
    assert head.beam(lp, lengths, 16, lm=dataclasses.replace(fused, weight=0.0)) == ["the rod car"]
    rescored = dataclasses.replace(fused, rescore=True, nbest=8)
    best = head.nbest(lp, lengths, 16, 8)[0]
    assert [" ".join(w) for w, _ in best][:1] == ["the rod car"] and "the red car" in [" ".join(w) for w, _ in best]
    assert head.beam(lp, lengths, 16, lm=rescored) == ["the red car"]


def test_a_character_lm_or_a_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(SeqkitError, match="no such file"):
        decoding.resolve(str(tmp_path / "nope.bin"))
    (tmp_path / "x").mkdir()
    with pytest.raises(SeqkitError, match="not a seqkit run"):
        decoding.resolve(str(tmp_path / "x"))


@needs_kenlm
def test_tune_picks_the_grid_point_with_the_lowest_cer_and_the_settings_travel_with_the_run(setup, tmp_path):
    head, lp, lengths = setup
    model = decoding.build_kenlm(TEXT, tmp_path / "run" / "lm", order=3, log=lambda m: None)
    lm = decoding.resolve(str(model))
    best, rows = decoding.tune(head, [(lp, lengths, ["the red car"])], lm, beam_size=16, weights=[0.0, 1.0],
                               word_scores=[0.0], log=lambda m: None)
    assert [(r["lm_weight"], r["cer"] > 0) for r in rows] == [(0.0, True), (1.0, False)]
    assert (best.weight, best.word_score) == (1.0, 0.0)
    path = decoding.save(tmp_path / "run", best, 16, {"grid": rows})
    info = json.loads(path.read_text())
    assert info["lm"]["path"] == "lm/kn3.bin" and info["beam_size"] == 16  # relative: the folder can move
    (tmp_path / "run").rename(tmp_path / "moved")
    loaded, beam = decoding.load(tmp_path / "moved")
    assert beam == 16 and loaded.path == (tmp_path / "moved" / "lm" / "kn3.bin").resolve()
    assert (loaded.weight, loaded.word_score, loaded.words) == (1.0, 0.0, best.words)
    assert loaded.sil_score == 0.0
    # sil_score is a third grid axis, and it reaches the search: a heavy price on word separators
    # makes the three-word answer lose
    best, rows = decoding.tune(head, [(lp, lengths, ["the red car"])], loaded, beam_size=16, weights=[1.0],
                               word_scores=[0.0], sil_scores=[-30.0, 0.0], log=lambda m: None)
    assert [(r["sil_score"], r["cer"] > 0) for r in rows] == [(-30.0, True), (0.0, False)]
    assert best.sil_score == 0.0 and "sil_score" not in best.describe()
    decoding.save(tmp_path / "moved", dataclasses.replace(best, sil_score=-1.5), 16)
    assert decoding.load(tmp_path / "moved")[0].sil_score == -1.5
    assert "sil_score -1.5" in decoding.load(tmp_path / "moved")[0].describe()
    (tmp_path / "moved" / "decoder.json").write_text("{")
    with pytest.raises(SeqkitError, match="unreadable decoder settings"):
        decoding.load(tmp_path / "moved")


def test_the_last_word_ends_without_a_separator_and_costs_nothing_extra():
    # Transcripts end without a word separator, and the lexicon search completes a word only at
    # one: the search adds a sure separator frame, so the last word is not paid for with an
    # unlikely frame (without it "the red car" scored -6.4 here and dropping "car" got closer).
    from tests.test_ctc import spiky

    vocab = CTCVocab.build(["the red car cars"])
    lp = spiky(vocab, vocab.encode("the red car"), floor=-6.0)
    best = CTC(4, vocab, lexicon=["the", "red", "car", "cars"]).nbest(lp, torch.tensor([lp.size(1)]), 16, 3)[0]
    assert best[0][0] == ["the", "red", "car"] and best[0][1] > -1.0
    assert best[1][1] < -5.0  # "cars" still costs a frame


def test_an_arpa_file_brings_its_words(tmp_path):
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\\data\\\nngram 1=5\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t-0.5\n-1.0\t</s>\t0\n"
                    "-0.5\tred\t-0.2\n-0.6\tcar\t-0.1\n\n\\end\\\n", encoding="utf-8")
    lm = decoding.resolve(str(arpa))
    assert lm.kind == "kenlm" and lm.words == ("red", "car")  # KenLM's own markers are not words
    with pytest.raises(SeqkitError, match="rescoring is for LSTM"):
        decoding.resolve(str(arpa), rescore=True)
