"""Streaming sessions: a model that reads its input as it arrives and keeps its state.

``SpeechModel.stream()`` gives a :class:`TranscriptionStream` (audio chunks in, the partial
transcript out) for a model whose encoder reads forward only and whose features need no whole
utterance (``features.normalize: global`` or ``none``); ``LanguageModel.stream()`` gives an
:class:`LMStream` (text in, its log-probability out; generation continues from what was read).

Chunked is whole: feeding an utterance in pieces of any size gives the transcript, and the
log-probabilities, of feeding it at once (to float rounding). Each stage keeps exactly the
context it needs: the log-mel frames wait for their whole 25 ms window, each convolution of
the front-end for its next input frame (the front-end's look-ahead: 10 ms + 20 ms), the
encoder carries its recurrent state, and greedy CTC decoding its last unit.

A session is not shared between threads; sessions of one model are independent of each other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import SeqkitError
from .features.audio import _LOG_FLOOR

if TYPE_CHECKING:
    from .models.lm import LanguageModel
    from .models.speech import SpeechModel

__all__ = ["LMStream", "TranscriptionStream"]


class _Framer:
    """Log-mel frames of a waveform that arrives in pieces, as ``Fbank`` computes them at once
    (windows centred on every hop, the signal padded with half a window of zeros each side)."""

    def __init__(self, fbank) -> None:
        self.mel = fbank.mel
        self.hop = fbank.hop_length
        self.n_fft = self.mel.n_fft
        self.samples = torch.zeros(self.n_fft // 2)  # the left padding, then the signal
        self.start = 0  # sample index of samples[0] in the padded signal
        self.frames = 0  # frames emitted
        self.received = 0

    def push(self, wave: Tensor, last: bool = False) -> Tensor:
        """New frames (K, F) now that ``wave`` arrived (``last``: the signal ends after it)."""
        self.received += wave.numel()
        parts = [self.samples, wave.float()]
        if last:
            parts.append(torch.zeros(self.n_fft // 2))
        self.samples = torch.cat(parts)
        total = self.received // self.hop + 1 if last else None  # frames of the whole signal
        end = self.start + self.samples.numel()  # padded samples known so far
        ready = (end - self.n_fft) // self.hop + 1 if end >= self.n_fft else 0
        if total is not None:
            ready = total
        count = ready - self.frames
        if count <= 0:
            return torch.zeros(0, self.mel.n_mels)
        offset = self.frames * self.hop - self.start
        chunk = self.samples[offset: offset + (count - 1) * self.hop + self.n_fft]
        spec = self.mel.spectrogram
        power = torch.stft(chunk, self.n_fft, self.hop, spec.win_length, spec.window, center=False,
                           return_complex=True).abs().pow(2)  # (n_fft // 2 + 1, K)
        feats = (self.mel.mel_scale(power) + _LOG_FLOOR).log().transpose(0, 1)  # (K, F)
        self.frames = ready
        keep = self.frames * self.hop - self.start  # samples the next frame starts at
        self.samples = self.samples[keep:]
        self.start += keep
        return feats


class _StreamingConv:
    """One 3x3 convolution layer of ``ConvSubsampler`` (time stride s, padding 1) over frames that
    arrive in pieces: output j needs inputs s*j - 1 .. s*j + 1, zeros outside the signal."""

    def __init__(self, conv, stride: int) -> None:
        self.conv, self.stride = conv, stride
        self.buffer: Optional[Tensor] = None  # (C, T, F) inputs from index `first`
        self.first = -1  # index of buffer[:, 0]; starts at -1: the zero padding before the signal
        self.received = 0
        self.next = 0  # next output index

    def push(self, x: Tensor, last: bool = False) -> Tensor:
        """x (C, K, F) new input frames; returns the new output frames (C', K', F')."""
        if self.buffer is None:
            self.buffer = x.new_zeros(x.shape[0], 1, x.shape[2])  # input -1: padding
        self.buffer = torch.cat([self.buffer, x], dim=1)
        self.received += x.shape[1]
        s = self.stride
        if last:
            outputs = (self.received - 1) // s + 1 if self.received else 0  # ceil(L / s)
            self.buffer = torch.cat([self.buffer, self.buffer.new_zeros(self.buffer.shape[0], 1,
                                                                        self.buffer.shape[2])], dim=1)
        else:
            outputs = (self.received - 2) // s + 1 if self.received >= 2 else 0  # s*j + 1 < received
        count = outputs - self.next
        if count <= 0:
            return self.buffer.new_zeros(self.conv.out_channels, 0, (self.buffer.shape[2] - 1) // 2 + 1)
        lo = s * self.next - 1 - self.first
        window = self.buffer[:, lo: lo + s * (count - 1) + 3]  # (C, ., F)
        y = F.conv2d(window.unsqueeze(0), self.conv.weight, self.conv.bias, (s, 2), (0, 1)).relu()[0]
        self.next = outputs
        drop = s * self.next - 1 - self.first  # inputs before the next output's window are done
        self.buffer = self.buffer[:, drop:]
        self.first += drop
        return y


class TranscriptionStream:
    """Audio in, partial transcript out, for a forward-only speech model.

    ``feed(samples)`` takes the next samples (a 1-D float array or tensor at the model's rate,
    ``model.sample_rate``) and returns the transcript so far; ``finish()`` reads the end of the
    signal (the last frames wait for it) and returns the final transcript. ``text`` is the
    latest transcript. Greedy CTC decoding. ``keep_log_probs``: keep each chunk's CTC
    log-probabilities in ``log_probs`` (for inspection; off, a long stream holds nothing but
    its transcript).
    """

    def __init__(self, model: "SpeechModel", *, keep_log_probs: bool = False) -> None:
        enc = model.encoder
        if enc.directions != "forward":
            raise SeqkitError(f"stream() needs a forward-only encoder; this model's directions are "
                              f"{enc.directions!r} (it waits for the end of the utterance): train one like "
                              f"recipes/ctc/synth-speech-streaming.yaml")
        if model.normalize.mode == "utterance":
            raise SeqkitError("stream() needs features.normalize: global or none; this model normalises each "
                              "utterance by its own statistics, which a stream does not know until its end")
        self.model = model
        self.sample_rate = model.sample_rate
        self._framer = _Framer(model.fbank)
        front = model.frontend
        self._convs = [_StreamingConv(conv, s) for conv, s in zip(front.convs, front.strides, strict=True)]
        self._state: Optional[tuple[Tensor, ...]] = None
        self._ids: list[int] = []
        self._last = 0  # the previous frame's best unit (0: blank), across chunks
        # (K, C) per chunk, kept only when asked (a stream of hours would hold them all)
        self.log_probs: Optional[list[Tensor]] = [] if keep_log_probs else None
        self.finished = False
        self.text = ""

    @torch.inference_mode()
    def feed(self, samples: Union[np.ndarray, Tensor], *, last: bool = False) -> str:
        if self.finished:
            raise SeqkitError("this stream has finished; start another with model.stream()")
        wave = torch.as_tensor(np.asarray(samples, dtype=np.float32) if not isinstance(samples, Tensor) else samples)
        if wave.dim() != 1:
            raise SeqkitError(f"feed() takes mono samples (T,), got shape {tuple(wave.shape)}")
        device = next(self.model.parameters()).device
        feats = self._framer.push(wave.float().cpu(), last)  # (K, F)
        model = self.model
        x = model.normalize(feats.unsqueeze(0).to(device), torch.tensor([feats.shape[0]], device=device))[0]
        h = x.unsqueeze(0)  # (1, K, F): one channel
        for conv in self._convs:
            h = conv.push(h, last)
        self.finished = last
        if h.shape[1] == 0:
            return self.text
        c, k, f = h.shape
        y = model.frontend.proj(h.permute(1, 0, 2).reshape(1, k, c * f))  # (1, K, E)
        out, self._state = model.encoder(y, None, self._state)
        log_probs = model.head.log_probs(out)[0]  # (K, C)
        if self.log_probs is not None:
            self.log_probs.append(log_probs.cpu())
        for unit in log_probs.argmax(-1).tolist():
            if unit != self._last and unit != 0:
                self._ids.append(unit)
            self._last = unit
        self.text = model.vocab.decode(self._ids)
        return self.text

    def finish(self) -> str:
        """Read the end of the signal; the final transcript."""
        return self.feed(np.zeros(0, np.float32), last=True)


class LMStream:
    """Text in, its log-probability out, the state carried; ``generate`` continues the text read.

    The stream starts at the beginning of a line (after ``<eos>``), as ``score`` reads a text.
    ``feed(text)`` returns the natural-log probability of the text's tokens given everything
    read before; pieces that split a text at token boundaries (words: at spaces) add up to the
    log-probability of reading it at once. ``generate_tokens(...)`` yields sampled tokens and
    reads them too, so a later ``feed`` continues after them. ``end_line()`` reads ``<eos>``.
    """

    def __init__(self, model: "LanguageModel") -> None:
        if model.split:
            raise SeqkitError("stream() needs a forward language model; a split bi-LM reads each text whole")
        self.model = model
        self._device = next(model.parameters()).device
        self._state: Optional[tuple[Tensor, ...]] = None  # after every token but the last
        self._pending = model.vocab.eos_id  # the last token, not yet read into the state
        self.logprob = 0.0
        self.tokens = 0
        self._line_start = True

    @torch.inference_mode()
    def _read(self, ids: list[int]) -> float:
        model = self.model
        x = torch.tensor([[self._pending, *ids[:-1]]], device=self._device)
        out, self._state = model.encoder(model.embed(x), None, self._state)
        lp = model.head(out, model.embed.weight)[0].float().log_softmax(-1)  # (L, V)
        self._pending = ids[-1]
        total = float(lp.gather(1, torch.tensor(ids, device=self._device).unsqueeze(1)).sum())
        self.logprob += total
        self.tokens += len(ids)
        return total

    def feed(self, text: str) -> float:
        ids = self.model.vocab.encode(text)
        if not ids:
            return 0.0
        self._line_start = False
        return self._read(ids)

    def end_line(self) -> float:
        """Read ``<eos>`` (the end of a line); its log-probability."""
        self._line_start = True
        return self._read([self.model.vocab.eos_id])

    @property
    def ppl(self) -> float:
        """Perplexity per token of everything fed so far (generated tokens not counted)."""
        return math.exp(min(-self.logprob / max(self.tokens, 1), 50.0))

    def generate_tokens(self, max_tokens: int = 100, **options: Any) -> Iterator[str]:
        """Sampled continuation (options as ``LanguageModel.generate_tokens``: temperature, top_k,
        top_p, seed, stop_at_eos); each token is read into the stream as it comes (its
        probability is not added to ``logprob``)."""
        from .models.lm import token_texts
        from .sampling import sample_steps

        if max_tokens < 0:
            raise SeqkitError(f"max_tokens must be >= 0, got {max_tokens}")
        model = self.model
        stop = model.vocab.eos_id if options.pop("stop_at_eos", False) else None

        def step(ids: Tensor, state):
            logits, new = model.step(ids, state)
            self._state = new  # every token up to ids read
            return logits, new

        def ids() -> Iterator[int]:
            with torch.inference_mode():
                first = torch.tensor([self._pending], device=self._device)
                for token in sample_steps(step, first, self._state, max_tokens, stop=stop, **options):
                    self._pending = int(token)
                    yield self._pending

        for text in token_texts(model.vocab, ids(), line_start=self._line_start):
            self._line_start = text == "\n"
            yield text

    def generate(self, max_tokens: int = 100, **options: Any) -> str:
        return "".join(self.generate_tokens(max_tokens, **options))
