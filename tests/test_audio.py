"""Audio in, log-mel features, normalisation, SpecAugment and the conv front-end."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkit.errors import DataError, RecipeError
from seqkit.features.audio import (
    VTLP,
    Fbank,
    Normalizer,
    SpecAugment,
    WaveAugment,
    as_waveform,
    colored_noise,
    read_audio,
    trim_silence,
)
from seqkit.features.frontend import ConvSubsampler

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


def espeak(path, text, voice="en-us"):
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def sine(freq, rate, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


@needs_espeak
def test_real_espeak_audio_is_resampled_to_16k(tmp_path):
    wav = espeak(tmp_path / "a.wav", "in the beginning god created the heaven and the earth")
    info = soundfile.info(str(wav))
    assert info.samplerate == 22050  # espeak's own rate, so this really resamples
    wave = read_audio(wav, 16000)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.numel() - info.frames * 16000 / 22050) <= 2
    assert wave.abs().max() > 0.05  # speech, not silence


def test_resampling_keeps_pitch_and_mixes_channels_down(tmp_path):
    rate = 44100
    left, right = sine(1000, rate), np.zeros(rate, dtype=np.float32)
    path = tmp_path / "stereo.flac"
    soundfile.write(str(path), np.stack([left, right], axis=1), rate)
    wave = read_audio(path, 16000)
    assert wave.numel() == 16000
    spectrum = torch.fft.rfft(wave).abs()
    assert int(spectrum.argmax()) == 1000  # 1 s of audio: bin k is k Hz
    assert float(wave.abs().max()) == pytest.approx(0.25, abs=0.01)  # (0.5 + 0) / 2


def test_ogg_and_integer_arrays(tmp_path):
    path = tmp_path / "tone.ogg"
    soundfile.write(str(path), sine(440, 16000), 16000, format="OGG", subtype="VORBIS")
    assert read_audio(path).numel() == pytest.approx(16000, abs=200)
    pcm = (sine(440, 8000) * 32767).astype(np.int16)
    wave = as_waveform(pcm, 8000, 16000)
    assert wave.numel() == 16000 and float(wave.abs().max()) == pytest.approx(0.5, abs=0.02)
    stereo = as_waveform(np.stack([pcm, pcm], axis=1), 8000, 16000)  # integer channels: scaled, then mixed
    torch.testing.assert_close(stereo, wave)
    u8 = (sine(440, 8000) * 127 + 128).round().astype(np.uint8)  # unsigned 8-bit, centred on 128
    assert float(as_waveform(u8, 8000, 16000).abs().max()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"RIFF not really a wave file at all"), "cannot read audio"),
    (lambda p: soundfile.write(str(p), np.zeros(0, dtype=np.float32), 16000), "empty audio"),
    (lambda p: p.mkdir(), "folder"),
])
def test_bad_audio_is_one_line_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(DataError) as info:
        read_audio(path)
    message = str(info.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message


def test_samples_with_nan_are_refused():
    with pytest.raises(DataError, match="NaN"):
        as_waveform(np.array([0.0, float("nan")], dtype=np.float32), 16000)


def test_fbank_frames_and_shape():
    fbank = Fbank(16000, n_mels=40)
    for samples in (1, 159, 160, 16000, 16123):
        feats = fbank(torch.randn(samples) * 0.1)
        assert feats.shape == (samples // 160 + 1, 40) == (fbank.num_frames(samples), 40)
        assert bool(torch.isfinite(feats).all())
    assert not list(fbank.state_dict())  # window and filters follow from the settings


def test_utterance_normalisation_ignores_padding():
    x = torch.randn(2, 30, 8) * 3 + 5
    lengths = torch.tensor([30, 12])
    norm = Normalizer(8, "utterance")
    y = norm(x, lengths)
    alone = norm(x[1:, :12], lengths[1:])
    torch.testing.assert_close(y[1, :12], alone[0])
    assert bool((y[1, 12:] == 0).all())
    assert y[0].mean(0).abs().max() < 1e-4 and (y[0].std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_global_normalisation_uses_training_statistics():
    feats = [torch.randn(50, 4) * 2 + 3, torch.randn(20, 4) * 2 + 3]
    norm = Normalizer(4, "global")
    norm.fit(feats)
    allf = torch.cat(feats)
    torch.testing.assert_close(norm.mean, allf.mean(0))
    torch.testing.assert_close(norm.std, allf.std(0, unbiased=False))
    assert {"mean", "std"} <= set(norm.state_dict())  # travel with the checkpoint


def test_specaugment_masks_in_training_only():
    torch.manual_seed(0)
    aug = SpecAugment(freq_masks=2, freq_mask_width=10, time_masks=2, time_mask_width=30, time_mask_fraction=0.2)
    x = torch.randn(16, 200, 80).abs() + 1  # no zeros of its own
    lengths = torch.tensor([200] * 8 + [100] * 8)
    aug.eval()
    assert torch.equal(aug(x, lengths), x)
    aug.train()
    y = aug(x, lengths)
    masked = y == 0
    assert masked.any()
    assert torch.equal(y[~masked], x[~masked])  # masks zero values, never change others
    time_masked = masked.all(dim=2)  # (N, L) whole frames
    for row, n in enumerate(lengths.tolist()):
        width = int(time_masked[row].sum())
        assert width <= 2 * min(30, int(n * 0.2))
        assert not time_masked[row, n:].any()  # drawn inside the utterance
    assert masked.all(dim=1).any()  # some mel bins masked over a whole utterance


def test_vtlp_moves_formants_with_the_warp_factor():
    # a real tone's filter-bank peak, at about 1 kHz: an alpha > 1 (shorter vocal tract) moves it up
    t = torch.arange(16000) / 16000
    feats = Fbank(16000, 80)(torch.sin(2 * math.pi * 1000 * t))[None, 10:60]  # (1, 50, 80)
    vtlp = VTLP(80, 16000, max_warp=0.15)
    peak = int(feats[0].mean(0).argmax())
    moved = {a: int(vtlp.warp(feats, torch.tensor([a]))[0].mean(0).argmax()) for a in (0.87, 1.0, 1.15)}
    assert moved[1.0] == peak
    assert moved[0.87] < peak < moved[1.15]
    hz = float(vtlp.centres_hz[peak])
    expected = int((vtlp.centres_hz - hz * 1.15).abs().argmin())  # below the 4.8 kHz knee: f -> alpha f
    assert abs(moved[1.15] - expected) <= 1
    # the Nyquist end stays put, and the warp keeps values inside the range they had
    edge = vtlp.source_bins(torch.tensor([0.87, 1.15]))[:, -1]
    assert edge.sub(79).abs().max() < 0.5
    warped = vtlp.warp(feats, torch.tensor([1.15]))
    assert feats.min() <= warped.min() and warped.max() <= feats.max()


def test_vtlp_in_training_only_and_padding_stays_zero():
    torch.manual_seed(0)
    vtlp = VTLP(40, 16000, max_warp=0.1)
    x = torch.randn(4, 30, 40)
    x[2:, 20:] = 0  # padded frames
    assert vtlp.eval()(x) is x
    y = vtlp.train()(x)
    assert not torch.equal(y, x)
    assert bool((y[2:, 20:] == 0).all())
    assert VTLP(40, 16000, max_warp=0.0).train()(x) is x
    with pytest.raises(RecipeError, match="features.vtlp"):
        VTLP(40, 16000, max_warp=0.7)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 41), min_size=1, max_size=4), subsampling=st.sampled_from([1, 2, 4]))
def test_conv_frontend_tracks_lengths_exactly(lengths, subsampling):
    torch.manual_seed(0)
    conv = ConvSubsampler(16, 12, subsampling=subsampling, num_layers=2, channels=4).eval()
    n, longest = len(lengths), max(lengths)
    x = torch.zeros(n, longest, 16)
    for i, length in enumerate(lengths):
        x[i, :length] = torch.randn(length, 16)
    y, out_lengths = conv(x, torch.tensor(lengths))
    expected = [math.ceil(length / subsampling) for length in lengths]
    assert out_lengths.tolist() == expected and y.size(1) == max(expected)
    for i, length in enumerate(lengths):
        alone, alone_len = conv(x[i: i + 1, :length], torch.tensor([length]))
        assert alone.size(1) == expected[i] == int(alone_len)
        torch.testing.assert_close(y[i, : expected[i]], alone[0], atol=1e-5, rtol=1e-5)
        assert bool((y[i, expected[i]:] == 0).all())


def test_trim_silence_keeps_the_speech_and_the_asked_silence():
    rate = 16000
    t = np.arange(rate // 2) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))  # 0.5 s
    pause = np.zeros(rate // 5)
    wave = np.concatenate([np.zeros(rate // 4), tone, pause, tone, np.zeros(rate)]).astype(np.float32)
    feats = Fbank(rate)(torch.from_numpy(wave))  # 0.25 s silence, speech, 0.2 s pause, speech, 1 s silence
    trimmed = trim_silence(feats, keep=10)
    assert 140 <= trimmed.size(0) <= 145  # 1.2 s of speech and pause, plus 0.1 s at each end
    n = trimmed.size(0)
    starts = [s for s in range(feats.size(0) - n + 1) if torch.equal(trimmed, feats[s: s + n])]
    assert len(starts) == 1 and 12 <= starts[0] <= 16  # one slice, 0.1 s before the speech; pause kept
    assert trim_silence(feats, keep=0).size(0) < trimmed.size(0) - 18
    assert trim_silence(feats, keep=1000) is feats  # less silence than asked: unchanged
    quiet = Fbank(rate)(torch.zeros(rate))
    assert trim_silence(quiet, keep=5).size(0) == quiet.size(0)  # all silence: nothing to trim against
    assert trim_silence(feats[:0], keep=5).size(0) == 0


def test_conv_frontend_channels_last_path_matches_plain_convolutions():
    """On the CPU the front-end runs its convolutions channels-last; values and gradients must
    be those of the modules' own (NCHW) convolutions."""
    torch.manual_seed(0)
    conv = ConvSubsampler(20, 8, subsampling=4, num_layers=2, channels=6)
    x = torch.randn(3, 29, 20)
    lengths = torch.tensor([29, 17, 5])
    y, _ = conv(x, lengths)
    grads = torch.autograd.grad(y.square().sum(), [conv.convs[0].weight, conv.convs[1].weight])

    h, n = x.unsqueeze(1), lengths
    for layer, s in zip(conv.convs, conv.strides):
        h = layer(h).relu()
        n = (n - 1) // s + 1
        h = h * (torch.arange(h.size(2))[None, :] < n[:, None])[:, None, :, None]
    ref = conv.proj(h.permute(0, 2, 1, 3).reshape(3, h.size(2), -1))
    ref = ref * (torch.arange(ref.size(1))[None, :] < n[:, None])[:, :, None]
    torch.testing.assert_close(y, ref)
    for got, want in zip(grads, torch.autograd.grad(ref.square().sum(), [conv.convs[0].weight, conv.convs[1].weight])):
        torch.testing.assert_close(got, want)


def test_conv_frontend_refuses_impossible_subsampling():
    with pytest.raises(RecipeError, match="features.subsampling"):
        ConvSubsampler(80, 64, subsampling=3)
    with pytest.raises(RecipeError, match="features.subsampling"):
        ConvSubsampler(80, 64, subsampling=8, num_layers=2)


def test_wave_augment_is_fixed_per_utterance_and_does_what_it_says():
    tone = 0.3 * torch.sin(2 * math.pi * 440 * torch.arange(16000) / 16000)
    # speed only: three lengths (0.9x, 1x, 1.1x as fast), the pitch moved with the tempo
    speeds = WaveAugment(speed=0.1, seed=5)
    lengths = {speeds(tone, i).numel() for i in range(40)}
    assert lengths == {math.ceil(16000 / 0.9), 16000, math.ceil(16000 / 1.1)}  # torchaudio rounds up
    assert torch.equal(speeds(tone, 7), speeds(tone, 7))  # the same utterance, the same change
    fast = next(speeds(tone, i) for i in range(40) if speeds(tone, i).numel() < 15000)
    peak = torch.fft.rfft(fast).abs().argmax().item() * 16000 / fast.numel()
    assert abs(peak - 440 * 1.1) < 5
    # noise only: every utterance, at 10-30 dB below the signal
    noisy = WaveAugment(noise=1.0, snr=10.0, seed=1)
    for i in range(10):
        out = noisy(tone, i)
        snr = 10 * math.log10(tone.pow(2).mean() / (out - tone).pow(2).mean())
        assert 9.9 < snr < 30.1
    assert torch.equal(WaveAugment(noise=0.0, gain_db=0.0)(tone, 3), tone)
    assert WaveAugment.from_config(_fbank_options(), seed=0) is None


def _fbank_options():
    from seqkit.features.audio import FbankFeatures

    return FbankFeatures()


@pytest.mark.parametrize("exponent", [0, 1, 2])
def test_colored_noise_has_unit_power_and_its_slope(exponent):
    noise = colored_noise(32000, exponent, torch.Generator().manual_seed(0))
    assert abs(noise.pow(2).mean().item() - 1.0) < 1e-4
    power = torch.fft.rfft(noise).abs().pow(2)
    low, high = power[100:200].mean().item(), power[10000:11000].mean().item()
    slope = math.log10(low / high) / math.log10(10500 / 150)  # ~ exponent
    assert abs(slope - exponent) < 0.3
