"""Tagging schemes (BIO, BIOES): detection and the transitions each scheme allows.

Labels are ``"O"`` or ``"X-TYPE"``; the prefix ``X`` is ``B``/``I`` under BIO and
``B``/``I``/``E``/``S`` under BIOES.  The type is everything after the first ``-``,
so ``B-geo-nam`` has type ``geo-nam``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["SCHEMES", "allowed_transitions", "detect_scheme", "split_label"]

SCHEMES = ("BIO", "BIOES")

_PREFIXES = {"BIO": frozenset("BI"), "BIOES": frozenset("BIES")}


def detect_scheme(tags: Iterable[str]) -> str:
    """Return ``"BIOES"`` if any tag starts with ``E-`` or ``S-``, else ``"BIO"``."""
    for tag in tags:
        if tag.startswith(("E-", "S-")):
            return "BIOES"
    return "BIO"


def split_label(label: str, scheme: str) -> tuple[str, str]:
    """Split ``label`` into (prefix, type); ``"O"`` gives ``("O", "")``.

    Raises ValueError for an unknown scheme, or a prefix the scheme does not have.
    """
    if scheme not in _PREFIXES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if label == "O":
        return "O", ""
    prefix, sep, kind = label.partition("-")
    if not sep or not kind or prefix not in _PREFIXES[scheme]:
        allowed = "/".join(sorted(_PREFIXES[scheme], key="BIES".index))
        raise ValueError(
            f"label {label!r} is not valid under {scheme}: expected 'O' or '{allowed}-TYPE'"
        )
    return prefix, kind


def allowed_transitions(
    labels: list[str], scheme: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which label may follow which, and which may start or end a sequence.

    Returns ``(allowed, allowed_start, allowed_end)``: bool tensors of shapes (C, C),
    (C,) and (C,), where ``allowed[i, j]`` means ``labels[i]`` may be followed by
    ``labels[j]``.

    BIO: ``I-T`` only after ``B-T`` or ``I-T`` and never first; everything else is free.
    BIOES: ``B-T``/``I-T`` go on to ``I-T``/``E-T``; ``E-T``, ``S-T`` and ``O`` go on to
    ``O``, ``B-*`` or ``S-*``; sequences start with ``O``/``B-*``/``S-*`` and end with
    ``O``/``E-*``/``S-*``.
    """
    parsed = [split_label(label, scheme) for label in labels]
    n = len(labels)
    allowed = torch.zeros(n, n, dtype=torch.bool)  # (C, C)
    start = torch.zeros(n, dtype=torch.bool)  # (C,)
    end = torch.zeros(n, dtype=torch.bool)  # (C,)
    # Prefixes that may begin a new chunk (after O or a finished chunk, or at the start).
    opens = {"O", "B"} if scheme == "BIO" else {"O", "B", "S"}
    closes = {"O", "B", "I"} if scheme == "BIO" else {"O", "E", "S"}
    for i, (p_i, t_i) in enumerate(parsed):
        start[i] = p_i in opens
        end[i] = p_i in closes
        # Inside a chunk (BIOES B/I) only its continuation may follow.
        inside = scheme == "BIOES" and p_i in ("B", "I")
        for j, (p_j, t_j) in enumerate(parsed):
            if inside:
                allowed[i, j] = p_j in ("I", "E") and t_j == t_i
            elif p_j in opens:
                allowed[i, j] = True
            else:
                # BIO: I-T continues a B-T/I-T chunk; BIOES never reaches here with I/E.
                allowed[i, j] = scheme == "BIO" and p_i in ("B", "I") and t_j == t_i
    return allowed, start, end
