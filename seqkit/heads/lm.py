"""Language-model head: next-token logits, with the output weights tied to the token embedding.

Shape legend: N batch, L length, H encoder features (one direction), E embedding, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..recipe import bounded

__all__ = ["LMHead", "LMHeadOptions"]


@dataclass
class LMHeadOptions:
    """Options of the ``lm`` head."""

    tie_weights: bool = True  # share the output matrix with the input embedding (Press & Wolf; Inan et al.)
    dropout: float = bounded(0.0, ge=0, lt=1)  # on the encoder output, locked over time (AWD-LSTM)


class LMHead(nn.Module):
    """Scores every token of the vocabulary as the next one (a softmax layer).

    With ``tie_weights`` the output matrix is the embedding matrix (passed to ``forward``), and a
    projection maps H to E when they differ; otherwise the head has its own (V, H) matrix.

    Args:
        input_size: H, features of one direction of the encoder output.
        vocab_size: V.
        embedding_dim: E, features of the token embedding.
        tie_weights, dropout: see :class:`LMHeadOptions`.

    Inputs of ``forward(features, embedding_weight)``: (N, L, H) and the (V, E) embedding.
    Outputs: (N, L, V) logits.
    """

    task: ClassVar[str] = "language-model"
    Config: ClassVar[type] = LMHeadOptions

    def __init__(self, input_size: int, vocab_size: int, embedding_dim: int, *, tie_weights: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.tie_weights = tie_weights
        self.dropout = float(dropout)
        if tie_weights:
            self.proj = nn.Linear(input_size, embedding_dim) if input_size != embedding_dim else None
            self.bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.out = nn.Linear(input_size, vocab_size)

    def forward(self, features: Tensor, embedding_weight: Tensor) -> Tensor:
        if self.dropout and self.training:  # one mask per sequence, shared over time
            mask = features.new_empty(features.size(0), 1, features.size(-1)).bernoulli_(1 - self.dropout)
            features = features * mask / (1 - self.dropout)
        if not self.tie_weights:
            return self.out(features)
        if self.proj is not None:
            features = self.proj(features)  # (N, L, E)
        return F.linear(features, embedding_weight, self.bias)  # (N, L, V)
