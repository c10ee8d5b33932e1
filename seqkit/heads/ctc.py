"""CTC transcription head: output units, CTC loss, greedy and beam-search decoding, CER/WER.

Shape legend: N batch, L frames, F encoder features, C output units (blank included), S target length.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor, nn
from torch.nn import functional as F

from ..decoding import SIL_SCORES, WEIGHTS, WORD_SCORES
from ..errors import SeqkitError
from ..recipe import bounded

if TYPE_CHECKING:
    from ..decoding import DecoderLM

__all__ = ["BLANK", "CTC", "CTCOptions", "CTCVocab", "error_rates"]

BLANK = "<blank>"
WORD = "|"  # the word separator of a character vocabulary (a space in the text)
PIECE_START = "\u2581"  # BPE pieces that start a word begin with this


class CTCVocab:
    """The output units of a CTC model, the blank first: characters or BPE pieces.

    Characters: every character of the training text, with ``|`` for the space between words.
    BPE: an HF ``tokenizers`` BPE model trained on the training text (Metaspace words).
    """

    def __init__(self, kind: str, tokens: list[str], tokenizer: Optional[Tokenizer] = None) -> None:
        self.kind = kind
        self.tokens = tokens  # id -> unit, as the beam decoder sees it
        self.tokenizer = tokenizer
        self.index = {t: i for i, t in enumerate(tokens)}
        self.word_token = WORD if kind == "chars" else PIECE_START

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Sequence[str], kind: str = "chars", bpe_size: int = 256) -> "CTCVocab":
        chars = sorted({c for text in texts for c in text if not c.isspace()})
        if not chars:
            raise SeqkitError("no transcript text to build an output vocabulary from")
        if kind == "chars":
            return cls("chars", [BLANK, WORD, *chars])
        if kind != "bpe":
            raise SeqkitError(f"head.vocab: expected 'chars' or 'bpe', got {kind!r}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=bpe_size, special_tokens=[BLANK], show_progress=False,
                                      initial_alphabet=[PIECE_START, *chars])
        tok.train_from_iterator(texts, trainer=trainer)
        return cls._from_tokenizer(tok)

    @classmethod
    def _from_tokenizer(cls, tok: Tokenizer) -> "CTCVocab":
        vocab = tok.get_vocab()
        tokens = [""] * len(vocab)
        for piece, i in vocab.items():
            tokens[i] = piece
        if tokens[0] != BLANK or PIECE_START not in vocab:
            raise SeqkitError(f"BPE vocabulary must have {BLANK} at index 0 and a {PIECE_START!r} piece")
        return cls("bpe", tokens, tok)

    def encode(self, text: str) -> list[int]:
        """Unit ids of a normalised transcript; characters outside the vocabulary are dropped."""
        if self.tokenizer is not None:
            return self.tokenizer.encode(text).ids
        ids = [self.index.get(WORD if c == " " else c, -1) for c in " ".join(text.split())]
        return [i for i in ids if i > 0]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of unit ids (blanks and repeats already removed)."""
        if self.tokenizer is not None:
            return " ".join(self.tokenizer.decode(list(ids), skip_special_tokens=True).split())
        return " ".join("".join(self.tokens[i] for i in ids if i > 0).replace(WORD, " ").split())

    def spell(self, word: str) -> list[str]:
        """Units that spell one word in a lexicon (characters end with the word separator)."""
        if self.tokenizer is not None:
            return self.tokenizer.encode(word).tokens
        return [c for c in word if c in self.index] + [WORD]

    def can_spell(self, word: str) -> bool:
        """Whether every character of ``word`` is an output unit (BPE pieces spell anything)."""
        return self.tokenizer is not None or all(c in self.index for c in word)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "units.json").write_text(json.dumps({"kind": self.kind, "tokens": self.tokens},
                                                      ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "CTCVocab":
        path = folder / "units.json"
        if not path.exists():
            raise SeqkitError(f"{path}: missing; the run folder has no output vocabulary")
        info = json.loads(path.read_text(encoding="utf-8"))
        if info["kind"] == "bpe":
            return cls._from_tokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")))
        return cls("chars", list(info["tokens"]))


@dataclass
class CTCOptions:
    """Options of the ``ctc`` head."""

    dropout: float = bounded(0.0, ge=0, lt=1)  # on the encoder output before scoring
    vocab: Literal["chars", "bpe"] = "chars"  # output units: characters or BPE pieces
    bpe_size: int = bounded(256, ge=2)  # BPE vocabulary size (HF tokenizers, trained on the training text)
    beam_size: int = bounded(16, ge=0)  # beam width of the final report and `seqkit evaluate` (0: greedy only)
    lexicon: Optional[str] = None  # word list (or "train": the training words); beam search outputs only these
    # A word language model for beam search (needs a lexicon): "kenlm" estimates an lm_order-gram
    # of the dataset's text with every valid/test/flite sentence removed (run/lm/); or a KenLM
    # file (.arpa/.bin), or a seqkit language-model run folder with word units (an LSTM LM).
    lm: Optional[str] = None
    lm_order: int = bounded(4, ge=2, le=6)
    lm_weight: float = 0.5  # starting values; with lm_tune, the run grid-searches them on the
    word_score: float = 0.0  # validation split and keeps the best in run/decoder.json
    sil_score: float = 0.0  # added per word separator the LM search emits (negative: fewer, longer words)
    lm_tune: bool = True
    lm_weight_grid: list[float] = field(default_factory=lambda: list(WEIGHTS))  # the lm_tune grid
    word_score_grid: list[float] = field(default_factory=lambda: list(WORD_SCORES))
    sil_score_grid: list[float] = field(default_factory=lambda: list(SIL_SCORES))
    lm_beam_size: int = bounded(0, ge=0)  # beam width of the search with the LM (0: beam_size)
    lm_tune_beam: int = bounded(0, ge=0)  # beam width while tuning (0: lm_beam_size); narrower is faster
    lm_rescore: bool = False  # LSTM LM: rescore the n-best list of a search without LM instead


class CTC(nn.Module):
    """Connectionist temporal classification over characters or BPE pieces.

    Args:
        input_size: F, the encoder's output features.
        vocab: the output units (:class:`CTCVocab`), blank at index 0.
        dropout: dropout on the encoder output before scoring.
        lexicon: optional words that beam search may output (a trie over their spellings).

    ``loss(features, lengths, targets, target_lengths)``: features (N, L, F), lengths (N,),
    targets (N, S) padded unit ids, target_lengths (N,); the summed CTC loss divided by the
    number of target units.  ``greedy(log_probs, lengths)`` and ``beam(log_probs, lengths,
    beam_size)`` return one string per sequence; ``log_probs(features)`` is (N, L, C).
    """

    task: ClassVar[str] = "transcription"
    Config: ClassVar[type] = CTCOptions

    def __init__(self, input_size: int, vocab: CTCVocab, *, dropout: float = 0.0,
                 lexicon: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.vocab = vocab
        self.lexicon = list(lexicon) if lexicon else None
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(input_size, len(vocab))
        self._decoders: dict[int, object] = {}

    def log_probs(self, features: Tensor) -> Tensor:
        return self.proj(self.dropout(features)).float().log_softmax(-1)  # (N, L, C)

    def loss(self, features: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        lp = self.log_probs(features).transpose(0, 1)  # (L, N, C), as ctc_loss wants
        total = F.ctc_loss(lp, targets, lengths.cpu(), target_lengths.cpu(), blank=0,
                           reduction="sum", zero_infinity=True)
        return total / target_lengths.sum().clamp(min=1)

    def greedy(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        best = log_probs.argmax(-1).cpu()  # (N, L)
        out = []
        for row, n in zip(best, lengths.tolist(), strict=True):
            ids = torch.unique_consecutive(row[:n])
            out.append(self.vocab.decode([i for i in ids.tolist() if i != 0]))
        return out

    def beam(self, log_probs: Tensor, lengths: Tensor, beam_size: int = 16,
             lm: Optional[DecoderLM] = None) -> list[str]:
        """Beam search (flashlight's, through torchaudio), spelling only lexicon words when there
        is a lexicon; with ``lm`` (a :class:`~seqkit.decoding.DecoderLM`) a language model steers
        it, or rescores its n-best list."""
        if lm is not None and lm.rescore:
            from ..decoding import rescore

            return [" ".join(rescore(n, lm)) for n in self.nbest(log_probs, lengths, beam_size, lm.nbest, lm.words)]
        out = []
        for best in self._search(log_probs, lengths, beam_size, lm):
            if not best:
                out.append("")
            elif self.lexicon or lm is not None:
                out.append(" ".join(best[0].words))
            else:
                out.append(self.vocab.decode(best[0].tokens.tolist()))
        return out

    def nbest(self, log_probs: Tensor, lengths: Tensor, beam_size: int, n: int,
              words: Sequence[str] = ()) -> list[list[tuple[list[str], float]]]:
        """The ``n`` best lexicon-word hypotheses of each sequence, with their scores, searched
        without a language model (for rescoring); ``words`` join the lexicon (the LM's)."""
        if not self.lexicon:
            raise SeqkitError("n-best rescoring needs a lexicon (head.lexicon)")
        return [[(list(h.words), float(h.score)) for h in hyps]
                for hyps in self._search(log_probs, lengths, beam_size, None, nbest=n, words=tuple(words))]

    def _search(self, log_probs: Tensor, lengths: Tensor, beam_size: int, lm: Optional[DecoderLM],
                nbest: int = 1, words: tuple[str, ...] = ()) -> list:
        if lm is not None and lm.rescore:
            lm, words = None, lm.words
        decoder = self._decoder(beam_size, lm, nbest, words)
        emissions = log_probs.detach().float().cpu()
        lengths = lengths.cpu().to(torch.int32)
        if self.vocab.kind == "chars":
            # One more frame that is surely the word separator ends the last word: the lexicon
            # search completes (and the LM scores) a word only at a separator, and the
            # transcripts end without one.
            emissions = F.pad(emissions, (0, 0, 0, 1), value=-1e4)
            emissions[torch.arange(emissions.size(0)), lengths.long(), self.vocab.index[WORD]] = 0.0
            lengths = lengths + 1
        return decoder(emissions.contiguous(), lengths)

    def _decoder(self, beam_size: int, lm: Optional[DecoderLM] = None, nbest: int = 1,
                 extra_words: tuple[str, ...] = ()):
        extra_words = lm.words if lm is not None else extra_words
        key = (beam_size, nbest, lm.key() if lm is not None else None, hash(extra_words))
        if key not in self._decoders:
            try:
                from torchaudio.models.decoder import ctc_decoder
            except ImportError as exc:  # flashlight-text missing
                raise SeqkitError(f"beam search needs flashlight-text ({exc}); "
                                  "pip install flashlight-text, or decode greedily (--beam 0)") from None
            words = list(self.lexicon or [])
            if extra_words:  # the LM's words may be spelled too (those of the acoustic model's units)
                known = set(words)
                words += [w for w in extra_words if w not in known and self.vocab.can_spell(w)]
            options: dict[str, Any] = {}
            with tempfile.TemporaryDirectory() as tmp:
                lexicon_path = None
                if words:
                    lexicon_path = str(Path(tmp) / "lexicon.txt")
                    lines = [f"{w} {' '.join(self.vocab.spell(w))}" for w in words if w.strip()]
                    Path(lexicon_path).write_text("\n".join(lines) + "\n", encoding="utf-8")
                if lm is not None and lm.kind == "kenlm":
                    options = {"lm": str(lm.path), "lm_weight": lm.weight, "word_score": lm.word_score,
                               "sil_score": lm.sil_score}
                elif lm is not None:  # an LSTM LM scores words inside the search
                    from ..decoding import _lstm, lstm_word_lm

                    dictionary = [w for w in words if w.strip()] + ["<unk>"]
                    lm_dict = Path(tmp) / "lm_dict.txt"
                    lm_dict.write_text("\n".join(dictionary) + "\n", encoding="utf-8")
                    options = {"lm": lstm_word_lm(_lstm(lm.path), dictionary), "lm_dict": str(lm_dict),
                               "lm_weight": lm.weight, "word_score": lm.word_score, "sil_score": lm.sil_score}
                elif nbest > 1:
                    options = {"word_score": 0.0}
                # log_add: a prefix's score sums over its alignments (without it hypotheses are
                # merged by max, which finds the single best path: the greedy answer)
                self._decoders[key] = ctc_decoder(
                    lexicon=lexicon_path, tokens=list(self.vocab.tokens), beam_size=beam_size, nbest=nbest,
                    blank_token=BLANK, sil_token=self.vocab.word_token, unk_word="<unk>", log_add=True, **options)
        return self._decoders[key]


def _edit_distance(a: Sequence, b: Sequence) -> int:
    from torchaudio.functional import edit_distance

    return edit_distance(a, b)


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus CER and WER in percent: edit distance summed over utterances, divided by the
    reference's characters (spaces between words included) or words."""
    char_err = char_ref = word_err = word_ref = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
        char_err += _edit_distance(ref, hyp)
        char_ref += len(ref)
        word_err += _edit_distance(ref.split(), hyp.split())
        word_ref += len(ref.split())
    return {"cer": 100.0 * char_err / max(char_ref, 1), "wer": 100.0 * word_err / max(word_ref, 1)}
