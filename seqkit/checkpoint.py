"""Atomic checkpoints: one ``.safetensors`` file per checkpoint, plain data only.

A checkpoint holds the model tensors (``model.<name>``), the optimizer's per-parameter state
tensors (``optim.state.<index>.<key>``), the torch RNG state (``rng.torch``) and any extra
tensors the caller keeps beside the model (``extra.<name>``, e.g. the trainer's moving average
of the weights).  Everything
that is not a tensor (the caller's ``meta``, optimizer parameter groups, scalar optimizer state,
Python/numpy RNG states) is JSON stored in the safetensors header under the ``seqkit`` key, so
replacing that single file commits the whole checkpoint at once.  A ``.json`` twin next to it
repeats the metadata (without RNG states) for humans; nothing reads it back.

Safetensors is plain data: loading a checkpoint never executes code, so a checkpoint
downloaded from elsewhere cannot run anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import SeqkitError
from .fsio import atomic_write, write_text_atomic

__all__ = ["capture_rng", "load_checkpoint", "load_extra", "preserved_rng", "read_meta", "restore_rng",
           "save_checkpoint"]

FORMAT = "seqkit-checkpoint"
VERSION = 1
_MODEL = "model."
_OPTIM = "optim.state."
_RNG_TORCH = "rng.torch"
_RNG_CUDA = "rng.cuda."
_EXTRA = "extra."


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write model, optimizer and RNG state, ``extra`` tensors and ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensors[_MODEL + name] = _own(tensor)
    for name, tensor in (extra or {}).items():
        tensors[_EXTRA + name] = _own(tensor)
    optim_info = None
    if optimizer is not None:
        optim_info = _flatten_optimizer(optimizer.state_dict(), tensors)
    rng = _capture_rng(tensors)
    payload = {"format": FORMAT, "version": VERSION, "meta": meta,
               "optimizer": optim_info, "rng": rng, "checksum": _checksum(tensors)}
    header = json.dumps(payload)

    def write_tensors(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={"seqkit": header})
        # save_file closes the file without fsync; reopen so the data is on disk before the
        # rename makes it visible, otherwise a power cut could leave an empty 'checkpoint'.
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())

    readable = {key: value for key, value in payload.items() if key != "rng"}
    text = json.dumps(readable, indent=2, sort_keys=True) + "\n"
    try:
        atomic_write(path, write_tensors)
    except (OSError, SafetensorError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
        raise SeqkitError(f"{path}: could not write the checkpoint ({reason}); the previous one is kept: free "
                          "some space, then continue with --resume") from None
    write_text_atomic(path.with_suffix(".json"), text)  # for people; nothing reads it back


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    *, restore_rng: bool = False) -> dict:
    """Load weights (strictly), optionally optimizer and RNG state; return the saved meta."""
    path = Path(path)
    payload, tensors = _read(path, with_tensors=True)
    _load_model(path, model, tensors)
    if optimizer is not None:
        if payload.get("optimizer") is None:
            raise SeqkitError(f"{path}: checkpoint has no optimizer state, so training cannot "
                              "resume from it; train into another --out")
        state = _unflatten_optimizer(payload["optimizer"], tensors, optimizer)
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise SeqkitError(f"{path}: optimizer state does not match the model ({exc}); "
                              "train into another --out") from None
    if restore_rng:
        _restore_rng(payload.get("rng") or {}, tensors)
    return payload["meta"]


def load_extra(path: Path) -> dict[str, torch.Tensor]:
    """The ``extra`` tensors saved with a checkpoint, by name (empty if it has none)."""
    _, tensors = _read(Path(path), with_tensors=True)
    return {name[len(_EXTRA):]: t for name, t in tensors.items() if name.startswith(_EXTRA)}


def read_meta(path: Path) -> dict:
    """Return the ``meta`` dict of a checkpoint without loading its tensors."""
    payload, _ = _read(Path(path), with_tensors=False)
    return payload["meta"]


def capture_rng() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's torch/CUDA/Python/numpy RNG state: (JSON-able part, tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    return _capture_rng(tensors), tensors


def restore_rng(rng: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`capture_rng` returned."""
    _restore_rng(rng, tensors)


@contextlib.contextmanager
def preserved_rng():
    """Run a block without disturbing the global torch/CUDA/Python/numpy RNG streams."""
    tensors: dict[str, torch.Tensor] = {}
    rng = _capture_rng(tensors)
    try:
        yield
    finally:
        _restore_rng(rng, tensors)


# --- writing ---------------------------------------------------------------------------------


def _own(tensor: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors that share storage (tied weights, views), so every tensor
    # gets its own contiguous CPU copy.
    return tensor.detach().to("cpu").contiguous().clone()


def _flatten_optimizer(state_dict: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """Move optimizer state tensors into ``tensors``; return what remains as JSON data."""
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{index}.{key}"] = _own(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{key: _jsonable(value) for key, value in group.items()}
              for group in state_dict["param_groups"]]
    return {"param_groups": groups, "state": scalars}


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _capture_rng(tensors: dict[str, torch.Tensor]) -> dict:
    tensors[_RNG_TORCH] = torch.get_rng_state().clone()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_RNG_CUDA}{i}"] = state.clone()
    version, internal, gauss = random.getstate()
    rng: dict[str, Any] = {"python": [version, list(internal), gauss]}
    if "numpy" in sys.modules:  # only if someone uses it; importing numpy just to save is waste
        kind, keys, pos, has_gauss, cached = sys.modules["numpy"].random.get_state()
        rng["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return rng


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """BLAKE2b of every tensor's name, dtype, shape and bytes, in name order: a flipped bit in
    the file is caught when it is loaded."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


# --- reading ---------------------------------------------------------------------------------


def _read(path: Path, *, with_tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise SeqkitError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = (handle.metadata() or {}).get("seqkit")
            if header is None:
                raise ValueError("no seqkit metadata; not a seqkit checkpoint")
            payload = json.loads(header)
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                raise ValueError("no seqkit metadata; not a seqkit checkpoint")
            tensors = {}
            if with_tensors:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
                expected = payload.get("checksum")  # checkpoints written before it had none
                if expected is not None and _checksum(tensors) != expected:
                    raise ValueError("its tensors do not match their checksum: the file is damaged")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise SeqkitError(f"{path}: checkpoint is unreadable ({reason}); "
                          "it is left as it is; train into another --out, "
                          "or move it aside to resume from the other checkpoint") from None
    if payload.get("version", 0) > VERSION:
        raise SeqkitError(f"{path}: checkpoint format version {payload['version']} is newer "
                          f"than this seqkit understands ({VERSION}); upgrade seqkit")
    return payload, tensors


def _load_model(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = {name[len(_MODEL):]: t for name, t in tensors.items() if name.startswith(_MODEL)}
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + _few(missing))
        if unexpected:
            parts.append("unexpected " + _few(unexpected))
        raise SeqkitError(f"{path}: checkpoint does not fit the model ({'; '.join(parts)}); "
                          "was it trained with a different recipe?")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise SeqkitError(f"{path}: checkpoint does not fit the model ({detail}); "
                          "was it trained with a different recipe?") from None


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _unflatten_optimizer(info: dict, tensors: dict[str, torch.Tensor],
                         optimizer: torch.optim.Optimizer) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for index, entry in info.get("state", {}).items():
        state.setdefault(int(index), {}).update(entry)
    for name, tensor in tensors.items():
        if name.startswith(_OPTIM):
            index, key = name[len(_OPTIM):].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    groups = []
    current = optimizer.param_groups
    for i, group in enumerate(info["param_groups"]):
        group = dict(group)
        # JSON turned tuples (Adam's betas) into lists; give back the type the optimizer uses.
        if i < len(current):
            for key, value in group.items():
                if isinstance(current[i].get(key), tuple) and isinstance(value, list):
                    group[key] = tuple(value)
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _restore_rng(rng: dict, tensors: dict[str, torch.Tensor]) -> None:
    if _RNG_TORCH in tensors:
        torch.set_rng_state(tensors[_RNG_TORCH])
    cuda_keys = sorted((k for k in tensors if k.startswith(_RNG_CUDA)),
                       key=lambda k: int(k[len(_RNG_CUDA):]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        import numpy

        kind, keys, pos, has_gauss, cached = rng["numpy"]
        numpy.random.set_state((kind, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss,
                                cached))
