"""CRF: exact likelihood and Viterbi against brute force, padding, constraints, gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkit.heads.crf import CRF
from seqkit.heads.scheme import allowed_transitions, detect_scheme

BIOES_LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def _random_crf(num_tags: int, seed: int, **masks) -> CRF:
    """A float64 CRF whose scores are large enough to make paths clearly distinct."""
    torch.manual_seed(seed)
    crf = CRF(num_tags, **masks).double()
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start.normal_()
        crf.end.normal_()
    return crf


def _path_score(crf: CRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    """Unnormalised score of one path through one sequence's emissions (L, C)."""
    trans, start, end = crf._scores(emissions.dtype, -10000.0)
    score = start[path[0]] + end[path[-1]]
    for t, tag in enumerate(path):
        score = score + emissions[t, tag]
        if t:
            score = score + trans[path[t - 1], tag]
    return score


def _brute(crf: CRF, emissions: torch.Tensor):
    """(log partition function, best path) by enumerating all C**L paths."""
    length, num_tags = emissions.shape
    paths = list(itertools.product(range(num_tags), repeat=length))
    scores = torch.stack([_path_score(crf, emissions, p) for p in paths])
    return torch.logsumexp(scores, 0), list(paths[int(scores.argmax())])


@pytest.mark.parametrize("num_tags", [3, 4])
@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_nll_and_viterbi_match_brute_force(num_tags: int, length: int) -> None:
    crf = _random_crf(num_tags, seed=10 * num_tags + length)
    emissions = torch.randn(2, length, num_tags, dtype=torch.float64) * 2  # (N, L, C)
    tags = torch.randint(num_tags, (2, length))
    lengths = torch.tensor([length, length])
    nll = crf.nll(emissions, tags, lengths)
    paths = crf.decode(emissions, lengths)
    for i in range(2):
        log_z, best = _brute(crf, emissions[i])
        gold = _path_score(crf, emissions[i], tuple(tags[i].tolist()))
        torch.testing.assert_close(nll[i], log_z - gold)
        assert paths[i] == best


def test_brute_force_with_constraints() -> None:
    labels = ["O", "B-X", "I-X"]
    allowed, start, end = allowed_transitions(labels, "BIO")
    crf = _random_crf(3, seed=0, allowed=allowed, allowed_start=start, allowed_end=end)
    emissions = torch.randn(1, 4, 3, dtype=torch.float64)
    emissions[..., 2] += 3.0  # pull towards I-X, which may not start
    tags = torch.tensor([[0, 1, 2, 2]])
    nll = crf.nll(emissions, tags, torch.tensor([4]))
    log_z, best = _brute(crf, emissions[0])
    torch.testing.assert_close(nll[0], log_z - _path_score(crf, emissions[0], (0, 1, 2, 2)))
    assert crf.decode(emissions, torch.tensor([4]))[0] == best
    assert best[0] != 2


def test_padding_invariance() -> None:
    crf = _random_crf(4, seed=1)
    torch.manual_seed(1)
    lengths = torch.tensor([5, 2, 0, 3])
    emissions = torch.randn(4, 5, 4, dtype=torch.float64)  # (N, L, C)
    tags = torch.randint(4, (4, 5))
    mask = torch.arange(5) < lengths[:, None]
    # Garbage in the padding: huge scores, NaN and the usual ignore index.
    emissions = emissions.masked_fill(~mask[..., None], float("nan"))
    tags = tags.masked_fill(~mask, -100)
    nll = crf.nll(emissions, tags, lengths)
    paths = crf.decode(emissions, lengths)
    assert nll[2] == 0 and paths[2] == []
    for i, k in enumerate(lengths.tolist()):
        if k == 0:
            continue
        alone = crf.nll(emissions[i : i + 1, :k], tags[i : i + 1, :k], torch.tensor([k]))
        torch.testing.assert_close(nll[i : i + 1], alone)
        assert paths[i] == crf.decode(emissions[i : i + 1, :k], torch.tensor([k]))[0]
        assert len(paths[i]) == k


def test_gradients_reach_parameters_and_skip_padding() -> None:
    crf = CRF(3)
    emissions = torch.randn(2, 4, 3, requires_grad=True)
    lengths = torch.tensor([4, 2])
    loss = crf.nll(emissions, torch.randint(3, (2, 4)), lengths).sum()
    loss.backward()
    for p in (crf.transitions, crf.start, crf.end):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert torch.all(emissions.grad[1, 2:] == 0)
    assert torch.isfinite(emissions.grad).all()


def test_nll_is_positive_and_bf16_computes_in_float32() -> None:
    crf = CRF(4)
    emissions = torch.randn(3, 6, 4).to(torch.bfloat16)
    nll = crf.nll(emissions, torch.randint(4, (3, 6)), torch.tensor([6, 4, 1]))
    assert nll.dtype == torch.float32
    assert (nll > 0).all()
    assert [len(p) for p in crf.decode(emissions, torch.tensor([6, 4, 1]))] == [6, 4, 1]


def test_masks_survive_state_dict_round_trip() -> None:
    allowed, start, end = allowed_transitions(BIOES_LABELS, "BIOES")
    crf = CRF(len(BIOES_LABELS), allowed, start, end)
    fresh = CRF(len(BIOES_LABELS))
    fresh.load_state_dict(crf.state_dict())
    assert torch.equal(fresh.allowed, allowed)
    assert torch.equal(fresh.allowed_start, start) and torch.equal(fresh.allowed_end, end)
    assert not fresh.allowed.requires_grad


def _valid_bioes(labels: list[str]) -> bool:
    """Whether a label sequence is well-formed BIOES."""
    open_kind = None
    for label in labels:
        prefix, _, kind = label.partition("-")
        if open_kind is not None:
            if prefix not in "IE" or kind != open_kind:
                return False
            open_kind = None if prefix == "E" else open_kind
        elif prefix in "IE":
            return False
        elif prefix == "B":
            open_kind = kind
    return open_kind is None


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lengths=st.lists(st.integers(0, 8), min_size=1, max_size=4),
    scale=st.floats(0.1, 100.0),
)
def test_decoded_paths_respect_bioes(seed: int, lengths: list[int], scale: float) -> None:
    allowed, start, end = allowed_transitions(BIOES_LABELS, "BIOES")
    crf = CRF(len(BIOES_LABELS), allowed, start, end)
    gen = torch.Generator().manual_seed(seed)
    emissions = torch.randn(len(lengths), max(lengths), len(BIOES_LABELS), generator=gen)
    # Favour I-/E- tags, which are invalid at the start and after O.
    emissions[..., [2, 3, 6, 7]] += 3.0
    paths = crf.decode(emissions * scale, torch.tensor(lengths))
    for path, k in zip(paths, lengths):
        assert len(path) == k
        assert _valid_bioes([BIOES_LABELS[i] for i in path])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    constrained=st.booleans(),
)
def test_cpu_decode_in_numpy_equals_the_torch_steps(seed: int, lengths: list[int], constrained: bool) -> None:
    """On CPU, decode runs its steps in numpy; the torch steps (what a GPU runs) find the same
    paths, with and without forbidden moves, on padded batches."""
    masks = dict(zip(("allowed", "allowed_start", "allowed_end"), allowed_transitions(BIOES_LABELS, "BIOES")))
    crf = _random_crf(len(BIOES_LABELS), seed % 1000, **(masks if constrained else {}))
    gen = torch.Generator().manual_seed(seed)
    emissions = torch.randn(len(lengths), max(max(lengths), 1), len(BIOES_LABELS), generator=gen,
                            dtype=torch.float64)
    lens = torch.tensor(lengths)
    fast = crf.decode(emissions, lens)
    prepared, mask, lens2 = crf._prepare(emissions, lens)
    trans, start, end = crf._scores(prepared.dtype, float("-inf"))
    assert fast == crf._decode_steps(prepared, mask, lens2, trans, start, end)
    assert [len(p) for p in fast] == lengths


def test_allowed_transitions_bio() -> None:
    labels = ["O", "B-A", "I-A", "B-B", "I-B"]
    allowed, start, end = allowed_transitions(labels, "BIO")
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    ok = {(a, b) for a in range(5) for b in range(5) if allowed[a, b]}
    assert (1, 2) in ok and (2, 2) in ok and (0, 2) not in ok and (3, 2) not in ok
    assert all((a, 0) in ok and (a, 1) in ok and (a, 3) in ok for a in range(5))
    with pytest.raises(ValueError):
        allowed_transitions(["O", "E-A"], "BIO")
    with pytest.raises(ValueError):
        allowed_transitions(["O", "<pad>"], "BIOES")


def test_allowed_transitions_bioes() -> None:
    allowed, start, end = allowed_transitions(BIOES_LABELS, "BIOES")
    idx = {label: i for i, label in enumerate(BIOES_LABELS)}

    def ok(a: str, b: str) -> bool:
        return bool(allowed[idx[a], idx[b]])

    assert ok("B-PER", "I-PER") and ok("B-PER", "E-PER") and not ok("B-PER", "E-LOC")
    assert not ok("B-PER", "O") and not ok("I-PER", "S-PER")
    assert ok("E-PER", "B-LOC") and ok("S-LOC", "S-PER") and ok("O", "O")
    assert not ok("O", "I-PER") and not ok("S-PER", "E-PER")
    starts = [BIOES_LABELS[i] for i in range(9) if start[i]]
    ends = [BIOES_LABELS[i] for i in range(9) if end[i]]
    assert starts == ["O", "B-PER", "S-PER", "B-LOC", "S-LOC"]
    assert ends == ["O", "E-PER", "S-PER", "E-LOC", "S-LOC"]


def test_detect_scheme() -> None:
    assert detect_scheme(["O", "B-A", "I-A"]) == "BIO"
    assert detect_scheme(iter(["O", "S-A"])) == "BIOES"
    assert detect_scheme(["E-A"]) == "BIOES"
    assert detect_scheme([]) == "BIO"
