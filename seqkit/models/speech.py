"""The transcription model: log-mel features -> conv front-end -> shared encoder -> CTC head,
plus its data plumbing and ``transcribe`` for applications.

Shape legend: N batch, L frames, F mel bins, E front-end features, C output units, S target length.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from .. import decoding, registry
from ..data.speech import SpeechCorpus, read_manifest
from ..decoding import DecoderLM
from ..errors import DataError, RecipeError, SeqkitError
from ..features.audio import (
    _LOG_FLOOR,
    HOP_MS,
    VTLP,
    AudioInput,
    Fbank,
    Normalizer,
    SpecAugment,
    WaveAugment,
    as_waveform,
    read_audio,
    trim_silence,
)
from ..features.frontend import ConvSubsampler
from ..heads.ctc import CTCVocab, error_rates
from ..recipe import Recipe
from ..tasks import (
    ModelOutput,
    Prepared,
    Task,
    build_encoder,
    epoch_order,
    head_class,
    length_groups,
    load_splits,
    persist_vocab,
    read_vocab,
    recipe_base,
    resolve_path,
    seed_everything,
)

__all__ = ["SpeechBatch", "SpeechModel", "TranscriptionTask"]


@dataclass
class SpeechBatch:
    feats: Tensor  # (N, L, F) log-mel, zero padded
    lengths: Tensor  # (N,) frames, on the CPU
    targets: Optional[Tensor]  # (N, S) unit ids, 0-padded
    target_lengths: Optional[Tensor]  # (N,)
    texts: list[str]  # reference transcripts ("" when unknown)
    index: list[int]  # position of each row in the caller's list

    def to(self, device: torch.device) -> "SpeechBatch":
        targets = None if self.targets is None else self.targets.to(device, non_blocking=True)
        return SpeechBatch(self.feats.to(device, non_blocking=True), self.lengths, targets, self.target_lengths,
                           self.texts, self.index)

    @property
    def num_items(self) -> int:
        return int(self.lengths.sum())  # frames of 10 ms

    def __len__(self) -> int:
        return len(self.index)


def collate(feats: Sequence[Tensor], targets: Optional[Sequence[list[int]]], texts: Sequence[str],
            index: list[int], *, repeat_last: bool = False) -> SpeechBatch:
    """Pad features (on their own device) and targets into one batch.

    Padding is zeros that the model masks out, or with ``repeat_last`` (training only) each
    utterance's last frame repeated up to the longest one, every row then counting as that
    long: a little more trailing silence to learn from, and the encoder can run torch's
    fused multi-layer kernel, which needs equal lengths."""
    if repeat_last:
        longest = max(f.size(0) for f in feats)
        feats = [f if f.size(0) == longest else torch.cat([f, f[-1:].expand(longest - f.size(0), -1)])
                 for f in feats]
    lengths = torch.tensor([f.size(0) for f in feats], dtype=torch.long)
    x = pad_sequence(list(feats), batch_first=True)  # (N, L, F)
    tgt = tlen = None
    if targets is not None:
        tlen = torch.tensor([len(t) for t in targets], dtype=torch.long)
        tgt = pad_sequence([torch.tensor(t, dtype=torch.long) for t in targets], batch_first=True)  # (N, S)
        if tgt.size(1) == 0:
            tgt = torch.zeros(len(targets), 1, dtype=torch.long)
    return SpeechBatch(x, lengths, tgt, tlen, list(texts), index)


class Batches(Sequence[SpeechBatch]):
    """Batches collated on access, so an epoch never holds a padded copy of the whole corpus."""

    def __init__(self, groups: list[list[int]], feats: Sequence[Tensor],
                 targets: Optional[Sequence[list[int]]], texts: Sequence[str], *, repeat_last: bool = False) -> None:
        self.groups, self.feats, self.targets, self.texts = groups, feats, targets, texts
        self.repeat_last = repeat_last

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        g = self.groups[k]
        return collate([self.feats[i] for i in g], None if self.targets is None else [self.targets[i] for i in g],
                       [self.texts[i] for i in g], g, repeat_last=self.repeat_last)


def make_batches(feats: Sequence[Tensor], targets: Optional[Sequence[list[int]]], texts: Sequence[str],
                 batch_size: int, *, seed: Optional[int] = None, repeat_last: bool = False,
                 shortest_first: bool = False) -> Batches:
    """Batches of similar duration; shuffled deterministically when ``seed`` is set, unless
    ``shortest_first`` (SortaGrad). ``repeat_last``: see :func:`collate`."""
    groups = length_groups([f.size(0) for f in feats], batch_size, seed, shortest_first=shortest_first)
    return Batches(groups, feats, targets, texts, repeat_last=repeat_last)


Decoding = Union[int, tuple[str, int]]  # a beam width (0: greedy), or ("lm", width): with the run's LM
MIN_FRAMES = 5  # an exported graph's shortest padded input (a shorter batch is padded to it)


class SpeechModel(nn.Module):
    """Log-mel features, a conv front-end, the shared encoder and a CTC head: train it, or
    ``transcribe`` audio files and arrays."""

    monitor, mode = "cer", "min"

    def __init__(self, recipe: Recipe, vocab: CTCVocab, head_cls: Any,
                 lexicon: Optional[list[str]] = None) -> None:
        super().__init__()
        f, enc = recipe.features, recipe.encoder
        if f.kind != "fbank":
            raise RecipeError(f"{recipe.source}: features.kind: a transcription head needs audio features; "
                              f"set features.kind: fbank (got {f.kind!r})")
        self.recipe = recipe
        self.vocab = vocab
        self.fbank = Fbank(f.sample_rate, f.n_mels)
        self.vtlp = VTLP(f.n_mels, f.sample_rate, f.vtlp)
        self.normalize = Normalizer(f.n_mels, f.normalize)
        self.augment = SpecAugment.from_config(f)
        self.frontend = ConvSubsampler(f.n_mels, enc.hidden_size, subsampling=f.subsampling,
                                       num_layers=f.conv_layers, channels=f.conv_channels, dropout=f.dropout)
        self.encoder = build_encoder(recipe, enc.hidden_size)
        self.head = head_cls(self.encoder.output_size, vocab, dropout=recipe.head.dropout, lexicon=lexicon)
        self.decoder_lm: Optional[DecoderLM] = None  # the run's decoder.json: beam search with a language model
        self.lm_beam = 0

    @property
    def sample_rate(self) -> int:
        return self.fbank.sample_rate

    def encode(self, batch: SpeechBatch) -> tuple[Tensor, Tensor]:
        """Encoder output (N, L', D*H) and its lengths (N,)."""
        x = self.vtlp(batch.feats)  # training only
        x = self.normalize(x, batch.lengths)  # (N, L, F)
        x = self.augment(x, batch.lengths)
        x, lengths = self.frontend(x, batch.lengths)  # (N, L', E)
        out, _ = self.encoder(x, lengths)
        return out, lengths

    def forward(self, batch: SpeechBatch, state: None = None) -> ModelOutput:
        """The CTC loss of a batch, per target unit."""
        assert batch.targets is not None and batch.target_lengths is not None
        out, lengths = self.encode(batch)
        return ModelOutput(self.head.loss(out, lengths, batch.targets, batch.target_lengths),
                           count=int(batch.target_lengths.sum()))  # CTC's loss is a mean per target unit

    def decode(self, batch: SpeechBatch, beam: int = 0) -> list[str]:
        return self.decode_beams(batch, [beam])[beam]

    def decode_beams(self, batch: SpeechBatch, beams: Sequence[Decoding]) -> dict[Decoding, list[str]]:
        """Texts per decoding, all from one encoder pass: a beam width (0: greedy), or ``("lm",
        width)``, beam search with the run's language model (:attr:`decoder_lm`)."""
        out, lengths = self.encode(batch)
        log_probs = self.head.log_probs(out)  # (N, L', C)
        return {b: self._decode(log_probs, lengths, b) for b in beams}

    def _decode(self, log_probs: Tensor, lengths: Tensor, how: Decoding) -> list[str]:
        if isinstance(how, tuple):
            if self.decoder_lm is None:
                raise SeqkitError("this run has no decoder language model (decoder.json); add one with "
                                  "`seqkit tune-decoder RUN --lm ...`")
            return self.head.beam(log_probs, lengths, how[1], lm=self.decoder_lm)
        return self.head.beam(log_probs, lengths, how) if how > 0 else self.head.greedy(log_probs, lengths)

    def decoding(self, beam: int, lm: Optional[bool] = None) -> Decoding:
        """How ``transcribe(beam=..., lm=...)`` decodes: greedily for beam 0; with a beam search and
        the run's language model when it has one (``lm`` None) or when asked (``lm=True``)."""
        if lm and self.decoder_lm is None:
            raise SeqkitError("lm=True, but this run has no decoder language model (decoder.json); add one with "
                              "`seqkit tune-decoder RUN --lm ...`")
        if lm is False or beam <= 0 or self.decoder_lm is None:
            return beam
        return ("lm", beam)

    def stream(self, *, keep_log_probs: bool = False) -> Any:
        """A streaming session (:class:`seqkit.streaming.TranscriptionStream`) for a forward-only
        model: ``feed(samples)`` returns the transcript so far, ``finish()`` the final one."""
        from ..streaming import TranscriptionStream

        return TranscriptionStream(self, keep_log_probs=keep_log_probs)

    def export_spec(self) -> Any:
        """What ``seqkit export`` writes: log-mel features (N, L, F) and lengths (N,) in, CTC
        log-probabilities (N, L', C) and their lengths out; the runtime computes the features
        (window and mel filter bank saved beside the graph) and decodes greedily."""
        from ..export import ExportGraph, ExportSpec, random_lengths

        class Graph(ExportGraph):
            def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
                x = self.model.normalize(feats, lengths)
                x, out_lengths = self.model.frontend(x, lengths)
                out, _ = self.encoder(x, out_lengths)
                return self.model.head.log_probs(out), out_lengths

        n_mels = self.fbank.n_mels

        def sample(gen: torch.Generator) -> dict[str, Tensor]:
            n, longest = int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(8, 300, (1,), generator=gen))
            return {"feats": torch.randn(n, longest, n_mels, generator=gen) * 2 - 6,
                    "lengths": random_lengths(gen, n, longest)}

        if self.vocab.kind != "chars":
            raise SeqkitError("export: only a character CTC vocabulary (head.vocab: chars) exports for now; "
                              "BPE units need the tokenizer's decoder in the runtime")
        mel = self.fbank.mel
        info = {"units": self.vocab.tokens, "sample_rate": self.sample_rate, "hop_length": self.fbank.hop_length,
                "n_fft": mel.n_fft, "log_floor": _LOG_FLOOR}
        files = {"speech.json": info, "window.npy": mel.spectrogram.window.numpy(),
                 "mel.npy": mel.mel_scale.fb.numpy()}
        return ExportSpec(build=functools.partial(Graph, self), inputs=sample(torch.Generator().manual_seed(1)),
                          outputs=["log_probs", "out_lengths"], sample=sample, files=files,
                          dynamic={"feats": {0: "batch", 1: ("frames", MIN_FRAMES)}, "lengths": {0: "batch"}},
                          manifest={"min_frames": MIN_FRAMES})

    def evaluate(self, batches: Iterable[SpeechBatch], beam: int = 0) -> dict[str, Any]:
        return self.evaluate_beams(batches, [beam])[beam]

    def evaluate_beams(self, batches: Iterable[SpeechBatch],
                       beams: Sequence[Decoding]) -> dict[Decoding, dict[str, Any]]:
        """Scores per decoding (see :meth:`decode_beams`) from one encoder pass over ``batches``."""
        refs: list[str] = []
        hyps: dict[Decoding, list[str]] = {b: [] for b in beams}
        for batch in batches:
            refs += batch.texts
            for b, texts in self.decode_beams(batch, list(hyps)).items():
                hyps[b] += texts
        return {b: {**error_rates(refs, hyps[b]), "utterances": len(refs)} for b in hyps}

    @overload
    def transcribe(self, audio: AudioInput, *, sample_rate: Optional[int] = None, beam: int = 0,
                   lm: Optional[bool] = None, batch_size: int = 16, progress: Optional[bool] = None,
                   errors: str = "raise") -> dict[str, Any]: ...

    @overload
    def transcribe(self, audio: Union[list[AudioInput], tuple[AudioInput, ...]], *,
                   sample_rate: Optional[int] = None, beam: int = 0, lm: Optional[bool] = None,
                   batch_size: int = 16, progress: Optional[bool] = None,
                   errors: str = "raise") -> list[dict[str, Any]]: ...

    @torch.inference_mode()
    def transcribe(self, audio, *, sample_rate=None, beam=0, lm=None, batch_size=16, progress=None, errors="raise"):
        """Transcribe audio files (WAV/FLAC/OGG, any rate) or sample arrays.

        Args:
            audio: a path, a (T,), (T, channels) or (channels, T) array or tensor, or a list of those.
            sample_rate: the rate of arrays (required for them); files carry their own.
            beam: beam width of the CTC beam search; 0 decodes greedily.
            lm: with a beam, use the run's decoder language model (``decoder.json``, written by
                the recipe's ``head.lm`` or ``seqkit tune-decoder``): None when it has one,
                True requires it, False searches without it.
            batch_size: utterances per forward pass (sorted by duration).
            progress: progress bar on stderr; None shows one when there is more than a batch.
            errors: ``"raise"`` stops at the first unreadable input with a DataError;
                ``"skip"`` gives it ``text`` None and an ``error`` message and carries on.

        Returns one dict per input (a single dict for a single input): ``text``, ``audio`` (the
        path, or None for arrays), ``duration_s`` and ``time_s``, the seconds from waveform to
        text (features, network and decoding; shared out by duration within a batch).
        """
        single = not isinstance(audio, (list, tuple))
        how = self.decoding(beam, lm)
        results = self.transcribe_beams([audio] if single else list(audio), [how], sample_rate=sample_rate,
                                        batch_size=batch_size, progress=progress, errors=errors)
        for k, result in enumerate(results):
            texts = result.pop("texts")
            results[k] = {"audio": result.pop("audio"), "text": texts[how] if texts else None, **result}
        return results[0] if single else results

    @torch.inference_mode()
    def transcribe_beams(self, items: Sequence[AudioInput], beams: Sequence[Decoding], *,
                         sample_rate: Optional[int] = None, batch_size: int = 16,
                         progress: Optional[bool] = None, errors: str = "raise") -> list[dict[str, Any]]:
        """:meth:`transcribe` a list with several decodings (see :meth:`decode_beams`) at once: each
        input is read, featurised and encoded once; ``texts`` maps each decoding to its text (None
        for an unreadable input), beside ``audio``, ``duration_s``, ``time_s`` (and ``error``)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        self.eval()
        device = next(self.parameters()).device
        results: list[dict[str, Any]] = [{} for _ in items]
        show = progress if progress is not None else len(items) > batch_size
        with tqdm(total=len(items), unit="file", disable=not show, leave=False) as bar:
            for start in range(0, len(items), batch_size * 8):  # read a few batches at a time
                span = range(start, min(start + batch_size * 8, len(items)))
                waves = {}
                for i in span:
                    name = str(items[i]) if isinstance(items[i], (str, os.PathLike)) else None
                    results[i] = {"audio": name, "texts": None, "duration_s": 0.0, "time_s": 0.0}
                    try:
                        waves[i] = self._waveform(items[i], sample_rate)
                    except DataError as exc:
                        if errors == "raise":
                            raise
                        results[i]["error"] = str(exc)
                        bar.update(1)
                order = sorted(waves, key=lambda i: waves[i].numel())
                for b in range(0, len(order), batch_size):
                    group = order[b: b + batch_size]
                    self._transcribe_group(group, waves, results, beams, device)
                    bar.update(len(group))
        return results

    def _waveform(self, item: AudioInput, sample_rate: Optional[int]) -> Tensor:
        if isinstance(item, (str, os.PathLike)):
            return read_audio(item, self.sample_rate)
        if sample_rate is None:
            raise DataError("audio given as samples needs its rate: transcribe(samples, sample_rate=16000)")
        return as_waveform(item, sample_rate, self.sample_rate)

    def _transcribe_group(self, group: list[int], waves: dict[int, Tensor], results: list[dict[str, Any]],
                          beams: Sequence[Decoding], device: torch.device) -> None:
        started = time.perf_counter()
        feats = [self.fbank(waves[i].to(device)) for i in group]
        texts = self.decode_beams(collate(feats, None, [""] * len(group), group), list(beams))
        spent = time.perf_counter() - started
        total = sum(waves[i].numel() for i in group)
        for k, i in enumerate(group):
            results[i].update(texts={b: texts[b][k] for b in texts}, duration_s=waves[i].numel() / self.sample_rate,
                              time_s=spent * waves[i].numel() / total)


# -- the task ---------------------------------------------------------------------------------


def _features(model: SpeechModel, corpus: SpeechCorpus, log: Callable[[str], None],
              desc: str, augment: Optional[WaveAugment] = None) -> tuple[list[Tensor], list[str]]:
    """Log-mel features and transcripts of a corpus (its audio altered by ``augment``, if given);
    unreadable files are skipped and named."""
    feats, texts, bad = [], [], []

    def featurise(index: int) -> Union[Tensor, DataError]:
        with torch.inference_mode():  # thread-local, so entered in each worker
            try:
                wave = read_audio(corpus.utterances[index].audio, model.sample_rate)
                return model.fbank(augment(wave, index) if augment is not None else wave)
            except DataError as exc:
                return exc

    # Threads: decoding, resampling and the filter bank release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, min(4, torch.get_num_threads()))) as pool:
        results = pool.map(featurise, range(len(corpus.utterances)))
        for utt, result in tqdm(zip(corpus.utterances, results), total=len(corpus.utterances),
                                desc=f"features {desc}", unit="utt", leave=False, disable=None):
            if isinstance(result, DataError):
                bad.append(str(result))
            else:
                feats.append(result)
                texts.append(utt.text)
    if bad:
        log(f"skipped {len(bad)} unreadable audio file(s) of {corpus.path}: " + "; ".join(bad[:3])
            + (" ..." if len(bad) > 3 else ""))
    return feats, texts


def _lexicon(recipe: Recipe, vocab_dir: Optional[Path], train_texts: Sequence[str] = ()) -> Optional[list[str]]:
    """The lexicon's words (``train``: every word of the training transcripts); the run folder
    keeps a copy so that the run stands alone."""
    kept = vocab_dir / "lexicon.txt" if vocab_dir is not None else None
    if kept is not None and kept.exists():
        path = kept
    elif recipe.head.lexicon == "train":
        words = sorted({w for text in train_texts for w in text.split()})
        if not words:
            raise SeqkitError(f"{kept if kept is not None else recipe.source}: head.lexicon: train needs the "
                              "training transcripts' words, and there are none (is the run folder complete?)")
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text("".join(w + "\n" for w in words), encoding="utf-8")
        return words
    elif recipe.head.lexicon:
        path = resolve_path(recipe.head.lexicon, recipe_base(recipe), f"{recipe.source}: head.lexicon")
        assert path is not None
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kept)
    else:
        return None
    words = {line.split()[0].lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    return sorted(words)


def _prepare(recipe: Recipe, run_dir: Optional[Path], *, log=print) -> Prepared:
    """Data (features computed once, kept in memory), output units (kept in ``run_dir/vocab``),
    model and batches of a recipe; extra splits (flite, librivox) are evaluated at the end."""
    splits = load_splits(recipe)
    if not splits["train"].utterances:
        raise SeqkitError(f"{splits['train'].path}: no training utterances")
    vocab_dir = run_dir / "vocab" if run_dir is not None else None
    texts = [u.text for u in splits["train"].utterances]
    vocab = persist_vocab(run_dir, "units.json", lambda: CTCVocab.build(texts, recipe.head.vocab, recipe.head.bpe_size),
                          CTCVocab.load, CTCVocab.save)
    seed_everything(recipe.train.seed)
    lexicon = _lexicon(recipe, vocab_dir, texts)
    model = SpeechModel(recipe, vocab, head_class(recipe), lexicon)
    trim = recipe.features.trim_silence
    augment = WaveAugment.from_config(recipe.features, recipe.train.seed)
    data = {name: _features(model, corpus, log, name, augment if name == "train" else None)
            for name, corpus in splits.items() if corpus.utterances}
    feats, texts = data["train"]
    if not feats:
        raise SeqkitError(f"{splits['train'].path}: no readable training audio")
    if trim is not None:
        before = sum(f.size(0) for f in feats)
        feats = [trim_silence(f, round(trim * 1000 / HOP_MS)) for f in feats]
        log(f"trimmed silence at the ends of training utterances: {before / 360000:.1f} h -> "
            f"{sum(f.size(0) for f in feats) / 360000:.1f} h")
    if recipe.features.normalize == "global":
        model.normalize.fit(feats)
    targets = [vocab.encode(t) for t in texts]
    hours = sum(f.size(0) for f in feats) / 360000
    log(f"data: {len(feats)} train ({hours:.1f} h) / {len(data.get('valid', ([], []))[0])} valid / "
        f"{len(data.get('test', ([], []))[0])} test utterances"
        + "".join(f" / {len(d[0])} {k}" for k, d in data.items() if k not in ("train", "valid", "test"))
        + f"; {len(vocab)} output units ({vocab.kind})")
    cfg = recipe.train
    held = {k: make_batches(data[k][0], None, data[k][1], cfg.eval_batch_size) if k in data else None
            for k in ("valid", "test")}
    extras = {k: make_batches(d[0], None, d[1], cfg.eval_batch_size) for k, d in data.items()
              if k not in ("train", "valid", "test")}

    def final_eval(trained: nn.Module) -> dict[str, Any]:
        assert isinstance(trained, SpeechModel)
        info: dict[str, Any] = {}
        head = recipe.head
        if head.lm:
            held_out = [t for k, d in data.items() if k != "train" for t in d[1]]
            info, _ = _decoder_lm(trained, recipe, run_dir, held["valid"], held_out, log, spec=head.lm,
                                  order=head.lm_order, weight=head.lm_weight, word_score=head.word_score,
                                  sil_score=head.sil_score, rescore=head.lm_rescore, tune=head.lm_tune,
                                  weights=head.lm_weight_grid, word_scores=head.word_score_grid,
                                  sil_scores=head.sil_score_grid)
        return _report(trained, held["test"], extras, recipe.head.beam_size) | info

    repeat_last = recipe.features.train_padding == "repeat"
    return Prepared(model, lambda epoch: make_batches(feats, targets, texts, cfg.batch_size,
                                                      repeat_last=repeat_last, **epoch_order(cfg, epoch)),
                    held["valid"], held["test"], final_eval=final_eval)


def _decoder_lm(model: SpeechModel, recipe: Recipe, run_dir: Optional[Path], valid: Optional[Batches],
                held_out: Sequence[str], log: Callable[[str], None], *, spec: str, order: int = 4,
                weight: float = 0.5, word_score: float = 0.0, sil_score: float = 0.0, rescore: bool = False,
                nbest: int = 16, tune: bool = True, beam: int = 0, tune_beam: int = 0,
                weights: Sequence[float] = decoding.WEIGHTS, word_scores: Sequence[float] = decoding.WORD_SCORES,
                sil_scores: Sequence[float] = decoding.SIL_SCORES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A decoder LM for ``model``: built (``spec`` kenlm: an ``order``-gram of the dataset's text
    without the ``held_out`` sentences, in run/lm) or found (a file or an LM run), tuned on
    ``valid`` (when ``tune``) with a beam of ``tune_beam``, kept in run/decoder.json with the
    search's beam width ``beam`` and set on the model. Returns what the metrics record about it,
    and the tuning grid's rows."""
    beam = beam or recipe.head.lm_beam_size or recipe.head.beam_size
    tune_beam = tune_beam or recipe.head.lm_tune_beam or beam
    if beam <= 0 or not model.head.lexicon:
        raise RecipeError(f"{recipe.source}: a decoder language model needs a beam search with a lexicon "
                          "(head.beam_size > 0 and head.lexicon)")
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if spec == "kenlm":
        if run_dir is None:
            raise RecipeError(f"{recipe.source}: head.lm: kenlm builds the model into the run folder; run the "
                              "recipe with --out")
        provider = registry.datasets.get(recipe.data.dataset, where=f"{recipe.source}: data.dataset")
        lines = (provider.lm_text(recipe.data) if hasattr(provider, "lm_text")
                 else [u.text for u in load_splits(recipe, ["train"])["train"].utterances])
        lines, check = decoding.held_out_check(lines, held_out)
        folder = run_dir / "lm"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "text.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        log(f"decoder LM text: {check['kept_lines']:,} lines, {check['words']:,} words; removed "
            f"{check['removed_lines']:,} lines that are one of the {check['held_out_sentences']:,} "
            f"valid/test/extra sentences (left in the text: {check['held_out_sentences_in_lm_text']})")
        path = decoding.build_kenlm(lines, folder, order=order, log=log)
        info["lm_text"] = check
    else:
        path = resolve_path(spec, recipe_base(recipe), f"{recipe.source}: head.lm")
        assert path is not None
    lm = decoding.resolve(str(path), weight=weight, word_score=word_score, rescore=rescore, nbest=nbest,
                          sil_score=sil_score)
    rows: list[dict[str, Any]] = []
    if tune and valid is not None:
        log(f"tuning lm_weight, word_score and sil_score on {sum(len(b.texts) for b in valid)} validation "
            f"utterances, beam {tune_beam}")
        lm, rows = decoding.tune(model.head, _emissions(model, valid), lm, beam_size=tune_beam, weights=weights,
                                 word_scores=word_scores, sil_scores=sil_scores, log=log)
    model.decoder_lm, model.lm_beam = lm, beam
    if run_dir is not None:
        decoding.save(run_dir, lm, beam, {"tuned_on": "valid" if rows else None, "tune_beam": tune_beam if rows
                                          else None, "grid": rows, **info})
    seconds = round(time.perf_counter() - started, 1)
    log(f"decoder LM: {lm.describe()} ({seconds:.0f} s to build and tune)")
    return info | {"decoder_lm": {"kind": lm.kind, "lm_weight": lm.weight, "word_score": lm.word_score,
                                  "sil_score": lm.sil_score, "rescore": lm.rescore, "seconds": seconds}}, rows


def tune_decoder(model: SpeechModel, run_dir: Path, spec: str, *, order: int = 4, beam: int = 0, tune_beam: int = 0,
                 weights: Sequence[float] = decoding.WEIGHTS, word_scores: Sequence[float] = decoding.WORD_SCORES,
                 sil_scores: Sequence[float] = decoding.SIL_SCORES, rescore: bool = False, nbest: int = 16,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``seqkit tune-decoder``: :func:`_decoder_lm` for a trained run, on its recipe's validation
    split; every other split's transcripts are held out of a kenlm text too."""
    recipe = model.recipe
    if spec != "kenlm":  # a path on the command line is read from the current folder
        if not Path(spec).expanduser().exists():
            raise SeqkitError(f"--lm {spec}: no such file or folder; give kenlm, a KenLM model (.arpa or .bin) or "
                              "a seqkit language-model run folder")
        spec = str(Path(spec).expanduser().resolve())
    splits = load_splits(recipe, ["valid", "test", "flite", "librivox"])
    valid = splits.get("valid")
    if valid is None or not valid.utterances:
        raise SeqkitError(f"{run_dir}: the recipe's data has no validation split to tune on")
    held_out = [u.text for name, corpus in splits.items() if name != "train" for u in corpus.utterances]
    feats, texts = _features(model, valid, log, "valid")
    batches = make_batches(feats, None, texts, recipe.train.eval_batch_size)
    _, rows = _decoder_lm(model, recipe, run_dir, batches, held_out, log, spec=spec, order=order, rescore=rescore,
                          nbest=nbest, beam=beam, tune_beam=tune_beam, weights=weights, word_scores=word_scores,
                          sil_scores=sil_scores)
    return rows


@torch.no_grad()
def _emissions(model: SpeechModel, batches: Iterable[SpeechBatch]) -> list[tuple[Tensor, Tensor, list[str]]]:
    """CTC log-probabilities, their lengths and the reference texts of each batch."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in batches:
        batch = batch.to(device)
        features, lengths = model.encode(batch)
        out.append((model.head.log_probs(features).cpu(), lengths.cpu(), list(batch.texts)))
    return out


@torch.no_grad()
def _report(model: SpeechModel, test: Optional[Batches], extras: dict[str, Batches], beam: int) -> dict[str, Any]:
    """Greedy (and beam-search) scores on the test split, then on each extra split under its
    name; one encoder pass per split."""
    model.eval()
    device = next(model.parameters()).device
    beams: list[Decoding] = [0, beam] if beam > 0 else [0]
    if beam > 0 and model.decoder_lm is not None:
        beams.append(("lm", model.lm_beam))
    out: dict[str, Any] = {}
    for name, batches in (({"test": test} if test is not None else {}) | extras).items():
        scores = model.evaluate_beams((b.to(device) for b in batches), beams)
        result = scores[0]
        if beam > 0:
            result.update(cer_beam=scores[beam]["cer"], wer_beam=scores[beam]["wer"])
        if len(beams) > 2:
            result.update(cer_lm=scores[beams[2]]["cer"], wer_lm=scores[beams[2]]["wer"])
        if name == "test":
            out.update(result, **({"beam_size": beam} if beam > 0 else {}),
                       **({"lm_beam_size": model.lm_beam} if len(beams) > 2 else {}))
        else:
            out[name] = result
    return out


class TranscriptionTask(Task):
    """Speech to text with CTC: CER and WER in percent, greedy and beam search.

    A loaded model offers ``transcribe(audio)``; ``seqkit transcribe RUN FILE...`` prints text."""

    default_head = "ctc"
    default_dataset = "synth-speech"
    default_features = "fbank"
    monitor, mode = "cer", "min"
    summary = ("cer", "wer", "cer_beam", "wer_beam")

    def check(self, recipe: Recipe) -> None:
        if getattr(recipe.head, "lm", None) == "kenlm":  # found missing now, not after training
            from ..ngram import require_kenlm

            try:
                require_kenlm()
            except SeqkitError as exc:
                raise RecipeError(f"{recipe.source}: head.lm: kenlm needs KenLM: {exc}; or set head.lm: null") from None
        elif getattr(recipe.head, "lm", None):  # a file or an LM run: there before training starts
            resolve_path(recipe.head.lm, recipe_base(recipe), f"{recipe.source}: head.lm")
        trim = getattr(recipe.features, "trim_silence", None)
        if trim is not None and not trim >= 0:
            raise RecipeError(f"{recipe.source}: features.trim_silence: expected seconds of silence to keep, "
                              f">= 0 (0.1 is typical), or null to keep it all; got {trim}")

    def prepare(self, recipe: Recipe, run_dir: Optional[Path], *, log=print) -> Prepared:
        self.check(recipe)
        return _prepare(recipe, run_dir, log=log)

    def build_model(self, recipe: Recipe, run_dir: Path) -> SpeechModel:
        vocab = read_vocab(run_dir / "vocab", CTCVocab.load, marker="units.json")
        model = SpeechModel(recipe, vocab, head_class(recipe), _lexicon(recipe, run_dir / "vocab"))
        saved = decoding.load(run_dir)
        if saved is not None:
            model.decoder_lm, model.lm_beam = saved
        return model

    def evaluate_data(self, model: nn.Module, data: Optional[Path], *, batch_size: int = 128) -> dict[str, Any]:
        assert isinstance(model, SpeechModel)
        return _evaluate_data(model, data, batch_size=batch_size)

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        """Greedy, beam and (with a decoder LM in decoder.json) beam + LM columns, CER and WER rows."""
        beam = metrics.get("beam_size")
        columns = [("greedy", "")] + ([(f"beam {beam}", "_beam")] if beam else [])
        if "cer_lm" in metrics:
            columns.append(("+ LM", "_lm"))
        lines = [f"{'':<6}" + "".join(f"{title:>10}" for title, _ in columns)]
        for key in ("cer", "wer"):
            lines.append(f"{key:<6}" + "".join(f"{metrics[key + suffix]:>10.2f}" for _, suffix in columns))
        if "decoder_lm" in metrics:
            lm_beam = f", beam {metrics['lm_beam_size']}" if metrics.get("lm_beam_size") else ""
            lines.append(f"LM: {metrics['decoder_lm']}{lm_beam}")
        return "\n".join(lines)

    def format_notes(self, metrics: dict[str, Any]) -> list[str]:
        notes = []
        if "utterances" in metrics and "data" in metrics:
            notes.append(f"{metrics['utterances']} utterances ({metrics.get('audio_s', '?')} s of audio) "
                         f"from {metrics['data']}")
        return notes + [f"left out: {error}" for error in metrics.get("unreadable", [])]


def _evaluate_data(model: SpeechModel, data: Optional[Path], *, batch_size: int = 128) -> dict[str, Any]:
    """CER/WER (greedy, and beam search when the recipe sets head.beam_size) on a JSONL
    manifest, or on the recipe's test split.  Unreadable files are listed and left out."""
    corpus = read_manifest(data) if data is not None else load_splits(model.recipe, ["test"])["test"]
    if not corpus.utterances:
        raise SeqkitError(f"{corpus.path}: no utterances to evaluate")
    paths: list[AudioInput] = [u.audio for u in corpus.utterances]
    beam = model.recipe.head.beam_size
    hows: list[Decoding] = [0, beam] if beam > 0 else [0]
    if beam > 0 and model.decoder_lm is not None:
        hows.append(("lm", model.lm_beam))
    results = model.transcribe_beams(paths, hows, batch_size=batch_size, errors="skip")
    ok = [i for i, r in enumerate(results) if r["texts"] is not None]
    if not ok:
        raise DataError(f"{corpus.path}: none of the {len(paths)} audio files could be read")
    refs = [corpus.utterances[i].text for i in ok]
    metrics: dict[str, Any] = error_rates(refs, [results[i]["texts"][0] for i in ok])
    if beam > 0:
        scores = error_rates(refs, [results[i]["texts"][beam] for i in ok])
        metrics.update(cer_beam=scores["cer"], wer_beam=scores["wer"], beam_size=beam)
    if len(hows) > 2:
        scores = error_rates(refs, [results[i]["texts"][hows[2]] for i in ok])
        metrics.update(cer_lm=scores["cer"], wer_lm=scores["wer"], decoder_lm=model.decoder_lm.describe(),
                       lm_beam_size=model.lm_beam)
    audio_s = sum(results[i]["duration_s"] for i in ok)
    metrics.update(utterances=len(ok), audio_s=round(audio_s, 1), data=str(corpus.path),
                   unreadable=[r["error"] for r in results if r["texts"] is None])
    return metrics
