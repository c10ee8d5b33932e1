"""The ``melody`` task: monophonic tunes as event tokens, trained with seqkit's language-modelling
machinery (the tied softmax head, truncated backpropagation through time with a carried state,
perplexity, sampling): this task is the ``language-model`` task with its own data and a model
that also writes MIDI. Perplexity is per event (a note, a rest, the meter token or the end of a
tune).

Tokens: ``M:6/8`` (the meter, first), ``<MIDI pitch>_<quarter notes>`` a note (``67_1/2``),
``r_<quarter notes>`` a rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np

import seqkit
from seqkit.models import LanguageModel, LanguageModelTask

from .data import KEYS, LOWEST
from .roll import PianoRoll, render_wav, save_midi


@dataclass
class Melody:
    """Events ``(MIDI pitch or None for a rest, quarter notes)`` at ``qpm`` quarter notes a minute."""

    events: list[tuple[Optional[int], float]]
    meter: Optional[str] = None
    qpm: float = 120.0

    @classmethod
    def from_tokens(cls, tokens: list[str], qpm: float = 120.0) -> "Melody":
        """Events from tokens; ``<eos>``, ``<unk>`` and anything malformed are skipped."""
        events, meter = [], None
        for token in tokens:
            if token.startswith("M:"):
                meter = meter or token[2:]
                continue
            head, _, length = token.partition("_")
            try:
                quarters = float(Fraction(length))
                pitch = None if head == "r" else int(head)
            except (ValueError, ZeroDivisionError):
                continue
            if quarters > 0 and (pitch is None or LOWEST <= pitch < LOWEST + KEYS):
                events.append((pitch, quarters))
        return cls(events, meter, qpm)

    @property
    def bar_beats(self) -> float:
        """Quarter notes a bar, from the meter (4 without one)."""
        top, _, bottom = (self.meter or "4/4").partition("/")
        try:
            return int(top) * 4.0 / int(bottom)
        except (ValueError, ZeroDivisionError):
            return 4.0

    @property
    def beats(self) -> float:
        return sum(q for _, q in self.events)

    def to_midi(self, program: int = 73):
        """A ``pretty_midi.PrettyMIDI`` (default instrument: General MIDI flute)."""
        import pretty_midi

        pm = pretty_midi.PrettyMIDI(initial_tempo=self.qpm)
        inst = pretty_midi.Instrument(program=program, name="seqkit melody")
        second, now = 60.0 / self.qpm, 0.0
        for pitch, quarters in self.events:
            if pitch is not None:
                inst.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=now, end=now + quarters * second))
            now += quarters * second
        pm.instruments.append(inst)
        return pm

    def to_roll(self, frame_beats: float = 1 / 12) -> PianoRoll:
        """A piano roll for pictures: a note repeated at the same pitch leaves its last frame off."""
        frames = int(round(self.beats / frame_beats))
        roll = np.zeros((frames, KEYS), dtype=np.uint8)
        now = 0.0
        for k, (pitch, quarters) in enumerate(self.events):
            first, last = int(round(now / frame_beats)), int(round((now + quarters) / frame_beats))
            if pitch is not None:
                repeated = k + 1 < len(self.events) and self.events[k + 1][0] == pitch
                roll[first: max(first + 1, last - (1 if repeated else 0)), pitch - LOWEST] = 1
            now += quarters
        return PianoRoll(roll, frame_beats, self.qpm)

    def write(self, *, out: Optional[Path] = None, png: Optional[Path] = None, wav: Optional[Path] = None) -> list[str]:
        lines = []
        if out is not None:
            lines.append(f"midi: {save_midi(self.to_midi(), out)}")
        if png is not None:
            roll = self.to_roll()
            title = f"{len(self.events)} events, {self.beats:g} quarter notes"
            title += f", {self.meter}" if self.meter else ""
            lines.append(f"picture: {roll.save_png(png, title=title, bar_beats=self.bar_beats)}")
        if wav is not None:
            lines.append(f"audio: {render_wav(self.to_midi(), wav)}")
        return lines


class MelodyModel(LanguageModel):
    """A language model over melody events that also gives :class:`Melody` objects and MIDI."""

    def generate_melody(self, events: int = 64, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        seed: Optional[int] = None, prompt: str = "", qpm: float = 120.0) -> Melody:
        """Sample a tune of at most ``events`` events (it stops at the tune's end), after
        ``prompt`` (tokens, e.g. ``"M:6/8 67_1/2"``). Same seed, same tune."""
        tokens = self.generate(prompt, max_tokens=events, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed, stop_at_eos=True).split()
        return Melody.from_tokens(prompt.split() + tokens, qpm)

    def generate_files(self, *, out: Optional[Path], png: Optional[Path], wav: Optional[Path], steps: Optional[int],
                       seconds: Optional[float], prime: Optional[Path], temperature: float, seed: Optional[int],
                       prompt: str = "", top_k: int = 0, top_p: float = 1.0) -> list[str]:
        if prime is not None:
            raise seqkit.SeqkitError("--prime: a melody model continues event tokens; give them with --prompt "
                                     "(e.g. --prompt 'M:6/8 67_1/2')")
        if seconds is not None:
            raise seqkit.SeqkitError("--seconds: a melody model samples events until the tune ends; use --events N")
        if out is None and png is None and wav is None:
            raise seqkit.SeqkitError("nothing to write: give --out tune.mid, --png tune.png and/or --wav tune.wav")
        started = time.perf_counter()
        melody = self.generate_melody(64 if steps is None else steps, temperature=temperature, top_k=top_k,
                                      top_p=top_p, seed=seed, prompt=prompt)
        took = time.perf_counter() - started
        lines = [f"{len(melody.events)} events sampled in {took:.2f} s ({len(melody.events) / max(took, 1e-9):.0f} "
                 f"events/s); {melody.beats:g} quarter notes" + (f" in {melody.meter}" if melody.meter else "")]
        return lines + melody.write(out=out, png=png, wav=wav)


class MelodyTask(LanguageModelTask):
    """Melodies as event tokens: perplexity per event; ``seqkit generate RUN --out tune.mid``."""

    model_class = MelodyModel
    default_dataset = "folk"

    def check(self, recipe: Any) -> None:
        super().check(recipe)
        if recipe.features.units != "words":
            raise seqkit.RecipeError(f"{recipe.source}: features.units: melody events are whole tokens; use words")
