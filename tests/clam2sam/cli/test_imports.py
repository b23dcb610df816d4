"""CLI start-up: which modules `--help` and `inspect --json` import, and the lazy command registry.

Guarded by the modules a fresh interpreter has loaded after running the command (not by timing).
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from clam2sam.cli import main as c2s_cli
from trainer.cli import main as st_cli

HEAVY = ("torch", "zarr", "matplotlib", "segment_anything", "dask", "distributed", "sklearn", "scipy", "h5py",
         "PIL", "openslide", "pandas", "numcodecs")
# --help needs none of numpy, rich or the command modules either
HELP_FORBIDDEN = HEAVY + ("numpy", "rich", "clam2sam.cli.convert", "clam2sam.cli.inspect", "clam2sam.cli.export",
                          "clam2sam.store.writer", "clam2sam.convert.cohort", "trainer.cli.fit", "trainer.cli.predict",
                          "trainer.config", "trainer.heatmap")


def _loaded_after(code: str) -> set[str]:
    """Top-level and dotted names of every module loaded by ``code`` in a fresh interpreter."""
    probe = textwrap.dedent(code) + textwrap.dedent("""
        import json as _j, sys as _s
        _s.__stdout__.write("\\n@@MODULES@@" + _j.dumps(sorted(_s.modules)))
    """)
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "@@MODULES@@" in p.stdout, p.stderr[-2000:]
    return set(json.loads(p.stdout.rsplit("@@MODULES@@", 1)[1]))


def _heavy(mods: set[str], names) -> list[str]:
    return sorted(n for n in names if n in mods)


RUN = """
import sys
from {mod} import cli
try:
    cli.main(args={args!r}, prog_name="x")
except SystemExit:
    pass
"""


@pytest.mark.parametrize("mod", ["clam2sam.cli.main", "trainer.cli.main"])
def test_help_imports_no_heavy_or_command_module(mod):
    mods = _loaded_after(RUN.format(mod=mod, args=["--help"]))
    assert _heavy(mods, HELP_FORBIDDEN) == []
    assert "click" in mods   # the probe did run the CLI


def test_version_imports_nothing_heavy():
    mods = _loaded_after(RUN.format(mod="clam2sam.cli.main", args=["--version"]))
    assert _heavy(mods, HELP_FORBIDDEN) == []


def test_public_api_is_lazy_but_works():
    mods = _loaded_after("import clam2sam")
    assert _heavy(mods, ("numpy", "zarr", "clam2sam.store.writer")) == []
    mods = _loaded_after("from clam2sam import open_store, StoreWriter, SlideArrays, StoreReader, Clam2SamError")
    assert {"clam2sam.store.writer", "clam2sam.store.reader", "clam2sam.store.slide_arrays"} <= mods
    import clam2sam
    import clam2sam.store.writer as store

    assert clam2sam.open_store is store.open_store and clam2sam.StoreWriter is store.StoreWriter
    assert clam2sam.SlideArrays is store.SlideArrays and clam2sam.StoreReader is store.StoreReader
    assert {"open_store", "StoreWriter", "SlideArrays"} <= set(dir(clam2sam))
    with pytest.raises(AttributeError, match="no_such_thing"):
        clam2sam.no_such_thing  # noqa: B018


def test_inspect_json_avoids_zarr_and_matches_the_zarr_path(tmp_path):
    """`inspect --json` on a store of this tool: no zarr / torch / h5py import, and the same bytes as
    the statistics read through zarr's API."""
    from tests.clam2sam.inspect.test_stats import cohort  # a real store: segments, labels, an incomplete slide

    path = cohort(tmp_path)[0]
    mods = _loaded_after(RUN.format(mod="clam2sam.cli.main", args=["inspect", str(path), "--json"]))
    assert _heavy(mods, HEAVY) == ["numcodecs"] or _heavy(mods, HEAVY) == []   # Blosc decode only
    assert "clam2sam.inspect.checks" not in mods and "clam2sam.inspect.plots" not in mods

    from clam2sam.inspect import stats

    fast = CliRunner().invoke(c2s_cli.cli, ["inspect", str(path), "--json"])
    assert fast.exit_code == 0, fast.output
    orig = stats._read_fast
    try:
        stats._read_fast = lambda reader, sid: None   # force the zarr path of before
        slow = CliRunner().invoke(c2s_cli.cli, ["inspect", str(path), "--json"])
        one_slow = CliRunner().invoke(c2s_cli.cli, ["inspect", str(path), "--json", "--slide", "b"])
    finally:
        stats._read_fast = orig
    one_fast = CliRunner().invoke(c2s_cli.cli, ["inspect", str(path), "--json", "--slide", "b"])
    assert slow.exit_code == 0 and one_slow.exit_code == 0
    assert fast.stdout == slow.stdout and one_fast.stdout == one_slow.stdout
    d = json.loads(fast.stdout)
    assert d["slides"]["complete"] >= 2 and d["features"]["slide_dtypes"] == {"float32": d["slides"]["complete"]}


def test_inspect_damaged_group_metadata_takes_the_zarr_path(tmp_path):
    """A slide whose metadata is not as the store writes it goes through zarr, which phrases the error as before."""
    from tests.clam2sam.inspect.test_stats import cohort

    from clam2sam.inspect import stats
    from clam2sam.store.writer import open_store

    path = cohort(tmp_path)[0]
    r = open_store(path)
    sid = r.slide_ids()[0]
    zj = path / "slides" / sid / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["node_type"] = "array"     # still JSON with complete = True, but not a group any more
    zj.write_text(json.dumps(meta))
    assert stats._read_fast(r, sid) is None
    res = stats.cohort_stats(open_store(path))
    assert [e["slide"] for e in res["errors"]] == [sid]
    assert "corrupt slide group" in res["errors"][0]["message"]


def _groups():
    return [(c2s_cli.cli, c2s_cli.COMMANDS), (st_cli.cli, st_cli.COMMANDS)]


@pytest.mark.parametrize("which", [0, 1])
def test_registry_short_help_is_the_commands_own(which):
    """The short help kept in the registry is the first paragraph of each command's docstring."""
    group, registry = _groups()[which]
    for name, (target, short) in registry.items():
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert cmd.name == name
        assert cmd.help.partition("\n\n")[0].split() == short.split(), name
        for limit in (20, 45, 60, 200):
            assert click.Command(name, help=short).get_short_help_str(limit) == cmd.get_short_help_str(limit)


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("args", [["--help"], [], ["inspct"], ["fitt"], ["nosuch"]])
def test_lazy_group_output_equals_an_eager_group(which, args):
    """--help, no arguments and unknown commands print exactly what a group with every command added does."""
    group, registry = _groups()[which]
    eager = click.Group(group.name, help=group.help, epilog=group.epilog, context_settings=group.context_settings,
                        params=group.params)
    for name, (target, _short) in registry.items():
        module, attr = target.split(":")
        eager.add_command(getattr(importlib.import_module(module), attr), name)
    lazy = type(group)(group.name, help=group.help, epilog=group.epilog, context_settings=group.context_settings,
                       params=group.params, lazy_commands=registry)
    for width in (60, 100, 200):
        a = CliRunner().invoke(eager, args, prog_name="x", terminal_width=width)
        b = CliRunner().invoke(lazy, args, prog_name="x", terminal_width=width)
        assert (a.exit_code, a.output) == (b.exit_code, b.output)
    assert "Commands:" in CliRunner().invoke(lazy, ["--help"], prog_name="x").output


def test_shell_completion_lists_commands_without_importing_them():
    code = """
import os, sys
os.environ["_X_COMPLETE"] = "zsh_complete"
os.environ["COMP_WORDS"] = "x "
os.environ["COMP_CWORD"] = "1"
from clam2sam.cli.main import cli
try:
    cli.main(args=[], prog_name="x", complete_var="_X_COMPLETE")
except SystemExit:
    pass
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "convert" in p.stdout and "inspect" in p.stdout and "export-segments" in p.stdout
    assert "Summarise, check and draw a clam2sam store." in p.stdout
    mods = _loaded_after(code)
    assert _heavy(mods, HELP_FORBIDDEN) == []


def test_command_runs_after_lazy_load(tmp_path):
    """A lazily registered command is really run (its options parsed, its exit code returned)."""
    r = CliRunner().invoke(c2s_cli.cli, ["inspect", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(st_cli.cli, ["fit", "--list-models"])
    assert r.exit_code == 0 and "abmil" in r.output


def test_jsonable_one_definition_same_values():
    """jsonable lives in clam2sam.jsonable (inspect does not import clam2sam.store.writer); the writer re-exports it."""
    from pathlib import Path

    import numpy as np

    import clam2sam.store.writer as store
    from clam2sam.jsonable import jsonable

    assert store.jsonable is jsonable
    v = {1: [np.float32("nan"), np.float64(2.5), np.int64(3), float("inf"), (np.bool_(True), Path("/a/b"))],
         "arr": np.arange(3, dtype=np.int16), "s": "x", "none": None}
    got = jsonable(v)
    assert got == {"1": [None, 2.5, 3, None, [True, "/a/b"]], "arr": [0, 1, 2], "s": "x", "none": None}
    assert type(got["1"][2]) is int and type(got["1"][1]) is float and type(got["1"][4][0]) is bool


def test_inspect_json_on_a_pipe_does_not_load_rich(tmp_path):
    from tests.clam2sam.inspect.test_stats import cohort

    path = cohort(tmp_path)[0]
    mods = _loaded_after(RUN.format(mod="clam2sam.cli.main", args=["inspect", str(path), "--json"]))
    assert _heavy(mods, ("rich", "zarr", "torch", "h5py")) == []
    mods = _loaded_after(RUN.format(mod="clam2sam.cli.main", args=["inspect", str(path)]))
    assert "rich" in mods          # the human summary is drawn with rich


@pytest.mark.parametrize("tasks", [0, 1, 3])
def test_plain_progress_writes_what_rich_writes_to_a_pipe(tasks, monkeypatch):
    """On a stream that is not a terminal a transient rich Progress writes one line end; so does the
    stand-in that spares `inspect --json` the rich import."""
    import io

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clam2sam.cli import inspect as cli_inspect

    for k in ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE"):
        monkeypatch.delenv(k, raising=False)
    buf = io.StringIO()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=buf), transient=True) as prog:
        for _ in range(tasks):
            t = prog.add_task("x", total=2)
            prog.advance(t)
    fake = io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake)
    assert cli_inspect._stderr_is_plain()
    with cli_inspect._progress(None) as prog:
        for _ in range(tasks):
            prog.advance(prog.add_task("x", total=2))
    assert fake.getvalue() == buf.getvalue() == "\n"
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not cli_inspect._stderr_is_plain()


@pytest.mark.parametrize("which,package", [(0, "clam2sam"), (1, "trainer")])
def test_every_command_module_command_is_registered(which, package):
    """Registration is explicit: a command defined in a cli/*.py module but missing from the registry would
    silently vanish from the tool."""
    from pathlib import Path

    group, registry = _groups()[which]
    pkg_dir = Path(importlib.import_module(f"{package}.cli").__file__).parent
    defined = {}
    for f in sorted(p for p in pkg_dir.glob("*.py") if p.stem != "main"):   # main.py: the group itself
        mod = importlib.import_module(f"{package}.cli.{f.stem}")
        for attr, obj in vars(mod).items():
            if (isinstance(obj, click.Command) and obj.callback is not None
                    and obj.callback.__module__ == mod.__name__):      # defined here, not imported
                defined[obj.name] = f"{mod.__name__}:{attr}"
    assert defined, package
    assert {k: v[0] for k, v in registry.items()} == defined
