"""Recipes: typed, validated YAML with ``--set a.b=value`` overrides.

The sections ``task``, ``data``, ``features`` and ``head`` each name a registered component
(``task.name``, ``data.dataset``, ``features.kind``, ``head.name``) and carry that component's
own options, validated against the ``Config`` dataclass the component declares.

Precedence is defaults < recipe file < ``--set``.  Every error names the file, the key path
and what was expected, so it can be printed as one line.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import RecipeError

Precision = Literal["fp32", "bf16"]  # train.precision, seqkit.load(precision=), --precision
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)

__all__ = [
    "COMPONENT_SECTIONS",
    "EncoderConfig",
    "NoOptions",
    "Recipe",
    "TrainConfig",
    "component_config",
    "from_dict",
    "parse_overrides",
    "section_class",
    "bounded",
]


def bounded(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None,
            le: Optional[float] = None, lt: Optional[float] = None) -> Any:
    """A dataclass field whose recipe values must lie in a range (checked when a recipe is read:
    ``seqkit recipe validate`` reports ``head.dropout: must be < 1, got 2``)::

        dropout: float = bounded(0.0, ge=0, lt=1)
    """
    return field(default=default, metadata={"bounds": (ge, gt, le, lt)})


def _check_bounds(f: dataclasses.Field, value: Any, source: str, key: str) -> None:
    bounds = f.metadata.get("bounds")
    if bounds is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for limit, ok, sign in zip(bounds, (operator.ge, operator.gt, operator.le, operator.lt), (">=", ">", "<=", "<")):
        if limit is not None and not ok(value, limit):
            raise RecipeError(f"{source}: {key}: must be {sign} {limit:g}, got {value!r}")


@dataclass
class EncoderConfig:
    """The shared encoder (``seqkit.Encoder``); the same section for every task."""

    cell: str = "lstm"  # a registered cell: lstm, gru, or a plugin's
    num_layers: int = bounded(2, ge=1)
    hidden_size: int = bounded(256, ge=1)
    bidirectional: bool = True  # shorthand for directions: bidirectional (false: forward)
    # split: ELMo-style, each direction stacks on itself; null: from bidirectional
    directions: Optional[Literal["forward", "bidirectional", "split"]] = None
    dropout: float = bounded(0.0, ge=0, lt=1)  # between layers, training only
    locked_dropout: bool = False  # one dropout mask per sequence for all time steps (variational)
    input_dropout: float = bounded(0.0, ge=0, lt=1)  # on the encoder's input
    output_dropout: float = bounded(0.0, ge=0, lt=1)  # on the top layer's output
    weight_drop: float = bounded(0.0, ge=0, lt=1)  # DropConnect on the recurrent weights (AWD-LSTM)
    engine: Literal["auto", "fused", "generic"] = "auto"
    init_from: Optional[str] = None  # a run folder: start from its encoder (and matching token embeddings)

    @property
    def direction_mode(self) -> str:
        return self.directions or ("bidirectional" if self.bidirectional else "forward")


@dataclass
class TrainConfig:
    epochs: int = bounded(10, ge=1)
    max_steps: int = bounded(0, ge=0)  # 0: no limit
    # a training-time budget (resumed sessions included): no epoch starts that the last one's time
    # says would end past it, and one that runs past it anyway stops there; 0: no limit
    max_minutes: float = bounded(0.0, ge=0)
    batch_size: int = bounded(32, ge=1)
    sortagrad: bool = False  # first epoch in order of length, shortest batches first (SortaGrad)
    lr: float = bounded(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = bounded(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = bounded(0.0, ge=0)
    lr_decay: float = bounded(1.0, gt=0)  # lr_schedule exponential: multiply the learning rate by this after each epoch
    # cosine: per step down to min_lr; plateau: times lr_decay after each validation that does not improve
    lr_schedule: Literal["exponential", "cosine", "plateau"] = "exponential"
    min_lr: float = bounded(0.0, ge=0)  # where the cosine schedule ends, at the last step
    warmup_steps: int = bounded(0, ge=0)  # ramp the learning rate up linearly over the first steps
    clip_grad_norm: float = bounded(5.0, ge=0)  # 0: no clipping
    seed: int = 1
    patience: int = bounded(0, ge=0)  # epochs without improvement before stopping; 0: never stop early
    average_last: int = bounded(0, ge=0)  # at the end, average the weights of up to this many last epochs; 0/1: off
    ema_decay: float = bounded(0.0, ge=0, lt=1)  # weight moving average (0.999: ~1000 steps), tried at the end; 0: off
    checkpoint_every: int = bounded(500, ge=0)  # steps between "last" checkpoints (also each epoch end; 0: only then)
    log_every: int = bounded(50, ge=1)
    eval_batch_size: int = bounded(128, ge=1)
    max_length: int = bounded(0, ge=0)  # split longer training sequences into chunks; 0: keep whole
    threads: int = bounded(0, ge=0)  # torch intra-op threads; 0: leave torch's default
    precision: Precision = "fp32"  # bf16: autocast matmuls and recurrences to bfloat16


@dataclass
class NoOptions:
    """The options of a component that has none."""


# section -> (the key that names its component, the registry it is looked up in)
COMPONENT_SECTIONS = {
    "task": ("name", "tasks"),
    "data": ("dataset", "datasets"),
    "features": ("kind", "features"),
    "head": ("name", "heads"),
}
_SECTION_CLASSES: dict[tuple[type, str, str], type] = {}


def section_class(config: type, selector: str, name: str) -> type:
    """The dataclass of a recipe section: the component's own ``Config`` plus the key that names
    the component (``data.dataset``, ``head.name``, ...), so ``recipe.head.beam_size`` reads as
    the head's own option."""
    key = (config, selector, name)
    if key not in _SECTION_CLASSES:
        if not dataclasses.is_dataclass(config):
            raise RecipeError(f"component {name!r}: its Config must be a dataclass, got {config!r}")
        if selector in {f.name for f in dataclasses.fields(config)}:
            raise RecipeError(f"component {name!r}: its Config may not have a field named {selector!r}")
        _SECTION_CLASSES[key] = dataclasses.make_dataclass(
            f"{config.__name__}Section", [(selector, str, field(default=name))], bases=(config,))
    return _SECTION_CLASSES[key]


def component_config(obj: Any) -> type:
    """The options dataclass a registered component declares (``Config``), or ``NoOptions``."""
    return getattr(obj, "Config", None) or NoOptions


@dataclass
class Recipe:
    """A resolved recipe: ``task``, ``data``, ``features`` and ``head`` hold the options of the
    components they name (each component's own ``Config``); ``encoder`` and ``train`` are fixed."""

    description: str = ""
    task: Any = None
    data: Any = None
    features: Any = None  # None: the task takes no features section
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    source: str = field(default="<defaults>", metadata={"internal": True})

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
             saved: bool = False) -> "Recipe":
        """Read a recipe file, apply ``--set`` overrides, validate, and return it.

        ``saved``: the file is a run folder's ``recipe.yaml``; one written before tasks were
        plugins is read in its old layout."""
        path = Path(path)
        raw = read_yaml(path)
        apply_overrides(raw, overrides, str(path))
        return cls.from_dict(raw, source=str(path), saved=saved)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "<recipe>", saved: bool = False) -> "Recipe":
        """Validate a recipe mapping (sections as in a YAML file) against the registered components."""
        raw = copy.deepcopy(raw)
        if saved and "task" not in raw:
            _migrate_saved(raw)
        else:
            _refuse_old_layout(raw, source)
        plain = {k: v for k, v in raw.items() if k not in COMPONENT_SECTIONS}
        recipe = from_dict(cls, plain, source=source)
        recipe.source = source
        _resolve_components(recipe, raw, source, lenient=saved)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            if f.name in COMPONENT_SECTIONS:
                if value is None:
                    continue
                selector = COMPONENT_SECTIONS[f.name][0]
                options = dataclasses.asdict(value)
                value = {selector: options.pop(selector), **options}
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (plain YAML
    keeps the last one silently, so a recipe would quietly ignore a setting)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one section (first on line "
                    f"{first.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found")
    if not path.is_file():
        raise RecipeError(f"{path}: not a regular file; give the path of a YAML recipe")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {_kind(raw)}")
    _check_size(raw, str(path))
    return raw


_MAX_NODES = 100_000  # far above any real recipe; YAML aliases can make a few bytes expand to billions


def _check_size(raw: Any, source: str) -> None:
    """Refuse a recipe whose values, with YAML aliases expanded, would be huge (an alias bomb)."""
    count, stack = 0, [raw]
    while stack:
        node = stack.pop()
        count += 1
        if count > _MAX_NODES:
            raise RecipeError(f"{source}: the recipe expands to more than {_MAX_NODES:,} values (YAML aliases "
                              "referring to each other?); write the values out")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _section(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if isinstance(value, str) and name == "task":
        return {"name": value}  # task: language-model
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {name}: expected a mapping, got {_kind(value)}")
    return dict(value)


def _resolve_components(recipe: Recipe, raw: dict[str, Any], source: str, *, lenient: bool) -> None:
    """Fill ``recipe.task/data/features/head`` from the registered components' own ``Config``s.

    The task is named by ``task.name``, or else by the ``task`` attribute of the head or the
    dataset the recipe names; the task supplies the default head, dataset and features."""
    from . import registry

    sections = {name: _section(raw, name, source) for name in COMPONENT_SECTIONS}
    task_name = sections["task"].get("name")
    if task_name is None:
        task_name = _implied_task(sections, source)
    if not isinstance(task_name, str):
        raise RecipeError(f"{source}: task.name: expected a string, got {brief(task_name)}")
    task_cls = registry.tasks.get(task_name, where=f"{source}: task.name")
    defaults = {"data": getattr(task_cls, "default_dataset", None),
                "features": getattr(task_cls, "default_features", None),
                "head": getattr(task_cls, "default_head", None)}
    sections["task"]["name"] = task_name
    for name, (selector, kind) in COMPONENT_SECTIONS.items():
        values = sections[name]
        chosen = values.pop(selector, None) or (defaults.get(name) if name != "task" else task_name)
        if chosen is None:
            if name == "features" and not values and raw.get("features") is None:
                setattr(recipe, name, None)  # this task reads no features section
                continue
            what = {"data": "a dataset", "features": "a feature front-end", "head": "a head"}[name]
            raise RecipeError(f"{source}: {name}.{selector}: missing; task {task_name!r} needs {what} "
                              f"(registered: {', '.join(getattr(registry, kind).names()) or 'none'})")
        if not isinstance(chosen, str):
            raise RecipeError(f"{source}: {name}.{selector}: expected a string, got {brief(chosen)}")
        component = getattr(registry, kind).get(chosen, where=f"{source}: {name}.{selector}")
        config = component_config(component)
        if lenient:
            known = {f.name for f in dataclasses.fields(config)}
            values = {k: v for k, v in values.items() if k in known}
        try:
            section = from_dict(section_class(config, selector, chosen), values, source=source, prefix=name)
        except RecipeError as exc:
            raise RecipeError(f"{exc} (options of {name} {chosen!r})") from None
        setattr(recipe, name, section)


def _implied_task(sections: dict[str, dict[str, Any]], source: str) -> str:
    from . import registry

    for name, selector, kind in (("head", "name", "heads"), ("data", "dataset", "datasets")):
        chosen = sections[name].get(selector)
        if isinstance(chosen, str):
            task = getattr(getattr(registry, kind).get(chosen, where=f"{source}: {name}.{selector}"), "task", None)
            if task:
                return task
    raise RecipeError(f"{source}: task: missing; name the task, e.g. `task: tagging` "
                      f"(registered tasks: {', '.join(registry.tasks.names()) or 'none'})")


# What the recipe layout before per-component options kept where it no longer is.
_MOVED = {("data", "synth"): "the synth-speech options now sit directly in the data section "
                             "(data.train: 12600 instead of data.synth.train: 12600); remove the synth: level"}


def _refuse_old_layout(raw: dict[str, Any], source: str) -> None:
    for (section, key), where in _MOVED.items():
        value = raw.get(section)
        if isinstance(value, dict) and key in value:
            raise RecipeError(f"{source}: {section}.{key}: moved: {where}")


def _migrate_saved(raw: dict[str, Any]) -> None:
    """A run folder's recipe from before per-component options: every component's options were
    saved in every section; lift ``data.synth`` into ``data`` (the others are dropped later)."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("synth"), dict):
        synth = data.pop("synth")
        if data.get("dataset") == "synth-speech":
            for key in ("train", "valid", "test"):
                data.pop(key, None)
            data.update(synth)


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut short: an error message never prints a huge value."""
    if isinstance(value, (dict, list)) and len(value) > 20:
        return f"{_kind(value)} of {len(value)} items"
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxlevel = limit, limit, 6, 6, 2
    text = short.repr(value)
    return text if len(text) <= limit * 2 else text[: limit * 2] + "..."


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
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}" if typing.get_args(tp) else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


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
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            return [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise RecipeError(f"{source}: {key}: expected {_describe(tp)}, got {brief(value)}")


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
        _check_bounds(fields[name], kwargs[name], source, key)
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
            if isinstance(child, str) and i == 0 and key == "task":  # task: tagging is task.name: tagging
                child = node[key] = {"name": child}
            if not isinstance(child, dict):
                path = ".".join(keys[: i + 1])
                raise RecipeError(f"--set {'.'.join(keys)}: {path} in {source} is not a section")
            node = child
        node[keys[-1]] = value
