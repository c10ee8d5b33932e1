"""A generated piano roll and what it is saved as: MIDI (pretty_midi), a picture (matplotlib)
and a WAV preview (fluidsynth with a General MIDI soundfont, normalised).

A key that stays on over consecutive frames is one held note (a piano roll cannot tell a held
note from a repeated one; this is the usual reading).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

import seqkit

from .data import KEYS, LOWEST

SOUNDFONTS = ("/usr/share/sounds/sf2/default-GM.sf2", "/usr/share/sounds/sf2/TimGM6mb.sf2",
              "/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2")
SOUND_HINT = ("install fluidsynth and a General MIDI soundfont (Debian: `sudo apt-get install fluidsynth "
              "timgm6mb-soundfont`) or set SEQKIT_SOUNDFONT to a .sf2 file")


def save_midi(midi, path: Path) -> Path:
    """Write a ``pretty_midi.PrettyMIDI`` atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    midi.write(str(tmp))
    os.replace(tmp, path)
    return path


@dataclass
class PianoRoll:
    """Frames (T, 88) of 0/1 keys (key 0 = MIDI 21), each ``frame_beats`` quarter notes long,
    played at ``qpm`` quarter notes a minute; the first ``primed`` frames were given, not sampled."""

    roll: np.ndarray
    frame_beats: float
    qpm: float = 100.0
    primed: int = 0

    @property
    def frame_seconds(self) -> float:
        return self.frame_beats * 60.0 / self.qpm

    @property
    def seconds(self) -> float:
        return len(self.roll) * self.frame_seconds

    def notes(self) -> list[tuple[int, float, float]]:
        """``(midi pitch, start s, end s)`` of every note, held keys merged."""
        out = []
        padded = np.pad(self.roll.astype(np.int8), ((1, 1), (0, 0)))
        changes = np.diff(padded, axis=0)  # +1 where a key goes on, -1 where it goes off
        for key in range(KEYS):
            ons, offs = np.flatnonzero(changes[:, key] == 1), np.flatnonzero(changes[:, key] == -1)
            out += [(LOWEST + key, on * self.frame_seconds, off * self.frame_seconds) for on, off in zip(ons, offs)]
        return sorted(out, key=lambda n: (n[1], n[0]))

    def note_count(self) -> int:
        return len(self.notes())

    def to_midi(self, program: int = 0):
        """A ``pretty_midi.PrettyMIDI`` of the roll (one instrument, General MIDI ``program``)."""
        import pretty_midi

        pm = pretty_midi.PrettyMIDI(initial_tempo=self.qpm)
        inst = pretty_midi.Instrument(program=program, name="seqkit")
        inst.notes = [pretty_midi.Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in self.notes()]
        pm.instruments.append(inst)
        return pm

    def save_midi(self, path: Path) -> Path:
        return save_midi(self.to_midi(), path)

    def save_png(self, path: Path, title: str = "", bar_beats: float = 4.0) -> Path:
        """The roll as a picture: pitch names on the vertical axis (every natural note on a range
        of up to 30 keys, else every C; and the lowest and highest notes used), beats as thin
        lines and a bar line every ``bar_beats`` quarter notes (default 4: 4/4), the primed part
        shaded grey and the sampled part blue."""
        import matplotlib
        import pretty_midi

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        roll = self.roll.astype(float)
        used = np.flatnonzero(roll.any(axis=0))
        low, high = (int(used[0]) - 2, int(used[-1]) + 2) if len(used) else (39 - LOWEST, 84 - LOWEST)
        low, high = max(low, 0), min(high, KEYS - 1)
        frames = len(roll)
        beats = frames * self.frame_beats
        image = np.ones((high - low + 1, max(frames, 1), 3))
        on = roll[:, low: high + 1].T > 0  # (keys shown, frames)
        primed = np.arange(frames) < self.primed
        image[:, :frames][on & primed] = (0.45, 0.45, 0.45)
        image[:, :frames][on & ~primed] = (0.12, 0.35, 0.75)
        width = min(16.0, max(6.0, beats * 0.25))
        fig, ax = plt.subplots(figsize=(width, max(3.0, (high - low) * 0.09)))
        ax.imshow(image, origin="lower", aspect="auto", interpolation="nearest",
                  extent=(0, max(beats, self.frame_beats), low - 0.5, high + 0.5))
        for beat in range(int(beats) + 1):
            ax.axvline(beat, color="#cccccc", linewidth=0.4, zorder=0)
        for bar in np.arange(0.0, beats + 1e-9, bar_beats):
            ax.axvline(bar, color="#000000", linewidth=0.8, zorder=2)
        natural = (0, 2, 4, 5, 7, 9, 11)  # C D E F G A B: every one on a narrow range, else every C
        wanted = natural if high - low <= 30 else (0,)
        ticks = sorted({k for k in range(low, high + 1) if (k + LOWEST) % 12 in wanted}
                       | set(used[[0, -1]].tolist() if len(used) else ()))
        ax.set_yticks(ticks)
        ax.set_yticklabels([pretty_midi.note_number_to_name(k + LOWEST) for k in ticks])
        ax.set_xlabel(f"beats (quarter notes; bar lines every {bar_beats:g})")
        ax.set_ylabel("pitch")
        if self.primed:
            ax.axvline(self.primed * self.frame_beats, color="#d62728", linewidth=1.5)
        ax.set_title(title or f"{len(self.notes())} notes, {self.seconds:.1f} s at {self.qpm:g} quarter notes a minute"
                     + (" (grey: prime, blue: sampled)" if self.primed else ""), fontsize=10, wrap=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)

    def save_wav(self, path: Path, soundfont: Optional[str] = None) -> Path:
        """A WAV preview (see :func:`render_wav`)."""
        return render_wav(self.to_midi(), path, soundfont)

    def write(self, *, out: Optional[Path] = None, png: Optional[Path] = None, wav: Optional[Path] = None) -> list[str]:
        """Save the files asked for; one line each, saying where."""
        lines = []
        if out is not None:
            lines.append(f"midi: {self.save_midi(out)}")
        if png is not None:
            lines.append(f"picture: {self.save_png(png)}")
        if wav is not None:
            lines.append(f"audio: {self.save_wav(wav)}")
        return lines


def render_wav(midi, path: Path, soundfont: Optional[str] = None, rate: int = 44100) -> Path:
    """Render a ``pretty_midi.PrettyMIDI`` with fluidsynth and normalise the peak to -1 dBFS
    (fluidsynth's output is quiet)."""
    exe = shutil.which("fluidsynth")
    font = soundfont or os.environ.get("SEQKIT_SOUNDFONT") or next((f for f in SOUNDFONTS if Path(f).is_file()), None)
    if exe is None or font is None or not Path(font).is_file():
        missing = "fluidsynth" if exe is None else "a General MIDI soundfont"
        raise seqkit.SeqkitError(f"--wav: {missing} not found; {SOUND_HINT}")
    with tempfile.TemporaryDirectory() as tmp:
        source, raw = Path(tmp) / "sample.mid", Path(tmp) / "raw.wav"
        midi.write(str(source))
        done = subprocess.run([exe, "-ni", "-q", "-F", str(raw), "-r", str(rate), "-O", "s16", "-T", "wav", font,
                               str(source)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not raw.is_file():
            raise seqkit.SeqkitError(f"--wav: fluidsynth failed ({done.returncode}): "
                                     f"{(done.stderr or done.stdout).strip()[-300:]}")
        with wave.open(str(raw), "rb") as src:
            params = src.getparams()
            audio = np.frombuffer(src.readframes(params.nframes), dtype=np.int16).astype(np.float64)
        peak = np.abs(audio).max() if audio.size else 0.0
        if peak > 0:
            audio = audio * (0.891 * 32767 / peak)  # -1 dBFS
        tmp_out = Path(path).with_name(f".{Path(path).name}.tmp")
        with wave.open(str(tmp_out), "wb") as dst:
            dst.setparams(params)
            dst.writeframes(np.round(audio).astype(np.int16).tobytes())
        os.replace(tmp_out, path)
    return Path(path)
