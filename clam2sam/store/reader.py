"""Read side of the store: list slides, read attrs and arrays (fast single-read path), ``open_store``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from clam2sam.store import schema
from clam2sam.errors import StoreError
from clam2sam.store.fast_read import read_whole_array
from clam2sam.ids import key_to_slide_id, slide_key
from clam2sam.store.slide_arrays import SlideArrays


def list_slide_keys(store_path: str | os.PathLike, *, complete_only: bool = True) -> list[str]:
    """Slide group keys, sorted; reads each group's ``zarr.json`` (no stale consolidated metadata)."""
    d = Path(store_path) / schema.SLIDES_GROUP
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        zj = p / "zarr.json"
        if not zj.exists():
            if not complete_only and p.is_dir():
                out.append(p.name)
            continue
        if complete_only:
            try:
                if not _json_attrs(zj).get("complete"):
                    continue
            except StoreError:
                continue
        out.append(p.name)
    return out


def _json_attrs(zj: Path, slide: str | None = None) -> dict:
    """The ``attributes`` of a group's ``zarr.json``.

    Raises:
        FileNotFoundError: no such file. StoreError: unreadable, not JSON, or not a zarr group document.
    """
    try:
        meta = json.loads(zj.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StoreError(f"corrupt metadata ({type(e).__name__}: {str(e)[:120]})", slide=slide, path=zj,
                         fix="the store is damaged: re-convert (a re-run redoes slides whose metadata is bad)") from e
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        raise StoreError("corrupt metadata (not a zarr group document)", slide=slide, path=zj,
                         fix="the store is damaged: re-convert (a re-run redoes slides whose metadata is bad)")
    return attrs


# ---------------------------------------------------------------------------------------------- reader

class StoreReader:
    """Read-only access to a store. Cheap to construct; safe to use from forked DataLoader workers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._slides_dir = os.fspath(self.path / schema.SLIDES_GROUP)
        zj = self.path / "zarr.json"
        if not zj.exists():
            raise StoreError("not a clam2sam store (no zarr.json)", path=self.path,
                             fix="run `clam2sam convert ... --out STORE` first")
        self.attrs = _json_attrs(zj)
        v = self.attrs.get("schema_version")
        if v != schema.SCHEMA_VERSION:
            raise StoreError(f"store schema_version {v!r}, this tool reads {schema.SCHEMA_VERSION}",
                             path=self.path, fix="re-convert the archive with this version of clam2sam")

    @property
    def feature_dim(self) -> int | None:
        return self.attrs.get("feature_dim")

    def slide_ids(self, *, complete_only: bool = True) -> list[str]:
        return [key_to_slide_id(k) for k in list_slide_keys(self.path, complete_only=complete_only)]

    def incomplete_slide_ids(self) -> list[str]:
        done = set(self.slide_ids())
        return [s for s in self.slide_ids(complete_only=False) if s not in done]

    def group(self, slide_id: str):
        gdir = self.path / schema.SLIDES_GROUP / slide_key(slide_id)
        if not (gdir / "zarr.json").exists():
            raise StoreError("slide not in store", slide=slide_id, path=self.path,
                             fix="list slides with `clam2sam inspect STORE`")
        import zarr   # only for stores not in this tool's own layout (and their errors)

        try:
            return zarr.open_group(str(gdir), mode="r", use_consolidated=False)
        except Exception as e:  # noqa: BLE001 - damaged group metadata
            raise StoreError(f"corrupt slide group ({type(e).__name__}: {str(e)[:120]})", slide=slide_id,
                             path=gdir, fix="the store is damaged: re-convert this slide") from e

    def slide_attrs(self, slide_id: str) -> dict:
        p = self.path / schema.SLIDES_GROUP / slide_key(slide_id) / "zarr.json"
        try:
            return _json_attrs(p, slide_id)
        except FileNotFoundError as e:
            raise StoreError("slide not in store", slide=slide_id, path=self.path) from e

    def read_array(self, slide_id: str, name: str) -> np.ndarray:
        """One whole array of a slide (fast single-read path for the store's own layout, else zarr)."""
        adir = os.path.join(self._slides_dir, slide_key(slide_id), name)   # str joins: hot path, ~6 calls/bag
        try:
            fast = read_whole_array(adir, missing_shard="error")   # the store always writes the shard
        except Exception as e:  # noqa: BLE001 - corrupt / truncated shard, codec (blosc RuntimeError), bad json
            raise StoreError(f"array {name!r} unreadable ({type(e).__name__}: {str(e)[:200]})", slide=slide_id,
                             path=adir,
                             fix="the store is corrupt; re-convert this slide") from e
        if fast is not None:
            return fast
        g = self.group(slide_id)
        try:
            return g[name][...]
        except KeyError as e:
            raise StoreError(f"array {name!r} missing", slide=slide_id, path=self.path,
                             fix="the store is corrupt; re-convert this slide (--overwrite-slide or delete it)"
                             ) from e
        except Exception as e:  # noqa: BLE001 - codec / truncated shard errors
            raise StoreError(f"array {name!r} unreadable ({type(e).__name__}: {str(e)[:200]})", slide=slide_id,
                             path=self.path / schema.SLIDES_GROUP / slide_key(slide_id) / name,
                             fix="the store is corrupt; re-convert this slide") from e

    def read_slide(self, slide_id: str, arrays: tuple[str, ...] | None = None) -> SlideArrays:
        """Read a slide. ``arrays`` restricts which arrays are read (others become empty arrays)."""
        attrs = self.slide_attrs(slide_id)
        if not attrs.get("complete"):
            raise StoreError("slide is incomplete (its conversion was interrupted)", slide=slide_id,
                             path=self.path, fix="re-run `clam2sam convert` to resume")
        names = schema.ALL_ARRAYS if arrays is None else arrays
        data = {n: self.read_array(slide_id, n) for n in names}
        for n in schema.ALL_ARRAYS:
            data.setdefault(n, np.zeros(0))
        s = SlideArrays(slide_id=slide_id, attrs=attrs, **data)
        if arrays is None:
            try:
                s.validate()
                if s.n_patches != attrs.get("n_patches"):
                    raise StoreError(f"{s.n_patches} feature rows but n_patches = {attrs.get('n_patches')!r}")
            except Exception as e:  # noqa: BLE001 - arrays that disagree: a damaged store
                msg = e.message if isinstance(e, StoreError) else f"{type(e).__name__}: {e}"
                raise StoreError(f"inconsistent arrays ({msg})", slide=slide_id, path=self.path,
                                 fix="the store is damaged: re-convert this slide") from e
        return s


def open_store(path: str | os.PathLike) -> StoreReader:
    """Open a store read-only (validates the schema version)."""
    return StoreReader(path)
