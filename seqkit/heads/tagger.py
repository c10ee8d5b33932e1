"""Sequence tagging head: per-position scores, then a CRF or a softmax.

Shape legend: N batch, L length, F encoder features, C tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor, nn
from torch.nn import functional as F

from ..recipe import bounded
from .crf import CRF
from .scheme import allowed_transitions

__all__ = ["IGNORE", "Tagger", "TaggerOptions"]

IGNORE = -100  # tag id at padded positions


@dataclass
class TaggerOptions:
    """Options of the ``tagger`` head."""

    crf: bool = True  # a linear-chain CRF (else a softmax per position)
    scheme: Literal["auto", "BIO", "BIOES"] = "auto"  # auto: detected from the training tags
    dropout: float = bounded(0.0, ge=0, lt=1)  # on the encoder output before scoring


class Tagger(nn.Module):
    """Tags every position of the encoder output (named entities, chunks, parts of speech).

    Args:
        input_size: F, the encoder's output features.
        labels: the tag set, e.g. ``["O", "B-PER", "I-PER", ...]``.
        crf: decode with a linear-chain CRF (forward algorithm for the loss, Viterbi for
            decoding, transitions that forbid invalid moves of ``scheme``); else a softmax.
        scheme: ``"BIO"`` or ``"BIOES"``.
        dropout: dropout on the encoder output before scoring.

    Inputs of ``loss(features, lengths, tags)``: features (N, L, F), lengths (N,),
    tags (N, L) with ``IGNORE`` at padding.  ``decode(features, lengths)`` returns one list of
    tag ids per sequence, of that sequence's length.
    """

    task: ClassVar[str] = "tagging"
    Config: ClassVar[type] = TaggerOptions

    def __init__(self, input_size: int, labels: list[str], *, crf: bool = True, scheme: str = "BIOES",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.labels = list(labels)
        self.scheme = scheme
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(input_size, len(labels))
        self.crf = None
        if crf:
            allowed, start, end = allowed_transitions(self.labels, scheme)
            self.crf = CRF(len(labels), allowed, start, end)

    def emissions(self, features: Tensor) -> Tensor:
        return self.proj(self.dropout(features)).float()  # (N, L, C)

    def loss(self, features: Tensor, lengths: Tensor, tags: Tensor) -> Tensor:
        scores = self.emissions(features)
        tokens = lengths.sum().clamp(min=1)
        if self.crf is not None:
            return self.crf.nll(scores, tags, lengths).sum() / tokens
        return F.cross_entropy(scores.flatten(0, 1), tags.flatten(), ignore_index=IGNORE, reduction="sum") / tokens

    def decode(self, features: Tensor, lengths: Tensor) -> list[list[int]]:
        scores = self.emissions(features)
        if self.crf is not None:
            return self.crf.decode(scores, lengths)
        best = scores.argmax(-1).tolist()
        return [row[:n] for row, n in zip(best, lengths.tolist())]
