"""Docs stay true to the code: every recipe key is documented, with its real default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from seqkit.recipe import Recipe

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        path = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _keys(type(default), path + ".")
        else:
            yield path, default


def test_every_recipe_key_is_documented_with_its_default():
    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", text, flags=re.M))
    keys = dict(_keys(Recipe))
    assert sorted(rows) == sorted(keys), "docs/recipes.md keys differ from seqkit.recipe"
    for key, default in keys.items():
        shown = rows[key].strip()
        if default is None:
            assert shown == "none", key
        elif isinstance(default, bool):
            assert shown == f"`{str(default).lower()}`", key
        elif isinstance(default, str):
            assert shown == (f"`{default}`" if default else '`""`'), key
        else:
            assert float(shown.strip("`")) == float(default), key
