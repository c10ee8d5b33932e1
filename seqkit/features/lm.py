"""Token features of language models: the options of the ``lm-tokens`` front-end.

The vocabulary itself (characters, words or BPE pieces) is :class:`seqkit.features.lm_vocab.LMVocab`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..recipe import bounded

__all__ = ["LMTokens"]


@dataclass
class LMTokens:
    """Options of ``lm-tokens``: the units a language model reads and predicts, and their embedding."""

    units: Literal["chars", "words", "bpe"] = "words"  # characters, whitespace words, or BPE pieces (HF tokenizers)
    min_count: int = bounded(1, ge=1)  # words seen fewer times in training become <unk>
    max_vocab: int = bounded(0, ge=0)  # keep only the most frequent words (0: no cap)
    bpe_size: int = bounded(8000, ge=2)  # BPE vocabulary size
    embedding_dim: int = bounded(400, ge=1)
    dropout: float = bounded(0.0, ge=0, lt=1)  # on the embedded input, locked (AWD-LSTM's dropouti)
    embedding_dropout: float = bounded(0.0, ge=0, lt=1)  # drop whole token types (AWD-LSTM's dropoute)
