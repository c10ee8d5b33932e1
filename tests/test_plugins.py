"""Plugins: built-ins through the hooks, entry points of installed distributions, failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import seqkit
from seqkit import hookspecs, plugins, registry
from tests.plugins import dup_lstm, mingru

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_builtins_register_through_hooks(plugin_manager):
    assert {"lstm", "gru"} <= set(registry.cells.names())
    assert "tagger" in registry.heads.names()
    assert {"conll", "msra-ner"} <= set(registry.datasets.names())
    assert registry.cells.entries()["lstm"].plugin == "seqkit.default_plugins.cells"


def test_plugin_cell_usable_by_name(register_plugin):
    register_plugin(mingru, name="mingru")
    enc = seqkit.Encoder(3, 4, cell="mingru", bidirectional=True, batch_first=True)
    out, (h,) = enc(torch.randn(2, 5, 3), torch.tensor([5, 3]))
    assert out.shape == (2, 5, 8) and h.shape == (2, 2, 4)
    assert not enc.fused


def test_a_duplicate_name_keeps_the_builtin_and_names_both_plugins(register_plugin):
    register_plugin(dup_lstm, name="dup-lstm")
    with pytest.warns(plugins.PluginLoadWarning, match=r"seqkit plugin dup-lstm registers cell 'lstm', which plugin "
                      r"seqkit\.default_plugins\.cells already registers; dup-lstm's is ignored"):
        entry = registry.cells.entries()["lstm"]
    assert entry.plugin == "seqkit.default_plugins.cells"
    assert plugins.problems()["dup-lstm"]


def test_a_hook_that_raises_disables_its_plugin_only(register_plugin):
    class Raising:
        @seqkit.hookimpl
        def register_heads(self, register):
            register("half", object)
            raise RuntimeError("boom")

        @seqkit.hookimpl
        def register_cells(self, register):
            register("never", object)

    register_plugin(Raising(), name="raising")
    with pytest.warns(plugins.PluginLoadWarning, match=r"raising is disabled: its register_heads raised "
                      r"RuntimeError: boom"):
        assert "tagger" in registry.heads.names() and "half" not in registry.heads.names()
    assert "never" not in registry.cells.names() and "lstm" in registry.cells.names()


def _fake_distribution(root: Path, name: str, module: str, source: str, version: str = "1.2.3") -> None:
    """A real installed distribution on sys.path: a module plus its .dist-info with entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[seqkit]\n{module} = {module}\n", encoding="utf-8")


GOOD = """
    import seqkit
    from seqkit.cells import GRUCell

    @seqkit.hookimpl
    def register_cells(register):
        register("gru2", GRUCell)
"""
BROKEN = """
    raise ImportError("this plugin needs numpy 99")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "seqkit-good", "seqkit_good", GOOD)
    _fake_distribution(tmp_path, "seqkit-broken", "seqkit_broken", BROKEN, version="0.0.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_points_found_and_broken_plugin_is_one_warning(site):
    with pytest.warns(plugins.PluginLoadWarning, match=r"seqkit plugin seqkit_broken \(seqkit-broken 0\.0\.1\) "
                      r"failed to load and is skipped: ImportError: this plugin needs numpy 99"):
        pm = plugins._make_manager(load_entry_points=True)
    plugins.reset(pm)
    try:
        assert "gru2" in registry.cells.names() and "lstm" in registry.cells.names()
        info = {i.name: i for i in plugins.plugin_info(pm)}
        assert info["seqkit_good"].version == "1.2.3" and info["seqkit_good"].cells == ["gru2"]
        assert not info["seqkit_good"].problems
        assert info["seqkit_broken"].version == "0.0.1" and not info["seqkit_broken"].hooks
        assert "ImportError: this plugin needs numpy 99" in info["seqkit_broken"].problems[0]
    finally:
        plugins.reset(None)


def test_a_run_records_the_plugins_it_uses_and_load_warns_only_about_those(site, monkeypatch):
    """versions.json's ``uses``: the distributions whose components the recipe names. A plugin
    that was merely loaded while the run trained (a cell it never used) is not worth a warning
    when it is missing later; one whose cell the run uses is."""
    conll = Path(__file__).resolve().parents[1] / "recipes" / "ner" / "conll.yaml"
    with pytest.warns(plugins.PluginLoadWarning):
        pm = plugins._make_manager(load_entry_points=True)
    plugins.reset(pm)
    try:
        own = plugins.versions(seqkit.Recipe.load(conll, ["encoder.cell=gru2"]))
        builtin = plugins.versions(seqkit.Recipe.load(conll))
    finally:
        plugins.reset(None)
    assert own["plugins"]["seqkit-good"] == "1.2.3" and builtin["plugins"]["seqkit-good"] == "1.2.3"
    assert own["uses"] == ["seqkit-good"] and builtin["uses"] == []
    monkeypatch.setenv("SEQKIT_LOAD_PLUGINS", "0")  # now the plugin is installed but not loaded
    assert plugins.version_mismatch(builtin) == []
    assert plugins.version_mismatch(own) == ["seqkit-good 1.2.3 (now 1.2.3 installed but not loaded: "
                                             "SEQKIT_LOAD_PLUGINS=0)"]
    older = {k: v for k, v in builtin.items() if k != "uses"}  # a run from before ``uses``: every plugin counts
    assert len(plugins.version_mismatch(older)) == len(older["plugins"]) >= 1


def test_plugins_command_subprocess_sees_entry_points(site):
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1", "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "seqkit", "plugins", "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr  # a broken plugin is listed, and the exit status says so
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    assert listed["seqkit_good"]["version"] == "1.2.3"
    assert listed["seqkit_broken"]["problems"] and not listed["seqkit_good"]["problems"]
    assert listed["seqkit.default_plugins.cells"]["cells"] == ["lstm", "gru"]
    assert "seqkit_broken" in proc.stderr and "failed to load" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_docs_cover_every_hook_with_a_runnable_example(register_plugin, monkeypatch):
    text = DOCS.read_text(encoding="utf-8")
    specs = {name: fn for name, fn in vars(hookspecs).items()
             if callable(fn) and hasattr(fn, "seqkit_spec")}
    headings = re.findall(r"^## `(\w+)\((.*?)\)`$", text, flags=re.M)
    assert sorted(h for h, _ in headings) == sorted(specs), "docs/plugins.md headings != hookspecs"
    for name, args in headings:
        assert args == ", ".join(specs[name].__code__.co_varnames[: specs[name].__code__.co_argcount])
        section = text.split(f"## `{name}(")[1].split("\n## ")[0]
        blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        assert blocks, f"no example for {name}"
        module = types.ModuleType(f"docs_example_{name}")
        monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
        exec(compile(blocks[0], f"docs/plugins.md:{name}", "exec"), module.__dict__)  # noqa: S102
        register_plugin(module, name=module.__name__)
        if name == "register_commands":
            import click

            group = click.Group()
            getattr(module, name)(cli=group)
            assert group.commands, "the register_commands example adds no command"
            continue
        kind = plugins.HOOK_KINDS[name]
        field = plugins._INFO_FIELD[kind]
        info = {i.name: i for i in plugins.plugin_info()}[module.__name__]
        (registered,) = getattr(info, field)
        assert getattr(registry, field).get(registered) is not None
