"""Dataset providers of the classification task: labelled text tables (TSV, CSV, JSON lines) read
through HF ``datasets``' local loaders, and the Movie Review sentence-polarity benchmark with fixed
10-fold cross-validation folds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import seqkit
from seqkit.tasks import resolve_path

TASK = "classification"
MR_HINT = ("the Movie Review sentence-polarity data (Pang & Lee 2005), which seqkit does not ship: get "
           "rt-polarity.pos and rt-polarity.neg from nltk/nltk_data (packages/corpora/sentence_polarity.zip)")


@dataclass
class Examples:
    """One split: texts and their labels (a label string each; lists of them when multi-label)."""

    texts: list[str]
    labels: list
    path: str

    def __len__(self) -> int:
        return len(self.texts)


# -- tables ------------------------------------------------------------------------------------


@dataclass
class TableConfig:
    train: Optional[str] = None  # a .tsv, .csv or .jsonl file (relative paths: from the recipe's folder)
    valid: Optional[str] = None  # none: the last valid_fraction of train
    test: Optional[str] = None
    format: Literal["auto", "tsv", "csv", "jsonl"] = "auto"  # auto: from the file's extension
    text_column: str = "text"
    label_column: str = "label"
    label_separator: Optional[str] = None  # multi-label: labels in one cell split by this ("|")
    valid_fraction: float = seqkit.bounded(0.1, ge=0, lt=1)
    limit: int = seqkit.bounded(0, ge=0)  # keep the first N rows of each split (0: all)


def _format(path: Path, chosen: str) -> str:
    if chosen != "auto":
        return chosen
    suffix = path.suffix.lower()
    formats = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
    if suffix not in formats:
        raise seqkit.RecipeError(f"data.format: cannot tell the format of {path} from its extension; "
                                 "set data.format: tsv, csv or jsonl")
    return formats[suffix]


def read_table(path: Path, config: TableConfig) -> Examples:
    """Rows of a TSV/CSV/JSONL file through HF ``datasets`` (``csv`` and ``json`` loaders)."""
    import datasets

    kind = _format(path, config.format)
    loader, options = {"tsv": ("csv", {"delimiter": "\t", "quoting": 3}), "csv": ("csv", {}),
                       "jsonl": ("json", {})}[kind]
    bars = datasets.is_progress_bar_enabled()
    try:
        datasets.disable_progress_bars()
        table = datasets.load_dataset(loader, data_files={"train": str(path)}, split="train", **options)
    except Exception as exc:  # datasets wraps parser errors in its own types
        cause = exc.__cause__ or exc
        reason = " ".join(str(cause).split())[:200] or type(cause).__name__
        raise seqkit.DataError(f"{path}: could not read it as {kind} ({reason})") from None
    finally:
        if bars:  # the caller's setting, as it was
            datasets.enable_progress_bars()
    for column in (config.text_column, config.label_column):
        if column not in table.column_names:
            raise seqkit.DataError(f"{path}: no column {column!r} (it has {', '.join(table.column_names)}); "
                                   f"set data.text_column / data.label_column")
    texts, labels = [], []
    for row, (text, label) in enumerate(zip(table[config.text_column], table[config.label_column]), start=2):
        if text is None or label is None or str(text).strip() == "":
            raise seqkit.DataError(f"{path}: row {row if kind != 'jsonl' else row - 1}: empty text or label")
        texts.append(str(text))
        label = str(label).strip()
        labels.append([p.strip() for p in label.split(config.label_separator) if p.strip()]
                      if config.label_separator else label)
    if config.limit:
        texts, labels = texts[: config.limit], labels[: config.limit]
    return Examples(texts, labels, str(path))


def table_provider(config: TableConfig, *, base: Path, splits=None) -> dict[str, Examples]:
    wanted = set(splits or ("train", "valid", "test"))
    out: dict[str, Examples] = {}
    _need_train(config)
    train = read_table(resolve_path(config.train, base, "data.train"), config) if (
        "train" in wanted or config.valid is None) else None
    if config.valid is not None:
        if "valid" in wanted:
            out["valid"] = read_table(resolve_path(config.valid, base, "data.valid"), config)
    elif train is not None:
        cut = len(train) - int(round(len(train) * config.valid_fraction))
        out["valid"] = Examples(train.texts[cut:], train.labels[cut:], f"{train.path} (last {len(train) - cut} rows)")
        train = Examples(train.texts[:cut], train.labels[:cut], train.path)
    if train is not None:
        out["train"] = train
    if config.test is not None and "test" in wanted:
        out["test"] = read_table(resolve_path(config.test, base, "data.test"), config)
    for name in ("train", "valid", "test"):
        out.setdefault(name, Examples([], [], "<none>"))
    return out


def _need_train(config: TableConfig) -> None:
    if config.train is None:
        raise seqkit.RecipeError("data.train: the table dataset needs a training file (data.train: path)")


def check_table(config: TableConfig, *, base: Path) -> None:
    _need_train(config)
    for key in ("train", "valid", "test"):
        path = resolve_path(getattr(config, key), base, f"data.{key}")
        if path is not None:
            _format(path, config.format)


table_provider.Config = TableConfig  # type: ignore[attr-defined]
table_provider.task = TASK  # type: ignore[attr-defined]
table_provider.check = check_table  # type: ignore[attr-defined]


# -- Movie Review ------------------------------------------------------------------------------


@dataclass
class MRConfig:
    folder: str = "../../../shared/data/mr"  # holds rt-polarity.pos and rt-polarity.neg
    folds: int = seqkit.bounded(10, ge=2)
    fold: int = seqkit.bounded(0, ge=0)  # the test fold (0..folds-1); the others train
    # held out of the training folds (a seeded random sample) to pick the best epoch
    valid_fraction: float = seqkit.bounded(0.1, ge=0, lt=1)
    seed: int = 0  # the fixed fold assignment (the same for every model and the baseline)


def mr_files(config: MRConfig, base: Path) -> tuple[Path, Path]:
    folder = Path(config.folder).expanduser()
    folder = folder if folder.is_absolute() else base / folder
    files = (folder / "rt-polarity.pos", folder / "rt-polarity.neg")
    for path in files:
        if not path.is_file():
            raise seqkit.RecipeError(f"data.folder: {path} not found; this is {MR_HINT}")
    return files


def mr_folds(count: int, folds: int, seed: int) -> list[int]:
    """The fold of each of ``count`` sentences: a seeded shuffle dealt round-robin, so the folds
    differ in size by at most one and every model and baseline sees the same ones."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    fold = [0] * count
    for rank, index in enumerate(order):
        fold[index] = rank % folds
    return fold


def mr_provider(config: MRConfig, *, base: Path, splits=None) -> dict[str, Examples]:
    pos, neg = check_mr(config, base=base)
    texts, labels = [], []
    for path, label in ((pos, "positive"), (neg, "negative")):
        # the files are Latin-1 (a few accented names); every line is one sentence
        for line in path.read_bytes().decode("latin-1").splitlines():
            if line.strip():
                texts.append(line.strip())
                labels.append(label)
    fold = mr_folds(len(texts), config.folds, config.seed)
    test = [i for i in range(len(texts)) if fold[i] == config.fold]
    rest = [i for i in range(len(texts)) if fold[i] != config.fold]
    random.Random(config.seed * 1000 + config.fold).shuffle(rest)  # the files list positives first
    cut = len(rest) - int(round(len(rest) * config.valid_fraction))
    where = f"{pos.parent} fold {config.fold}/{config.folds}"

    def pick(indices: list[int], what: str) -> Examples:
        return Examples([texts[i] for i in indices], [labels[i] for i in indices], f"{where} ({what})")

    return {"train": pick(rest[:cut], "train"), "valid": pick(rest[cut:], "valid"), "test": pick(test, "test")}


def check_mr(config: MRConfig, *, base: Path) -> tuple[Path, Path]:
    """The fold is one of the folds and both files are there (also what ``recipe validate`` checks)."""
    if config.fold >= config.folds:
        raise seqkit.RecipeError(f"data.fold: must be below data.folds ({config.folds}), got {config.fold}")
    return mr_files(config, base)


mr_provider.Config = MRConfig  # type: ignore[attr-defined]
mr_provider.task = TASK  # type: ignore[attr-defined]
mr_provider.check = check_mr  # type: ignore[attr-defined]
