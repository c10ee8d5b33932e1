"""Span extraction (lenient, conlleval-style) and span-level P/R/F1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkit.metrics.spans import span_scores, spans


def test_bio_spans() -> None:
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-LOC"]
    assert spans(tags, "BIO") == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 7)]


def test_bio_ill_formed() -> None:
    # I- after O, and I- of another type, each start a new span.
    tags = ["O", "I-PER", "I-PER", "I-LOC", "B-ORG", "I-PER"]
    assert spans(tags, "BIO") == [("PER", 1, 3), ("LOC", 3, 4), ("ORG", 4, 5), ("PER", 5, 6)]
    assert spans([], "BIO") == []
    assert spans(["O", "O"], "BIO") == []


def test_bioes_spans() -> None:
    tags = ["B-PER", "I-PER", "E-PER", "S-LOC", "O", "B-ORG", "E-ORG", "S-ORG"]
    assert spans(tags, "BIOES") == [("PER", 0, 3), ("LOC", 3, 4), ("ORG", 5, 7), ("ORG", 7, 8)]


def test_bioes_ill_formed() -> None:
    # E- with no start is a one-token span; I- with no start opens one;
    # B- cut off by O or by the end is still a span; E- of another type ends nothing.
    assert spans(["E-PER", "O"], "BIOES") == [("PER", 0, 1)]
    assert spans(["I-PER", "I-PER", "E-PER"], "BIOES") == [("PER", 0, 3)]
    assert spans(["B-PER", "O", "B-LOC"], "BIOES") == [("PER", 0, 1), ("LOC", 2, 3)]
    assert spans(["B-PER", "E-LOC"], "BIOES") == [("PER", 0, 1), ("LOC", 1, 2)]
    assert spans(["B-PER", "S-PER", "E-PER"], "BIOES") == [
        ("PER", 0, 1),
        ("PER", 1, 2),
        ("PER", 2, 3),
    ]
    assert spans(["S-PER", "I-PER", "E-PER"], "BIOES") == [("PER", 0, 1), ("PER", 1, 3)]


def test_bad_tags_and_scheme() -> None:
    with pytest.raises(ValueError, match="S-PER"):
        spans(["S-PER"], "BIO")
    with pytest.raises(ValueError):
        spans(["PER"], "BIOES")
    with pytest.raises(ValueError):
        spans(["O"], "IOB2")


def test_scores_hand_worked() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # gold: PER(0,2) LOC(3,4) | ORG(0,1) PER(2,3); pred: PER(0,2) ORG(3,4) | ORG(0,1)
    s = span_scores(gold, pred, "BIO")
    assert (s["gold_spans"], s["pred_spans"], s["correct_spans"]) == (4, 3, 2)
    assert s["precision"] == pytest.approx(200 / 3)
    assert s["recall"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(2 * (200 / 3) * 50 / (200 / 3 + 50))
    per = s["per_type"]
    assert per["PER"] == pytest.approx(
        {"precision": 100.0, "recall": 50.0, "f1": 200 / 3, "support": 2}
    )
    assert per["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per["ORG"] == pytest.approx(
        {"precision": 50.0, "recall": 100.0, "f1": 200 / 3, "support": 1}
    )


def test_scores_bioes_boundaries_must_match() -> None:
    gold = [["B-LOC", "E-LOC", "S-PER"]]
    pred = [["B-LOC", "I-LOC", "E-LOC"]]
    s = span_scores(gold, pred, "BIOES")
    assert s["correct_spans"] == 0 and s["f1"] == 0.0
    assert s["per_type"]["LOC"]["support"] == 1 and s["per_type"]["PER"]["precision"] == 0.0


def test_scores_empty() -> None:
    s = span_scores([["O", "O"]], [["O", "O"]], "BIO")
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    assert s["per_type"] == {} and s["gold_spans"] == 0
    assert span_scores([], [], "BIOES")["f1"] == 0.0


def test_scores_length_mismatch() -> None:
    with pytest.raises(ValueError, match="sequence 1"):
        span_scores([["O"], ["O", "O"]], [["O"], ["O"]], "BIO")
    with pytest.raises(ValueError, match="numbers of sequences"):
        span_scores([["O"], ["O"]], [["O"]], "BIO")


TYPES = ["PER", "LOC"]
BIO_TAGS = ["O"] + [f"{p}-{t}" for p in "BI" for t in TYPES]
BIOES_TAGS = ["O"] + [f"{p}-{t}" for p in "BIES" for t in TYPES]


@st.composite
def tagged(draw) -> tuple[str, list[list[str]]]:
    """A scheme and a few tag sequences drawn from it, well-formed or not."""
    scheme = draw(st.sampled_from(["BIO", "BIOES"]))
    pool = BIO_TAGS if scheme == "BIO" else BIOES_TAGS
    seqs = draw(st.lists(st.lists(st.sampled_from(pool), max_size=12), max_size=5))
    return scheme, seqs


@settings(max_examples=200, deadline=None)
@given(tagged())
def test_spans_are_disjoint_and_in_range(data) -> None:
    scheme, seqs = data
    for tags in seqs:
        found = spans(tags, scheme)
        covered = set()
        for kind, start, end in found:
            assert kind in TYPES and 0 <= start < end <= len(tags)
            assert not covered & set(range(start, end))
            covered |= set(range(start, end))
        # Every non-O tag lies in some span and every O outside all spans.
        assert covered == {i for i, tag in enumerate(tags) if tag != "O"}


@settings(max_examples=100, deadline=None)
@given(tagged())
def test_perfect_prediction(data) -> None:
    scheme, seqs = data
    s = span_scores(seqs, seqs, scheme)
    if s["gold_spans"]:
        assert s["f1"] == s["precision"] == s["recall"] == 100.0
    else:
        assert s["f1"] == 0.0
