"""Consolidated metadata of the store's complete slides, written atomically; Ctrl-C deferred while it is written.

``zarr.consolidate_metadata`` walks every node of the hierarchy and fails on the first ``zarr.json`` it cannot
parse -- for instance the half-written metadata of a slide whose conversion was just interrupted (Ctrl-C, kill),
which turned a clean interruption into a JSON traceback and left the store without consolidated metadata.
Here only complete slides are consolidated (what a reader trusts), a complete slide whose metadata cannot be
read is left out (``inspect --check`` names it), and the root ``zarr.json`` is replaced in one rename.

The result is what zarr writes: the root document gains ``consolidated_metadata`` (``kind: inline``) mapping
every node path to its ``zarr.json`` document, groups with an empty inline ``consolidated_metadata`` of their
own; ``zarr.open_consolidated`` reads it.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path

from clam2sam.store import schema
from clam2sam.store.fast_write import write_json

_EMPTY = {"kind": "inline", "must_understand": False, "metadata": {}}


def _doc(path: Path) -> dict:
    meta = json.loads(path.read_bytes())
    if not isinstance(meta, dict) or meta.get("node_type") not in ("group", "array"):
        raise ValueError(f"{path}: not a zarr node document")
    return meta


def _group_entry(meta: dict) -> dict:
    return {"attributes": meta.get("attributes", {}), "zarr_format": 3, "consolidated_metadata": dict(_EMPTY),
            "node_type": "group"}


def consolidated_entries(store: Path, keys: list[str]) -> dict[str, dict]:
    """``{node path: zarr.json document}`` for the slides group and the complete slides ``keys``."""
    slides = store / schema.SLIDES_GROUP
    out: dict[str, dict] = {schema.SLIDES_GROUP: _group_entry(_doc(slides / "zarr.json"))}
    for key in keys:
        gdir = slides / key
        try:
            entries = {f"{schema.SLIDES_GROUP}/{key}": _group_entry(_doc(gdir / "zarr.json"))}
            for child in sorted(gdir.iterdir()):
                if child.is_dir() and (child / "zarr.json").is_file():
                    meta = _doc(child / "zarr.json")
                    entries[f"{schema.SLIDES_GROUP}/{key}/{child.name}"] = (
                        _group_entry(meta) if meta["node_type"] == "group" else meta)
        except (OSError, ValueError):       # damaged since it was completed: left out, --check names it
            continue
        out.update(entries)
    return out


def consolidate(store: str | Path, keys: list[str]) -> None:
    """Write the consolidated metadata of the complete slides ``keys`` into the root ``zarr.json`` (atomic).

    Raises:
        OSError: the files cannot be read or written. ValueError: the root or ``slides`` group metadata is
            not readable (a damaged store).
    """
    store = Path(store)
    root = _doc(store / "zarr.json")
    entries = consolidated_entries(store, keys)
    doc = {"attributes": root.get("attributes", {}), "zarr_format": 3,
           "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": entries},
           "node_type": "group"}
    write_json(store / "zarr.json", doc)


@contextlib.contextmanager
def deferred_sigint():
    """Hold Ctrl-C (SIGINT) back while a few metadata files are rewritten, then raise KeyboardInterrupt.

    Only in the main thread (signal handlers live there); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:                       # not the main interpreter thread after all
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt
