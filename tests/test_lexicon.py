"""Word-list features for character taggers (features.lexicon): the B/M/E/S ids per kind of word,
the jieba list, and a tagger that can only find its entities through the word list."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import seqkit
from seqkit.errors import SeqkitError
from seqkit.features.lexicon import KINDS, Lexicon, load_lexicon, segment_features

B, M, E, S = 1, 2, 4, 8


def test_each_character_gets_the_bits_of_the_words_of_each_kind_that_cover_it(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("北京大学 10 nt\n北京 50 ns\n张三 3 nr\n大学 20 n\n学 5\n", encoding="utf-8")
    lexicon = load_lexicon(str(words))
    assert KINDS == ("word", "person", "place", "organization")
    feats = lexicon.features(list("张三在北京大学"))
    assert feats == [
        [B, B, 0, 0],  # 张: begins 张三 (a word, a person)
        [E, E, 0, 0],  # 三
        [0, 0, 0, 0],  # 在: in no listed word
        [B, 0, B, B],  # 北: begins 北京 (place) and 北京大学 (organisation)
        [E | M, 0, E, M],  # 京: ends 北京, inside 北京大学
        [B | M, 0, 0, M],  # 大: begins 大学, inside 北京大学
        [E | S, 0, 0, E],  # 学: ends 大学 and 北京大学, and is a word by itself
    ]
    assert lexicon.features(["北京", "大"]) == [[0] * 4, [0] * 4]  # a multi-character token matches nothing


def test_jieba_list_and_clear_errors(tmp_path):
    jieba = load_lexicon("jieba")
    assert len(jieba.words) > 300_000
    feats = jieba.features(list("中国人民银行"))
    assert feats[0][3] & B and feats[-1][3] & E  # 中国人民银行 is an organisation (nt) in jieba's list
    with pytest.raises(SeqkitError, match="no such word-list file"):
        load_lexicon(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SeqkitError, match="holds no words"):
        load_lexicon(str(tmp_path / "empty.txt"))


def _corpus(path: Path, places: list[str], rng: random.Random, n: int, filler: str) -> None:
    """Sentences of filler characters (``filler``: each followed by one of 甲乙丙丁) with places
    (LOC) in them."""
    lines = []
    for _ in range(n):
        for _ in range(rng.randint(1, 3)):
            lines += [f"{c} O" for _ in range(rng.randint(1, 2)) for c in rng.choice(filler) + rng.choice("甲乙丙丁")]
            place = rng.choice(places)
            lines += [f"{c} {'B' if i == 0 else 'I'}-LOC" for i, c in enumerate(place)]
        lines += ["甲 O", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_tagger_finds_entities_that_only_the_word_list_knows(tmp_path):
    # The test's places are made of characters that training saw only outside entities (one at a
    # time): only the word list, which holds every place, can tell the tagger where they are.
    rng = random.Random(0)

    def names(chars: str, n: int) -> list[str]:
        return sorted({"".join(rng.choice(chars) for _ in range(rng.randint(2, 3))) for _ in range(n)})

    seen, unseen = names("东西南北上下左右", 20), names("春夏秋冬金木水火", 20)
    (tmp_path / "words.txt").write_text("".join(f"{p} 10 ns\n" for p in seen + unseen), encoding="utf-8")
    for split, n, where, filler in (("train", 300, seen, "春夏秋冬金木水火甲乙"), ("valid", 40, seen, "甲乙"),
                                    ("test", 60, unseen, "甲乙")):
        _corpus(tmp_path / f"{split}.conll", where, rng, n, filler)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
task: tagging
data: {{dataset: conll, train: train.conll, valid: valid.conll, test: test.conll, tokenize: chars}}
features: {{embedding_dim: 16, lexicon: {tmp_path / 'words.txt'}, lexicon_dim: 8}}
encoder: {{cell: lstm, num_layers: 1, hidden_size: 32, bidirectional: true}}
head: {{name: tagger, crf: true}}
train: {{epochs: 15, batch_size: 16, lr: 0.01, seed: 1, threads: 1}}
device: cpu
""", encoding="utf-8")
    scores = {}
    for name, extra in (("with", []), ("without", ["features.lexicon=null"])):
        metrics = seqkit.run_recipe(seqkit.Recipe.load(recipe, extra), tmp_path / name, progress=False,
                                    log=lambda m: None)
        scores[name] = metrics["f1"]
    assert scores["with"] >= 90 and scores["with"] > scores["without"] + 30, scores
    vocab = json.loads((tmp_path / "with" / "vocab" / "vocab.json").read_text())
    assert vocab["lexicon"] == str(tmp_path / "words.txt")
    tagger = seqkit.load(tmp_path / "with")  # the loaded model computes the features again
    place = unseen[0]
    assert tagger.tag(f"甲{place}乙")["entities"] == [{"type": "LOC", "text": place, "start": 1, "end": 1 + len(place)}]
    with pytest.raises(SeqkitError, match="word features"):
        tagger.export_spec()


def test_lexicon_ids_are_none_without_a_lexicon():
    from seqkit.features.text import TextVocab, TokenFeatures

    vocab = TextVocab.build([(list("ab"), ["O", "O"])], TokenFeatures(), "chars")
    assert vocab.lexicon is None and vocab.lexicon_ids([list("ab")]) is None
    assert isinstance(load_lexicon("jieba"), Lexicon)


def test_the_segmenter_column_places_each_character_in_jiebas_word_with_its_kind():
    # 4 * place (0 begin, 1 middle, 2 end, 3 single) + kind (0 word, 1 person, 2 place, 3 organisation)
    ids = segment_features(list("张三在北京大学工作"))
    assert ids == [0 * 4 + 1, 2 * 4 + 1,  # 张三: a person name (jieba's HMM; no dictionary lists it)
                   3 * 4 + 0,  # 在: a word by itself
                   0 * 4 + 3, 1 * 4 + 3, 1 * 4 + 3, 2 * 4 + 3,  # 北京大学: an organisation
                   0, 2 * 4]  # 工作: a word
    assert segment_features(["m2", "北", "京"]) == [0, 0 * 4 + 2, 2 * 4 + 2]  # NFKC: ㎡ -> m2, one id
    with pytest.raises(SeqkitError, match="not a segmenter"):
        segment_features(list("北京"), "pkuseg")


def test_a_segmenter_without_a_word_list_is_one_column():
    from seqkit.features.text import TextVocab, TokenFeatures

    vocab = TextVocab.build([(list("ab"), ["O", "O"])], TokenFeatures(segmenter="jieba"), "chars")
    assert vocab.word_columns == 1
    assert vocab.lexicon_ids([list("张三在北京")]) == [[[1], [9], [12], [2], [10]]]


def test_a_tagger_with_a_segmenter_saves_loads_and_tags(tmp_path):
    rng = random.Random(1)
    _corpus(tmp_path / "train.conll", ["北京", "上海", "南京"], rng, 60, "春夏秋冬")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""
task: tagging
data: {dataset: conll, train: train.conll, valid: train.conll, tokenize: chars}
features: {embedding_dim: 8, lexicon: jieba, segmenter: jieba, lexicon_dim: 4}
encoder: {cell: lstm, num_layers: 1, hidden_size: 16, bidirectional: true}
head: {name: tagger, crf: true}
train: {epochs: 1, batch_size: 16, seed: 1, threads: 1}
device: cpu
""", encoding="utf-8")
    seqkit.run_recipe(seqkit.Recipe.load(recipe), tmp_path / "run", progress=False, log=lambda m: None)
    vocab = json.loads((tmp_path / "run" / "vocab" / "vocab.json").read_text())
    assert (vocab["lexicon"], vocab["segmenter"]) == ("jieba", "jieba")
    tagger = seqkit.load(tmp_path / "run")
    assert len(tagger.embed.lexicon) == len(KINDS) + 1  # the word list's columns, then the segmenter's
    assert tagger.vocab.lexicon_ids([list("北京")])[0][0] == [B | S, 0, B | S, 0, 0 * 4 + 2]  # 北 is listed alone too
    assert len(tagger.tag("他去了北京")["tags"]) == 5
    with pytest.raises(SeqkitError, match="features.segmenter: jieba"):
        tagger.export_spec()
    with pytest.raises(SeqkitError, match="segmenter"):
        seqkit.Recipe.load(recipe, ["features.segmenter=pkuseg"])
