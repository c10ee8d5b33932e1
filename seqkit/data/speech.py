"""Speech dataset providers: ``synth-speech`` (real text read by espeak-ng and flite),
``manifest`` (your own recordings) and ``librivox-sample`` (five real read sentences).

A provider is called as ``provider(data, base=folder)`` and returns a dict of
:class:`SpeechCorpus` splits: ``train``, ``valid``, ``test``, and any extra splits to report
beside the test metrics (``flite``, ``librivox``).  ``provider.check(data)`` verifies the
system programs it needs before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Literal, Optional

import soundfile
from tqdm import tqdm

from ..errors import DataError, RecipeError
from ..features.audio import read_audio
from ..fsio import write_text_atomic
from ..recipe import bounded
from .conll import load_text

__all__ = ["LIBRIVOX", "LibrivoxConfig", "ManifestConfig", "SpeechCorpus", "SynthConfig", "Utterance",
           "librivox_corpus", "librivox_provider",
           "manifest_provider", "normalize_transcript", "read_manifest", "synth_provider",
           "write_manifest"]

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RATE = 16000  # the rendered audio is stored as 16 kHz FLAC
# bump when rendering changes, so that caches are rebuilt (2: cached resampler, float64 kernel;
# 3: espeak-ng through libespeak-ng, _ESPEAK_CHUNK utterances per process)
_FORMAT = 3
_ESPEAK_CHUNK = 32  # espeak-ng utterances rendered in order by one fresh process
_ESPEAK_WORKER = Path(__file__).with_name("espeak_worker.py")
# espeak-ng's English voices (accents) and voice variants, split so that the validation and
# test voices and variants never occur in training.
_VOICES = {"train": ("en", "en-us", "en-gb-x-rp", "en-gb-x-gbclan", "en-029"),
           "valid": ("en-gb-x-gbcwmd",), "test": ("en-gb-scotland", "en-us-nyc")}
_HELD_VARIANTS = {"valid": ("f4", "m5", "klatt5", "Gene", "aunty", "travis"),
                  "test": ("f3", "m2", "m6", "klatt4", "Annie", "belinda", "edward", "grandpa",
                           "iven3", "linda", "michel", "steph3")}
_ALL_VARIANTS = (
    "Alex Alicia Andrea Andy Annie AnxiousAndy Demonic Denis Diogo Gene Gene2 Henrique Hugo Jacky "
    "Lee Marco Mario Michael Mike Nguyen RicishayMax RicishayMax2 RicishayMax3 Storm Tweaky UniRobot "
    "adam anika anikaRobot announcer antonio aunty belinda benjamin boris caleb croak david ed edward "
    "edward2 f1 f2 f3 f4 f5 fast grandma grandpa gustave iven iven2 iven3 iven4 john kaukovalta klatt "
    "klatt2 klatt3 klatt4 klatt5 klatt6 linda m1 m2 m3 m4 m5 m6 m7 m8 marcelo max michel miguel "
    "norbert pablo paul pedro quincy rob robert robosoft robosoft2 robosoft3 robosoft4 robosoft5 "
    "robosoft6 robosoft7 robosoft8 sandro shelby steph steph2 steph3 travis victor whisper whisperf zac"
).split()
_TRAIN_VARIANTS = ("",) + tuple(v for v in _ALL_VARIANTS
                                if v not in _HELD_VARIANTS["valid"] + _HELD_VARIANTS["test"])
_FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# with data.train_flite > 0, training uses these flite voices and the flite split the others
_FLITE_TRAIN, _FLITE_HELD = ("kal", "kal16", "rms"), ("awb", "slt")
_SPEED, _PITCH, _GAP = (130, 200), (20, 80), (0, 0, 1, 2)  # words/min, 0-99, 10 ms units


@dataclass
class SynthConfig:
    """Options of ``synth-speech``: real text read aloud by espeak-ng voices and variants.

    Test and validation voices, variants and sentences never occur in training; the flite
    and LibriVox splits are reported beside the test metrics.
    """

    text: Literal["kjv", "fortunes"] = "kjv"  # KJV verses (bible-kjv) or fortunes (fortunes-min)
    train: int = bounded(6000, ge=1)  # utterances per split
    valid: int = bounded(200, ge=1)
    test: int = bounded(300, ge=1)
    flite: int = bounded(200, ge=0)  # held-out flite voices reading held-out sentences (0: no flite split)
    train_flite: float = bounded(0.0, ge=0, le=1)  # this fraction of train is read by flite's training voices;
    # when above 0, the flite split keeps to the voices held out of training (see _FLITE_VOICES)
    librivox: bool = True  # the five real LibriVox sentences of pocketsphinx-testdata
    min_words: int = bounded(3, ge=1)  # text is cut at punctuation into chunks of min_words..max_words
    max_words: int = bounded(16, ge=1)
    seed: int = 0  # picks sentences, voices, speeds and pitches; same seed, same audio
    jobs: int = bounded(0, ge=0)  # synthesis processes at once (0: one per CPU core)
    limit: int = bounded(0, ge=0)  # at most N utterances per split (0: as above); for smoke tests
    cache_dir: Optional[str] = None  # where the audio is kept (default $SEQKIT_CACHE_DIR or ~/.cache/seqkit)


@dataclass
class ManifestConfig:
    """Options of ``manifest``: JSONL manifests of your own recordings."""

    train: Optional[str] = None  # paths, relative to the recipe's folder
    valid: Optional[str] = None
    test: Optional[str] = None
    limit: int = bounded(0, ge=0)  # keep the first N utterances of each split (0: all)


@dataclass
class LibrivoxConfig:
    """Options of ``librivox-sample`` (a test split only)."""

    limit: int = bounded(0, ge=0)  # keep the first N sentences (0: all five)
_PROGRAMS = {"espeak-ng": "espeak-ng", "flite": "flite", "bible": "bible-kjv"}
_SPLITS = ("test", "valid", "flite", "train")  # sentences are dealt out in this order


@dataclass
class Utterance:
    audio: Path
    text: str  # normalised transcript
    info: dict[str, Any] = field(default_factory=dict)  # voice, speed, source, ...


@dataclass
class SpeechCorpus:
    utterances: list[Utterance]
    path: str  # where it came from, for messages


def normalize_transcript(text: str) -> str:
    """Lowercase words, apostrophes kept inside words, other punctuation dropped, dashes and
    underscores read as spaces: how references and hypotheses are compared."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"[-_\u2010-\u2015/]", " ", text)
    text = "".join(c for c in text if c.isalnum() or c.isspace() or c == "'")
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


# -- manifests ------------------------------------------------------------------------------


def read_manifest(path: Path) -> SpeechCorpus:
    """JSON lines ``{"audio": path, "text": transcript}``; audio paths relative to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    utts = []
    for number, line in enumerate(load_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not isinstance(row.get("text"), str):
            raise DataError(f'{path}:{number}: expected {{"audio": "path", "text": "transcript"}}')
        audio = Path(row["audio"]).expanduser()
        audio = audio if audio.is_absolute() else path.parent / audio
        info = {k: v for k, v in row.items() if k not in ("audio", "text")}
        utts.append(Utterance(audio, normalize_transcript(row["text"]), info))
    return SpeechCorpus(utts, str(path))


def write_manifest(path: Path, utterances: list[Utterance]) -> None:
    """Write a manifest atomically, audio paths relative to its folder where possible."""
    lines = []
    for u in utterances:
        audio = os.path.relpath(os.path.abspath(u.audio), os.path.abspath(path.parent))
        lines.append(json.dumps({"audio": audio, "text": u.text, **u.info}, ensure_ascii=False))
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def _limit(corpus: SpeechCorpus, limit: int) -> SpeechCorpus:
    return SpeechCorpus(corpus.utterances[:limit], corpus.path) if limit else corpus


def manifest_provider(data: ManifestConfig, *, base: Path) -> dict[str, SpeechCorpus]:
    """Your own recordings: JSONL manifests named by ``data.train``, ``data.valid``, ``data.test``."""
    if data.train is None:
        raise RecipeError("data.train: the manifest dataset needs a training manifest (data.train: path)")
    out = {}
    for key in ("train", "valid", "test"):
        value = getattr(data, key)
        if value is None:
            out[key] = SpeechCorpus([], "<none>")
            continue
        path = Path(value).expanduser()
        out[key] = _limit(read_manifest(path if path.is_absolute() else base / path), data.limit)
    return out


manifest_provider.task = "transcription"  # type: ignore[attr-defined]
manifest_provider.Config = ManifestConfig  # type: ignore[attr-defined]


# -- LibriVox ---------------------------------------------------------------------------------


def librivox_corpus(folder: Path = LIBRIVOX) -> SpeechCorpus:
    """The five LibriVox sentences of pocketsphinx-testdata (Sense and Sensibility, 16 kHz)."""
    listing = folder / "transcription"
    if not listing.is_file():
        raise DataError(f"{folder}: the LibriVox sample is missing; install it with "
                        "`sudo apt-get install pocketsphinx-testdata`")
    utts = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if match:
            utts.append(Utterance(folder / f"{match.group(2)}.wav", normalize_transcript(match.group(1)),
                                  {"source": "librivox"}))
    return SpeechCorpus(utts, str(listing))


def librivox_provider(data: LibrivoxConfig, *, base: Path) -> dict[str, SpeechCorpus]:
    """Only a test split: evaluate a trained model on real read speech."""
    empty = SpeechCorpus([], "<none>")
    return {"train": empty, "valid": empty, "test": _limit(librivox_corpus(), data.limit)}


def _check_librivox(data: Any) -> None:
    if not (LIBRIVOX / "transcription").is_file():
        raise DataError("librivox-sample needs pocketsphinx-testdata; install it with "
                        "`sudo apt-get install pocketsphinx-testdata`")


librivox_provider.task = "transcription"  # type: ignore[attr-defined]
librivox_provider.check = _check_librivox  # type: ignore[attr-defined]
librivox_provider.Config = LibrivoxConfig  # type: ignore[attr-defined]


# -- text -------------------------------------------------------------------------------------


def _kjv() -> list[tuple[str, str]]:
    """(reference, verse) for every KJV verse, from the `bible` program."""
    try:
        out = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], capture_output=True, text=True,
                             check=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"could not read the KJV with `bible` ({exc}); install it with "
                        "`sudo apt-get install bible-kjv bible-kjv-text`") from None
    verses, chapter = [], ""
    for line in out.splitlines():
        match = re.match(r"\s+(\d+)\s+(.*\S)", line)
        if match:
            verses.append((f"{chapter}:{match.group(1)}", match.group(2)))
        elif line.strip():
            chapter = line.strip()
    if len(verses) < 1000:
        raise DataError("the `bible` program printed no verses; reinstall bible-kjv-text")
    return verses


def _fortunes(folder: Path = Path("/usr/share/games/fortunes")) -> list[tuple[str, str]]:
    skip = {"art", "ascii-art", "translate-me"}
    files = sorted(p for p in folder.glob("*") if p.with_suffix(".dat").exists() and p.suffix == ""
                   and p.name not in skip)
    if not files:
        raise DataError(f"{folder}: no fortunes; install them with `sudo apt-get install fortunes-min`")
    out = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, entry in enumerate(text.split("\n%\n")):
            out.append((f"{path.name}#{i}", " ".join(entry.split())))
    return out


def chunks(text: str, min_words: int, max_words: int) -> list[str]:
    """Cut a text at sentence and clause punctuation into pieces of min_words..max_words words."""
    pieces: list[str] = []
    for clause in re.split(r"(?<=[.;:?!])\s+", text):
        words: list[str] = []
        for part in re.split(r"(?<=,)\s+", clause):
            part_words = part.split()
            if words and len(words) + len(part_words) > max_words:
                pieces.append(" ".join(words))
                words = []
            words += part_words
            while len(words) > max_words:
                pieces.append(" ".join(words[:max_words]))
                words = words[max_words:]
        if words:
            pieces.append(" ".join(words))
    keep = []
    for piece in pieces:
        if re.search(r"\d", piece) or not re.search(r"[A-Za-z]", piece):
            continue  # numbers are read in ways the transcript cannot know
        norm = normalize_transcript(piece)
        if min_words <= len(norm.split()) <= max_words and re.fullmatch(r"[a-z' ]+", norm):
            keep.append(piece.strip(" \"'()-"))
    return keep


def _sentences(cfg: SynthConfig) -> list[tuple[str, str]]:
    """(source, text) of every usable chunk, each text once, in a shuffled order fixed by the seed."""
    seen, out = set(), []
    for source, text in (_kjv() if cfg.text == "kjv" else _fortunes()):
        for piece in chunks(text, cfg.min_words, cfg.max_words):
            norm = normalize_transcript(piece)
            if norm not in seen:
                seen.add(norm)
                out.append((source, piece))
    random.Random(f"sentences-{cfg.seed}").shuffle(out)
    return out


def lm_text(data: SynthConfig) -> list[str]:
    """Text for a word language model: every piece of the dataset's text, cut as the utterances
    are (but of any length from one word), normalised like the transcripts, one a line, repeats
    kept. It includes the held-out sentences: whoever trains on it removes them."""
    lines = []
    for _, text in (_kjv() if data.text == "kjv" else _fortunes()):
        lines += [normalize_transcript(piece) for piece in chunks(text, 1, data.max_words)]
    return [line for line in lines if line]


# -- synthesis --------------------------------------------------------------------------------


def _counts(data: SynthConfig) -> dict[str, int]:
    cfg = data
    counts = {"test": cfg.test, "valid": cfg.valid, "flite": cfg.flite, "train": cfg.train}
    return {k: (min(v, data.limit) if data.limit else v) for k, v in counts.items()}


def _cache_root(data: Any) -> Path:
    """``data.cache_dir`` (relative to the current folder, like --out), else $SEQKIT_CACHE_DIR,
    else ~/.cache/seqkit."""
    if data.cache_dir:
        return Path(data.cache_dir).expanduser().resolve()
    root = os.environ.get("SEQKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "seqkit"
    return Path(root).expanduser().resolve()


def _split_dirs(data: SynthConfig) -> dict[str, Path]:
    """One cache folder per split, named by a hash of everything that decides its audio."""
    cfg, counts = data, _counts(data)
    dirs = {}
    for i, split in enumerate(_SPLITS):
        if counts[split] <= 0:
            continue
        key = {"format": _FORMAT, "split": split, "text": cfg.text, "words": [cfg.min_words, cfg.max_words],
               "seed": cfg.seed, "counts": [counts[s] for s in _SPLITS[: i + 1]]}
        if cfg.train_flite and split in ("flite", "train"):  # (absent otherwise: older caches stay valid)
            key["train_flite"] = cfg.train_flite
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        dirs[split] = _cache_root(data) / "synth-speech" / f"{split}-{digest}"
    return dirs


def check_synth(data: SynthConfig) -> None:
    """One clear error if a program that synth-speech needs is missing (the cache counts)."""
    todo = [s for s, d in _split_dirs(data).items() if not (d / "manifest.jsonl").exists()]
    flite = "flite" in todo or ("train" in todo and data.train_flite > 0)
    needed = (["espeak-ng"] if set(todo) - {"flite"} else []) + (["flite"] if flite else [])
    needed += ["bible"] if todo and data.text == "kjv" else []
    for program in needed:
        if shutil.which(program) is None:
            raise DataError(f"synth-speech needs the program `{program}`, which is not installed; install it "
                            f"with `sudo apt-get install {_PROGRAMS[program]}`")
    if data.text == "fortunes" and todo and not Path("/usr/share/games/fortunes/fortunes").exists():
        raise DataError("synth-speech with text: fortunes needs fortunes; install them with "
                        "`sudo apt-get install fortunes-min`")
    if data.librivox:
        try:
            _check_librivox(data)
        except DataError as exc:
            raise DataError(f"{exc}, or set data.librivox: false") from None


def _plan(split: str, sentences: list[tuple[str, str]], count: int, seed: int,
          train_flite: float = 0.0) -> list[dict[str, Any]]:
    """Who says what: voice, variant, speed and pitch of each utterance, fixed by the seed.

    ``train_flite`` > 0: that fraction of the training utterances is read by flite's training
    voices, and the flite split keeps to the held-out ones."""
    rng = random.Random(f"{split}-{seed}")
    plan = []
    for i in range(count):
        source, text = sentences[i % len(sentences)]
        flite = split == "flite" or (split == "train" and train_flite > 0 and rng.random() < train_flite)
        if flite:
            voices = _FLITE_VOICES if not train_flite else _FLITE_TRAIN if split == "train" else _FLITE_HELD
            row = {"engine": "flite", "voice": rng.choice(voices), "stretch": round(rng.uniform(0.85, 1.2), 2)}
        else:
            variants = _HELD_VARIANTS.get(split, _TRAIN_VARIANTS)
            row = {"engine": "espeak-ng", "voice": rng.choice(_VOICES[split]), "variant": rng.choice(variants),
                   "speed": rng.randint(*_SPEED), "pitch": rng.randint(*_PITCH), "gap": rng.choice(_GAP)}
        plan.append({**row, "source": source, "said": text})
    return plan


def _to_flac(wav: Path, out: Path) -> None:
    """A synthesizer's WAV as 16 kHz FLAC, written atomically."""
    audio = read_audio(wav, RATE)
    part = out.with_name(out.name + ".part")
    soundfile.write(str(part), audio.numpy(), RATE, format="FLAC", subtype="PCM_16")
    os.replace(part, out)


def _render_flite(row: dict[str, Any], out: Path) -> None:
    """One flite utterance (the flite program, one process each)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = ["flite", "-voice", row["voice"], "--setf", f"duration_stretch={row['stretch']}",
               "-t", row["said"], "-o", str(wav)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DataError(f"flite failed on {row['said']!r}: {exc}") from None
        if done.returncode != 0 or not wav.exists():
            raise DataError(f"{' '.join(cmd[:-3])} failed on {row['said']!r}: {done.stderr.strip()[:200]}")
        _to_flac(wav, out)


def _render_espeak(rows: list[tuple[dict[str, Any], Path]], todo: Collection[Path]) -> None:
    """A chunk of espeak-ng utterances, in order, by one fresh worker process (libespeak-ng
    keeps state between utterances, so a chunk always starts from a new process); writes the
    FLAC files that are in ``todo``."""
    voices = [row["voice"] + (f"+{row['variant']}" if row["variant"] else "") for row, _ in rows]
    with tempfile.TemporaryDirectory() as tmp:
        wavs = [Path(tmp) / f"{i}.wav" for i in range(len(rows))]
        fields = ("speed", "pitch", "gap", "said")
        lines = "".join(json.dumps({"voice": voice, "wav": str(wav)} | {k: row[k] for k in fields}) + "\n"
                        for (row, _), voice, wav in zip(rows, voices, wavs, strict=True))
        try:
            done = subprocess.run([sys.executable, "-S", str(_ESPEAK_WORKER)], input=lines, capture_output=True,
                                  text=True, timeout=60 + 10 * len(rows))
        except (OSError, subprocess.SubprocessError) as exc:
            raise DataError(f"espeak-ng failed on {rows[0][0]['said']!r}: {exc}") from None
        answers = done.stdout.splitlines()
        for i, ((row, out), voice, wav) in enumerate(zip(rows, voices, wavs, strict=True)):
            # no answer: the worker died; what it said on stderr (a traceback's last line) tells why
            answer = answers[i] if i < len(answers) else (
                done.stderr.strip()[-200:] or f"the worker stopped with exit status {done.returncode}")
            if answer != "ok":
                raise DataError(f"espeak-ng -v {voice} failed on {row['said']!r}: {answer}")
            if out in todo:
                _to_flac(wav, out)


def _build_split(split: str, folder: Path, plan: list[dict[str, Any]], jobs: int) -> SpeechCorpus:
    folder.mkdir(parents=True, exist_ok=True)
    audio = [folder / f"{i:06d}.flac" for i in range(len(plan))]
    todo = {path for path in audio if not path.exists()}  # resumes a partial build
    tasks: list[tuple[list[tuple[dict[str, Any], Path]], int]] = []  # (utterances, files they add)
    for start in range(0, len(plan), _ESPEAK_CHUNK):
        rows = list(zip(plan[start: start + _ESPEAK_CHUNK], audio[start: start + _ESPEAK_CHUNK]))
        espeak = [(row, path) for row, path in rows if row["engine"] == "espeak-ng"]
        missing = sum(path in todo for _, path in espeak)
        if missing:
            tasks.append((espeak, missing))
        tasks += [([(row, path)], 1) for row, path in rows if row["engine"] == "flite" and path in todo]

    def run(task: tuple[list[tuple[dict[str, Any], Path]], int]) -> int:
        rows, count = task
        if rows[0][0]["engine"] == "flite":
            _render_flite(*rows[0])
        else:
            _render_espeak(rows, todo)
        return count

    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(todo), desc=f"synth-speech {split}", unit="utt", disable=None) as bar:
        for count in pool.map(run, tasks):
            bar.update(count)
    utts = [Utterance(path, normalize_transcript(row["said"]), {k: v for k, v in row.items()})
            for row, path in zip(plan, audio, strict=True)]
    write_manifest(folder / "manifest.jsonl", utts)  # written last: the split is complete
    return SpeechCorpus(utts, str(folder / "manifest.jsonl"))


def synth_provider(data: SynthConfig, *, base: Path,
                   splits: Optional[Collection[str]] = None) -> dict[str, SpeechCorpus]:
    """Real text (KJV verses or fortunes) read aloud by espeak-ng voices x variants x speeds x
    pitches, cached as 16 kHz FLAC with a manifest per split; see :class:`SynthConfig`.

    ``splits`` builds (and returns) only those splits, e.g. ``("test",)`` for an evaluation
    on a machine whose cache lacks the training audio; their audio is the same either way."""
    cfg, counts = data, _counts(data)
    if cfg.min_words < 1 or cfg.max_words < cfg.min_words:
        raise RecipeError(f"data: need 1 <= min_words <= max_words, got {cfg.min_words}..{cfg.max_words}")
    dirs = _split_dirs(data)
    out: dict[str, SpeechCorpus] = {}
    sentences: Optional[list[tuple[str, str]]] = None
    start = 0
    for split in _SPLITS:
        if splits is not None and split not in splits:
            start += max(counts[split], 0)
            continue
        if counts[split] <= 0:
            if split != "flite":
                out[split] = SpeechCorpus([], "<none>")
            continue
        manifest = dirs[split] / "manifest.jsonl"
        if manifest.exists():
            out[split] = read_manifest(manifest)
        else:
            if sentences is None:
                sentences = _sentences(cfg)
            pool = sentences[start:] if split == "train" else sentences[start:start + counts[split]]
            if not pool or (split != "train" and len(pool) < counts[split]):
                raise RecipeError(f"data.{split}: only {len(sentences)} distinct sentences; ask for fewer "
                                  "utterances or allow more words per chunk")
            jobs = cfg.jobs or os.cpu_count() or 1
            plan = _plan(split, pool, counts[split], cfg.seed, cfg.train_flite)
            out[split] = _build_split(split, dirs[split], plan, jobs)
        start += counts[split]
    if cfg.librivox and (splits is None or "librivox" in splits):
        out["librivox"] = librivox_corpus()
    return out


synth_provider.task = "transcription"  # type: ignore[attr-defined]
synth_provider.check = check_synth  # type: ignore[attr-defined]
synth_provider.Config = SynthConfig  # type: ignore[attr-defined]
synth_provider.lm_text = lm_text  # type: ignore[attr-defined]
