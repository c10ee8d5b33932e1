"""Run a model exported by ``seqkit export``, with numpy and onnxruntime only.

``seqkit export RUN --format onnx --out DIR`` copies this file into DIR as ``runtime.py``;
an app then needs neither torch nor seqkit::

    import runtime                      # DIR on sys.path, or copy runtime.py into the app
    tagger = runtime.load("DIR")        # reads DIR/manifest.json
    tagger.tag("张三在北京大学工作")      # {'tokens': [...], 'tags': [...], 'entities': [...]}
    runtime.load("speech").transcribe(samples)          # float samples at the model's rate
    lm = runtime.load("lm"); lm.score("And God said"); lm.generate("And God", max_tokens=20, seed=1)

Every object is safe to share between threads (onnxruntime's ``run`` is). The post-processing
(CRF Viterbi, CTC greedy decoding, sampling, tokenising, log-mel features) is written out
here in numpy, the same computation as seqkit's own, so the results are seqkit's. A
TorchScript (``model.ts``) or ``.pt2`` export runs through torch instead of onnxruntime, with
the same classes.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

__all__ = ["Graph", "LanguageModel", "Tagger", "Transcriber", "ctc_greedy", "batches_by_length", "load", "spans",
           "tokens_with_offsets", "viterbi"]


class Graph:
    """The exported graph of a folder: ``run({input name: array}) -> [output arrays]``.

    ``threads``: intra-op threads of this session (onnxruntime; 0 lets it choose).
    """

    def __init__(self, folder: Union[str, os.PathLike], *, threads: int = 0) -> None:
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text(encoding="utf-8"))
        self.inputs = list(self.manifest["inputs"])
        self.outputs = list(self.manifest["outputs"])
        path = str(self.folder / self.manifest["graph"])
        fmt = self.manifest["format"]
        if fmt == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self._run = lambda feeds: self._session.run(self.outputs, feeds)
            return
        import torch

        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
                module = torch.jit.load(path)
        else:
            _register_ops(self.folder)
            module = torch.export.load(path).module()

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode():
                outs = module(*(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.inputs))
            return [o.numpy() for o in (outs if isinstance(outs, (tuple, list)) else (outs,))]

        self._run = run

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [k for k in self.inputs if k not in feeds]
        if missing:
            raise ValueError(f"missing graph inputs {missing}; the graph takes {self.inputs}")
        return self._run({k: feeds[k] for k in self.inputs})


def _register_ops(folder: Path) -> None:
    """A .pt2 program calls seqkit's recurrence operators: register them (seqkit_ops.py beside it)."""
    import torch

    try:
        torch.ops.seqkit.lstm_layer  # noqa: B018 (registered already: seqkit itself is imported)
        return
    except (AttributeError, RuntimeError):
        pass
    sys.path.insert(0, str(folder))
    try:
        import seqkit_ops  # noqa: F401
    finally:
        sys.path.remove(str(folder))


def load(folder: Union[str, os.PathLike], *, threads: int = 0) -> Any:
    """The exported model of ``folder``, as the class of its task (a :class:`Graph` otherwise)."""
    graph = Graph(folder, threads=threads)
    own = graph.manifest.get("runtime_module")
    if own:  # a task's own post-processing (a plugin's), shipped beside the graph
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"seqkit_export_{Path(own).stem}", graph.folder / own)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.load(graph)
    kind = {"tagging": Tagger, "transcription": Transcriber, "language-model": LanguageModel}
    return kind.get(graph.manifest.get("runtime", graph.manifest["task"]), lambda g: g)(graph)


def _json(graph: Graph, name: str) -> Any:
    return json.loads((graph.folder / name).read_text(encoding="utf-8"))


def batches_by_length(lengths: Sequence[int], batch_size: int, spread: float = 1.25) -> list[list[int]]:
    """Indices into ``lengths`` in batches of at most ``batch_size`` whose longest item is at most
    ``spread`` times their shortest. onnxruntime's LSTM and GRU run every row to its batch's
    longest, so sentences of mixed lengths batched as they come cost about twice the work:
    batching MSRA test sentences 64 a call this way tags 1,020 a second against 600."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        group = groups[-1] if groups else None
        if group is None or len(group) >= batch_size or lengths[i] > spread * max(1, lengths[group[0]]):
            groups.append([i])
        else:
            group.append(i)
    return groups


def _pad(rows: Sequence[Sequence[int]], value: int = 0) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _normalise(text: str, lowercase: bool) -> str:
    text = unicodedata.normalize("NFKC", text)
    return text.lower() if lowercase else text


# -- tagging ----------------------------------------------------------------------------------------

def tokens_with_offsets(text: str, tokenize: str) -> tuple[list[str], list[tuple[int, int]]]:
    """A raw string's tokens as a tagger was trained on them (``tokenize``: ``chars``, every
    character but whitespace; otherwise whitespace-separated words) and each token's character
    offsets ``(start, end_exclusive)`` in ``text``."""
    toks: list[str] = []
    offs: list[tuple[int, int]] = []
    if tokenize == "chars":
        for i, ch in enumerate(text):
            if not ch.isspace():
                toks.append(ch)
                offs.append((i, i + 1))
        return toks, offs
    pos = 0
    for word in text.split():
        start = text.index(word, pos)
        toks.append(word)
        offs.append((start, start + len(word)))
        pos = start + len(word)
    return toks, offs


_PREFIXES = {"BIO": frozenset("BI"), "BIOES": frozenset("BIES")}


def spans(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` of a BIO/BIOES tag sequence, in order, read
    leniently (the rules: seqkit/metrics/spans.py, which uses this function). ValueError for an
    unknown scheme or a tag that is not ``O`` or ``PREFIX-TYPE`` under it."""
    if scheme not in _PREFIXES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected BIO or BIOES")
    prefixes = _PREFIXES[scheme]
    out: list[tuple[str, int, int]] = []
    kind, begin = None, 0  # the open span, if any
    for i, tag in enumerate(tags):
        if tag == "O":
            prefix, tag_kind = "O", None
        else:
            prefix, sep, tag_kind = tag.partition("-")
            if not sep or not tag_kind or prefix not in prefixes:
                raise ValueError(f"tag {tag!r} at position {i} is not valid under {scheme}")
        continues = kind is not None and tag_kind == kind and prefix in ("I", "E")
        if kind is not None and not continues:
            out.append((kind, begin, i))
            kind = None
        if prefix == "O":
            continue
        if not continues:
            kind, begin = tag_kind, i
        if prefix in ("E", "S"):
            out.append((kind, begin, i + 1))
            kind = None
    if kind is not None:
        out.append((kind, begin, len(tags)))
    return out


def viterbi(emissions: np.ndarray, lengths: np.ndarray, transitions: np.ndarray, start: np.ndarray,
            end: np.ndarray) -> list[list[int]]:
    """The best tag path of each sequence of a batch: emissions (N, L, C), lengths (N,), scores of
    moves (C, C), of the first and last tag (C,); forbidden moves are -inf. Rows past their
    length carry their scores unchanged, so one backtrace serves the whole batch. (Each step
    reads the best scores through flat indices: with ``np.take_along_axis`` a 45-step sentence
    took 0.48 ms against 0.21.)"""
    n, length, tags = emissions.shape
    rows, cols = np.arange(n), np.arange(tags)
    offsets = rows[:, None] * (tags * tags) + cols  # (N, C): flat index of (row, from 0, to)
    live = (np.arange(length)[:, None] < np.asarray(lengths)[None, :])[:, :, None]  # (L, N, 1)
    full = bool(live.all())
    score = start + emissions[:, 0]  # (N, C)
    back = np.empty((length, n, tags), dtype=np.intp)  # back[t]: best previous tag of each tag at t
    for t in range(1, length):
        total = score[:, :, None] + transitions  # (N, from, to)
        best = total.argmax(1)  # (N, C)
        reached = total.ravel()[offsets + best * tags] + emissions[:, t]
        if full:
            score, back[t] = reached, best
        else:
            score, back[t] = np.where(live[t], reached, score), np.where(live[t], best, cols)
    tag = (score + end).argmax(1)  # (N,)
    paths = np.empty((n, length), dtype=np.intp)
    paths[:, length - 1] = tag
    for t in range(length - 1, 0, -1):
        tag = back[t, rows, tag]
        paths[:, t - 1] = tag
    return [paths[i, : int(lengths[i])].tolist() for i in range(n)]


class Tagger:
    """``tag(text | [texts])``: tokens, tags and entities with character offsets, as
    ``seqkit.load(run).tag``."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        info = _json(graph, "tagger.json")
        self.labels, self.scheme = info["labels"], info["scheme"]
        self.tokenize, self.lowercase = info["tokenize"], info["lowercase"]
        self.tokens = {t: i for i, t in enumerate(info["tokens"])}
        self.bigrams = {t: i for i, t in enumerate(info["bigrams"])} if info.get("bigrams") else None
        self.crf = None
        if info.get("crf"):
            crf = info["crf"]
            forbid = lambda scores, allowed: np.where(np.array(allowed), np.array(scores, np.float32), -np.inf)  # noqa: E731
            self.crf = (forbid(crf["transitions"], crf["allowed"]), forbid(crf["start"], crf["allowed_start"]),
                        forbid(crf["end"], crf["allowed_end"]))

    def _split(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        return tokens_with_offsets(text, self.tokenize)

    def _ids(self, toks: list[str]) -> tuple[list[int], Optional[list[int]]]:
        normed = [_normalise(t, self.lowercase) for t in toks]
        ids = [self.tokens.get(t, 1) for t in normed]  # 1: [UNK]
        if self.bigrams is None:
            return ids, None
        nxt = normed[1:] + ["</s>"]
        return ids, [self.bigrams.get(a + "\u2581" + b, 1) for a, b in zip(normed, nxt)]

    def tag(self, texts: Union[str, Sequence[str]], *, batch_size: int = 64) -> Any:
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        split = [self._split(t) for t in items]
        paths: list[list[str]] = [[] for _ in items]
        live = [i for i, (toks, _) in enumerate(split) if toks]
        for group in batches_by_length([len(split[i][0]) for i in live], batch_size):
            rows = [live[k] for k in group]
            encoded = [self._ids(split[i][0]) for i in rows]
            lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int64)
            feeds = {"ids": _pad([ids for ids, _ in encoded])[..., None], "lengths": lengths}
            if self.bigrams is not None:
                feeds["ids"] = np.concatenate([feeds["ids"], _pad([big for _, big in encoded])[..., None]], -1)
            (emissions,) = self.graph.run(feeds)
            if self.crf:
                best = viterbi(emissions, lengths, *self.crf)
            else:
                best = [emissions[k, : int(n)].argmax(-1).tolist() for k, n in enumerate(lengths)]
            for k, i in enumerate(rows):
                paths[i] = [self.labels[j] for j in best[k]]
        results = []
        for text, (toks, offs), tags in zip(items, split, paths):
            entities = [{"type": kind, "text": text[offs[s][0]: offs[e - 1][1]], "start": offs[s][0],
                         "end": offs[e - 1][1]} for kind, s, e in spans(tags, self.scheme)]
            results.append({"tokens": toks, "tags": tags, "entities": entities})
        return results[0] if single else results


# -- transcription ------------------------------------------------------------------------------------


def ctc_greedy(log_probs: np.ndarray, length: int, units: Sequence[str]) -> str:
    """CTC greedy decoding of one utterance: best unit per frame, repeats merged, blanks (id 0)
    dropped; ``|`` is the space between words."""
    best = log_probs[:length].argmax(-1)
    keep = best[np.r_[True, best[1:] != best[:-1]]] if length else best
    return " ".join("".join(units[i] for i in keep if i > 0).replace("|", " ").split())


class Transcriber:
    """``transcribe(samples | [samples])``: text of float waveforms at ``sample_rate`` (mono)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        info = _json(graph, "speech.json")
        self.units, self.sample_rate = info["units"], info["sample_rate"]
        self.hop, self.n_fft, self.floor = info["hop_length"], info["n_fft"], info["log_floor"]
        self.window = np.load(graph.folder / "window.npy")
        self.mel = np.load(graph.folder / "mel.npy")  # (n_fft // 2 + 1, n_mels)

    def features(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel energies (L, n_mels) of a (T,) waveform: 25 ms windows every 10 ms, as seqkit's."""
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected mono samples (T,), got shape {wave.shape}")
        half = self.n_fft // 2
        padded = np.pad(wave, (half, half))
        count = 1 + wave.size // self.hop
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop][:count]
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2
        return np.log(power.astype(np.float32) @ self.mel + self.floor).astype(np.float32)

    def transcribe(self, audio: Any, *, sample_rate: Optional[int] = None, batch_size: int = 64) -> Any:
        single = not isinstance(audio, (list, tuple))
        waves = [audio] if single else list(audio)
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(f"the model takes {self.sample_rate} Hz audio, got {sample_rate} Hz: resample first")
        feats = [self.features(w) for w in waves]
        texts = [""] * len(feats)
        for rows in batches_by_length([f.shape[0] for f in feats], batch_size):
            lengths = np.array([feats[i].shape[0] for i in rows], dtype=np.int64)
            frames = max(int(lengths.max()), self.graph.manifest.get("min_frames", 1))  # padding changes no result
            batch = np.zeros((len(rows), frames, feats[0].shape[1]), dtype=np.float32)
            for k, i in enumerate(rows):
                batch[k, : feats[i].shape[0]] = feats[i]
            log_probs, out_lengths = self.graph.run({"feats": batch, "lengths": lengths})
            for k, i in enumerate(rows):
                texts[i] = ctc_greedy(log_probs[k], int(out_lengths[k]), self.units)
        return texts[0] if single else texts


# -- language models -----------------------------------------------------------------------------------


class LanguageModel:
    """``score(text)``, ``generate(prompt, ...)`` and ``stream()`` for a forward language model
    (``embed(text)`` for a split bi-LM), as ``seqkit.load(run)``'s; sampling uses numpy's
    generator, so a seed gives other text than seqkit's own."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        info = _json(graph, "lm.json")
        self.units, self.itos, self.split = info["units"], info["itos"], info["split"]
        self.layers, self.hidden, self.num_states = info["layers"], info["hidden"], info["num_states"]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.eos = 1
        self._tokenizer = None
        if self.units == "bpe":
            from tokenizers import Tokenizer  # BPE pieces need HF tokenizers

            self._tokenizer = Tokenizer.from_file(str(graph.folder / "tokenizer.json"))

    def encode(self, text: str) -> list[int]:
        if self._tokenizer is not None:
            return self._tokenizer.encode(text).ids
        return [self.stoi.get(t, 0) for t in (text.split() if self.units == "words" else text)]  # 0: <unk>

    def zero_state(self, n: int = 1) -> list[np.ndarray]:
        return [np.zeros((self.layers, n, self.hidden), np.float32) for _ in range(self.num_states)]

    def step(self, ids: Sequence[int], state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (L, V) after each of ``ids`` and the state after the last, from ``state``."""
        feeds = {"ids": np.array([ids], dtype=np.int64), "lengths": np.array([len(ids)], dtype=np.int64)}
        feeds.update({f"state{k}": s for k, s in enumerate(state)})
        logits, *new = self.graph.run(feeds)
        return logits[0], new

    def score(self, texts: Union[str, Sequence[str]]) -> Any:
        """Natural-log probability of each text read after a line break, ``<eos>`` included."""
        single = isinstance(texts, str)
        results = []
        for text in [texts] if single else list(texts):
            ids = [self.eos, *self.encode(text), self.eos]
            logits, _ = self.step(ids[:-1], self.zero_state())
            logits = logits.astype(np.float64)
            top = logits.max(-1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
            total = float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
            results.append({"text": text, "logprob": total, "tokens": len(ids) - 1,
                            "ppl": float(np.exp(min(-total / (len(ids) - 1), 50.0)))})
        return results[0] if single else results

    def _text(self, i: int, line_start: bool) -> str:
        if i == self.eos:
            return "\n"
        piece = self.itos[i]
        if self.units == "words":
            return piece if line_start else " " + piece
        if self.units == "bpe":
            text = piece.replace("\u2581", " ")
            return text.lstrip(" ") if line_start else text
        return piece

    def generate_tokens(self, prompt: str = "", *, max_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
                        seed: Optional[int] = None) -> Iterator[str]:
        """Yield the text of each sampled token (temperature, top-k; ``<eos>`` is a newline)."""
        rng = np.random.default_rng(seed)
        ids = [self.eos, *self.encode(prompt)] if prompt else [self.eos]
        logits, state = self.step(ids, self.zero_state())
        last, line_start = logits[-1], len(ids) == 1
        for _ in range(max_tokens):
            scaled = last.astype(np.float64) / max(temperature, 1e-6)
            if top_k:
                scaled[np.argsort(scaled)[:-top_k]] = -np.inf
            p = np.exp(scaled - scaled.max())
            token = int(rng.choice(p.size, p=p / p.sum()))
            text = self._text(token, line_start)
            line_start = token == self.eos
            yield text
            logits, state = self.step([token], state)
            last = logits[-1]

    def generate(self, prompt: str = "", **options: Any) -> str:
        return "".join(self.generate_tokens(prompt, **options))

    def embed(self, text: str) -> np.ndarray:
        """(T, 2H) contextual vectors of a split bi-LM's top layer."""
        ids = [self.eos, *self.encode(text), self.eos]
        (vectors,) = self.graph.run({"ids": np.array([ids], dtype=np.int64),
                                     "lengths": np.array([len(ids)], dtype=np.int64)})
        return vectors[0, 1:-1]
