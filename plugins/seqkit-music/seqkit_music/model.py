"""The ``piano-roll`` task: 88-key frames -> the shared (forward) encoder -> the distribution of
the next frame.

Each piece is read from a silent frame before its first one, so the model learns how pieces
begin and can generate from nothing. The reported ``nll`` is the published tables' measure:
the sum of the 88 per-key log-losses (nats) of frames 2..T of every test piece, averaged over
all those frames (each frame weighted equally, the first frame of each piece not predicted, as
in Bai et al. 2018); ``nll_all`` includes the first frames (predicted from silence). ``acc`` is
Boulanger-Lewandowski's frame-level accuracy TP / (TP + FP + FN) summed over the same frames,
with each key predicted on when its probability (given the keys below it, for ``nade``) is over
one half.

Heads: ``bernoulli`` (88 independent keys, the LSTM rows of the tables) and ``nade`` (the
RNN-NADE output: the keys of a frame predicted from the lowest up, each given the ones below it,
through a NADE whose biases the encoder's state sets; Boulanger-Lewandowski et al. 2012).

Shape legend: N pieces (batch), L frames, K keys (88), D encoder output, U NADE hidden units.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import seqkit
from seqkit.sampling import sample_steps
from seqkit.tasks import (
    ModelOutput,
    Prepared,
    Task,
    build_encoder,
    epoch_order,
    head_class,
    length_groups,
    load_splits,
    persist_vocab,
    read_vocab,
    seed_everything,
)

from .data import KEYS, TASK, Rolls, nonempty, read_benchmark, read_midi, read_midi_folder
from .roll import PianoRoll

BASELINES = ("bernoulli", "markov")
SMOOTHING = 0.5  # add-one-half (Krichevsky-Trofimov) counts for the baselines
EVAL_CHUNK = 4096  # frames the NADE head scores at once outside training


# -- batches -----------------------------------------------------------------------------------


@dataclass
class RollBatch:
    inputs: Tensor  # (N, L, K) the silent frame, then frames 1..T-1
    targets: Tensor  # (N, L, K) frames 1..T
    lengths: Tensor  # (N,) frames of each piece

    def to(self, device: torch.device) -> "RollBatch":
        return RollBatch(self.inputs.to(device, non_blocking=True), self.targets.to(device, non_blocking=True),
                         self.lengths)

    @property
    def num_items(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.lengths)


def make_batch(pieces: list[np.ndarray]) -> RollBatch:
    lengths = torch.tensor([len(p) for p in pieces])
    targets = torch.zeros(len(pieces), int(lengths.max()), KEYS)
    for k, piece in enumerate(pieces):
        targets[k, : len(piece)] = torch.from_numpy(piece.astype(np.float32))
    inputs = F.pad(targets[:, :-1], (0, 0, 1, 0))  # the silent frame first
    return RollBatch(inputs, targets, lengths)


class Batches:
    """Length-grouped batches of pieces, each built when asked for; long pieces are cut into
    chunks of at most ``max_frames`` (each chunk read from a silent frame) for training."""

    def __init__(self, pieces: list[np.ndarray], size: int, seed: Optional[int] = None, shortest_first: bool = False,
                 max_frames: int = 0) -> None:
        if max_frames:
            pieces = [p[i: i + max_frames] for p in pieces for i in range(0, len(p), max_frames)]
        self.pieces = nonempty(pieces) if seed is not None else pieces
        self.groups = length_groups([len(p) for p in self.pieces], size, seed, shortest_first=shortest_first)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> RollBatch:
        return make_batch([self.pieces[i] for i in self.groups[k]])


# -- heads -------------------------------------------------------------------------------------


@dataclass
class BernoulliOptions:
    dropout: float = seqkit.bounded(0.0, ge=0, lt=1)  # on the encoder's output


class BernoulliHead(nn.Module):
    """88 independent keys: one logit each from the encoder's output."""

    Config = BernoulliOptions
    task = TASK

    def __init__(self, input_size: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(input_size, KEYS)

    def nll(self, h: Tensor, frames: Tensor) -> Tensor:
        """Per-frame NLL (nats, summed over keys): h (..., D), frames (..., K) -> (...)."""
        logits = self.out(self.drop(h))
        return F.binary_cross_entropy_with_logits(logits, frames, reduction="none").sum(-1)

    def greedy(self, h: Tensor) -> Tensor:
        """Each key on when its probability is over one half: (..., K) 0/1."""
        return (self.out(h) > 0).float()

    def draw(self, h: Tensor, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
        """A frame sampled at ``temperature`` (0: the greedy frame): (N, D) -> (N, K)."""
        if temperature == 0:
            return self.greedy(h)
        probs = torch.sigmoid(self.out(h) / temperature)
        return torch.bernoulli(probs, generator=generator)


@dataclass
class NadeOptions:
    hidden: int = seqkit.bounded(150, ge=1)  # NADE hidden units (Boulanger-Lewandowski et al.: 150)
    dropout: float = seqkit.bounded(0.0, ge=0, lt=1)  # on the encoder's output


class NadeHead(nn.Module):
    """RNN-NADE's output: ``p(v_k | v_<k) = sigmoid(b_v[k] + V[k] . sigmoid(b_h + W[:, <k] v_<k))``
    with ``b_v`` and ``b_h`` set from the encoder's output, keys from the lowest up."""

    Config = NadeOptions
    task = TASK

    def __init__(self, input_size: int, *, hidden: int = 150, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.to_bv = nn.Linear(input_size, KEYS)
        self.to_bh = nn.Linear(input_size, hidden)
        self.W = nn.Parameter(torch.randn(KEYS, hidden) * 0.01)  # key k's input to the hidden units
        self.V = nn.Parameter(torch.randn(KEYS, hidden) * 0.01)  # hidden units to key k's logit

    def logits(self, h: Tensor, frames: Tensor) -> Tensor:
        """Each key's logit given the true keys below it (teacher forcing): (..., K)."""
        h = self.drop(h)
        contributions = frames.unsqueeze(-1) * self.W  # (..., K, U)
        below = contributions.cumsum(-2) - contributions  # the keys strictly below each key
        hidden = torch.sigmoid(self.to_bh(h).unsqueeze(-2) + below)  # (..., K, U)
        return self.to_bv(h) + (hidden * self.V).sum(-1)

    def nll(self, h: Tensor, frames: Tensor) -> Tensor:
        if torch.is_grad_enabled() or h[..., 0].numel() <= EVAL_CHUNK:
            return F.binary_cross_entropy_with_logits(self.logits(h, frames), frames, reduction="none").sum(-1)
        # evaluation: a few thousand frames at a time (the hidden units of every key of every frame add up)
        flat_h, flat_f = h.reshape(-1, h.size(-1)), frames.reshape(-1, KEYS)
        parts = [self.nll(flat_h[i: i + EVAL_CHUNK], flat_f[i: i + EVAL_CHUNK])
                 for i in range(0, len(flat_h), EVAL_CHUNK)]
        return torch.cat(parts).reshape(h.shape[:-1])

    def _decode(self, h: Tensor, choose: Callable[[Tensor], Tensor]) -> Tensor:
        """Keys from the lowest up, each chosen by ``choose(logit)`` given the ones chosen below."""
        a = self.to_bh(h)  # (M, U)
        bv = self.to_bv(h)  # (M, K)
        keys = []
        for k in range(KEYS):
            v = choose(bv[:, k] + (torch.sigmoid(a) * self.V[k]).sum(-1))  # (M,)
            keys.append(v)
            a = a + v.unsqueeze(-1) * self.W[k]
        return torch.stack(keys, dim=-1)

    def greedy(self, h: Tensor) -> Tensor:
        shape = h.shape[:-1]
        return self._decode(h.reshape(-1, h.size(-1)), lambda logit: (logit > 0).float()).reshape(*shape, KEYS)

    def draw(self, h: Tensor, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
        if temperature == 0:
            return self.greedy(h)
        return self._decode(h, lambda logit: torch.bernoulli(torch.sigmoid(logit / temperature), generator=generator))


# -- what a run keeps about its music ----------------------------------------------------------


@dataclass
class Meta:
    """The frame length (quarter notes), where the data came from, and the training set's key
    statistics (the baselines' fitted probabilities)."""

    frame_beats: float
    source: str
    p_on: list[float]  # independent Bernoulli: P(key on)
    p_stay: list[float]  # Markov: P(on | on before)
    p_start: list[float]  # Markov: P(on | off before)

    @classmethod
    def fit(cls, rolls: Rolls) -> "Meta":
        train = rolls.splits["train"]
        frames = np.concatenate(train).astype(np.float64) if train else np.zeros((0, KEYS))
        stay, stay_n, start, start_n = (np.zeros(KEYS) for _ in range(4))
        on = frames.sum(0)
        for piece in train:
            prev, nxt = piece[:-1].astype(np.float64), piece[1:].astype(np.float64)
            stay, stay_n = stay + (prev * nxt).sum(0), stay_n + prev.sum(0)
            start, start_n = start + ((1 - prev) * nxt).sum(0), start_n + (1 - prev).sum(0)
        a = SMOOTHING
        return cls(rolls.frame_beats, rolls.source, ((on + a) / (len(frames) + 2 * a)).tolist(),
                   ((stay + a) / (stay_n + 2 * a)).tolist(), ((start + a) / (start_n + 2 * a)).tolist())

    def save(self, folder: Path) -> None:
        (folder / "music_meta.json").write_text(json.dumps(self.__dict__), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "Meta":
        return cls(**json.loads((folder / "music_meta.json").read_text(encoding="utf-8")))


def _bernoulli_nll(p: np.ndarray, frames: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(frames * np.log(p) + (1 - frames) * np.log(1 - p)).sum(-1)


def _acc(pred: Any, frames: Any) -> np.ndarray:
    """True positives, false positives and false negatives of 0/1 keys (NumPy arrays or tensors)."""
    return np.array([float((pred * frames).sum()), float((pred * (1 - frames)).sum()),
                     float(((1 - pred) * frames).sum())])


def baseline_metrics(meta: Meta, pieces: list[np.ndarray], wanted: Iterable[str]) -> dict[str, float]:
    """The baselines' NLL and ACC on frames 2..T of ``pieces``, keys ``<baseline>_nll/acc``."""
    out: dict[str, float] = {}
    pieces = nonempty(pieces)
    if not pieces:
        return out
    for name in wanted:
        nll, frames, counts = 0.0, 0, np.zeros(3)
        for piece in pieces:
            prev, nxt = piece[:-1].astype(np.float64), piece[1:].astype(np.float64)
            if name == "bernoulli":
                p = np.broadcast_to(np.asarray(meta.p_on), nxt.shape)
            else:
                p = np.where(prev > 0, meta.p_stay, meta.p_start)
            nll += float(_bernoulli_nll(p, nxt).sum())
            frames += len(nxt)
            counts += _acc((p > 0.5).astype(np.float64), nxt)
        out[f"{name}_nll"] = nll / frames
        out[f"{name}_acc"] = 100.0 * counts[0] / max(counts.sum(), 1)
    return out


# -- the model ---------------------------------------------------------------------------------


class MusicModel(nn.Module):
    """Piano-roll frames in, the next frame's distribution out; ``generate(...)`` for apps."""

    def __init__(self, recipe: Any, meta: Meta) -> None:
        super().__init__()
        self.recipe, self.meta = recipe, meta
        self.encoder = build_encoder(recipe, KEYS)  # forward only: PianoRollTask.check refuses the others
        opts = {f: getattr(recipe.head, f) for f in ("hidden", "dropout") if hasattr(recipe.head, f)}
        self.head = head_class(recipe)(self.encoder.output_size, **opts)

    def forward(self, batch: RollBatch, state=None) -> ModelOutput:
        """Mean NLL a frame (nats) of every frame of the batch, the first ones included."""
        out, _ = self.encoder(batch.inputs, batch.lengths)
        mask = _mask(batch.lengths, out.size(1), out.device)
        nll = self.head.nll(out, batch.targets)
        return ModelOutput(nll[mask].mean())

    @torch.inference_mode()
    def evaluate(self, batches: Iterable[RollBatch]) -> dict[str, float]:
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        total = first = 0.0
        frames = pieces = 0
        counts = np.zeros(3)
        for batch in batches:
            batch = batch.to(device)
            out, _ = self.encoder(batch.inputs, batch.lengths)
            nll = self.head.nll(out, batch.targets)  # (N, L)
            mask = _mask(batch.lengths, out.size(1), out.device)
            later = mask.clone()
            later[:, 0] = False  # frames 2..T: the published measure
            total += float(nll[later].sum())
            first += float(nll[:, 0].sum())
            frames += int(later.sum())
            pieces += len(batch)
            counts += _acc(self.head.greedy(out[later]), batch.targets[later])
        self.train(was)
        if not frames:
            return {}
        return {"nll": total / frames, "nll_all": (total + first) / (frames + pieces), "loss": total / frames,
                "acc": 100.0 * counts[0] / max(counts.sum(), 1), "frames": frames}

    def export_spec(self) -> Any:
        """What ``seqkit export`` writes (a Bernoulli head): frames (N, L, 88), lengths (N,) and the
        carried state (``state0``, ``state1``: (num_layers, N, H)) in; each next frame's key
        logits (N, L, 88) and the state out; this plugin's export_runtime.py samples with numpy.
        A NADE head samples its 88 keys one by one inside the model and does not export."""
        from seqkit.export import ExportGraph, ExportSpec, random_lengths, state_inputs

        if not isinstance(self.head, BernoulliHead):
            raise seqkit.SeqkitError(f"export: the {self.recipe.head.name!r} head samples key by key and does not "
                                     f"export; a model with head: bernoulli does")
        enc = self.encoder
        states = enc._num_states

        class Graph(ExportGraph):
            def forward(self, frames: Tensor, lengths: Tensor, state0: Tensor,
                        state1: Optional[Tensor] = None) -> tuple[Tensor, ...]:
                state = tuple(s for s in (state0, state1) if s is not None)
                out, final = self.encoder(frames, lengths, state)
                return (self.model.head.out(out), *final)

        def sample(gen: torch.Generator) -> dict[str, Tensor]:
            n, longest = int(torch.randint(2, 5, (1,), generator=gen)), int(torch.randint(2, 30, (1,), generator=gen))
            inputs = {"frames": (torch.rand(n, longest, KEYS, generator=gen) < 0.05).float(),
                      "lengths": random_lengths(gen, n, longest)}
            return {**inputs, **state_inputs(gen, enc, n)}

        dynamic: dict[str, dict[int, Any]] = {"frames": {0: "batch", 1: "length"}, "lengths": {0: "batch"}}
        dynamic.update({f"state{k}": {1: "batch"} for k in range(states)})
        info = {"layers": enc.num_layers, "hidden": enc.hidden_size, "num_states": states,
                "frame_beats": self.meta.frame_beats}
        return ExportSpec(build=functools.partial(Graph, self), inputs=sample(torch.Generator().manual_seed(1)),
                          outputs=["logits", *(f"new_state{k}" for k in range(states))], dynamic=dynamic,
                          sample=sample, files={"music.json": info, "music_runtime.py": Path(__file__).with_name(
                              "export_runtime.py")}, manifest={"runtime_module": "music_runtime.py"})

    # -- generation ------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def step(self, frame: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One frame in (N, K), the encoder's output for the next one (N, D) and the new state."""
        out, state = self.encoder(frame.unsqueeze(1), None, state)
        return out[:, 0], state

    @torch.inference_mode()
    def generate(self, frames: Optional[int] = None, *, seconds: Optional[float] = None, temperature: float = 1.0,
                 seed: Optional[int] = None, prime: Any = None, qpm: float = 100.0) -> PianoRoll:
        """Sample ``frames`` frames (or ``seconds`` of music at ``qpm`` quarter notes a minute;
        default 32 frames) after ``prime`` (a MIDI file path or a (T, 88) 0/1 array; default:
        the start of a piece). Same seed, same music. Returns a :class:`PianoRoll` (the prime
        included) that saves MIDI, a picture and a WAV preview."""
        if frames is not None and seconds is not None:
            raise seqkit.SeqkitError("give frames or seconds, not both")
        if seconds is not None:
            frames = max(1, round(seconds * qpm / 60.0 / self.meta.frame_beats))
        steps = 32 if frames is None else frames
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise seqkit.SeqkitError(f"frames: expected a whole number >= 0, got {steps!r}")
        if not math.isfinite(qpm) or qpm <= 0:
            raise seqkit.SeqkitError(f"qpm: expected a positive tempo, got {qpm!r}")
        start = self._prime(prime)  # (P, K)
        new = list(self._frames(start, steps, temperature, seed))
        sampled = np.stack(new) if new else np.zeros((0, KEYS), dtype=np.uint8)
        return PianoRoll(np.concatenate([start, sampled]), self.meta.frame_beats, qpm, primed=len(start))

    def stream(self, frames: int = 32, *, temperature: float = 1.0, seed: Optional[int] = None,
               prime: Any = None) -> Iterator[np.ndarray]:
        """Yield each sampled frame (88,) 0/1 as soon as it is drawn (the state carried from frame
        to frame), after ``prime``: what :meth:`generate` samples, one frame at a time."""
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise seqkit.SeqkitError(f"frames: expected a whole number >= 0, got {frames!r}")
        return self._frames(self._prime(prime), frames, temperature, seed)

    @torch.inference_mode()
    def _frames(self, start: np.ndarray, steps: int, temperature: float, seed: Optional[int]) -> Iterator[np.ndarray]:
        self.eval()
        device = self._device()
        state = None
        if len(start):
            context = torch.from_numpy(start.astype(np.float32)).to(device)
            context = F.pad(context[:-1], (0, 0, 1, 0)).unsqueeze(0)  # silence, then the prime but its last frame
            _, state = self.encoder(context, None, None)
            first = torch.from_numpy(start[-1:].astype(np.float32)).to(device)
        else:
            first = torch.zeros(1, KEYS, device=device)
        head = self.head
        for frame in sample_steps(self.step, first, state, steps, temperature=temperature, seed=seed,
                                  draw=lambda h, g: head.draw(h, g, temperature)):
            yield frame[0].cpu().numpy().astype(np.uint8)

    def _prime(self, prime: Any) -> np.ndarray:
        if prime is None:
            return np.zeros((0, KEYS), dtype=np.uint8)
        if isinstance(prime, (str, Path)):
            return read_midi(Path(prime), self.meta.frame_beats)
        roll = np.asarray(prime)
        if roll.ndim != 2 or roll.shape[1] != KEYS:
            raise seqkit.SeqkitError(f"prime: expected a MIDI file or a (frames, 88) piano roll, got shape "
                                     f"{roll.shape}")
        return (roll > 0).astype(np.uint8)

    def generate_files(self, *, out: Optional[Path], png: Optional[Path], wav: Optional[Path], steps: Optional[int],
                       seconds: Optional[float], prime: Optional[Path], temperature: float, seed: Optional[int],
                       prompt: str = "", top_k: int = 0, top_p: float = 1.0) -> list[str]:
        """``seqkit generate``: sample and write the files asked for; lines to print."""
        if prompt:
            raise seqkit.SeqkitError("--prompt: this is a music model; continue a MIDI file with --prime")
        if top_k or top_p < 1:
            raise seqkit.SeqkitError("--top-k/--top-p: a piano-roll model samples each key on or off; use "
                                     "--temperature")
        if out is None and png is None and wav is None:
            raise seqkit.SeqkitError("nothing to write: give --out sample.mid, --png roll.png and/or --wav sample.wav")
        started = time.perf_counter()
        roll = self.generate(steps, seconds=seconds, temperature=temperature, seed=seed, prime=prime)
        took = time.perf_counter() - started
        sampled = len(roll.roll) - roll.primed
        lines = [f"{sampled} frames sampled in {took:.2f} s ({sampled / max(took, 1e-9):.0f} frames/s); "
                 f"{roll.seconds:.1f} s of music, {roll.note_count()} notes"]
        return lines + roll.write(out=out, png=png, wav=wav)


def _mask(lengths: Tensor, width: int, device: torch.device) -> Tensor:
    return torch.arange(width, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


# -- the task ----------------------------------------------------------------------------------


@dataclass
class PianoRollOptions:
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))  # bernoulli, markov: on the same frames


class PianoRollTask(Task):
    """Polyphonic music as piano rolls: frame NLL (nats) and ACC beside two baselines; generation."""

    Config = PianoRollOptions
    default_head = "bernoulli"
    default_dataset = "jsb"
    default_features = None
    monitor, mode = "nll", "min"
    summary = ("nll", "acc", "bernoulli_nll", "markov_nll", "nll_all")

    def check(self, recipe) -> None:
        unknown = [b for b in recipe.task.baselines if b not in BASELINES]
        if unknown:
            raise seqkit.RecipeError(f"{recipe.source}: task.baselines: unknown baseline {unknown[0]!r}; choose from "
                                     f"{', '.join(BASELINES)}")
        if recipe.encoder.direction_mode != "forward":
            raise seqkit.RecipeError(f"{recipe.source}: encoder.directions: a piano-roll model predicts the next "
                                     "frame and must not read ahead; use forward")

    def prepare(self, recipe, run_dir, *, log) -> Prepared:
        rolls: Rolls = load_splits(recipe)
        for note in rolls.notes:
            log(note)
        train = nonempty(rolls.splits["train"])
        if not train:
            raise seqkit.DataError(f"{rolls.source}: no training piece with two frames or more")
        meta = persist_vocab(run_dir, "music_meta.json", lambda: Meta.fit(rolls), Meta.load, Meta.save)
        opts, cfg = recipe.task, recipe.train
        log(f"data: {rolls.source}: " + " / ".join(f"{len(rolls.splits[s])} {s}" for s in ("train", "valid", "test"))
            + " pieces, " + " / ".join(f"{rolls.frames(s):,}" for s in ("train", "valid", "test"))
            + f" frames of {meta.frame_beats:g} quarter note(s)")
        seed_everything(cfg.seed)
        model = MusicModel(recipe, meta)
        valid, test = (nonempty(rolls.splits[s]) for s in ("valid", "test"))
        size = cfg.eval_batch_size

        def final_eval(best: MusicModel) -> dict[str, Any]:
            if not test:
                return {}
            metrics = best.evaluate(Batches(test, size))
            metrics.update(baseline_metrics(meta, test, opts.baselines))
            log(results_table(metrics))
            return metrics

        def train_batches(epoch: int) -> Batches:
            return Batches(train, cfg.batch_size, max_frames=cfg.max_length, **epoch_order(cfg, epoch))

        return Prepared(model, train_batches, Batches(valid, size) if valid else None,
                        Batches(test, size) if test else None, final_eval)

    def build_model(self, recipe, run_dir: Path) -> MusicModel:
        return MusicModel(recipe, read_vocab(run_dir / "vocab", Meta.load, marker="music_meta.json"))

    def evaluate_data(self, model, data: Optional[Path], *, batch_size: int) -> dict[str, Any]:
        if data is None:
            rolls: Rolls = load_splits(model.recipe)
            pieces, source = rolls.splits["test"], rolls.source
        else:
            path = Path(data)
            if path.is_dir():
                pieces, _ = read_midi_folder(path, model.meta.frame_beats, log=lambda line: None)
            elif path.suffix.lower() in (".json", ".mat"):
                if not path.is_file():
                    raise seqkit.DataError(f"{path}: file not found")
                pieces = read_benchmark(path)["test"]
            elif path.suffix.lower() in (".mid", ".midi"):
                pieces = [read_midi(path, model.meta.frame_beats)]
            else:
                raise seqkit.DataError(f"{path}: expected a folder of MIDI files, a .mid file, or a JSB-style .json "
                                       "or .mat file (its test split is scored)")
            source = str(path)
        pieces = nonempty(pieces)
        if not pieces:
            raise seqkit.DataError(f"{source}: no piece with two frames or more to score")
        metrics = model.evaluate(Batches(pieces, batch_size))
        metrics.update(baseline_metrics(model.meta, pieces, model.recipe.task.baselines))
        return {**metrics, "pieces": len(pieces), "data": source}

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        lines = [results_table(metrics)]
        lines += [f"{key:<16}{metrics[key]:.4g}" for key in ("nll_all",) if key in metrics]
        return "\n".join(lines)


def results_table(metrics: dict[str, Any]) -> str:
    """The model and its baselines, one line each (the run's log, ``seqkit evaluate``)."""
    lines = []
    if "frames" in metrics:
        lines.append(f"test: {metrics['frames']:,} frames predicted (frames 2..T of each piece)")
    lines.append(f"  {'':<22}{'NLL (nats)':>12}{'ACC (%)':>10}")
    for label, prefix in (("model", ""), ("independent Bernoulli", "bernoulli_"), ("Markov per key", "markov_")):
        if f"{prefix}nll" in metrics:
            lines.append(f"  {label:<22}{metrics[prefix + 'nll']:>12.4g}{metrics[prefix + 'acc']:>10.2f}")
    return "\n".join(lines)
