"""Shared helpers of the hardening tests: a small cohort with segments, CLI subprocesses, store comparison."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from clam2sam.store import schema
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af

REPO = Path(__file__).resolve().parents[2]
VOLATILE_ROOT = {"created", "consolidated_metadata"}   # timestamps / zarr bookkeeping


cohort = af.make_segmented_cohort


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("CLAM2SAM_TEST_KILL_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def clam2sam_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "clam2sam", *map(str, args)]


def run_cli(*args, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(clam2sam_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
                          env=cli_env(**env))


def store_snapshot(path: Path) -> dict:
    """Everything a conversion produced that must be reproducible: root attrs (minus timestamps),
    per complete slide every array and every attr."""
    r = open_store(path)
    root = {k: v for k, v in r.attrs.items() if k not in VOLATILE_ROOT}
    slides = {}
    for sid in r.slide_ids():
        slides[sid] = {"attrs": r.slide_attrs(sid),
                       "arrays": {n: r.read_array(sid, n) for n in schema.ALL_ARRAYS}}
    return {"root": root, "slides": slides, "incomplete": r.incomplete_slide_ids()}


NOT_STORE_FILES = {"zarr.json", "convert_report.json"}   # root metadata (timestamps: compared via attrs), report


def store_file_digests(path: Path) -> dict[str, str]:
    """sha256 of every file of the store except the root metadata and the report: two runs over the same
    inputs must give byte-identical slide files (no leftover temporary or half-written file either)."""
    import hashlib

    path = Path(path)
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file() and str(f.relative_to(path)) not in NOT_STORE_FILES
            and not f.name.startswith(".")}


def assert_same_store(got: dict, ref: dict) -> None:
    assert got["root"] == ref["root"]
    assert sorted(got["slides"]) == sorted(ref["slides"])
    assert got["incomplete"] == [] and ref["incomplete"] == []
    for sid, s in ref["slides"].items():
        g = got["slides"][sid]
        assert g["attrs"] == s["attrs"], sid
        for n, a in s["arrays"].items():
            b = g["arrays"][n]
            assert a.dtype == b.dtype and a.shape == b.shape, (sid, n)
            np.testing.assert_array_equal(b, a, err_msg=f"{sid}/{n}")


def consolidated_ok(path: Path) -> bool:
    """The root zarr.json carries consolidated metadata listing every complete slide group."""
    meta = json.loads((Path(path) / "zarr.json").read_text())
    cm = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    return all(f"{schema.SLIDES_GROUP}/{k}" in cm for k in open_store(path).slide_ids())
