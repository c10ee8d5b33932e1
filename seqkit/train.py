"""The training loop: seeded, interruptible, and resumable bit for bit from its run folder.

The trainer knows models only through the protocol of ``seqkit.tasks``: ``model(batch, state)``
returns a :class:`~seqkit.tasks.ModelOutput` whose ``loss`` is the mean training loss of the batch
(and whose ``state``, when not None, is carried into the next batch, detached: truncated
backpropagation through time; each epoch starts without one), and ``model.evaluate(batches)``
returns a dict of float metrics.  A batch needs ``batch.to(device)``, ``batch.num_items`` (tokens
or frames) and ``len(batch)``.  Nothing here knows about tasks or heads.

Run folder::

    run_dir/metrics.jsonl                 one JSON object per line ("train" / "valid" events)
    run_dir/checkpoints/last.safetensors  (+ .json) everything needed to resume (the carried
                                          recurrent state; with ``ema_decay``, the moving average)
    run_dir/checkpoints/best.safetensors  (+ .json) weights with the best monitored metric
    run_dir/checkpoints/epoch-N.safetensors   weights after epoch N, the last ``average_last`` only
    run_dir/checkpoints/best-epoch.safetensors  the best single epoch, when an average replaced it

With ``average_last: N`` the weights of the last 2..N epochs are averaged once training has
finished (checkpoint averaging, as ESPnet and NeMo offer for ASR).  With ``ema_decay: d`` the
trainer also keeps an exponential moving average of the weights, updated after every step
(``avg += (1 - d) * (weights - avg)``; Polyak averaging, without bias correction: it starts at
the initial weights, whose share after k steps is ``d ** k``) and saved in ``last`` so that
resuming stays exact.  When training ends, each of these averages is validated; the best one replaces
``best`` if it beats the best single epoch, which is then kept as ``best-epoch``.

With ``max_minutes: m`` training time (``elapsed``, resumed sessions included) is a budget: an
epoch is not started when, taking as long as the last whole epoch did, it would end past the
budget, and an epoch that runs past it anyway stops there (like ``max_steps``); the run then ends
with ``stopped: time_limit`` and the averages are tried as after a completed run.

Data-parallel (``distributed=`` a :class:`seqkit.distributed.Context`, under torchrun): each rank
trains on its rows of every batch through DistributedDataParallel, rank 0 alone writes the run
folder, and a signal on any rank stops all of them after the same step (``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import capture_rng, load_checkpoint, load_extra, preserved_rng, restore_rng, save_checkpoint
from .distributed import Context, shard_rows, slice_batch
from .errors import SeqkitError
from .recipe import TrainConfig
from .tasks import ModelOutput, seed_everything

__all__ = ["Trainer", "build_optimizer", "check_train_config", "reuse_freed_memory"]

# Changing any of these between the interrupted run and --resume changes the result.
_RESUME_SENSITIVE = ("seed", "batch_size", "sortagrad", "optimizer", "lr", "lr_decay", "lr_schedule", "min_lr",
                     "warmup_steps", "weight_decay", "clip_grad_norm", "max_length", "ema_decay")
_EMA = "ema."  # prefix of the moving average's tensors among a checkpoint's extras
_CARRY = "carry."  # prefix of the carried recurrent state's tensors (carry.0, carry.1, ...)
_RANK_RNG = "rank."  # rank.<r>.<rng tensor>: the RNG streams of data-parallel ranks other than 0
_REPEAT_S = 2.0  # under torchrun a Ctrl-C reaches a process twice (terminal and launcher): one stop


@dataclass
class _State:
    """Everything about training progress that a resumed run must continue from."""

    epoch: int = 0  # epoch in progress, 0-based
    batch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimizer steps so far
    best: dict | None = None
    best_value: float | None = None
    bad_epochs: int = 0  # validations since the monitored metric last improved
    lr_scale: float = 1.0  # lr_schedule plateau: lr_decay to the power of the validations that did not improve
    metrics_lines: int = 0  # lines in metrics.jsonl that belong to this state
    window_loss: float = 0.0  # loss sum since the last "train" log line
    window_steps: int = 0
    window_items: int = 0
    epoch_loss: float = 0.0  # for the progress bar's running mean
    epoch_steps: int = 0
    elapsed: float = 0.0  # seconds spent in fit() over all resumed sessions
    epoch_seconds: float = 0.0  # how long the last whole epoch took, its validation included


def check_train_config(config: TrainConfig) -> None:
    """Refuse ``train`` settings the trainer cannot use (a recipe is checked before its data loads)."""
    if config.average_last < 0:
        raise SeqkitError(f"train.average_last must be 0 or more, got {config.average_last}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise SeqkitError(f"train.ema_decay must be at least 0 and below 1, got {config.ema_decay} "
                          "(0 turns it off; 0.999 averages over about the last 1000 steps)")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Create the optimizer named by ``config.optimizer`` over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates all parameters in one pass: 3-8x faster than the default on CPU
    # for large embedding tables (measured in bench notes), same arithmetic.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9,
                               weight_decay=config.weight_decay)
    raise SeqkitError(f"train.optimizer: expected one of 'adam', 'adamw', 'sgd', "
                      f"got {config.optimizer!r}")


class Trainer:
    """Train a protocol model, validating each epoch and checkpointing into ``run_dir``."""

    def __init__(self, model: nn.Module, config: TrainConfig, run_dir: Path, *,
                 device: torch.device, train_batches: Callable[[int], Sequence[Any]],
                 valid_batches: Sequence[Any] | None, monitor: str,
                 mode: Literal["max", "min"], progress: bool = True, meta: dict | None = None,
                 distributed: Context | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config
        self.run_dir = Path(run_dir)
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.monitor = monitor
        self.mode = mode
        self.dist = distributed  # None: this process trains alone
        self._main = distributed is None or distributed.main  # the process that writes and reports
        self.progress = progress and self._main
        self.meta = dict(meta or {})
        self.optimizer = build_optimizer(self.model, config)
        check_train_config(config)
        if config.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16() and self._main:
            print("Note: train.precision is bf16 but this CPU has no native bf16 (AVX512-BF16 or AMX); "
                  "bf16 matmuls run far slower than fp32 here.", file=sys.stderr)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.state = _State()
        self.stats: dict[str, float] = {}
        self._stop_requested = False  # a signal reached this process
        self._stop_all = False  # data-parallel: a signal reached some process (agreed on every step)
        self._rank0_elapsed = 0.0  # data-parallel: rank 0's training time after the last step
        self._signal_time = 0.0
        self.stop_signal: int | None = None  # the signal that stopped training, if one did
        self._ddp: nn.Module | None = None  # the DistributedDataParallel wrapper training steps go through
        self._fitted = False
        self._saved_key: tuple | None = None
        self._last_valid: dict = {}
        self._log = None
        self._t0 = time.perf_counter()
        self._window_t0 = self._t0
        self._items = 0
        self._steps_per_epoch = 0
        self._ema: dict[str, torch.Tensor] = {}  # name -> moving average, when ema_decay > 0
        self._ema_avg: list[torch.Tensor] = []  # self._ema's values, in order, for the per-step update
        self._ema_live: list[torch.Tensor] = []  # the model's tensors that they follow
        self._carry: tuple[torch.Tensor, ...] | None = None  # recurrent state handed to the next batch
        self._out_state: tuple[torch.Tensor, ...] | None = None  # the state the latest forward returned

    def _autocast(self) -> torch.autocast:
        """bf16 autocast for forward and loss when ``precision: bf16`` (backward runs outside it)."""
        enabled = self.config.precision == "bf16"
        if enabled and self.device.type not in ("cpu", "cuda"):
            raise SeqkitError(f"train.precision: bf16 is supported on cpu and cuda, not {self.device.type}")
        if enabled and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SeqkitError(f"train.precision: bf16 needs a GPU that computes in bf16 (Ampere or newer); "
                              f"{torch.cuda.get_device_name(self.device)} does not: use precision=fp32")
        return torch.autocast(self.device.type if enabled else "cpu", dtype=torch.bfloat16, enabled=enabled)

    def checkpoint_path(self, which: str) -> Path:
        """Path of the ``best`` or ``last`` checkpoint in this run folder."""
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
        return self.run_dir / "checkpoints" / f"{which}.safetensors"

    def request_stop(self) -> None:
        """Ask fit() to save ``last`` and return at the next step boundary (what Ctrl-C does)."""
        self._stop_requested = True

    # --- fit -------------------------------------------------------------------------------

    def fit(self, *, resume: bool = False) -> dict:
        """Train until done, ``max_steps``, ``max_minutes``, early stopping or interruption;
        see module doc."""
        if self._fitted and not resume:
            raise RuntimeError("this Trainer has trained already; build a new model and Trainer")
        self._fitted = True
        self._seed()
        self._t0 = self._window_t0 = time.perf_counter()
        self._items = 0
        self._stop_requested = self._stop_all = False
        self.stop_signal = None
        self._last_valid = {}
        previous = self._install_sigint()
        try:
            self._prepare(resume)
            log = open(self.metrics_path, "a", encoding="utf-8") if self._main else contextlib.nullcontext()
            with log as self._log:
                stopped = self._run()
                if stopped in ("completed", "early_stopping", "time_limit") and self._main:
                    self._try_averages()
        finally:
            self._log = None
            self._ddp = None  # DDP's reducer must go before the process group it talks through
            for sig, old in (previous or {}).items():
                signal.signal(sig, old)
            self._record_stats()
        if stopped == "interrupted" and self._main:
            print(f"Interrupted at step {self.state.step}; saved {self.checkpoint_path('last')}. "
                  "Run the same command with --resume to continue.", file=sys.stderr)
        return {"best": self.state.best or {}, "stopped": stopped, "steps": self.state.step,
                "epochs": self.state.epoch, "valid": self._last_valid}

    def _run(self) -> str:
        config, st = self.config, self.state
        while st.epoch < config.epochs:
            if self._limit_reached():
                return "max_steps"
            if self._patience_exhausted():
                return "early_stopping"
            if self._no_time_for_epoch():
                return "time_limit"
            epoch_started = self._budget_clock() if st.batch == 0 and config.max_minutes > 0 else None
            with preserved_rng():  # batching must not shift the RNG stream dropout uses
                batches = self.train_batches(st.epoch)
            self._steps_per_epoch = len(batches)
            if st.batch == 0:
                self._carry = None  # every epoch starts its streams afresh
            outcome = self._train_epoch(batches)
            if outcome == "interrupted":
                self._save_last()
                return outcome
            if outcome in ("max_steps", "time_limit"):
                # Mid-epoch stop: 'last' is saved before this extra validation so that a
                # resumed run continues exactly as if it had never stopped.
                self._save_last()
                self._validate(partial=True)
                return outcome
            self._validate(partial=False)
            self._save_snapshot(st.epoch + 1)
            if epoch_started is not None:
                st.epoch_seconds = self._budget_clock() - epoch_started
            st.epoch, st.batch = st.epoch + 1, 0
            st.epoch_loss, st.epoch_steps = 0.0, 0
            self._save_last()
            if self._limit_reached():
                return "max_steps"
            if self._patience_exhausted():
                return "early_stopping"
        return "completed"

    def _train_epoch(self, batches: Sequence[Any]) -> str | None:
        """Train the rest of the current epoch; return why it stopped early, if it did."""
        config, st = self.config, self.state
        if self._stop_requested and self.dist is None:  # data-parallel: decided together after a step
            return "interrupted"
        total = len(batches) - st.batch
        if config.max_steps > 0:
            total = max(0, min(total, config.max_steps - st.step))
        bar = tqdm(total=total, desc=f"epoch {st.epoch + 1}/{config.epochs}", unit="batch",
                   file=sys.stderr, dynamic_ncols=True, disable=not self.progress)
        bar_t0, bar_items = time.perf_counter(), 0
        with bar:
            for k in range(st.batch, len(batches)):
                loss, items = self._step(batches[k])
                st.batch = k + 1
                bar_items += items
                self._account(loss, items)
                bar.update(1)
                rate = bar_items / max(time.perf_counter() - bar_t0, 1e-9)
                bar.set_postfix(loss=f"{st.epoch_loss / st.epoch_steps:.4f}",
                                items_s=f"{rate:.0f}", refresh=False)
                if self._stop_all if self.dist is not None else self._stop_requested:
                    return "interrupted"
                if self._limit_reached():
                    return "max_steps" if st.batch < len(batches) else None
                if config.max_minutes > 0 and st.batch < len(batches) and self._out_of_time(
                        self._elapsed() if self.dist is None else self._rank0_elapsed):
                    return "time_limit"
                # At the epoch end the epoch-end checkpoint follows anyway.
                if (config.checkpoint_every > 0 and st.step % config.checkpoint_every == 0
                        and st.batch < len(batches)):
                    self._save_last()
        return None

    def _wrap(self, part: Any) -> None:
        """Data-parallel: train through DistributedDataParallel, made at the first step (after
        ``_prepare`` has loaded the weights; DDP starts every rank from rank 0's). One trial
        backward on that step's rows, with the RNG streams put back after it, finds out whether
        the recipe leaves parameters out of the loss; only then does DDP search the graph for
        them at every step. (static_graph, which would skip the search, gave wrong gradients
        for the fused LSTM with torch 2.14.)"""
        from torch.nn.parallel import DistributedDataParallel

        assert self.dist is not None
        with preserved_rng(), self._autocast():
            out = self.model(part) if self._carry is None else self.model(part, state=self._carry)
            (out.loss if isinstance(out, ModelOutput) else out).backward()
        unused = any(p.grad is None for p in self.model.parameters() if p.requires_grad)
        self.optimizer.zero_grad(set_to_none=True)
        unused = any(row[0] for row in self.dist.gather([float(unused)]))
        self._ddp = DistributedDataParallel(self.model, device_ids=None, find_unused_parameters=unused)

    def _step(self, batch: Any) -> tuple[float, int]:
        """One optimizer step on ``batch``; return its loss and item count."""
        lr = self.learning_rate(self.state.step, self.state.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        if self.dist is not None:
            loss, value, items, real = self._parallel_loss(batch)
        else:
            batch = _to_device(batch, self.device)
            with self._autocast():
                out = self.model(batch) if self._carry is None else self.model(batch, state=self._carry)
            loss = out.loss if isinstance(out, ModelOutput) else out
            value = float(loss.detach())  # syncs, but the NaN check needs the value anyway
            items, real = int(batch.num_items), True
            self._out_state = out.state if isinstance(out, ModelOutput) else None
        if not math.isfinite(value):
            raise SeqkitError(f"loss became NaN/inf at step {self.state.step + 1}; "
                              "lower train.lr or set train.clip_grad_norm")
        self.optimizer.zero_grad(set_to_none=True)
        with self.dist.talking() if self.dist is not None else contextlib.nullcontext():
            loss.backward()  # DDP averages the gradients over the processes here
        if self.config.clip_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)
            if not math.isfinite(float(norm)):
                raise SeqkitError(f"gradient became NaN/inf at step {self.state.step + 1}; "
                                  "lower train.lr or set train.clip_grad_norm")
        self.optimizer.step()
        if real and self._out_state is not None:
            self._carry = tuple(t.detach() for t in self._out_state)
        self._out_state = None
        if self._ema:
            with torch.no_grad():
                torch._foreach_lerp_(self._ema_avg, self._ema_live, 1.0 - self.config.ema_decay)
        self.state.step += 1
        return value, items

    def _parallel_loss(self, batch: Any) -> tuple[torch.Tensor, float, int, bool]:
        """This rank's share of ``batch`` through DDP: (the loss to backpropagate, the whole
        batch's mean loss, its items, whether this rank had rows). Each share's mean loss is
        weighted by what it is a mean over, so the gradient DDP averages over ranks is the
        gradient of the whole batch's mean loss, as one process computes it. The same exchange
        tells every rank whether a signal reached any of them, so all stop after the same step."""
        ctx = self.dist
        assert ctx is not None
        start, stop = shard_rows(len(batch), ctx.rank, ctx.world)
        real = stop > start  # a batch with fewer rows than ranks: a weightless row keeps DDP in step
        part = slice_batch(batch, start, stop) if real else slice_batch(batch, 0, 1)
        part = _to_device(part, self.device)
        if self._ddp is None:
            self._wrap(part)
        with self._autocast():
            out = self._ddp(part) if self._carry is None else self._ddp(part, state=self._carry)
        loss = out.loss if isinstance(out, ModelOutput) else out
        count = 0.0
        if real:
            given = getattr(out, "count", None)
            count = float(given) if given is not None else float(part.num_items)
        local = float(loss.detach())
        items = int(part.num_items) if real else 0
        every = ctx.gather([local * count if count else 0.0, count, items,
                            float(self._stop_requested), float(self.stop_signal or 0), self._elapsed()])
        total = sum(row[1] for row in every)
        if total <= 0:
            raise SeqkitError(f"step {self.state.step + 1}: the batch's loss is a mean over nothing "
                              "(ModelOutput.count is 0 on every rank)")
        self._stop_all = any(row[3] for row in every)
        self._rank0_elapsed = every[0][5]  # so that every rank takes the same max_minutes decision
        if self._stop_all:
            self.stop_signal = int(max(row[4] for row in every)) or None
        self._out_state = out.state if isinstance(out, ModelOutput) else None
        return loss * (count * ctx.world / total), sum(row[0] for row in every) / total, \
            int(sum(row[2] for row in every)), real

    def learning_rate(self, step: int, epoch: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) in epoch ``epoch`` (0-based).

        ``exponential``: ``lr * lr_decay ** epoch``.  ``plateau``: ``lr`` multiplied by ``lr_decay``
        after every validation that does not improve the monitored metric.  ``cosine``: from ``lr`` at step 0 down to
        ``min_lr`` at the last step (``epochs`` times the batches of an epoch; ``max_steps`` only
        stops training early, so a run stopped there and resumed follows the same schedule).
        Either way ``warmup_steps`` ramps it up linearly first.
        """
        config = self.config
        if config.lr_schedule == "cosine":
            total = config.epochs * max(self._steps_per_epoch, 1)  # max_steps is a stop, not the length
            progress = min(step / max(total - 1, 1), 1.0)
            lr = config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif config.lr_schedule == "plateau":
            lr = config.lr * self.state.lr_scale
        else:
            lr = config.lr * config.lr_decay ** epoch
        if config.warmup_steps > 0 and step < config.warmup_steps:
            lr *= (step + 1) / config.warmup_steps
        return lr

    def _account(self, loss: float, items: int) -> None:
        """Accumulate loss and throughput, writing a "train" line every ``log_every`` steps."""
        st = self.state
        self._items += items
        st.window_loss += loss
        st.window_steps += 1
        st.window_items += items
        st.epoch_loss += loss
        st.epoch_steps += 1
        if self.config.log_every > 0 and st.step % self.config.log_every == 0:
            now = time.perf_counter()
            rate = st.window_items / max(now - self._window_t0, 1e-9)
            self._write_log({"event": "train", "epoch": st.epoch + 1, "step": st.step,
                             "loss": st.window_loss / st.window_steps,
                             "lr": self.optimizer.param_groups[0]["lr"],
                             "items_per_s": rate, "time": round(self._elapsed(), 3)})
            st.window_loss, st.window_steps, st.window_items = 0.0, 0, 0
            self._window_t0 = now

    # --- validation and checkpoints --------------------------------------------------------

    def _validate(self, *, partial: bool) -> None:
        """Validate, log, and track the best model; ``partial`` marks a mid-epoch stop.
        Data-parallel: every rank validates on the whole split (same weights, same result), so
        all take the same decisions without an exchange; rank 0 alone writes."""
        st = self.state
        if self.valid_batches is None:
            # Without validation data the newest weights are the best we know of.
            if not partial or not self.checkpoint_path("best").exists():
                self._save_best()
            return
        started = time.perf_counter()
        metrics = self._evaluate(self.valid_batches)
        self._window_t0 += time.perf_counter() - started  # throughput counts training only
        if self.monitor not in metrics:
            raise SeqkitError(f"monitor metric {self.monitor!r} is not among the validation "
                              f"metrics ({', '.join(sorted(metrics)) or 'none'})")
        self._last_valid = metrics
        self._write_log({"event": "valid", "epoch": st.epoch + 1, "step": st.step, **metrics})
        if self.progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not isinstance(v, dict))
            tqdm.write(f"epoch {st.epoch + 1} step {st.step}: {shown}", file=sys.stderr)
        value = metrics[self.monitor]
        if partial and st.best_value is not None:
            # A mid-epoch model may not replace the best: an uninterrupted run never sees it,
            # and resuming must reproduce that run's best checkpoint.
            return
        if self._improves(value):
            st.best, st.best_value, st.bad_epochs = metrics, value, 0
            self._save_best()
        elif not partial:
            st.bad_epochs += 1
            if self.config.lr_schedule == "plateau":
                st.lr_scale *= self.config.lr_decay

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        best = self.state.best_value
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def _evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            with preserved_rng(), torch.no_grad(), self._autocast():
                metrics = self.model.evaluate(batch.to(self.device) for batch in batches)
        finally:
            self.model.train(was_training)
        return _as_numbers(metrics)

    def restore(self, checkpoint: str = "best") -> None:
        """Load the weights of the ``best``/``last`` checkpoint into the model, if it exists."""
        path = self.checkpoint_path(checkpoint)
        if path.exists():
            load_checkpoint(path, self.model)

    def evaluate(self, batches: Iterable[Any], *, checkpoint: str = "best") -> dict[str, float]:
        """Load the ``best``/``last`` checkpoint if it exists, then evaluate ``batches``."""
        self.restore(checkpoint)
        return self._evaluate(batches)

    def _checkpoint_meta(self) -> dict:
        state = dataclasses.asdict(self.state)
        state["elapsed"] = self._elapsed()  # this session's time is added on top, not folded in
        trainer = {"state": state,
                   "config": dataclasses.asdict(self.config),
                   "monitor": self.monitor, "mode": self.mode}
        return {**self.meta, "trainer": trainer}

    def _progress_key(self) -> tuple:
        st = self.state
        return (st.epoch, st.batch, st.step, st.metrics_lines)

    def _save_last(self) -> None:
        """Save ``last``. Data-parallel: every rank calls this at the same step; the carried state
        of every rank's rows is joined into the whole batch's (so a resumed run may use another
        number of processes) and each rank's RNG streams are kept (so the same number resumes
        exactly); rank 0 writes."""
        if self._saved_key == self._progress_key():
            return  # nothing happened since the previous save (e.g. Ctrl-C at an epoch end)
        carry, meta = self._carry, self._checkpoint_meta()
        extra = {_EMA + name: tensor for name, tensor in self._ema.items()}
        if self.dist is not None:
            carries = self.dist.gather_objects(None if carry is None else tuple(t.cpu() for t in carry))
            streams = self.dist.gather_objects(capture_rng())
            self._saved_key = self._progress_key()
            if not self._main:
                return
            kept = [c for c in carries if c is not None]
            carry = tuple(torch.cat(parts, dim=1) for parts in zip(*kept)) if kept else None
            meta["trainer"]["ranks"] = {"world": self.dist.world, "rng": [rng for rng, _ in streams]}
            for rank, (_, tensors) in enumerate(streams):
                extra.update({f"{_RANK_RNG}{rank}.{key}": t for key, t in tensors.items()})
        extra.update({f"{_CARRY}{i}": t for i, t in enumerate(carry or ())})
        save_checkpoint(self.checkpoint_path("last"), self.model, self.optimizer, meta, extra)
        self._saved_key = self._progress_key()

    def _save_best(self) -> None:
        if self._main:
            save_checkpoint(self.checkpoint_path("best"), self.model, None, self._checkpoint_meta())

    # --- averaging the last epochs --------------------------------------------------------

    def _snapshot_path(self, epoch: int) -> Path:
        return self.run_dir / "checkpoints" / f"epoch-{epoch}.safetensors"

    def _snapshots(self) -> dict[int, Path]:
        """Epoch snapshots in the run folder, by epoch number."""
        found = {}
        for path in (self.run_dir / "checkpoints").glob("epoch-*.safetensors"):
            number = path.stem.split("-", 1)[1]
            if number.isdigit():
                found[int(number)] = path
        return found

    def _save_snapshot(self, epoch: int) -> None:
        """Keep the weights after ``epoch`` and drop snapshots too old to be averaged."""
        if self.config.average_last < 2 or not self._main:
            return
        save_checkpoint(self._snapshot_path(epoch), self.model, None, self._checkpoint_meta())
        for number, path in self._snapshots().items():
            if number <= epoch - self.config.average_last:
                _remove_checkpoint(path)

    def _epoch_averages(self) -> Iterator[tuple[dict, dict, dict[str, torch.Tensor]]]:
        """(log fields, best-record fields, weights) of the averages of the last 2..N epochs."""
        limit = self.config.average_last
        if limit < 2:
            return
        found = self._snapshots().items()
        snapshots = sorted(((n, p) for n, p in found if n <= self.state.epoch), reverse=True)[:limit]
        if len(snapshots) < 2:
            return
        newest = snapshots[0][0]
        sums: dict[str, torch.Tensor] = {}
        for count, (number, path) in enumerate(snapshots, start=1):
            load_checkpoint(path, self.model)
            state = self.model.state_dict()
            for key, value in state.items():
                if value.is_floating_point():  # a copy: double() of a float64 tensor is the tensor itself
                    sums[key] = sums[key] + value.double() if key in sums else value.to(torch.float64, copy=True)
            if count >= 2:
                average = {k: (sums[k] / count).to(v.dtype) if k in sums else v.clone() for k, v in state.items()}
                yield ({"event": "average", "epochs": [number, newest]}, {"averaged": count}, average)

    def _try_averages(self) -> None:
        """Validate the weight averages (``average_last``, ``ema_decay``); the best one replaces
        ``best`` if it validates better (the best single epoch is kept as ``best-epoch``)."""
        st = self.state
        if self.valid_batches is None or (self.config.average_last < 2 and not self._ema):
            return
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        candidates = self._epoch_averages()
        if self._ema:
            moving = {**current, **{k: v.clone() for k, v in self._ema.items()}}
            decay = self.config.ema_decay
            candidates = itertools.chain(candidates, [({"event": "ema", "decay": decay}, {"ema": decay}, moving)])
        winner: tuple[float, dict, dict] | None = None  # value, best record, weights
        for fields, record, weights in candidates:
            self.model.load_state_dict(weights)
            metrics = self._evaluate(self.valid_batches)
            self._write_log({**fields, "step": st.step, **metrics})
            if self.progress:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not isinstance(v, dict))
                what = (f"average of epochs {fields['epochs'][0]}-{fields['epochs'][1]}" if "epochs" in fields
                        else f"moving average of the weights (decay {fields['decay']})")
                tqdm.write(f"{what}: {shown}", file=sys.stderr)
            value = metrics.get(self.monitor, math.nan)
            if not math.isnan(value) and (winner is None or (value > winner[0] if self.mode == "max"
                                                             else value < winner[0])):
                winner = (value, {**metrics, **record}, weights)
        if winner is not None and self._improves(winner[0]):
            value, record, weights = winner
            best = self.checkpoint_path("best")
            if best.exists():
                os.replace(best, self._best_epoch_path())
                os.replace(best.with_suffix(".json"), self._best_epoch_path().with_suffix(".json"))
            self.model.load_state_dict(weights)
            st.best, st.best_value = record, value
            self._save_best()
        self.model.load_state_dict(current)

    def _best_epoch_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best-epoch.safetensors"

    # --- setup and bookkeeping -------------------------------------------------------------

    def _seed(self) -> None:
        # Data-parallel ranks draw their own dropout masks (rank 0 the single process's).
        seed_everything(self.config.seed + (self.dist.rank if self.dist is not None else 0))
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)

    def _prepare(self, resume: bool) -> None:
        """Load ``last`` when resuming; otherwise clear what an earlier run left behind."""
        if self._main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        last = self.checkpoint_path("last")
        if resume and last.exists():
            meta = load_checkpoint(last, self.model, self.optimizer, restore_rng=True)
            trainer = meta.get("trainer")
            if not isinstance(trainer, dict) or "state" not in trainer:
                raise SeqkitError(f"{last}: not a training checkpoint; train again without "
                                  "--resume")
            known = {f.name for f in dataclasses.fields(_State)}
            self.state = _State(**{k: v for k, v in trainer["state"].items() if k in known})
            self._saved_key = self._progress_key()
            extras = load_extra(last)
            self._start_ema(extras if self.config.ema_decay > 0 else {})
            carried = sorted((int(k[len(_CARRY):]), v) for k, v in extras.items() if k.startswith(_CARRY))
            self._carry = tuple(v.to(self.device) for _, v in carried) or None
            if self.dist is not None:
                self._resume_rank(trainer.get("ranks"), extras)
            if not self._main:
                return
            self._warn_changes(trainer)
            _truncate_lines(self.metrics_path, self.state.metrics_lines)
            single = self._best_epoch_path()
            if single.exists():  # an average replaced 'best' after the state in 'last'
                os.replace(single, self.checkpoint_path("best"))
                os.replace(single.with_suffix(".json"), self.checkpoint_path("best").with_suffix(".json"))
            print(f"Resuming from {last} (epoch {self.state.epoch + 1}, "
                  f"step {self.state.step}).", file=sys.stderr)
            return
        if resume:
            trained = [p.name for p in (self.checkpoint_path("best"), *self._snapshots().values()) if p.exists()]
            if trained:  # never delete a trained model implicitly
                raise SeqkitError(f"{last}: missing, so there is nothing to resume from; {', '.join(trained)} "
                                  "kept; train into another folder")
            if self._main:
                print(f"No checkpoint at {last}; starting a fresh run.", file=sys.stderr)
        self.state = _State()
        self._saved_key = None
        self._carry = None
        self._start_ema(None)
        if not self._main:
            return
        stale = [self.checkpoint_path("last"), self.checkpoint_path("best"), self._best_epoch_path(),
                 *self._snapshots().values()]
        for path in stale:
            _remove_checkpoint(path)
        _truncate_lines(self.metrics_path, 0)

    def _resume_rank(self, ranks: dict | None, extras: dict[str, torch.Tensor]) -> None:
        """A data-parallel rank's own part of ``last``: its rows of the carried state and, when
        the run had as many processes as now, its own RNG streams (then resuming is exact; with
        another number of processes the ranks other than 0 draw fresh dropout masks)."""
        ctx = self.dist
        assert ctx is not None
        if self._carry is not None:
            start, stop = shard_rows(self._carry[0].size(1), ctx.rank, ctx.world)
            self._carry = tuple(t[:, start:stop].contiguous() for t in self._carry)
        if ctx.main:
            return  # load_checkpoint restored rank 0's streams
        if isinstance(ranks, dict) and ranks.get("world") == ctx.world and len(ranks.get("rng", [])) == ctx.world:
            prefix = f"{_RANK_RNG}{ctx.rank}."
            restore_rng(ranks["rng"][ctx.rank],
                        {k[len(prefix):]: v for k, v in extras.items() if k.startswith(prefix)})
        else:
            seed_everything(self.config.seed + 1_000_003 * ctx.rank + self.state.step)

    def _start_ema(self, saved: dict[str, torch.Tensor] | None) -> None:
        """Set up the moving average of the weights: from ``saved`` (the extras of the checkpoint
        a run resumes from) when it holds one, otherwise from the model's weights as they are now."""
        self._ema, self._ema_avg, self._ema_live = {}, [], []
        if self.config.ema_decay <= 0:
            return
        state = self.model.state_dict()
        floating = [name for name, tensor in state.items() if tensor.is_floating_point()]
        stored = {name: (saved or {}).get(_EMA + name) for name in floating}
        usable = all(t is not None and t.shape == state[name].shape for name, t in stored.items())
        if saved is not None and not usable and self._main:
            print("Note: the checkpoint has no usable moving average of the weights (train.ema_decay was 0, "
                  "or the model changed); it starts from the current weights.", file=sys.stderr)
        for name in floating:
            source = stored[name] if usable else state[name]
            self._ema[name] = source.detach().to(state[name].device, state[name].dtype, copy=True)
        # state_dict() tensors share storage with the parameters, which the optimizer and
        # load_state_dict update in place, so they stay live for the whole run.
        self._ema_avg = [self._ema[name] for name in floating]
        self._ema_live = [state[name] for name in floating]

    def _warn_changes(self, trainer: dict) -> None:
        saved = trainer.get("config", {})
        now = dataclasses.asdict(self.config)
        changed = [k for k in _RESUME_SENSITIVE if k in saved and saved[k] != now[k]]
        if trainer.get("monitor") != self.monitor or trainer.get("mode") != self.mode:
            changed.append("monitor/mode")
        if changed:
            print(f"Note: resuming with changed {', '.join(changed)}; the result will differ "
                  "from an uninterrupted run.", file=sys.stderr)

    def _limit_reached(self) -> bool:
        return self.config.max_steps > 0 and self.state.step >= self.config.max_steps

    def _budget_clock(self) -> float:
        """Training seconds so far; data-parallel: rank 0's on every rank (a collective: call it
        where all ranks are together), so that all stop at the same ``max_minutes`` point."""
        return self._elapsed() if self.dist is None else float(self.dist.broadcast(self._elapsed()))

    def _out_of_time(self, seconds: float) -> bool:
        return self.config.max_minutes > 0 and seconds >= 60 * self.config.max_minutes

    def _no_time_for_epoch(self) -> bool:
        """``max_minutes``: the budget is spent, or the next epoch, if it takes as long as the
        last whole one did, would end past it."""
        if self.config.max_minutes <= 0:
            return False
        now = self._budget_clock()
        if self.state.batch > 0:  # resuming mid-epoch: finish it unless the budget is spent
            return self._out_of_time(now)
        return self._out_of_time(now + self.state.epoch_seconds)

    def _patience_exhausted(self) -> bool:
        return (self.config.patience > 0 and self.valid_batches is not None
                and self.state.bad_epochs >= self.config.patience)

    def _elapsed(self) -> float:
        return self.state.elapsed + (time.perf_counter() - self._t0)

    def _write_log(self, record: dict) -> None:
        if not self._main:  # rank 0 writes; the count keeps every rank's checkpoint key in step
            self.state.metrics_lines += 1
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}  # NaN is not valid JSON
        try:
            self._log.write(json.dumps(clean) + "\n")
            self._log.flush()
        except OSError as exc:
            raise SeqkitError(f"{self.metrics_path}: could not write ({exc.strerror or exc}); the last checkpoint "
                              "is kept: free some space, then continue with --resume") from None
        self.state.metrics_lines += 1

    def _install_sigint(self):
        """Make Ctrl-C (SIGINT) and SIGTERM (what schedulers send before killing) stop at the next
        step, saving ``last``; a second one aborts at once. Returns the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:
                if self.dist is not None and signum == self.stop_signal and \
                        time.monotonic() - self._signal_time < _REPEAT_S:
                    return  # the same Ctrl-C, forwarded by torchrun's launcher
                raise KeyboardInterrupt
            self._stop_requested = True
            self._signal_time = time.monotonic()
            self.stop_signal = signum
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: stopping after this step (press Ctrl-C again to abort now).", file=sys.stderr)

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            signal.signal(sig, handler)
            # None means a handler set outside Python; Python's default is the closest match.
            previous[sig] = old if old is not None else (signal.default_int_handler if sig == signal.SIGINT
                                                         else signal.SIG_DFL)
        return previous

    def _record_stats(self) -> None:
        wall = time.perf_counter() - self._t0
        self.stats = {"wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "steps": self.state.step,
                      "items": self._items, "items_per_s": self._items / max(wall, 1e-9)}
        if self.device.type == "cuda":
            self.stats["peak_gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20


def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch.to(device)``; for a GPU, a dataclass batch's tensors are first put in pinned memory,
    from which the batch's ``to`` (``non_blocking=True`` in seqkit's own) copies asynchronously."""
    if device.type == "cuda" and dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        pinned = {f.name: v.pin_memory() for f in dataclasses.fields(batch)
                  if isinstance(v := getattr(batch, f.name), torch.Tensor) and v.device.type == "cpu"}
        batch = dataclasses.replace(batch, **pinned)
    return batch.to(device)


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves large blocks with mmap and returns them with munmap, so every
    training step page-faults its activations in afresh: on a 2-core CPU that was 16% of the
    CPU time in system calls, and keeping the memory made speech training 11-20% faster
    (``README.md``).  The cost is that the process keeps its peak memory.  Called by ``seqkit
    recipe run``; a no-op (False) off glibc, with ``SEQKIT_MALLOPT=0``, or when the user tunes
    malloc with ``MALLOC_*_`` environment variables.
    """
    if (sys.platform != "linux" or os.environ.get("SEQKIT_MALLOPT", "1") == "0"
            or any(key.startswith("MALLOC_") and key.endswith("_") for key in os.environ)):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_threshold, limit = -1, -3, 1 << 30
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16).

    oneDNN's own check also says yes on plain AVX-512, where it emulates bf16 slowly, so on
    Linux the CPU flags decide; elsewhere oneDNN's answer is the best there is.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
        if flags is not None:
            return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an op this torch build lacks: assume not
        return False


def _remove_checkpoint(path: Path) -> None:
    for name in (path, path.with_suffix(".json")):
        name.unlink(missing_ok=True)


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines of ``path`` (dropping what a later, lost run logged)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines[:keep] if line.endswith("\n")]
    if len(kept) == len(lines):
        return
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _as_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metric values as floats (ints stay ints); nested tables such as per-type scores are kept."""
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            out[name] = _as_numbers(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
        else:
            out[name] = float(value)
    return out
