"""The house plan, checked from the source: clam2sam's layers, no import cycle, click only in the CLIs, each
CLI flag declared once, every path parameter a LocalPath (local paths and file:// URLs).

Imports are read with ``ast`` from every module, including those inside functions (the lazy ones).
"""
from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = {"clam2sam", "errors", "ids", "masks", "jsonable", "threads", "_lazy", "_testhooks"}
SUBPACKAGES = ("sources", "store", "sam", "convert", "inspect", "cli")
# layer -> the layers it may import (besides itself); see each subpackage's __init__ docstring
ALLOWED = {
    "core": {"core"},
    "sources": {"core"},
    "store": {"core"},
    "sam": {"core", "sources"},
    "convert": {"core", "sources", "store", "sam"},
    "inspect": {"core", "store"},
    "cli": {"core", "sources", "store", "sam", "convert", "inspect"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at top level or inside a function (``from a import b``: ``a`` and ``a.b``)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _layer(module: str) -> str:
    """core | sources | store | sam | convert | inspect | cli (``clam2sam.__main__``, the entry point: cli)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in CORE:
        return "core"
    if parts[1] == "__main__":
        return "cli"
    assert parts[1] in SUBPACKAGES, f"{module}: a clam2sam module outside the known layers"
    return parts[1]


def _graph() -> dict[str, set[str]]:
    mods = _modules("clam2sam")
    return {m: {i for i in _imports(m, p) if i in mods} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import a.b\nfrom .c import d\n\ndef f():\n    from clam2sam.convert import cohort\n")
    assert _imports("clam2sam.convert.m", p) == {"a.b", "clam2sam.convert.c", "clam2sam.convert.c.d",
                                                 "clam2sam.convert", "clam2sam.convert.cohort"}


def test_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_clam2sam():
    assert _cycles(_graph()) == []


def test_each_subpackage_imports_only_its_lower_layers():
    bad = sorted((m, i) for m, deps in _graph().items() for i in deps
                 if _layer(i) != _layer(m) and _layer(i) not in ALLOWED[_layer(m)])
    assert bad == []


def test_each_subpackage_says_what_it_may_import():
    for sub in SUBPACKAGES:
        doc = ast.get_docstring(ast.parse((ROOT / "clam2sam" / sub / "__init__.py").read_text())) or ""
        assert "May import" in doc, sub


def test_clam2sam_never_imports_trainer():
    bad = sorted((m, i) for m, p in _modules("clam2sam").items() for i in _imports(m, p)
                 if i == "trainer" or i.startswith("trainer."))
    assert bad == []


def test_only_the_clis_import_click():
    bad = []
    for package in ("clam2sam", "trainer"):
        for m, p in _modules(package).items():
            if m.startswith(f"{package}.cli"):
                continue
            bad += [(m, i) for i in _imports(m, p) if i == "click" or i.startswith("click.")]
    assert sorted(bad) == []


def test_samtrain_uses_the_shared_boundary_not_clam2sams_group():
    for m, p in _modules("trainer").items():
        assert "clam2sam.cli.main" not in _imports(m, p), m
    tm = _imports("trainer.cli.main", ROOT / "trainer" / "cli" / "main.py")
    cm = _imports("clam2sam.cli.main", ROOT / "clam2sam" / "cli" / "main.py")
    assert "clam2sam.cli.boundary.run_cli" in tm and "clam2sam.cli.boundary.run_cli" in cm


# ------------------------------------------------------------------ every CLI flag declared once

CLI_FILES = sorted((ROOT / "clam2sam" / "cli").glob("*.py")) + sorted((ROOT / "trainer" / "cli").glob("*.py"))


def _declared_flags(paths) -> dict[str, list[str]]:
    """flag -> ``file:line`` of every ``click.option(...)`` call naming it in a string literal."""
    where = defaultdict(list)
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "click"):
                for a in (c for arg in node.args for c in ast.walk(arg)):   # positional, also in *("-o",)
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"):
                        for flag in a.value.split("/"):   # "--cache/--no-cache"
                            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                            where[flag.strip()].append(f"{rel}:{node.lineno}")
    return where


def _commands():
    from clam2sam.cli.main import COMMANDS as C2S
    from trainer.cli.main import COMMANDS as ST

    for registry in (C2S, ST):
        for name, (target, _short) in registry.items():
            module, attr = target.split(":")
            yield name, getattr(importlib.import_module(module), attr)


def test_the_flag_scan_sees_a_flag_declared_twice(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text('import click\nx = click.option("--slide", "slides", multiple=True)\n')
    b.write_text('import click\ny = click.option("-q", "--quiet", is_flag=True)\nz = click.option("--slide")\n')
    got = _declared_flags([a, b])
    assert len(got["--slide"]) == 2 and len(got["-q"]) == 1 and len(got["--quiet"]) == 1


def test_no_cli_flag_is_declared_twice():
    twice = {f: w for f, w in _declared_flags(CLI_FILES).items() if len(w) > 1}
    assert twice == {}


def test_every_option_of_every_command_comes_from_a_literal_declaration():
    """The scan above sees every flag the commands have (none is built from a list or a variable)."""
    declared = _declared_flags(CLI_FILES)
    missing = sorted({(name, flag) for name, cmd in _commands() for p in cmd.params
                      if isinstance(p, click.Option) for flag in p.opts + p.secondary_opts
                      if flag not in declared and flag != "--help"})
    assert missing == []


def test_every_path_parameter_takes_file_urls():
    from clam2sam.cli.options import LocalPath

    plain = sorted((name, p.name) for name, cmd in _commands() for p in cmd.params
                   if isinstance(p.type, click.Path) and not isinstance(p.type, LocalPath))
    assert plain == []
    assert sum(isinstance(p.type, LocalPath) for _, cmd in _commands() for p in cmd.params) >= 20


@pytest.mark.parametrize("flag", ["--slide", "--json", "--quiet", "--slides-dir", "--out", "--overwrite"])
def test_shared_flags_live_in_the_shared_options_module(flag):
    where = _declared_flags(CLI_FILES)[flag]
    assert [w.split(":")[0] for w in where] == ["clam2sam/cli/options.py"]
