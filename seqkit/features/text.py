"""Token features: vocabularies built with HF ``tokenizers`` and an embedding front-end.

Shape legend: N batch, L length, E embedding features.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence

import torch
from tokenizers import Tokenizer, models, trainers
from torch import Tensor, nn

from ..errors import SeqkitError
from ..recipe import bounded
from .lexicon import KINDS, SEGMENTERS, load_lexicon, segment_features

__all__ = ["TextVocab", "TokenEmbedder", "TokenFeatures"]


@dataclass
class TokenFeatures:
    """Options of the ``tokens`` front-end: token (and character-bigram) embeddings."""

    embedding_dim: int = bounded(100, ge=1)
    bigram_dim: int = bounded(0, ge=0)  # embedding of each bigram t[i]t[i+1]; 0: none
    min_freq: int = bounded(1, ge=1)
    bigram_min_freq: int = bounded(2, ge=1)
    max_vocab: int = bounded(0, ge=0)  # keep only the most frequent tokens; 0: no cap
    bigram_max_vocab: int = bounded(0, ge=0)  # keep only the most frequent bigrams; 0: no cap
    dropout: float = bounded(0.0, ge=0, lt=1)  # on the embeddings
    lowercase: bool = False
    lexicon: Optional[str] = None  # jieba, or a word-list file: per-character word/person/place/org B-M-E-S ids
    segmenter: Optional[Literal[SEGMENTERS]] = None  # per char: B-M-E-S place + word kind in jieba's segmentation
    lexicon_dim: int = bounded(8, ge=1)  # embedding of each word-feature id column (lexicon: 4, segmenter: 1)

PAD, UNK = "[PAD]", "[UNK]"
BOS, EOS = "<s>", "</s>"  # sentence edges for bigrams
PAD_ID, UNK_ID = 0, 1


def _bigrams(tokens: Sequence[str]) -> list[str]:
    """The bigram starting at each position: ``t[i] + t[i+1]`` (the last pairs with EOS)."""
    nxt = list(tokens[1:]) + [EOS]
    return [a + "\u2581" + b for a, b in zip(tokens, nxt)]


def _word_level(items: Iterable[str], min_freq: int, max_size: int) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    # tokenizers caps vocabularies at 30,000 unless told otherwise; seqkit caps only on request
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_size if max_size > 0 else 2**31 - 1,
        min_frequency=min_freq, special_tokens=[PAD, UNK], show_progress=False,
    )
    tok.train_from_iterator(items, trainer=trainer)
    return tok


class TextVocab:
    """Token (and optional bigram) vocabularies plus the tag set and tokenisation of a run."""

    def __init__(
        self,
        tokens: Tokenizer,
        labels: list[str],
        *,
        bigrams: Optional[Tokenizer] = None,
        tokenize: str = "chars",
        lowercase: bool = False,
        lexicon: Optional[str] = None,
        segmenter: Optional[str] = None,
    ) -> None:
        self.tokens = tokens
        self.lexicon = lexicon  # features.lexicon of the run (see seqkit.features.lexicon)
        self.segmenter = segmenter  # features.segmenter of the run
        self.bigrams = bigrams
        self.labels = labels
        self.label_index = {t: i for i, t in enumerate(labels)}
        self.tokenize = tokenize
        self.lowercase = lowercase
        self._indexes: dict[str, dict[str, int]] = {}  # "tokens"/"bigrams" -> their vocabulary, read once

    @classmethod
    def build(
        cls,
        sentences: Sequence[tuple[list[str], list[str]]],
        config: TokenFeatures,
        tokenize: str,
    ) -> "TextVocab":
        norm = _normaliser(config.lowercase)
        tokens = _word_level((norm(t) for words, _ in sentences for t in words), config.min_freq,
                             config.max_vocab)
        bigrams = None
        if config.bigram_dim > 0:
            bigrams = _word_level(
                (b for words, _ in sentences for b in _bigrams([norm(t) for t in words])),
                config.bigram_min_freq,
                config.bigram_max_vocab,
            )
        tags = sorted({t for _, tags in sentences for t in tags} - {"O"})
        if config.lexicon:
            load_lexicon(config.lexicon)  # a missing word list is an error now, not after training
        if config.segmenter:
            segment_features(["字"], config.segmenter)  # an unknown or missing segmenter too
        return cls(tokens, ["O", *tags], bigrams=bigrams, tokenize=tokenize, lowercase=config.lowercase,
                   lexicon=config.lexicon, segmenter=config.segmenter)

    def encode(self, batch: Sequence[Sequence[str]]) -> tuple[list[list[int]], Optional[list[list[int]]]]:
        """Token ids (and bigram ids) for pre-tokenised sentences.

        Each (normalised) token is looked up whole in its word-level vocabulary, ``[UNK]`` when
        unseen: what tokenizers' ``encode_batch(..., is_pretokenized=True)`` gives for these
        vocabularies (no normaliser or pre-tokeniser of their own), read from a dict of the
        vocabulary: an MSRA sentence takes 0.02 ms this way against 0.12 through tokenizers.
        """
        norm = _normaliser(self.lowercase)
        normed = [[norm(t) for t in words] for words in batch]
        ids = self._lookup("tokens", normed)
        big = None
        if self.bigrams is not None:
            big = self._lookup("bigrams", [_bigrams(words) for words in normed])
        return ids, big

    def _lookup(self, which: str, batch: list[list[str]]) -> list[list[int]]:
        index = self._indexes.get(which)
        if index is None:
            tokenizer: Tokenizer = getattr(self, which)
            index = self._indexes[which] = tokenizer.get_vocab()
        unk = index[UNK]
        return [[index.get(t, unk) for t in words] for words in batch]

    @property
    def word_columns(self) -> int:
        """How many word-feature id columns each token has: 4 for a lexicon, 1 for a segmenter."""
        return (len(KINDS) if self.lexicon else 0) + (1 if self.segmenter else 0)

    def lexicon_ids(self, batch: Sequence[Sequence[str]]) -> Optional[list[list[list[int]]]]:
        """(L, word_columns) word-feature ids of each sentence: the word list's 4 columns, then the
        segmenter's (see :mod:`seqkit.features.lexicon`); None when the run has neither."""
        if not self.word_columns:
            return None
        norm = _normaliser(self.lowercase)
        lexicon = load_lexicon(self.lexicon) if self.lexicon else None
        out = []
        for words in batch:
            normed = [norm(t) for t in words]
            rows = lexicon.features(normed) if lexicon else [[] for _ in normed]
            if self.segmenter:
                rows = [row + [seg] for row, seg in zip(rows, segment_features(normed, self.segmenter))]
            out.append(rows)
        return out

    def encode_tags(self, tags: Sequence[str], where: str = "") -> list[int]:
        try:
            return [self.label_index[t] for t in tags]
        except KeyError as exc:
            raise SeqkitError(
                f"{where}tag {exc.args[0]!r} was not seen in training; known tags: {', '.join(self.labels)}"
            ) from None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.tokens.save(str(folder / "tokens.json"))
        if self.bigrams is not None:
            self.bigrams.save(str(folder / "bigrams.json"))
        meta = {"labels": self.labels, "tokenize": self.tokenize, "lowercase": self.lowercase,
                **({"lexicon": self.lexicon} if self.lexicon else {}),
                **({"segmenter": self.segmenter} if self.segmenter else {})}
        (folder / "vocab.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "TextVocab":
        meta = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        bigram_path = folder / "bigrams.json"
        return cls(
            Tokenizer.from_file(str(folder / "tokens.json")),
            meta["labels"],
            bigrams=Tokenizer.from_file(str(bigram_path)) if bigram_path.exists() else None,
            tokenize=meta["tokenize"],
            lowercase=meta["lowercase"],
            lexicon=meta.get("lexicon"),
            segmenter=meta.get("segmenter"),
        )


def _normaliser(lowercase: bool):
    # NFKC folds full-width digits and Latin letters onto their ASCII forms, as in MSRA text.
    if lowercase:
        return lambda t: unicodedata.normalize("NFKC", t).lower()
    return lambda t: unicodedata.normalize("NFKC", t)


class TokenEmbedder(nn.Module):
    """Token embeddings, concatenated with bigram embeddings and word-feature id embeddings (word
    list, segmenter) when the vocabulary has them.

    Inputs: ``tokens`` (N, L) ids, ``bigrams`` (N, L) ids or None, ``lexicon`` (N, L, W) ids or None.
    Outputs: (N, L, E) with E = ``embedding_dim + bigram_dim + W * lexicon_dim``, W the vocabulary's
    ``word_columns`` (4 for a word list, 1 more for a segmenter).
    """

    def __init__(self, vocab: TextVocab, config: TokenFeatures) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab.tokens.get_vocab_size(), config.embedding_dim, padding_idx=PAD_ID)
        self.bigrams = None
        if vocab.bigrams is not None:
            size = vocab.bigrams.get_vocab_size()
            self.bigrams = nn.Embedding(size, config.bigram_dim, padding_idx=PAD_ID)
        self.lexicon = None
        if vocab.word_columns:
            self.lexicon = nn.ModuleList(nn.Embedding(16, config.lexicon_dim) for _ in range(vocab.word_columns))
        self.dropout = nn.Dropout(config.dropout)
        self.output_size = (config.embedding_dim + (config.bigram_dim if self.bigrams is not None else 0)
                            + vocab.word_columns * config.lexicon_dim)

    def forward(self, tokens: Tensor, bigrams: Optional[Tensor] = None, lexicon: Optional[Tensor] = None) -> Tensor:
        parts = [self.tokens(tokens)]
        if self.bigrams is not None and bigrams is not None:
            parts.append(self.bigrams(bigrams))
        if self.lexicon is not None:
            if lexicon is None:
                raise SeqkitError("this model reads word features (features.lexicon/segmenter); pass them")
            parts += [embed(lexicon[..., k]) for k, embed in enumerate(self.lexicon)]
        return self.dropout(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])  # (N, L, E)
