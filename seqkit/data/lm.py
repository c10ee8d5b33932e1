"""Language-model dataset providers: ``text`` (your plain-text files, e.g. the Penn Treebank)
and ``kjv`` (the King James Bible from Debian's bible-kjv).

A provider is called as ``provider(config, base=folder, splits=None)`` with its own ``Config``
(the recipe's ``data`` section) and returns the splits ``train``, ``valid`` and ``test`` as
:class:`TextCorpus` objects, one sentence (or verse) a line; ``splits`` builds only those.
``provider.check(config)`` verifies the system programs it needs before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, NamedTuple, Optional

from ..errors import DataError, RecipeError
from ..fsio import write_text_atomic
from ..recipe import bounded

__all__ = ["KJVConfig", "TextConfig", "TextCorpus", "Verse", "cache_root", "kjv_provider", "kjv_split",
           "read_kjv", "split_punctuation", "text_provider"]

SPLITS = ("train", "valid", "test")
TASK = "language-model"
_KJV_FORMAT = 1  # bump when the parsed-verse cache changes shape, so that it is rebuilt
_KJV_INSTALL = "install it with `sudo apt-get install bible-kjv bible-kjv-text`"
_KJV_VERSES = 31102  # verses in the KJV (Genesis 1:1 .. Revelation 22:21)
_PTB_HINT = ("; this is the Penn Treebank (Mikolov's LM version), which seqkit does not ship: get "
             "ptb.train.txt, ptb.valid.txt and ptb.test.txt from locuslab/TCN (TCN/word_cnn/data/penn) "
             "or torchtext's PennTreebank")


@dataclass
class TextCorpus:
    lines: list[str]  # one sentence (verse) a line, without the newline; empty lines dropped
    path: str  # where it came from, for messages


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir`` (relative to the current folder, like --out), else $SEQKIT_CACHE_DIR,
    else $XDG_CACHE_HOME/seqkit or ~/.cache/seqkit."""
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    root = os.environ.get("SEQKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "seqkit"
    return Path(root).expanduser().resolve()


def _limit(corpus: TextCorpus, limit: int) -> TextCorpus:
    return TextCorpus(corpus.lines[:limit], corpus.path) if limit > 0 else corpus


def _check_fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise RecipeError(f"data.{key}: expected a fraction in [0, 1), got {value!r}")


# -- plain text ---------------------------------------------------------------------------------


@dataclass
class TextConfig:
    """Options of the ``text`` dataset: plain-text files, one sentence a line."""

    train: Optional[str] = None  # training text; a relative path is read from the recipe's folder
    valid: Optional[str] = None  # validation text; none: the last valid_fraction of train (or no validation)
    test: Optional[str] = None  # test text; none: an empty test split
    # without `valid`: hold out this fraction of train lines, taken from its end
    valid_fraction: float = bounded(0.0, ge=0, lt=1)
    limit: int = bounded(0, ge=0)  # keep only the first N lines of each split (0: all), for smoke runs
    cache_dir: Optional[str] = None  # seqkit's cache (Arrow tables in CACHE/datasets); default ~/.cache/seqkit


def _resolve(value: str, base: Path, key: str) -> Path:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        ptb = re.search(r"(^|/)shared/data/ptb(/|$)", path.as_posix()) or re.fullmatch(r"ptb\..*\.txt", path.name)
        raise RecipeError(f"data.{key}: file not found: {path}" + (_PTB_HINT if ptb else ""))
    if not path.is_file():
        raise RecipeError(f"data.{key}: not a file: {path}")
    return path


def check_text(config: TextConfig, *, base: Path) -> None:
    """The files a recipe names exist (``seqkit recipe validate`` reports a missing one, with where
    to get PTB when it is the Penn Treebank)."""
    if config.train is None:
        raise RecipeError("data.train: the text dataset needs a training file (data.train: path)")
    for key in SPLITS:
        value = getattr(config, key)
        if value is not None:
            _resolve(value, base, key)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No "Generating train split" bars from HF datasets; the caller's setting is restored."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def read_text(path: Path, cache: Optional[Path] = None) -> list[str]:
    """The lines of a UTF-8 text file through HF datasets' local ``text`` loader, cached as an
    Arrow table under ``cache`` (default: seqkit's ``CACHE/datasets``; rebuilt when the file
    changes); surrounding whitespace is stripped (PTB lines begin with a space) and empty
    lines are dropped.

    The ``text`` loader is packaged with ``datasets`` and reads local files only: it makes no
    network request, online or offline, so the caller's HF settings are left alone."""
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; give the path of a text file")
    if path.stat().st_size == 0:
        return []  # datasets refuses to build a table from an empty file
    import datasets  # ~0.8 s to import: only when a text file is read
    from datasets.exceptions import DatasetGenerationError

    cache = cache if cache is not None else cache_root() / "datasets"
    try:
        with _quiet_datasets():
            table = datasets.load_dataset("text", data_files={"train": str(path)}, split="train",
                                          cache_dir=str(cache))
    except (DatasetGenerationError, UnicodeDecodeError, OSError) as exc:  # the cause says what went wrong
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(f"{path}: could not read it as UTF-8 text ({reason})") from None
    lines = table.data.column("text").to_pylist()  # 50x faster than iterating the Column
    return [s for s in (line.strip() for line in lines) if s]


def text_provider(config: TextConfig, *, base: Path,
                  splits: Optional[tuple[str, ...]] = None) -> dict[str, TextCorpus]:
    """Plain-text files named by ``data.train``, ``data.valid``, ``data.test``: one sentence a
    line (the Penn Treebank's ``ptb.*.txt`` as they are). Without ``valid``, the last
    ``valid_fraction`` of the training lines (a contiguous block, so the text stays a stream)
    is held out; ``limit`` then keeps the first N lines of each split."""
    _check_fraction("valid_fraction", config.valid_fraction)
    wanted = set(SPLITS if splits is None else splits)
    need_train = "train" in wanted or ("valid" in wanted and config.valid is None and config.valid_fraction > 0)
    if need_train and config.train is None:
        raise RecipeError("data.train: the text dataset needs a training file (data.train: path)")
    cache = cache_root(config.cache_dir) / "datasets"

    def read(key: str) -> TextCorpus:
        value = getattr(config, key)
        if value is None:
            return TextCorpus([], "<none>")
        path = _resolve(value, base, key)
        return TextCorpus(read_text(path, cache), str(path))

    out: dict[str, TextCorpus] = {}
    if need_train:
        train = read("train")
        carve = config.valid is None and config.valid_fraction > 0
        cut = len(train.lines) - int(round(len(train.lines) * config.valid_fraction)) if carve else len(train.lines)
        if "train" in wanted:
            out["train"] = TextCorpus(train.lines[:cut], train.path)
        if "valid" in wanted and carve:
            out["valid"] = TextCorpus(train.lines[cut:], f"{train.path} (last {config.valid_fraction:.0%})")
    if "valid" in wanted and "valid" not in out:
        out["valid"] = read("valid")
    if "test" in wanted:
        out["test"] = read("test")
    return {k: _limit(out[k], config.limit) for k in SPLITS if k in out}


text_provider.Config = TextConfig  # type: ignore[attr-defined]
text_provider.task = TASK  # type: ignore[attr-defined]
text_provider.check = check_text  # type: ignore[attr-defined]


# -- King James Bible ---------------------------------------------------------------------------


@dataclass
class KJVConfig:
    """Options of the ``kjv`` dataset: the King James Bible, one verse a line, split by chapter."""

    valid_fraction: float = 0.1  # share of the 1,189 chapters held out for validation (whole chapters)
    test_fraction: float = 0.1  # share of the chapters held out for testing (whole chapters)
    seed: int = 0  # picks which chapters go where; the same seed gives the same split on any machine
    tokenize: Literal["words", "raw"] = "words"  # words: punctuation split off ("beginning ,"); raw: as printed
    lowercase: bool = False  # lowercase every verse ("LORD" and "Lord" become one word)
    strip_punctuation: bool = False  # drop , . ; : ? ! ( ); apostrophes and hyphens inside words stay
    limit: int = 0  # keep only the first N verses of each split (0: all), for smoke runs
    cache_dir: Optional[str] = None  # seqkit's cache (parsed verses in CACHE/kjv); default ~/.cache/seqkit


class Verse(NamedTuple):
    book: str  # as the `bible` program names it: "Genesis", "1 Kings", "Song of Solomon"
    chapter: int
    verse: int
    text: str  # as printed, punctuation included


def _run_bible() -> list[Verse]:
    try:
        out = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], capture_output=True, text=True,
                             check=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"could not read the KJV with `bible` ({exc}); {_KJV_INSTALL}") from None
    verses, book, chapter = [], "", 0
    for line in out.splitlines():
        match = re.match(r"\s+(\d+)\s+(.*\S)", line)  # "  12 And the earth brought forth grass, ..."
        if match:
            verses.append(Verse(book, chapter, int(match.group(1)), match.group(2)))
        elif line.strip():  # a chapter heading: "Genesis 1", "1 Kings 3", "Song of Solomon 2"
            book, _, number = line.strip().rpartition(" ")
            chapter = int(number) if number.isdigit() else 0
    if len(verses) != _KJV_VERSES:
        raise DataError(f"the `bible` program printed {len(verses)} verses, expected {_KJV_VERSES}; "
                        "reinstall bible-kjv-text")
    return verses


def _kjv_cache_file(cache_dir: Optional[str]) -> Path:
    return cache_root(cache_dir) / "kjv" / f"verses-v{_KJV_FORMAT}.json"


def read_kjv(cache_dir: Optional[str] = None) -> list[Verse]:
    """Every KJV verse in canonical order, from the `bible` program, cached as JSON in
    ``CACHE/kjv`` (delete it to read the program again); the cache also serves machines
    without bible-kjv."""
    path = _kjv_cache_file(cache_dir)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(rows, list) and len(rows) == _KJV_VERSES:
            return [Verse(*row) for row in rows]  # rows: [book, chapter, verse, text]
    except (OSError, ValueError, TypeError):
        pass  # missing or damaged: read the program again
    verses = _run_bible()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(verses, ensure_ascii=False))
    return verses


_WORDS = re.compile(r"\w+(?:['\u2019-]\w+)*['\u2019]?|[^\w\s]")


def split_punctuation(text: str) -> list[str]:
    """Words and punctuation marks as separate tokens: ``"beginning,"`` -> ``beginning ,``;
    apostrophes and hyphens inside a word stay (``brother's``, ``Beer-sheba``), and so does a
    final possessive apostrophe (``sons'``)."""
    return _WORDS.findall(text)


def kjv_split(book: str, chapter: int, config: KJVConfig) -> str:
    """The split a chapter belongs to: a stable hash (SHA-256 of seed, book and chapter, the
    same on every machine and Python) mapped to [0, 1): below test_fraction is test, the next
    valid_fraction is valid, the rest train. Every verse of a chapter goes to the same split."""
    digest = hashlib.sha256(f"kjv-split:{config.seed}:{book} {chapter}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < config.test_fraction:
        return "test"
    return "valid" if u < config.test_fraction + config.valid_fraction else "train"


def _kjv_line(text: str, config: KJVConfig) -> str:
    if config.lowercase:
        text = text.lower()
    if config.tokenize == "words" or config.strip_punctuation:
        tokens = split_punctuation(text)
        if config.strip_punctuation:
            tokens = [t for t in tokens if re.match(r"\w", t)]
        return " ".join(tokens)
    return text


def check_kjv(config: KJVConfig) -> None:
    """One clear error if the `bible` program is missing and no parsed copy is cached."""
    if shutil.which("bible") is None and not _kjv_cache_file(config.cache_dir).exists():
        raise DataError(f"the kjv dataset needs the program `bible`, which is not installed; {_KJV_INSTALL}")


def kjv_provider(config: KJVConfig, *, base: Path,
                 splits: Optional[tuple[str, ...]] = None) -> dict[str, TextCorpus]:
    """The King James Bible (31,102 verses, ~790k words), one verse a line in canonical order.

    Split by chapter (see :func:`kjv_split`): each of the 1,189 chapters goes wholly to train,
    valid or test (about 80/10/10 by default), so no verse, and no chapter's context, is in two
    splits. ``tokenize: words`` separates punctuation from words so that a word vocabulary
    does not hold "beginning," beside "beginning"."""
    _check_fraction("valid_fraction", config.valid_fraction)
    _check_fraction("test_fraction", config.test_fraction)
    if config.valid_fraction + config.test_fraction >= 1.0:
        raise RecipeError(f"data.valid_fraction + data.test_fraction: must be below 1 to leave training "
                          f"chapters, got {config.valid_fraction} + {config.test_fraction}")
    wanted = SPLITS if splits is None else tuple(s for s in SPLITS if s in splits)
    lines: dict[str, list[str]] = {s: [] for s in wanted}
    for verse in read_kjv(config.cache_dir):
        split = kjv_split(verse.book, verse.chapter, config)
        if split in lines:
            lines[split].append(_kjv_line(verse.text, config))
    return {s: _limit(TextCorpus(lines[s], f"KJV (bible-kjv), {s} chapters, seed {config.seed}"), config.limit)
            for s in wanted}


kjv_provider.Config = KJVConfig  # type: ignore[attr-defined]
kjv_provider.task = TASK  # type: ignore[attr-defined]
kjv_provider.check = check_kjv  # type: ignore[attr-defined]
