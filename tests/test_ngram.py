"""KenLM Kneser-Ney baselines: token escaping, finding the programs, and what gets counted."""

from __future__ import annotations

import os
import random
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqkit import ngram
from seqkit.errors import SeqkitError

needs_lmplz = pytest.mark.skipif(ngram.find_lmplz() is None,
                                 reason="KenLM's lmplz is not built: run `bash tools/build_kenlm.sh`")
MEMORY = "64M"  # lmplz's default share of RAM is far more than these corpora need

WORDS = "the cat dog sat ran on a mat log and".split()


def corpus(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(1, 8))] for _ in range(n)]


def query_scores(model, sentences) -> list[list[float]]:
    """Per-word log10 probabilities from KenLM's own ``query``, ``</s>`` included."""
    query = ngram.require_kenlm() / "query"
    if not os.access(query, os.X_OK):
        pytest.skip("KenLM's query is not built: run `bash tools/build_kenlm.sh`")
    text = "".join(" ".join(ngram.escape_token(w) for w in s) + "\n" for s in sentences)
    out = subprocess.run([str(query), str(model)], input=text, capture_output=True, text=True,
                         check=True).stdout
    # Each sentence: "word=id order log10prob<TAB>...</s>=id order log10prob<TAB>Total: ... OOV: n"
    lines = [line for line in out.splitlines() if "Total:" in line]
    return [[float(field.split()[-1]) for field in line.split("\t") if "=" in field] for line in lines]


# -- escaping ----------------------------------------------------------------------------------


def test_reserved_words_and_whitespace_are_escaped():
    assert ngram.escape_token("<unk>") == "\\<unk>"
    assert ngram.escape_token("<s>") == "\\<s>"
    assert ngram.escape_token("</s>") == "\\</s>"
    assert ngram.escape_token(" ") == "\\x20"
    assert ngram.escape_token("a\tb") == "a\\x09b"
    assert ngram.escape_token("") == "\\0"
    assert ngram.escape_token("\\<unk>") == "\\\\<unk>"  # a real token that looks escaped stays distinct
    assert ngram.escape_token("<eos>") == "<eos>"
    assert ngram.escape_token("naïve") == "naïve"


@given(st.text(), st.text())
def test_escaping_is_one_to_one_and_safe_for_kenlm(a, b):
    ea, eb = ngram.escape_token(a), ngram.escape_token(b)
    assert (ea == eb) == (a == b)
    assert ea and ea not in {"<s>", "</s>", "<unk>"}
    assert ea.encode().split() == [ea.encode()]  # one word for KenLM and the kenlm module


# -- finding the programs ------------------------------------------------------------------------


def _isolate(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.delenv("SEQKIT_KENLM_BIN", raising=False)


def test_missing_kenlm_is_a_one_line_error_naming_the_build_script(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)
    assert ngram.find_lmplz() is None
    with pytest.raises(SeqkitError) as err:
        ngram.require_kenlm()
    message = str(err.value)
    assert "bash tools/build_kenlm.sh" in message and "\n" not in message


def test_lmplz_is_found_in_kenlm_bin_then_the_cache(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)
    cached = tmp_path / "cache" / "kenlm" / "bin"
    chosen = tmp_path / "chosen"
    for folder in (cached, chosen):
        folder.mkdir(parents=True)
        for program in ("lmplz", "build_binary"):
            (folder / program).write_text("#!/bin/sh\n")
            (folder / program).chmod(0o755)
    assert ngram.find_lmplz() == cached / "lmplz"
    monkeypatch.setenv("SEQKIT_KENLM_BIN", str(chosen))
    assert ngram.require_kenlm() == chosen
    (chosen / "build_binary").unlink()
    with pytest.raises(SeqkitError, match="build_binary is missing"):
        ngram.require_kenlm()


# -- estimating and scoring ----------------------------------------------------------------------


@needs_lmplz
def test_perplexity_is_kenlms_full_sentence_score_per_token(tmp_path):
    train, test = corpus(300, seed=0), corpus(40, seed=1) + [[]]
    result = ngram.kn_baseline(train, {"test": test}, order=3, workdir=tmp_path, memory=MEMORY)["test"]
    per_word = query_scores(tmp_path / "kn3.bin", test)
    assert [len(scores) for scores in per_word] == [len(s) + 1 for s in test]  # every word, then </s>
    assert result["log10_prob"] == pytest.approx(sum(map(sum, per_word)), abs=1e-4)
    assert result["tokens"] == sum(len(s) + 1 for s in test)
    assert result["sentences"] == len(test)
    assert result["perplexity"] == pytest.approx(10 ** (-result["log10_prob"] / result["tokens"]))
    assert result["oov"] == 0


@needs_lmplz
def test_kenlm_module_and_query_program_agree(tmp_path, monkeypatch):
    pytest.importorskip("kenlm", reason="the kenlm Python module is not installed (pip install kenlm)")
    train, tests = corpus(300, seed=0), {"valid": corpus(30, seed=2), "test": corpus(30, seed=3) + [["zebra"]]}
    by_module = ngram.kn_baseline(train, tests, order=4, workdir=tmp_path / "module", memory=MEMORY)
    monkeypatch.setattr(ngram, "_has_kenlm_module", lambda: False)
    by_query = ngram.kn_baseline(train, tests, order=4, workdir=tmp_path / "query", memory=MEMORY)
    for split in tests:
        assert by_module[split]["log10_prob"] == pytest.approx(by_query[split]["log10_prob"], abs=1e-3)
        assert by_module[split]["tokens"] == by_query[split]["tokens"]
        assert by_module[split]["oov"] == by_query[split]["oov"]
    assert by_module["test"]["oov"] == 1


@needs_lmplz
def test_the_models_unk_is_an_ordinary_word(tmp_path):
    # lmplz rejects a literal <unk>, <s> or </s> in its input; escaped, they are words with counts.
    train = [s + ["<unk>"] for s in corpus(200, seed=0)] + [["<s>", "</s>", "cat"]]
    tests = {"unk": [["the", "<unk>"]], "unseen": [["the", "zebra"]], "specials": [["<s>", "</s>"]]}
    result = ngram.kn_baseline(train, tests, order=3, workdir=tmp_path, memory=MEMORY)
    assert result["unk"]["oov"] == 0 and result["specials"]["oov"] == 0
    assert result["unseen"]["oov"] == 1  # a word never in train gets KenLM's own <unk> probability
    assert result["unk"]["log10_prob"] > result["unseen"]["log10_prob"] + 1
    assert result["unk"]["tokens"] == result["unseen"]["tokens"] == 3


@needs_lmplz
def test_fallback_discounts_and_progress_are_logged(tmp_path):
    messages: list[str] = []
    ngram.kn_baseline([["a", "b", "c"], ["a", "b"]], {"test": [["a", "b"]]}, order=2, workdir=tmp_path,
                      memory=MEMORY, log=messages.append)
    assert any("fallback" in m and "1-grams" in m for m in messages)
    assert any(m.startswith("kenlm: test: perplexity") for m in messages)
    assert not (tmp_path / "kn2.arpa").exists() and (tmp_path / "kn2.bin").is_file()


@needs_lmplz
def test_pruning_drops_singleton_ngrams(tmp_path):
    train, test = corpus(300, seed=0), {"test": corpus(40, seed=1)}
    full = ngram.kn_baseline(train, test, order=3, workdir=tmp_path / "full", memory=MEMORY)
    pruned = ngram.kn_baseline(train, test, order=3, workdir=tmp_path / "pruned", memory=MEMORY, prune=[0, 1])
    assert (tmp_path / "pruned" / "kn3.bin").stat().st_size < (tmp_path / "full" / "kn3.bin").stat().st_size
    assert pruned["test"]["perplexity"] != pytest.approx(full["test"]["perplexity"])


@needs_lmplz
def test_a_failing_kenlm_program_is_quoted_in_one_line(tmp_path):
    with pytest.raises(SeqkitError) as err:
        ngram.kn_baseline(corpus(20, seed=0), {}, workdir=tmp_path, memory="lots")
    message = str(err.value)
    assert "lmplz failed" in message and "Failed to parse lots" in message and "\n" not in message
    with pytest.raises(SeqkitError, match="compiled to support up to 6"):
        ngram.kn_baseline(corpus(20, seed=0), {}, order=7, workdir=tmp_path, memory=MEMORY)
