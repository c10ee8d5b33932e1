"""CTC beam search with a word language model: heads that help each other.

Two kinds of language model steer torchaudio's (flashlight's) lexicon beam search:

- ``kenlm``: a KenLM n-gram file (ARPA or binary). :func:`build_kenlm` estimates one from text with
  KenLM's lmplz (``seqkit.ngram``); the decoder scores words with it as it goes.
- ``lstm``: the LSTM language model of a seqkit ``language-model`` run with word units. Either it
  scores words inside the search (:class:`LSTMWordLM`, torchaudio's ``CTCDecoderLM`` interface;
  exact but one LSTM step per new word history), or it rescores the search's n-best list
  (``rescore: true``; one batch of sentences per utterance).

The decoder ranks a hypothesis by ``acoustic log-prob + lm_weight * LM log-prob + word_score *
words + sil_score * word separators``; :func:`tune` grid-searches ``lm_weight``, ``word_score``
and ``sil_score`` on held-out utterances, and
the chosen settings are kept with the run in ``decoder.json`` (:func:`save`, :func:`load`), which
``seqkit.load`` picks up: beam search then uses the language model.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .errors import SeqkitError

__all__ = ["DecoderLM", "build_kenlm", "held_out_check", "load", "lstm_word_lm", "resolve", "save", "tune"]

DECODER_FILE = "decoder.json"
WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # the default grid of tune()
WORD_SCORES = (-2.0, -1.0, 0.0, 1.0, 2.0)
SIL_SCORES = (0.0,)


@dataclass(frozen=True)
class DecoderLM:
    """A language model for CTC beam search and how much it counts.

    ``kind``: ``kenlm`` (``path`` is an ARPA or KenLM binary file) or ``lstm`` (``path`` is a
    seqkit language-model run folder with word units). ``words``: the words the LM knows, added
    to the decoder's lexicon (their spellings must use the acoustic model's units; others are
    left out). ``rescore``: an LSTM LM rescores the ``nbest`` best hypotheses of a search without
    LM instead of scoring inside the search. ``sil_score``: added for each word separator the
    search emits (negative: fewer, longer words; not used when rescoring)."""

    kind: str
    path: Path
    weight: float = 0.5
    word_score: float = 0.0
    rescore: bool = False
    nbest: int = 16
    words: tuple[str, ...] = ()
    sil_score: float = 0.0

    def key(self) -> tuple:
        return (self.kind, str(self.path), self.weight, self.word_score, self.rescore, self.nbest, self.sil_score)

    def describe(self) -> str:
        sil = f", sil_score {self.sil_score:g}" if self.sil_score else ""
        how = f", rescoring the {self.nbest} best" if self.rescore else ""
        return (f"{self.kind} {self.path.name} (lm_weight {self.weight:g}, word_score {self.word_score:g}"
                f"{sil}{how})")


# -- building and finding language models ------------------------------------------------------


def held_out_check(lines: Sequence[str], held_out: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """``lines`` without any line that is one of the ``held_out`` sentences (compared with their
    words joined by single spaces), and counts that say what was removed."""
    held = {" ".join(s.split()) for s in held_out if s.strip()}
    kept = [line for line in lines if " ".join(line.split()) not in held]
    left = sum(" ".join(line.split()) in held for line in kept)  # recounted on what is kept (so 0), for the record
    return kept, {"lines": len(lines), "removed_lines": len(lines) - len(kept), "kept_lines": len(kept),
                  "held_out_sentences": len(held), "held_out_sentences_in_lm_text": left,
                  "words": sum(len(line.split()) for line in kept)}


def build_kenlm(lines: Sequence[str], folder: Path, *, order: int = 4,
                log: Callable[[str], None] = print) -> Path:
    """A modified Kneser-Ney word n-gram of ``lines`` in ``folder/kn{order}.bin``, its words in
    ``folder/words.txt``; returns the model's path."""
    from .ngram import estimate

    folder.mkdir(parents=True, exist_ok=True)
    model = estimate((line.split() for line in lines), order=order, workdir=folder, log=log)
    (folder / "train.txt").unlink(missing_ok=True)  # the text is the caller's to keep
    words = sorted({w for line in lines for w in line.split()})
    (folder / "words.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
    return model


def _arpa_words(path: Path) -> list[str]:
    words, inside = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                fields = line.split("\t")
                if len(fields) >= 2:
                    words.append(fields[1])
    return words


def resolve(spec: str, *, weight: float = 0.5, word_score: float = 0.0, rescore: bool = False,
            nbest: int = 16, sil_score: float = 0.0) -> DecoderLM:
    """A :class:`DecoderLM` from what a user names: a KenLM file (``.arpa`` or binary; its words
    come from the ARPA text, or from ``words.txt`` beside a binary) or a seqkit language-model run
    folder."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise SeqkitError(f"--lm {spec}: no such file or folder; give a KenLM model (.arpa or .bin) or a "
                          "seqkit language-model run folder")
    if path.is_dir():
        if not (path / "recipe.yaml").exists():
            raise SeqkitError(f"--lm {spec}: a folder, but not a seqkit run (no recipe.yaml)")
        from .recipe import Recipe

        task = Recipe.load(path / "recipe.yaml").task.name
        if task != "language-model":
            raise SeqkitError(f"--lm {spec}: a {task} run; the decoder needs a language-model run")
        lm = _lstm(path)
        if lm.vocab.units != "words":
            raise SeqkitError(f"--lm {spec}: the language model reads {lm.vocab.units}; the decoder scores words, "
                              "so train it with features.units: words")
        words = tuple(w for w in lm.vocab.itos if not (w.startswith("<") and w.endswith(">")))
        return DecoderLM("lstm", path.resolve(), weight, word_score, rescore, nbest, words, sil_score)
    if rescore:
        raise SeqkitError(f"--lm {spec}: rescoring is for LSTM language models; a KenLM model scores inside the search")
    if path.suffix == ".arpa":
        words = tuple(_arpa_words(path))
    elif (path.parent / "words.txt").exists():
        words = tuple((path.parent / "words.txt").read_text(encoding="utf-8").split())
    else:
        words = ()
    words = tuple(w for w in words if w not in ("<s>", "</s>", "<unk>"))
    return DecoderLM("kenlm", path.resolve(), weight, word_score, False, nbest, words, sil_score)


_LSTM_CACHE: dict[str, Any] = {}


def _lstm(path: Path) -> Any:
    key = str(path.resolve())
    if key not in _LSTM_CACHE:
        from .build import load as load_run

        _LSTM_CACHE[key] = load_run(path).eval()
    return _LSTM_CACHE[key]


# -- the LSTM LM inside the search -------------------------------------------------------------


def lstm_word_lm(model: Any, words: Sequence[str]) -> Any:
    """A seqkit word LSTM language model behind torchaudio's ``CTCDecoderLM`` interface.

    ``words[i]`` is the decoder's word ``i``; words the LM lacks read as its ``<unk>``. A state's
    LSTM step runs only when a word is scored after it (the decoder asks the score of every
    lexicon word from the start state when it builds its trie; those children are never run
    unless the search extends them). Scores are natural-log probabilities."""
    return _lstm_lm_class()(model, words)


@functools.lru_cache(maxsize=1)
def _lstm_lm_class() -> type:
    from torchaudio.models.decoder import CTCDecoderLM  # needs flashlight-text: imported when used

    return type("LSTMWordLM", (_LSTMWordLM, CTCDecoderLM), {})


class _LSTMWordLM:
    def __init__(self, model: Any, words: Sequence[str]) -> None:
        super().__init__()  # type: ignore[call-arg]
        self.model = model
        stoi = {w: i for i, w in enumerate(model.vocab.itos)}
        unk = stoi.get("<unk>", 0)
        self.ids = [stoi.get(w, unk) for w in words]
        self.eos = model.vocab.eos_id
        self.states: dict[Any, Any] = {}  # state -> (next-word log-probs, LSTM state) or (parent, word)
        self.steps = 0

    def _run(self, state: Any) -> tuple[Tensor, Any]:
        entry = self.states[state]
        if isinstance(entry[0], Tensor):
            return entry
        parent, word = entry
        _, hidden = self._run(parent)
        with torch.inference_mode():
            logits, hidden = self.model.step(torch.tensor([self.ids[word]]), hidden)
        self.steps += 1
        done = (logits[0].float().log_softmax(-1), hidden)
        self.states[state] = done
        return done

    def start(self, start_with_nothing: bool = False) -> Any:
        from torchaudio.models.decoder import CTCDecoderLMState

        self.states.clear()  # one utterance's histories at a time
        state = CTCDecoderLMState()
        with torch.inference_mode():
            logits, hidden = self.model.step(torch.tensor([self.eos]), None)
        self.states[state] = (logits[0].float().log_softmax(-1), hidden)
        return state

    def score(self, state: Any, usr_token_idx: int) -> tuple[Any, float]:
        log_probs, _ = self._run(state)
        child = state.child(usr_token_idx)
        if child not in self.states:
            self.states[child] = (state, usr_token_idx)
        return child, float(log_probs[self.ids[usr_token_idx]])

    def finish(self, state: Any) -> tuple[Any, float]:
        log_probs, _ = self._run(state)
        return state, float(log_probs[self.eos])


def rescore(nbest: Sequence[tuple[list[str], float]], lm: DecoderLM,
            lm_scores: Optional[Sequence[float]] = None) -> list[str]:
    """The best of an n-best list (words, acoustic score) by acoustic + weight x LSTM log-prob +
    word_score x words; ``lm_scores`` (from :func:`lm_log_probs`) saves scoring the list again."""
    if not nbest:
        return []
    if lm_scores is None:
        lm_scores = lm_log_probs(nbest, lm)
    totals = [acoustic + lm.weight * s + lm.word_score * len(words)
              for (words, acoustic), s in zip(nbest, lm_scores, strict=True)]
    return nbest[max(range(len(totals)), key=totals.__getitem__)][0]


def lm_log_probs(nbest: Sequence[tuple[list[str], float]], lm: DecoderLM) -> list[float]:
    """The LSTM LM's log-probability (natural log, with the end of the sentence) of each hypothesis."""
    return [s["logprob"] for s in _lstm(lm.path).score([" ".join(words) for words, _ in nbest])] if nbest else []


# -- tuning and keeping the settings ---------------------------------------------------------


def tune(head: Any, emissions: Sequence[tuple[Tensor, Tensor, list[str]]], lm: DecoderLM, *, beam_size: int,
         weights: Sequence[float] = WEIGHTS, word_scores: Sequence[float] = WORD_SCORES,
         sil_scores: Sequence[float] = SIL_SCORES,
         log: Callable[[str], None] = print) -> tuple[DecoderLM, list[dict[str, Any]]]:
    """Grid-search ``lm_weight`` x ``word_score`` x ``sil_score`` by CER (then WER) on
    ``emissions``: (log-probs (N, L, C), lengths (N,), reference texts) batches of held-out
    utterances. Returns the best settings and one row per grid point (cer, wer, seconds).
    Rescoring an n-best list has no separators to score: its grid leaves ``sil_score`` out."""
    from .heads.ctc import error_rates

    refs = [t for _, _, texts in emissions for t in texts]
    rows = []
    nbest_cache: Optional[list[list[tuple[list[str], float]]]] = None
    scores_cache: list[list[float]] = []
    if lm.kind == "lstm" and lm.rescore:
        sil_scores = (lm.sil_score,)
    for w, ws, sil in itertools.product(weights, word_scores, sil_scores):
        trial = dataclasses.replace(lm, weight=float(w), word_score=float(ws), sil_score=float(sil))
        started = time.perf_counter()
        if trial.kind == "lstm" and trial.rescore:
            if nbest_cache is None:  # the n-best lists and their LM scores do not depend on the weights
                nbest_cache = [n for lp, lengths, _ in emissions
                               for n in head.nbest(lp, lengths, beam_size, trial.nbest, trial.words)]
                scores_cache = [lm_log_probs(n, trial) for n in nbest_cache]
            hyps = [" ".join(rescore(n, trial, s)) for n, s in zip(nbest_cache, scores_cache, strict=True)]
        else:
            hyps = [h for lp, lengths, _ in emissions for h in head.beam(lp, lengths, beam_size, lm=trial)]
        scores = error_rates(refs, hyps)
        rows.append({"lm_weight": float(w), "word_score": float(ws), "sil_score": float(sil), **scores,
                     "seconds": round(time.perf_counter() - started, 2)})
        log(f"tune: lm_weight {w:g} word_score {ws:g} sil_score {sil:g}: CER {scores['cer']:.2f} "
            f"WER {scores['wer']:.2f}")
    best = min(rows, key=lambda r: (r["cer"], r["wer"]))
    return dataclasses.replace(lm, weight=best["lm_weight"], word_score=best["word_score"],
                               sil_score=best["sil_score"]), rows


def save(run_dir: Path, lm: DecoderLM, beam_size: int, extra: Optional[dict[str, Any]] = None) -> Path:
    """Keep the decoder settings with the run (``decoder.json``); a path inside the run folder is
    stored relative to it, so the folder can move."""
    run_dir = Path(run_dir)
    try:
        path = str(lm.path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        path = str(lm.path)
    info = {"lm": {"kind": lm.kind, "path": path, "lm_weight": lm.weight, "word_score": lm.word_score,
                   "rescore": lm.rescore, "nbest": lm.nbest, "sil_score": lm.sil_score},
            "beam_size": beam_size, **(extra or {})}
    out = run_dir / DECODER_FILE
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    part.replace(out)
    return out


def load(run_dir: Path) -> Optional[tuple[DecoderLM, int]]:
    """The run's saved decoder LM and beam width, or None when it has none."""
    path = Path(run_dir) / DECODER_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        spec = info["lm"]
        lm_path = Path(spec["path"])
        lm_path = lm_path if lm_path.is_absolute() else Path(run_dir) / lm_path
        lm = resolve(str(lm_path), weight=float(spec["lm_weight"]), word_score=float(spec["word_score"]),
                     rescore=bool(spec.get("rescore", False)), nbest=int(spec.get("nbest", 16)),
                     sil_score=float(spec.get("sil_score", 0.0)))
        return lm, int(info["beam_size"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise SeqkitError(f"{path}: unreadable decoder settings ({exc}); run `seqkit tune-decoder` again "
                          "or delete the file") from None
