"""Audio features: reading sound files, log-mel filterbanks, normalisation and SpecAugment.

Shape legend: N batch, L frames (10 ms each), F mel bins, T samples.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import soundfile
import torch
import torchaudio
from torch import Tensor, nn

from ..errors import DataError, RecipeError
from ..recipe import bounded

__all__ = ["AudioInput", "Fbank", "FbankFeatures", "Normalizer", "SpecAugment", "VTLP", "as_waveform", "read_audio",
           "trim_silence"]



@dataclass
class FbankFeatures:
    """Options of the ``fbank`` front-end: log-mel filterbanks, SpecAugment and a convolutional
    front-end that subsamples time (the CNN-LSTM of the literature)."""

    sample_rate: int = bounded(16000, ge=1000)  # audio is read at any rate and resampled to this
    n_mels: int = bounded(80, ge=1)  # mel bins of 25 ms windows every 10 ms
    normalize: Literal["utterance", "global", "none"] = "utterance"  # mean/variance per mel bin
    freq_masks: int = bounded(2, ge=0)  # SpecAugment (training only): masks per utterance across mel bins ...
    freq_mask_width: int = bounded(15, ge=0)  # ... each up to this many bins wide
    time_masks: int = bounded(2, ge=0)  # masks per utterance across time ...
    time_mask_width: int = bounded(40, ge=0)  # ... each up to this many 10 ms frames ...
    time_mask_fraction: float = bounded(0.15, ge=0, le=1)  # ... and up to this fraction of the utterance
    vtlp: float = bounded(0.0, ge=0, lt=1)  # training only: warp each utterance's frequency axis by 1 +- vtlp
    subsampling: int = 4  # time subsampling of the conv front-end: 1, 2, 4 (<= 2**conv_layers)
    conv_layers: int = bounded(2, ge=0)  # 3x3 conv layers, each halving the mel axis
    conv_channels: int = bounded(32, ge=1)
    dropout: float = bounded(0.0, ge=0, lt=1)  # on the front-end's output
    train_padding: Literal["mask", "repeat"] = "mask"  # repeat: pad training utterances with their last frame
    trim_silence: Optional[float] = None  # training only: seconds of silence kept at either end; null: all
    # Waveform augmentation of the training audio, drawn once per utterance (fixed by train.seed):
    speed_perturb: float = bounded(0.0, ge=0, lt=0.5)  # play at 1 - s, 1 or 1 + s times the speed (tempo and pitch)
    noise: float = bounded(0.0, ge=0, le=1)  # this fraction of utterances gets white, pink or brown noise ...
    noise_snr: float = 10.0  # ... at a signal-to-noise ratio between noise_snr and noise_snr + 20 dB
    gain_db: float = bounded(0.0, ge=0)  # scale the loudness by up to +- gain_db


_MAX_CHANNELS = 8
AudioInput = Union[str, os.PathLike, np.ndarray, Tensor]
HOP_MS, WINDOW_MS = 10, 25
_LOG_FLOOR = 1e-6  # keeps log() finite in digital silence


def read_audio(path: Union[str, os.PathLike], sample_rate: int = 16000) -> Tensor:
    """Read a WAV/FLAC/OGG file (anything libsndfile reads) as mono float32 at ``sample_rate``.

    Channels are averaged and other rates resampled with torchaudio.  A missing, unreadable,
    empty or zero-length file raises :class:`~seqkit.errors.DataError` naming the file.
    Returns a (T,) tensor.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: audio file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        reason = reason.replace(f"Error opening {str(path)!r}: ", "")
        raise DataError(f"{path}: cannot read audio ({reason})") from None
    return as_waveform(data, rate, sample_rate, where=str(path), channels_last=True)


def as_waveform(audio: Union[np.ndarray, Tensor], rate: int, sample_rate: int = 16000, *,
                where: str = "audio", channels_last: Optional[bool] = None) -> Tensor:
    """A (T,), (T, channels) or (channels, T) array (the layout ``torchaudio.load`` returns) at
    ``rate`` as a mono (T,) float32 tensor at ``sample_rate``. The channel axis is the shorter one
    and has at most 8 entries (``channels_last`` says which it is, when the caller knows);
    anything else is one clear error."""
    if isinstance(audio, np.ndarray) and audio.dtype.kind not in "fiu":
        raise DataError(f"{where}: expected real-valued samples (float or integer PCM), got a {audio.dtype} array")
    if not isinstance(audio, (np.ndarray, Tensor)):
        raise DataError(f"{where}: expected a path, a numpy array or a torch tensor of samples, "
                        f"got {type(audio).__name__}")
    wave = torch.as_tensor(audio)
    if wave.is_complex() or wave.dtype == torch.bool:
        raise DataError(f"{where}: expected real-valued samples (float or integer PCM), got {wave.dtype}")
    if wave.dtype == torch.uint8:  # 8-bit PCM is unsigned, centred on 128
        wave = (wave.float() - 128.0) / 128.0
    elif not wave.is_floating_point():  # signed integer PCM: scale to [-1, 1]
        wave = wave.float() / float(-torch.iinfo(wave.dtype).min)
    wave = wave.float()
    if wave.numel() == 0:
        raise DataError(f"{where}: empty audio (no samples)")
    if wave.dim() == 2:
        if channels_last is not None:
            channel_axis = 1 if channels_last else 0
        else:
            channel_axis = 0 if wave.size(0) < wave.size(1) else 1
        ambiguous = channels_last is None and wave.size(0) == wave.size(1) > 1
        if wave.size(channel_axis) > _MAX_CHANNELS or ambiguous:
            raise DataError(f"{where}: cannot tell channels from samples in shape {tuple(wave.shape)}; give (T,), "
                            f"(T, channels) or (channels, T) with at most {_MAX_CHANNELS} channels")
        wave = wave.mean(dim=channel_axis)
    if wave.dim() != 1:
        raise DataError(f"{where}: expected samples as (T,), (T, channels) or (channels, T), "
                        f"got shape {tuple(wave.shape)}")
    if wave.numel() == 0:
        raise DataError(f"{where}: empty audio (no samples)")
    if not bool(torch.isfinite(wave).all()):
        raise DataError(f"{where}: audio contains NaN or infinite samples")
    if rate <= 0:
        raise DataError(f"{where}: invalid sample rate {rate}")
    if rate != sample_rate:
        wave = _resampler(int(rate), int(sample_rate))(wave)
    return wave.contiguous()


@functools.lru_cache(maxsize=16)
def _resampler(rate: int, sample_rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler with its filter kernel built once per pair of rates (building it
    took longer than resampling a few seconds of speech).  Its kernel is computed in float64,
    so it differs from ``torchaudio.functional.resample`` on float32 input by ~1e-5."""
    return torchaudio.transforms.Resample(rate, sample_rate)


class WaveAugment:
    """Training audio, altered once per utterance and fixed by the seed and the utterance's index:
    speed perturbation (the audio resampled so that it plays 1 - s, 1 or 1 + s times as fast,
    tempo and pitch together, as Ko et al. 2015 did with 0.9/1.0/1.1), generated noise (white,
    pink or brown, at a signal-to-noise ratio drawn from ``snr``..``snr`` + 20 dB) and a gain."""

    def __init__(self, speed: float = 0.0, noise: float = 0.0, snr: float = 10.0, gain_db: float = 0.0,
                 seed: int = 0) -> None:
        self.speed, self.noise, self.snr, self.gain_db, self.seed = speed, noise, snr, gain_db, seed

    @classmethod
    def from_config(cls, cfg: FbankFeatures, seed: int) -> Optional["WaveAugment"]:
        if not (cfg.speed_perturb or cfg.noise or cfg.gain_db):
            return None
        return cls(cfg.speed_perturb, cfg.noise, cfg.noise_snr, cfg.gain_db, seed)

    def __call__(self, wave: Tensor, index: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        draw = torch.rand(5, generator=gen).tolist()
        if self.speed:
            factor = (1 - self.speed, 1.0, 1 + self.speed)[min(int(draw[0] * 3), 2)]
            if factor != 1.0:  # read as if recorded at factor x the rate: factor x as fast
                wave = _resampler(round(factor * 1000), 1000)(wave)
        if self.gain_db:
            wave = wave * 10 ** ((2 * draw[1] - 1) * self.gain_db / 20)
        if draw[2] < self.noise:
            color = min(int(draw[3] * 3), 2)  # 0 white, 1 pink (1/f power), 2 brown (1/f^2)
            noise = colored_noise(wave.numel(), color, gen)
            snr_db = self.snr + 20 * draw[4]
            power = wave.pow(2).mean().clamp(min=1e-10)
            wave = wave + noise * (power / 10 ** (snr_db / 10)).sqrt()
        return wave


def colored_noise(n: int, exponent: int, gen: torch.Generator) -> Tensor:
    """``n`` samples of noise with unit power whose power spectrum falls as 1/f**exponent
    (0 white, 1 pink, 2 brown)."""
    spectrum = torch.fft.rfft(torch.randn(n, generator=gen))
    if exponent:
        f = torch.arange(spectrum.numel(), dtype=torch.float32).clamp(min=1.0)
        spectrum = spectrum / f.pow(exponent / 2)
    noise = torch.fft.irfft(spectrum, n)
    return noise / noise.pow(2).mean().sqrt().clamp(min=1e-12)


class Fbank(nn.Module):
    """Log-mel filterbank energies: 25 ms windows every 10 ms.

    Inputs: a (T,) waveform at ``sample_rate``.  Outputs: (L, F) with ``L = T // hop + 1``.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = sample_rate * HOP_MS // 1000
        win = sample_rate * WINDOW_MS // 1000
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=win, win_length=win, hop_length=self.hop_length, n_mels=n_mels,
            pad_mode="constant")  # reflection needs more samples than half a window
        # the window and filter bank follow from the settings: keep them out of checkpoints
        for module in self.mel.modules():
            for name, buf in list(module.named_buffers(recurse=False)):
                delattr(module, name)
                module.register_buffer(name, buf, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, wave: Tensor) -> Tensor:
        return (self.mel(wave.float()) + _LOG_FLOOR).log().transpose(0, 1)  # (L, F)


SILENCE_DB = 50.0  # trim_silence: a frame this far below the loudest one is silence


def trim_silence(feats: Tensor, keep: int) -> Tensor:
    """(L, F) log-mel features with at most ``keep`` frames of silence left at either end.

    Silence is a frame whose energy (all mel bins together) lies more than ``SILENCE_DB``
    below the utterance's loudest frame; frames between the first and last loud ones stay,
    pauses included. An utterance that is all silence is returned as it is.
    """
    if feats.size(0) == 0:
        return feats
    energy = feats.logsumexp(dim=1)  # natural log of each frame's mel power
    loud = (energy >= energy.max() - SILENCE_DB * np.log(10) / 10).nonzero()[:, 0]
    start = max(0, int(loud[0]) - keep)
    end = min(feats.size(0), int(loud[-1]) + 1 + keep)
    return feats if (start, end) == (0, feats.size(0)) else feats[start:end].clone()


def _frame_mask(lengths: Tensor, length: int) -> Tensor:
    """(N, L) True at real frames."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


class Normalizer(nn.Module):
    """Mean/variance normalisation per mel bin: per utterance, with global training
    statistics (kept as buffers, so they travel with the checkpoint), or none.  Padded frames
    come out as exact zeros.

    Inputs: ``x`` (N, L, F), ``lengths`` (N,).  Outputs: (N, L, F).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, n_mels: int, mode: str = "utterance") -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    @torch.no_grad()
    def fit(self, features: list[Tensor]) -> None:
        """Set the global statistics from a list of (L, F) feature tensors."""
        total, first = 0, torch.zeros_like(self.mean, dtype=torch.float64)
        second = torch.zeros_like(first)
        for f in features:
            total += f.size(0)
            first += f.double().sum(0)
            second += f.double().square().sum(0)
        mean = first / max(total, 1)
        var = (second / max(total, 1) - mean.square()).clamp(min=0)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().clamp(min=1e-5).float())

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = _frame_mask(lengths.to(x.device), x.size(1)).unsqueeze(-1)  # (N, L, 1)
        if self.mode == "global":
            x = (x - self.mean) / self.std
        elif self.mode == "utterance":
            count = mask.sum(1, keepdim=True).clamp(min=1)  # (N, 1, 1)
            mean = (x * mask).sum(1, keepdim=True) / count
            var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / count
            x = (x - mean) / (var.sqrt() + 1e-5)
        return x * mask


class SpecAugment(nn.Module):
    """SpecAugment masking (Park et al., 2019) in training mode only; the identity in eval.

    Frequency masks come from torchaudio (independent per utterance); time masks are drawn
    inside each utterance's own length so that short utterances in a padded batch get their
    share.  Masked values are 0, the mean after normalisation.

    Inputs: ``x`` (N, L, F), ``lengths`` (N,).  Outputs: (N, L, F).
    """

    def __init__(self, freq_masks: int = 2, freq_mask_width: int = 15, time_masks: int = 2,
                 time_mask_width: int = 40, time_mask_fraction: float = 0.15) -> None:
        super().__init__()
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width
        self.time_mask_fraction = time_mask_fraction

    @classmethod
    def from_config(cls, cfg: FbankFeatures) -> "SpecAugment":
        return cls(cfg.freq_masks, cfg.freq_mask_width, cfg.time_masks, cfg.time_mask_width,
                   cfg.time_mask_fraction)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if not self.training:
            return x
        if self.freq_mask_width > 0:
            spec = x.transpose(1, 2)  # (N, F, L): torchaudio masks the last two axes
            for _ in range(self.freq_masks):
                spec = torchaudio.functional.mask_along_axis_iid(spec, self.freq_mask_width, 0.0, axis=1)
            x = spec.transpose(1, 2)
        if self.time_masks > 0 and self.time_mask_width > 0:
            lens = lengths.to(x.device).float()
            widest = torch.minimum(torch.full_like(lens, float(self.time_mask_width)),
                                   (lens * self.time_mask_fraction).floor())  # (N,)
            frames = torch.arange(x.size(1), device=x.device)[None, :]  # (1, L)
            keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (N, L)
            for _ in range(self.time_masks):
                width = (torch.rand_like(lens) * (widest + 1)).floor()
                start = (torch.rand_like(lens) * (lens - width + 1)).floor()
                keep &= ~((frames >= start[:, None]) & (frames < (start + width)[:, None]))
            x = x * keep.unsqueeze(-1)
        return x


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)  # the HTK scale of torchaudio's filter bank


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class VTLP(nn.Module):
    """Vocal tract length perturbation (Jaitly & Hinton, 2013) on log-mel features, in
    training mode only; the identity in eval.

    Each utterance draws a factor ``alpha`` in ``[1 - max_warp, 1 + max_warp]`` and its
    frequency axis is warped piecewise linearly: ``f -> alpha f`` up to ``4800 min(alpha, 1)``
    Hz, then a straight line to the Nyquist frequency, which stays put.  The warped spectrum
    is read off the filter bank's own mel centres by linear interpolation between bins, so
    features computed once can be warped differently in every epoch; a speaker-like change of
    formant positions that the synthetic voices alone do not cover.

    Inputs: ``x`` (N, L, F) log-mel, zero padded.  Outputs: (N, L, F).
    """

    boundary_hz = 4800.0

    def __init__(self, n_mels: int, sample_rate: int = 16000, max_warp: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= max_warp < 0.5:
            raise RecipeError(f"features.vtlp: expected a warp between 0 and 0.5 (0.1 is typical), got {max_warp}")
        self.max_warp = max_warp
        self.nyquist = sample_rate / 2
        top = _hz_to_mel(torch.tensor(self.nyquist, dtype=torch.float64))
        edges = torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64)
        self.mel_step = float(edges[1] - edges[0])
        self.register_buffer("centres_hz", _mel_to_hz(edges[1:-1]), persistent=False)  # float64: exact bins

    def source_bins(self, alpha: Tensor) -> Tensor:
        """(N, F) fractional bin each output bin reads from, for warp factors ``alpha`` (N,)."""
        g = self.centres_hz[None, :]  # (1, F) output frequencies
        a = alpha[:, None].to(g.dtype)  # (N, 1), float64
        knee = self.boundary_hz * a.clamp(max=1.0)  # the warped frequency of the knee
        low = g / a  # invert f -> alpha f
        src_knee = knee / a
        high = self.nyquist - (self.nyquist - g) * (self.nyquist - src_knee) / (self.nyquist - knee)
        src = torch.where(g <= knee, low, high).clamp(0.0, self.nyquist)
        return _hz_to_mel(src) / self.mel_step - 1.0  # centre k sits at (k + 1) mel steps

    def warp(self, x: Tensor, alpha: Tensor) -> Tensor:
        """``x`` (N, L, F) warped by factors ``alpha`` (N,)."""
        pos = self.source_bins(alpha.to(x.device)).clamp(0.0, x.size(-1) - 1.0).round(decimals=6)  # (N, F)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=x.size(-1) - 1)
        w = (pos - lo.to(pos.dtype)).to(x.dtype)[:, None, :]  # (N, 1, F)
        shape = (x.size(0), x.size(1), x.size(2))
        x_lo = x.gather(2, lo[:, None, :].expand(shape))
        x_hi = x.gather(2, hi[:, None, :].expand(shape))
        return torch.lerp(x_lo, x_hi, w)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.max_warp <= 0:
            return x
        alpha = 1.0 + (torch.rand(x.size(0), device=x.device) * 2.0 - 1.0) * self.max_warp
        return self.warp(x, alpha)
