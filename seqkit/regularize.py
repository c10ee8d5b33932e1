"""Dropout variants for recurrent language models (AWD-LSTM, Merity et al. 2017).

Shape legend: N batch, L length, F features, V vocabulary, E embedding size.  Each function is
the identity outside training or with ``p == 0``, and never writes a parameter in place.
``seqkit.Encoder`` uses :func:`locked_dropout` for ``locked_dropout=True``; tasks call
:func:`embedding_dropout` on their input embedding.
"""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn
from torch.nn import functional as F

from .errors import SeqkitError

__all__ = ["embedding_dropout", "locked_dropout"]


def _check_p(p: float, what: str) -> None:
    if not 0.0 <= p < 1.0:
        raise SeqkitError(f"{what} must be in [0, 1), got {p}")


def locked_dropout(x: Tensor, p: float, training: bool = True, batch_first: bool = False) -> Tensor:
    """Variational ("locked") dropout: one mask per sequence and feature, shared by all steps.

    Gal & Ghahramani (2016): dropping the same units at every time step regularises a
    recurrent network where a fresh mask per step would only add noise.

    Args:
        x: (L, N, F), or (N, L, F) if ``batch_first``.
        p: probability of dropping a unit, in [0, 1).
        training: drop only when True; otherwise ``x`` is returned as is.
        batch_first: the layout of ``x``.

    Returns:
        ``x * mask`` shaped like ``x``, the mask (1, N, F) (or (N, 1, F)) of zeros and
        ``1 / (1 - p)``, broadcast over time.
    """
    _check_p(p, "locked dropout p")
    if not training or p == 0.0:
        return x
    if x.dim() != 3:
        raise SeqkitError(f"locked_dropout expects (L, N, F) or (N, L, F), got {tuple(x.shape)}")
    shape = (x.size(0), 1, x.size(2)) if batch_first else (1, x.size(1), x.size(2))
    mask = x.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)  # a fresh tensor, not x
    return x * mask


def embedding_dropout(embedding: nn.Embedding, ids: Tensor, p: float, training: bool = True,
                      scale: Optional[Union[float, Tensor]] = None) -> Tensor:
    """Look ``ids`` up in ``embedding`` with whole word types dropped (Gal & Ghahramani 2016).

    One mask per call over the rows of the (V, E) weight: a dropped word is zero everywhere it
    occurs in the batch, the kept rows are scaled by ``1 / (1 - p)``.  The lookup reads a masked
    copy of the weight; the parameter is untouched and its gradient is masked the same way.

    Args:
        embedding: the ``nn.Embedding`` whose weight (V, E) and options (``padding_idx``,
            ``max_norm``, ...) are used.
        ids: integer tensor of any shape (...), e.g. (N, L).
        p: probability of dropping a word type, in [0, 1).
        training: drop only when True; otherwise a plain lookup.
        scale: optional factor (a float or a tensor broadcastable to (V, E)) applied to the
            weight before the lookup, as AWD-LSTM's ``scale``.

    Returns:
        (..., E) embeddings.
    """
    _check_p(p, "embedding dropout p")
    weight = embedding.weight
    if training and p > 0.0:
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1.0 - p).div_(1.0 - p)  # (V, 1)
        weight = weight * mask  # (V, E), a new tensor
    if scale is not None:
        weight = weight * scale
    return F.embedding(ids, weight, embedding.padding_idx, embedding.max_norm, embedding.norm_type,
                       embedding.scale_grad_by_freq, embedding.sparse)
