"""Kneser-Ney n-gram baselines estimated by KenLM, on exactly the tokens a neural LM sees.

KenLM's ``lmplz`` (modified Kneser-Ney estimation) and ``build_binary`` are C++ programs that the
PyPI ``kenlm`` package does not install; ``bash tools/build_kenlm.sh`` builds them from its source
package. Scoring uses the ``kenlm`` Python module when it is installed, else KenLM's ``query``.

Example::

    from seqkit.ngram import kn_baseline
    result = kn_baseline(train_sentences, {"test": test_sentences}, workdir=Path("runs/kn5"))
    result["test"]["perplexity"]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .data.lm import cache_root
from .errors import SeqkitError

__all__ = ["escape_token", "estimate", "find_lmplz", "kn_baseline", "require_kenlm"]

_BUILD_HINT = "build it with `bash tools/build_kenlm.sh` (or set SEQKIT_KENLM_BIN to a folder holding lmplz)"
_RESERVED = frozenset({"<s>", "</s>", "<unk>"})
# KenLM splits words on these bytes (util::kSpaces), and so does the kenlm module (bytes.split()).
_ESCAPES = str.maketrans({"\\": "\\\\", **{c: f"\\x{ord(c):02x}" for c in " \t\n\v\f\r"}})

Log = Callable[[str], None]


def escape_token(token: str) -> str:
    """The word KenLM sees for a model token.

    KenLM reserves ``<s>``, ``</s>`` and ``<unk>``: lmplz refuses them in its input, and a query
    for ``<unk>`` would get the probability of KenLM's own unknown word (the mass left for words
    never seen in training) instead of that of the model's ``<unk>``, which for the neural LM is an
    ordinary token with its own counts. Whitespace would split a token into several words. So
    backslashes and whitespace are written as ``\\\\`` and ``\\xHH``, a reserved name gets a
    leading backslash (``<unk>`` -> ``\\<unk>``) and the empty token becomes ``\\0``. The mapping is
    one-to-one, so KenLM's vocabulary is exactly the model's (as far as the training text uses it).
    """
    escaped = token.translate(_ESCAPES)
    if escaped in _RESERVED:
        return "\\" + escaped
    return escaped or "\\0"


def _search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SEQKIT_KENLM_BIN"):
        dirs.append(Path(os.environ["SEQKIT_KENLM_BIN"]).expanduser())
    on_path = shutil.which("lmplz")
    if on_path:
        dirs.append(Path(on_path).parent)
    dirs.append(cache_root() / "kenlm" / "bin")
    return dirs


def find_lmplz() -> Optional[Path]:
    """KenLM's ``lmplz``: in $SEQKIT_KENLM_BIN, else on PATH, else where ``tools/build_kenlm.sh`` puts
    it ($SEQKIT_CACHE_DIR/kenlm/bin, by default ~/.cache/seqkit/kenlm/bin); None if in none of them."""
    for directory in _search_dirs():
        candidate = directory / "lmplz"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_kenlm() -> Path:
    """The folder holding ``lmplz`` and ``build_binary``; a one-line :class:`SeqkitError` if missing."""
    lmplz = find_lmplz()
    if lmplz is None:
        raise SeqkitError(f"KenLM's lmplz was not found in $SEQKIT_KENLM_BIN, on PATH or in "
                          f"{cache_root() / 'kenlm' / 'bin'}: {_BUILD_HINT}")
    if not os.access(lmplz.parent / "build_binary", os.X_OK):
        raise SeqkitError(f"KenLM's build_binary is missing beside {lmplz}: {_BUILD_HINT}")
    return lmplz.parent


def _run(argv: list[str], log_path: Path, what: str, **kwargs) -> None:
    """Run a KenLM program with its stderr in ``log_path``; on failure quote its message."""
    with open(log_path, "wb") as err:
        proc = subprocess.run(argv, stderr=err, **kwargs)
    if proc.returncode != 0:
        raise SeqkitError(f"{what} failed (exit {proc.returncode}): {_kenlm_message(log_path)} (log: {log_path})")


def _kenlm_message(log_path: Path) -> str:
    """The explanation in a KenLM log: exceptions print ``file:line in fn threw X because ...``, then
    the message for people on the next line; without one, the log's last lines."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    threw = [i for i, line in enumerate(lines) if " threw " in line]
    if threw and threw[-1] + 1 < len(lines):
        return lines[threw[-1] + 1]
    return " | ".join(lines[-3:]) or "no message"


def _write(sentences: Iterable[Sequence[str]], path: Path, vocab: Optional[set[str]] = None) -> tuple[int, int]:
    """Write escaped sentences one a line; return (sentences, words), collecting ``vocab``."""
    n_sentences = n_words = 0
    with open(path, "w", encoding="utf-8") as f:
        for words in sentences:
            escaped = [escape_token(w) for w in words]
            if vocab is not None:
                vocab.update(escaped)
            f.write(" ".join(escaped) + "\n")
            n_sentences += 1
            n_words += len(escaped)
    return n_sentences, n_words


def _score_module(model: Path, text: Path) -> tuple[float, int]:
    """(log10 probability, OOV words) of ``text`` through the kenlm Python module."""
    import kenlm

    lm = kenlm.Model(str(model))
    total, oov = 0.0, 0
    with open(text, encoding="utf-8") as f:
        for line in f:
            for log10_prob, _, is_oov in lm.full_scores(line, bos=True, eos=True):
                total += log10_prob
                oov += is_oov
    return total, oov


def _score_query(query: Path, model: Path, text: Path, n_sentences: int, log_path: Path) -> tuple[float, int]:
    """(log10 probability, OOV words) of ``text`` through KenLM's ``query`` program."""
    with open(text, "rb") as stdin, open(log_path, "wb") as err:
        proc = subprocess.run([str(query), "-v", "sentence", str(model)], stdin=stdin, stdout=subprocess.PIPE,
                              stderr=err, text=True)
    # One "Total: <log10 prob> OOV: <count>" line per sentence.
    totals = [line.split() for line in proc.stdout.splitlines() if line.startswith("Total:")]
    if proc.returncode != 0 or len(totals) != n_sentences:
        raise SeqkitError(f"KenLM query failed (exit {proc.returncode}, {len(totals)} of {n_sentences} "
                          f"sentences scored); see {log_path}")
    return sum(float(t[1]) for t in totals), sum(int(t[3]) for t in totals)


def _has_kenlm_module() -> bool:
    try:
        import kenlm  # noqa: F401
    except ImportError:
        return False
    return True


def estimate(train: Iterable[Sequence[str]], *, order: int, workdir: Path, memory: str = "1G",
             prune: Optional[Sequence[int]] = None, log: Optional[Log] = None) -> Path:
    """Estimate a modified Kneser-Ney ``order``-gram model of ``train`` (sentences as lists of
    words) with KenLM's lmplz and store it as KenLM's binary ``workdir/kn{order}.bin`` (returned);
    the escaped text and the programs' logs stay in ``workdir``. See :func:`kn_baseline`."""
    say = log or (lambda message: None)
    bin_dir = require_kenlm()
    workdir.mkdir(parents=True, exist_ok=True)
    train_txt, arpa, model = workdir / "train.txt", workdir / f"kn{order}.arpa", workdir / f"kn{order}.bin"

    vocab: set[str] = set()
    n_sentences, n_words = _write(train, train_txt, vocab)
    if n_words == 0:
        raise SeqkitError("kenlm: the training sentences contain no tokens")
    say(f"kenlm: estimating a {order}-gram modified Kneser-Ney model on {n_sentences:,} sentences, "
        f"{n_words:,} words, {len(vocab):,} types")
    argv = [str(bin_dir / "lmplz"), "-o", str(order), "-S", memory, "-T", f"{workdir}{os.sep}",
            "--vocab_estimate", str(len(vocab) + 3), "--text", str(train_txt), "--arpa", str(arpa),
            "--discount_fallback"]
    if prune:
        argv += ["--prune", *map(str, prune)]
    started = time.perf_counter()
    _run(argv, workdir / "lmplz.log", "KenLM lmplz", stdout=subprocess.DEVNULL)
    say(f"kenlm: lmplz took {time.perf_counter() - started:.1f} s")
    for line in (workdir / "lmplz.log").read_text(errors="replace").splitlines():
        fallback = re.match(r"Substituting fallback discounts for order (\d+): (.*)", line)
        if fallback:  # lmplz numbers orders from 0
            say(f"kenlm: too little data for closed-form Kneser-Ney discounts of {int(fallback[1]) + 1}-grams; "
                f"using the fallback {fallback[2]}")
    _run([str(bin_dir / "build_binary"), str(arpa), str(model)], workdir / "build_binary.log",
         "KenLM build_binary", stdout=subprocess.DEVNULL)
    arpa.unlink()  # the binary holds the same model; the ARPA text is ~2x its size
    return model


def kn_baseline(train: Iterable[Sequence[str]], tests: dict[str, Iterable[Sequence[str]]], *, order: int = 5,
                workdir: Path, memory: str = "1G", prune: Optional[Sequence[int]] = None,
                log: Optional[Log] = None) -> dict[str, dict[str, float]]:
    """Estimate a modified Kneser-Ney n-gram LM with KenLM and score test splits with it.

    Args:
        train: training sentences, each a list of tokens already mapped to the neural model's
            vocabulary (tokens outside it replaced by ``<unk>``), without an end-of-sentence token.
        tests: split name -> sentences, in the same form.
        order: n-gram order (at most 6, the order the build script compiles KenLM for).
        workdir: folder for the escaped texts, lmplz's temporary files and logs
            (``lmplz.log``, ``build_binary.log``) and the model ``kn{order}.bin``.
        memory: lmplz's sorting memory (``-S``): a percentage of RAM or a size like ``1G``.
        prune: lmplz ``--prune`` thresholds per order, e.g. ``(0, 0, 1)`` drops singleton trigrams
            and above; None keeps every n-gram.
        log: called with one-line progress messages.

    Outputs:
        For each split: ``log10_prob`` (total log10 probability), ``tokens``, ``perplexity``
        (``10 ** (-log10_prob / tokens)``), ``oov`` and ``sentences``.

    What is counted: each sentence is scored on its own, starting from ``<s>``, and every word of it
    is predicted and then ``</s>``, which stands for the neural LM's ``<eos>``; so ``tokens`` is words
    plus one per sentence, the count the neural LM's per-token perplexity divides by when it
    predicts every token including one ``<eos>`` per line (PTB test: 78,669 words + 3,761 lines
    = 82,430). The model's ``<unk>`` is an ordinary word here (see :func:`escape_token`). ``oov``
    counts test tokens that never occur in ``train``: KenLM gives each of them the probability of
    its own unknown word (interpolated unigram mass), and they stay in ``log10_prob``, ``tokens``
    and ``perplexity``. lmplz runs with ``--discount_fallback``, which only acts where the
    closed-form discounts cannot be computed (tiny or deduplicated data; never on PTB); when it
    does, ``log`` says for which orders.
    """
    say = log or (lambda message: None)
    workdir = Path(workdir)
    model = estimate(train, order=order, workdir=workdir, memory=memory, prune=prune, log=say)
    bin_dir = require_kenlm()

    use_module = _has_kenlm_module()
    query = bin_dir / "query"
    if not use_module and not os.access(query, os.X_OK):
        raise SeqkitError(f"neither the kenlm Python module (pip install kenlm) nor KenLM's query beside "
                          f"{bin_dir / 'lmplz'} is available to score with: {_BUILD_HINT}")
    say(f"kenlm: scoring with {'the kenlm Python module' if use_module else query}")
    results: dict[str, dict[str, float]] = {}
    for i, (name, sentences) in enumerate(tests.items()):
        text = workdir / f"score{i}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.txt"
        n_sentences, n_words = _write(sentences, text)
        if use_module:
            log10_prob, oov = _score_module(model, text)
        else:
            log10_prob, oov = _score_query(query, model, text, n_sentences, workdir / f"query{i}.log")
        tokens = n_words + n_sentences
        perplexity = 10.0 ** (-log10_prob / tokens) if tokens else float("nan")
        results[name] = {"log10_prob": log10_prob, "tokens": tokens, "perplexity": perplexity, "oov": oov,
                         "sentences": n_sentences}
        say(f"kenlm: {name}: perplexity {perplexity:.2f} over {tokens:,} tokens ({oov:,} OOV)")
    return results
