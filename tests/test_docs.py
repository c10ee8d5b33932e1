"""Docs stay true to the code: every recipe key is documented, with its real default, under the
component that owns it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from seqkit import registry
from seqkit.recipe import COMPONENT_SECTIONS, EncoderConfig, Recipe, TrainConfig, component_config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _defaults(cls, prefix):
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal") or (cls is Recipe and f.name in (*COMPONENT_SECTIONS, "encoder", "train")):
            continue
        out[f"{prefix}{f.name}"] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def _rows(text):
    return dict(re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", text, flags=re.M))


def _check(rows, defaults, where):
    assert sorted(rows) == sorted(defaults), f"docs/recipes.md {where}: keys differ from the code"
    for key, default in defaults.items():
        shown = rows[key].strip()
        if default is None:
            assert shown == "none", key
        elif isinstance(default, bool):
            assert shown == f"`{str(default).lower()}`", key
        elif isinstance(default, str):
            assert shown == (f"`{default}`" if default else '`""`'), key
        elif isinstance(default, list):
            assert yaml.safe_load(shown.strip("`")) == default, key
        else:
            assert float(shown.strip("`")) == float(default), key


def _part(text, heading):
    return text.split(heading, 1)[1].split("\n#", 1)[0]


def test_every_recipe_key_is_documented_with_its_default(plugin_manager):
    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    _check(_rows(text.split("\n## ", 1)[0]), _defaults(Recipe, ""), "top level")
    _check(_rows(_part(text, "## `encoder`")), _defaults(EncoderConfig, "encoder."), "encoder")
    _check(_rows(_part(text, "## `train`")), _defaults(TrainConfig, "train."), "train")
    for section, (_, kind) in COMPONENT_SECTIONS.items():
        for name, entry in getattr(registry, kind).entries().items():
            heading = f"### `{section}: {name}`"
            assert heading in text, f"docs/recipes.md has no heading {heading}"
            _check(_rows(_part(text, heading)), _defaults(component_config(entry.obj), f"{section}."), heading)
