"""Token features of language models: the options of the ``lm-tokens`` front-end.

The vocabulary itself (characters, words or BPE pieces) is :class:`seqkit.features.lm_vocab.LMVocab`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LMTokens"]


@dataclass
class LMTokens:
    """Options of ``lm-tokens``: the units a language model reads and predicts, and their embedding."""

    units: Literal["chars", "words", "bpe"] = "words"  # characters, whitespace words, or BPE pieces (HF tokenizers)
    min_count: int = 1  # words seen fewer times in training become <unk>
    max_vocab: int = 0  # keep only the most frequent words (0: no cap)
    bpe_size: int = 8000  # BPE vocabulary size
    embedding_dim: int = 400
    dropout: float = 0.0  # on the embedded input, one mask per sequence (locked; AWD-LSTM's dropouti)
    embedding_dropout: float = 0.0  # drop whole token types from the embedding matrix (AWD-LSTM's dropoute)
