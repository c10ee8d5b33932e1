"""TextVocab.encode reads ids from a dict of each vocabulary; it must give exactly what the
tokenizers library gives for the same pre-tokenised input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from seqkit.features.text import TextVocab, TokenFeatures, _bigrams, _normaliser

# a small alphabet so that tokens and bigrams repeat (min_freq matters), full-width forms that
# NFKC folds, upper case that lowercasing folds, and characters never seen in training
_TOKENS = st.text(alphabet="abAB张三北京１２Ｚz。", min_size=1, max_size=3)
_SENTENCES = st.lists(st.lists(_TOKENS, min_size=1, max_size=8), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(train=_SENTENCES, queries=st.lists(st.lists(_TOKENS, max_size=8), max_size=6),
       lowercase=st.booleans(), min_freq=st.integers(1, 2))
def test_encode_matches_tokenizers(train, queries, lowercase: bool, min_freq: int) -> None:
    config = TokenFeatures(lowercase=lowercase, min_freq=min_freq, bigram_dim=8, bigram_min_freq=min_freq)
    vocab = TextVocab.build([(words, ["O"] * len(words)) for words in train], config, "words")
    ids, big = vocab.encode(queries)
    norm = _normaliser(lowercase)
    normed = [[norm(t) for t in words] for words in queries]
    assert ids == [e.ids for e in vocab.tokens.encode_batch(normed, is_pretokenized=True)]
    assert big == [e.ids for e in vocab.bigrams.encode_batch([_bigrams(w) for w in normed], is_pretokenized=True)]
    assert [len(row) for row in ids] == [len(words) for words in queries]


def test_unseen_token_is_unk() -> None:
    vocab = TextVocab.build([(list("ab"), ["O", "O"])], TokenFeatures(), "chars")
    ids, _ = vocab.encode([list("abz")])
    unk = vocab.tokens.token_to_id("[UNK]")
    assert unk not in ids[0][:2] and ids[0][2] == unk
