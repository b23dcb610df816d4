"""What ``--out`` may be, and ``--overwrite`` done without losing anything.

``--overwrite`` only ever replaces a store this tool wrote: a folder whose root ``zarr.json`` says
``"tool": "clam2sam"`` (or, when that file is damaged, a folder holding nothing but a store's own entries). A plain
file, a symlink or any other folder is refused, whatever the flag.

The old store is not deleted up front: its entries are moved into ``<out>/.clam2sam.replaced/`` (same folder, so a
rename), the new store is written beside them, and the old entries are deleted only once the new run has written
its first complete slide. A run that writes no slide puts the old store back; a run killed meanwhile is repaired
by the next run into the same ``--out`` (:func:`recover`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from clam2sam.store import schema
from clam2sam.errors import StoreExistsError
from clam2sam.store.lock import LOCK_NAME

ASIDE_NAME = ".clam2sam.replaced"
KEEP_ON_OVERWRITE = ("sam_cache",)   # kept by --overwrite (see clam2sam.store.writer)
REPORT_NAME = "convert_report.json"
# entries a store folder may hold (anything else marks a folder as not ours)
OWN_ENTRIES = {"zarr.json", schema.SLIDES_GROUP, REPORT_NAME, ASIDE_NAME, *KEEP_ON_OVERWRITE}
_FIX = "choose another --out (a new folder, or a store written by clam2sam), or move this one away yourself"


def _own(name: str) -> bool:
    return name in OWN_ENTRIES or name.startswith(LOCK_NAME)


def root_attrs(path: Path) -> dict | None:
    """The root attributes of the store at ``path``; None when absent or unreadable."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    a = meta.get("attributes") if isinstance(meta, dict) else None
    return a if isinstance(a, dict) else None


def is_clam2sam_store(path: Path) -> bool:
    """A folder this tool wrote: root attrs name clam2sam, or (damaged root) only a store's own entries."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    a = root_attrs(path)
    if a is not None:
        return a.get("tool") == "clam2sam" and "schema_version" in a
    names = [p.name for p in path.iterdir()]
    return (path / "zarr.json").exists() and (path / schema.SLIDES_GROUP).is_dir() and all(map(_own, names))


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that is not a store folder (new, empty, or a clam2sam store).

    Raises:
        StoreExistsError: a file or symlink, or a folder holding other things than a store (names a few).
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise StoreExistsError(f"output is {kind}, not a clam2sam store"
                               + ("; --overwrite replaces only stores written by clam2sam" if overwrite else ""),
                               path=path, fix=_FIX)
    if not path.is_dir():
        return
    stray = sorted(n.name for n in path.iterdir() if not _own(n.name))
    if (path / "zarr.json").exists() and not is_clam2sam_store(path):
        raise StoreExistsError("output holds a zarr.json that clam2sam did not write (no 'tool: clam2sam' root "
                               "attribute)" + ("; --overwrite replaces only stores written by clam2sam"
                                               if overwrite else ""), path=path, fix=_FIX)
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise StoreExistsError(f"output folder exists and is not a clam2sam store (it holds {shown})"
                               + ("; --overwrite replaces only stores written by clam2sam, it never deletes other "
                                  "files" if overwrite else ""), path=path, fix=_FIX)


def _store_entries(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name not in (ASIDE_NAME, *KEEP_ON_OVERWRITE)
            and not p.name.startswith(LOCK_NAME)]


def set_aside(path: Path) -> bool:
    """Move the store's entries into ``<path>/.clam2sam.replaced`` (call with the lock held). True when
    anything was moved."""
    path = Path(path)
    entries = _store_entries(path)
    if not entries:
        return False
    aside = path / ASIDE_NAME
    aside.mkdir()
    for p in entries:
        p.rename(aside / p.name)
    return True


def discard_aside(path: Path) -> None:
    """The new store has a complete slide: delete the old one."""
    aside = Path(path) / ASIDE_NAME
    if aside.exists():
        shutil.rmtree(aside)


def restore_aside(path: Path) -> bool:
    """Put the old store back (the new run wrote no slide): the new entries are removed. True when restored."""
    path = Path(path)
    aside = path / ASIDE_NAME
    if not aside.is_dir():
        return False
    for p in _store_entries(path):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in aside.iterdir():
        p.rename(path / p.name)
    aside.rmdir()
    return True


def _has_complete_slide(path: Path) -> bool:
    sg = Path(path) / schema.SLIDES_GROUP
    if not sg.is_dir():
        return False
    for g in sg.iterdir():
        try:
            if json.loads((g / "zarr.json").read_text()).get("attributes", {}).get("complete"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def recover(path: Path) -> str | None:
    """Finish an --overwrite that was interrupted (call with the lock held): the old store is deleted when the new
    one has a complete slide, else put back. Returns what was done, or None when nothing was pending."""
    if not (Path(path) / ASIDE_NAME).is_dir():
        return None
    if _has_complete_slide(path):
        discard_aside(path)
        return "an interrupted --overwrite had written its first slide: the replaced store was deleted"
    restore_aside(path)
    return "an interrupted --overwrite had written no slide yet: the previous store was put back"
