"""Linear-chain conditional random field over per-token tag scores.

Shapes: N batch, L length, C tags.  Sequences are left-aligned; positions at or past a
row's length are padding and never influence its score or path.
"""

from __future__ import annotations

import torch
from torch import nn

from ..export_runtime import viterbi

__all__ = ["CRF", "FORBIDDEN"]

# Score of a forbidden move in the likelihood.  Finite, so a label set with no valid path
# still gives a finite loss instead of NaN gradients; Viterbi uses -inf (hard constraint).
FORBIDDEN = -10000.0


class CRF(nn.Module):
    """Linear-chain CRF with learnable transition, start and end scores.

    ``allowed`` (C, C), ``allowed_start`` (C,) and ``allowed_end`` (C,) are optional bool
    masks (see ``seqkit.heads.scheme.allowed_transitions``); moves they forbid score
    ``FORBIDDEN`` in ``nll`` and are never taken by ``decode``.  The masks are buffers, so
    they travel with ``state_dict`` and a loaded model keeps its constraints.
    """

    def __init__(
        self,
        num_tags: int,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be at least 1, got {num_tags}")
        self.num_tags = num_tags
        # Small random init breaks the symmetry between tags without swamping emissions.
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.register_buffer("allowed", _mask(allowed, (num_tags, num_tags), "allowed"))
        self.register_buffer("allowed_start", _mask(allowed_start, (num_tags,), "allowed_start"))
        self.register_buffer("allowed_end", _mask(allowed_end, (num_tags,), "allowed_end"))

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    def _scores(self, dtype: torch.dtype, forbidden: float):
        """Transition (C, C), start (C,) and end (C,) scores with forbidden moves filled in."""
        trans = self.transitions.to(dtype).masked_fill(~self.allowed, forbidden)
        start = self.start.to(dtype).masked_fill(~self.allowed_start, forbidden)
        end = self.end.to(dtype).masked_fill(~self.allowed_end, forbidden)
        return trans, start, end

    def _prepare(self, emissions: torch.Tensor, lengths: torch.Tensor):
        """Check shapes; return emissions in compute dtype with padding zeroed, mask, lengths."""
        if emissions.dim() != 3 or emissions.size(2) != self.num_tags:
            raise ValueError(
                f"emissions must be (N, L, {self.num_tags}), got {tuple(emissions.shape)}"
            )
        n, length, _ = emissions.shape
        lengths = torch.as_tensor(lengths, device=emissions.device).long()
        if lengths.shape != (n,):
            raise ValueError(f"lengths must be ({n},), got {tuple(lengths.shape)}")
        if n and (int(lengths.min()) < 0 or int(lengths.max()) > length):
            raise ValueError(f"lengths must lie in [0, {length}], got {lengths.tolist()}")
        # bf16/fp16 lose too much in long sums of log-probabilities.
        dtype = emissions.dtype
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        mask = torch.arange(length, device=emissions.device) < lengths[:, None]  # (N, L)
        # Zero padding so inf/NaN there cannot leak into gradients through torch.where.
        emissions = emissions.to(dtype).masked_fill(~mask[..., None], 0.0)  # (N, L, C)
        return emissions, mask, lengths

    def nll(
        self, emissions: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Negative log-likelihood of ``tags`` per sequence, shape (N,); 0 for empty rows.

        ``emissions`` (N, L, C) float, ``tags`` (N, L) long (padding values are ignored),
        ``lengths`` (N,) long.
        """
        emissions, mask, lengths = self._prepare(emissions, lengths)
        n, length, num_tags = emissions.shape
        if length == 0:
            return emissions.new_zeros(n)
        trans, start, end = self._scores(emissions.dtype, FORBIDDEN)
        # Padding may hold any value (e.g. -100); clamp so gather stays in range.
        tags = tags.to(emissions.device).long().clamp(0, num_tags - 1)  # (N, L)

        # Score of the gold path.
        emit = emissions.gather(2, tags[..., None]).squeeze(2)  # (N, L)
        step = trans[tags[:, :-1], tags[:, 1:]].masked_fill(~mask[:, 1:], 0.0)  # (N, L-1)
        last = tags.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # (N,)
        gold = start[tags[:, 0]] + emit.sum(1) + step.sum(1) + end[last]  # (N,)

        # Partition function: forward algorithm in log space.
        steps = emissions.unbind(1)
        alpha = start + steps[0]  # (N, C)
        for t in range(1, length):
            nxt = torch.logsumexp(alpha[:, :, None] + trans, dim=1) + steps[t]  # (N, C)
            # Finished rows carry their alpha unchanged to the end.
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)  # (N,)
        return torch.where(lengths > 0, log_z - gold, torch.zeros_like(log_z))

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Viterbi: the best tag path of each sequence, as a list of its own length.

        On CPU the steps run in numpy (the exported ``runtime.py``'s :func:`viterbi`): torch's
        per-operation overhead made a 45-step sentence of 13 tags take 1.10 ms against 0.21."""
        emissions, mask, lengths = self._prepare(emissions, lengths)
        n, length, num_tags = emissions.shape
        if length == 0:
            return [[] for _ in range(n)]
        trans, start, end = self._scores(emissions.dtype, float("-inf"))
        if emissions.device.type == "cpu":
            return viterbi(emissions.numpy(), lengths.numpy(), trans.numpy(), start.numpy(), end.numpy())
        return self._decode_steps(emissions, mask, lengths, trans, start, end)

    def _decode_steps(self, emissions, mask, lengths, trans, start, end) -> list[list[int]]:
        """Viterbi in torch operations, on the emissions' device (a GPU's)."""
        n, length, num_tags = emissions.shape
        steps = emissions.unbind(1)
        score = start + steps[0]  # (N, C)
        # On padding, point each tag back to itself so one batched backtrace serves all rows.
        stay = torch.arange(num_tags, device=emissions.device).expand(n, num_tags)  # (N, C)
        backptrs = []
        for t in range(1, length):
            best, idx = (score[:, :, None] + trans).max(dim=1)  # (N, C)
            live = mask[:, t, None]
            score = torch.where(live, best + steps[t], score)
            backptrs.append(torch.where(live, idx, stay))
        tag = (score + end).argmax(dim=1)  # (N,)
        path = [tag]
        for idx in reversed(backptrs):
            tag = idx.gather(1, tag[:, None]).squeeze(1)
            path.append(tag)
        path = torch.stack(path[::-1], dim=1).tolist()  # (N, L)
        return [row[:k] for row, k in zip(path, lengths.tolist())]


def _mask(mask: torch.Tensor | None, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """A bool mask of ``shape``: all True when ``mask`` is None."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    return mask.clone()
