"""Data-parallel training under ``torchrun``: PyTorch's own launcher and DistributedDataParallel.

``torchrun --nproc-per-node N -m seqkit recipe run R --out DIR`` (or ``seqkit recipe run R --out
DIR --nproc N``, which starts torchrun's launcher for you) trains one recipe in N processes. Every
process builds the same batches in the same order; each takes its own contiguous share of the rows
of every batch (:func:`shard_rows`), so a recipe's ``batch_size`` stays the global batch and one
process and N processes see the same data at the same step. Losses are weighted by what each
share's mean is taken over (``ModelOutput.count``), so the gradient DDP averages is the gradient of
the whole batch's mean loss. Only rank 0 writes the run folder. See ``docs/distributed.md``.

A task's batch is split by :func:`slice_batch`: a batch with a ``select(start, stop)`` method is
asked for its rows; a dataclass batch has every field whose first dimension (or length) equals
``len(batch)`` sliced and the others kept; anything else cannot be split (one clear error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .errors import SeqkitError

__all__ = ["Context", "from_env", "setup", "shard_rows", "slice_batch", "teardown"]

TIMEOUT_ENV = "SEQKIT_DIST_TIMEOUT"  # seconds a collective may wait for the slowest process
DEFAULT_TIMEOUT_S = 1800  # rank 0 prepares the data (and may render speech) while the others wait


@dataclass(frozen=True)
class Context:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and shows progress."""
        return self.rank == 0

    def _on_device(self, values: Sequence[float]) -> Tensor:
        where = self.device if self.backend == "nccl" else torch.device("cpu")
        return torch.tensor(list(values), dtype=torch.float64, device=where)

    @contextlib.contextmanager
    def talking(self):
        """Exchanges with the other processes inside the block; losing one of them (it died, or
        did not answer within the timeout) is one clear error instead of a gloo/NCCL traceback."""
        try:
            yield
        except RuntimeError as exc:
            if not _lost_contact(exc):
                raise  # any other error in the block (a bug, a shape mismatch) is what it is
            reason = " ".join(str(exc).split())
            reason = (reason.split("] ", 1)[-1] if reason.startswith("[") else reason).split(". ")[0]
            raise SeqkitError(f"rank {self.rank}: lost contact with another process of this run ({reason[:160]}); "
                              "the last checkpoint is kept: continue with --resume") from None

    def gather(self, values: Sequence[float]) -> list[list[float]]:
        """Every rank's ``values`` (one short list of numbers each), in rank order, on every rank."""
        import torch.distributed as dist

        mine = self._on_device(values)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        with self.talking():
            dist.all_gather(every, mine)
        return [t.tolist() for t in every]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        every: list[Any] = [None] * self.world
        with self.talking():
            dist.all_gather_object(every, obj)
        return every

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.main else None]
        with self.talking():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        with self.talking():
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()


def _lost_contact(exc: RuntimeError) -> bool:
    """Whether ``exc`` says another process is gone or silent: torch.distributed's DistError, or
    the plain RuntimeError that gloo raises when a peer's connection closes or a wait times out."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout"))


def from_env() -> Optional[tuple[int, int, int]]:
    """(rank, world size, local rank) when torchrun started this process with more than one
    process in the job, else None (a plain ``seqkit`` run, or ``torchrun --nproc-per-node 1``)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise SeqkitError("WORLD_SIZE is set but RANK or LOCAL_RANK is missing or not a number; start "
                          "data-parallel runs with torchrun (or seqkit recipe run --nproc N)") from None


_current: Optional[Context] = None


def setup(device: torch.device) -> Optional[Context]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA);
    None when this process trains alone. ``device`` is the recipe's resolved device: on CUDA each
    process takes the GPU of its local rank."""
    global _current
    found = from_env()
    if found is None:
        return None
    if _current is not None:
        return _current
    import torch.distributed as dist

    rank, world, local_rank = found
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise SeqkitError(f"local rank {local_rank} has no GPU ({count} found); start at most {count} "
                              "processes per machine (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise SeqkitError(f"device: data-parallel training runs on cpu or cuda, not {device.type}")
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise SeqkitError(f"{TIMEOUT_ENV}: expected a number of seconds, got {os.environ[TIMEOUT_ENV]!r}") from None
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    _current = Context(rank, world, local_rank, device, backend)
    return _current


def teardown(*, together: bool = True) -> None:
    """Leave the process group (a no-op outside a data-parallel run). ``together``: every process
    is leaving at this point (training finished, or stopped at one step); otherwise this one
    leaves alone after an error of its own and must not wait for the others (they notice that it
    is gone at their next exchange, and torchrun stops them)."""
    global _current
    if _current is None:
        return
    import torch.distributed as dist

    ctx, _current = _current, None
    if not dist.is_initialized() or not together:
        return
    # Leave together: a process that tore its group down while another still used it (rank 0
    # testing the best checkpoint) died in gloo's threads at exit. Rank 0's last work may take
    # longer than the usual collective timeout, so this wait has its own.
    try:
        if ctx.backend == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(hours=24))
        else:
            ctx.barrier()
    except BaseException:  # noqa: BLE001  a process died, or torchrun's SIGTERM came while waiting: this
        pass  # process is leaving anyway, and whatever ended its run (an error, an interrupt) is what it reports
    dist.destroy_process_group()


def shard_rows(rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a batch of ``rows`` that ``rank`` of ``world`` trains on:
    contiguous, in rank order, sizes differing by at most one (the first ``rows % world`` ranks
    take one more). Concatenated in rank order they are the whole batch."""
    base, extra = divmod(rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of a task's batch (see the module doc for what can be split)."""
    select = getattr(batch, "select", None)
    if callable(select):
        return select(start, stop)
    if not dataclasses.is_dataclass(batch) or isinstance(batch, type):
        raise SeqkitError(f"{type(batch).__name__}: a batch that data-parallel training cannot split; make it a "
                          "dataclass whose per-row fields come first in each tensor, or give it a "
                          "select(start, stop) method")
    rows = len(batch)
    changes = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, Tensor) and value.dim() > 0 and value.size(0) == rows:
            changes[field.name] = value[start:stop]
        elif isinstance(value, (list, tuple)) and not isinstance(value, str) and len(value) == rows:
            changes[field.name] = type(value)(value[start:stop]) if isinstance(value, list) else value[start:stop]
    return dataclasses.replace(batch, **changes)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m seqkit *argv`` in ``nproc`` processes on this machine through torchrun's
    own launcher (``torchrun --standalone --nproc-per-node nproc``); returns the exit status to
    leave with: 0, a failed process's own status (130 or 143 after Ctrl-C or SIGTERM, 2 after a
    one-line error), or 128 + the signal that stopped the launcher."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default is 1; share the cores out instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "seqkit", *argv])
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for _, f in sorted(exc.failures.items())]
        # Killed by a signal, the process could report nothing itself. SIGTERM is torchrun's own way of
        # stopping the rest once one process has ended, even one that ended well but early.
        if any(c < 0 and c != -signal.SIGTERM for c in codes):
            ranks = ", ".join(f"rank {rank} by {_signal_name(-f.exitcode)}" if f.exitcode < 0
                              else f"rank {rank} exited {f.exitcode}" for rank, f in sorted(exc.failures.items()))
            print(f"error: a training process died ({ranks}; torchrun stops the others once one has died); "
                  "the last checkpoint is kept: continue with --resume", file=sys.stderr)
            return 1
        stopped = [c for c in codes if c in (130, 143)]
        return stopped[0] if stopped else next((c for c in codes if c > 0), 128 + signal.SIGTERM)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
