"""Step-by-step sampling from a model that predicts the next item: temperature, top-k, top-p.

Shared by every generating task (language models, music): a task gives a ``step`` function
``step(inputs, state) -> (logits, state)`` and the sampler does the rest. A task whose next item
is not one choice among V (a piano-roll frame of 88 keys, each on or off) also gives a ``draw``
function ``draw(step_output, generator) -> next inputs``; the sampler still owns the loop, the
seeded random stream and the stopping rule.

Shape legend: N batch, V choices (vocabulary).
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from .errors import SeqkitError

__all__ = ["check_sampling", "filter_logits", "sample", "sample_steps"]


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """One clear error for sampling settings that make no sense."""
    if not temperature >= 0:
        raise SeqkitError(f"temperature must be >= 0 (0: always the most likely), got {temperature}")
    if top_k < 0:
        raise SeqkitError(f"top_k must be >= 0 (0: no limit), got {top_k}")
    if not 0 < top_p <= 1:
        raise SeqkitError(f"top_p must be in (0, 1] (1: no limit), got {top_p}")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits (N, V) with everything outside the top ``top_k`` and outside the smallest set whose
    probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020) set to -inf."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the first token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: Optional[torch.Generator] = None) -> Tensor:
    """One choice per row of ``logits`` (N, V): (N,) ids. Temperature 0 takes the most likely."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def sample_steps(step: Callable[[Tensor, Any], tuple[Tensor, Any]], first: Tensor, state: Any, max_steps: int, *,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None,
                 stop: Optional[int] = None,
                 draw: Optional[Callable[[Any, torch.Generator], Tensor]] = None) -> Iterator[Tensor]:
    """Yield sampled ids (N,) one step at a time: ``first`` (N,) is fed in, its prediction
    sampled, fed back, and so on, ``max_steps`` times or until every row sampled ``stop``.

    ``draw(output, generator)``, when given, replaces the categorical choice: it turns what
    ``step`` returned into the next inputs (any shape, e.g. (N, 88) piano-roll frames), applying
    its own temperature; ``top_k``/``top_p``/``stop`` then do not apply.

    The random stream is a generator of its own (``seed``; None: a random seed), so sampling
    never touches torch's global RNG."""
    check_sampling(temperature, top_k, top_p)
    generator = torch.Generator(device=first.device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(62))
    ids, done = first, torch.zeros(first.shape[:1], dtype=torch.bool, device=first.device)
    for _ in range(max_steps):
        output, state = step(ids, state)
        if draw is not None:
            ids = draw(output, generator)
            yield ids
            continue
        ids = sample(output, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        yield ids
        if stop is not None:
            done |= ids == stop
            if bool(done.all()):
                return
