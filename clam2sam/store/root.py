"""The store's root group as its ``zarr.json`` document: open, create, read and update attributes without zarr.

:class:`clam2sam.store.writer.StoreWriter` needs of the root group only its attributes (read, set one key) and the
``slides`` subgroup's existence. zarr's group API costs a quarter of a second of imports per process; this
class writes the same documents zarr writes (``json.dumps(..., indent=2, allow_nan=True)`` of
``attributes``, ``zarr_format``, [``consolidated_metadata``,] ``node_type``), so zarr and every other reader
see no difference. A root document that is not exactly such a group (unknown keys, wrong types, unreadable)
is opened with zarr instead, so that damaged metadata is reported as before.
"""
from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path

ZARR_JSON = "zarr.json"
_KEYS = {"attributes", "zarr_format", "node_type", "consolidated_metadata"}


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, indent=2, allow_nan=True).encode()


def _write(path: Path, doc: dict) -> None:
    """Replace ``path`` with ``doc`` in one rename (a reader sees the old or the new document)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(_dump(doc))
    os.replace(tmp, path)


class _Attrs(MutableMapping):
    """A group's attributes; every change rewrites the group's ``zarr.json`` (as zarr's ``attrs[k] = v``)."""

    def __init__(self, group: "JsonGroup"):
        self._g = group

    def __getitem__(self, key):
        return self._g.doc["attributes"][key]

    def __setitem__(self, key, value):
        self._g.doc["attributes"][key] = value
        self._g.save()

    def __delitem__(self, key):
        del self._g.doc["attributes"][key]
        self._g.save()

    def __iter__(self):
        return iter(self._g.doc["attributes"])

    def __len__(self):
        return len(self._g.doc["attributes"])

    def update(self, *args, **kwargs):   # one write for several keys
        self._g.doc["attributes"].update(*args, **kwargs)
        self._g.save()


class JsonGroup:
    """A zarr v3 group held as its parsed ``zarr.json`` (``attrs``, ``require_group``, ``group[name]``)."""

    def __init__(self, path: Path, doc: dict):
        self.path = Path(path)
        self.doc = doc
        self.attrs = _Attrs(self)

    def save(self) -> None:
        _write(self.path / ZARR_JSON, self.doc)

    @staticmethod
    def is_plain_group(doc) -> bool:
        """Exactly a zarr v3 group document as zarr and this module write it."""
        return (isinstance(doc, dict) and set(doc) <= _KEYS and doc.get("zarr_format") == 3
                and doc.get("node_type") == "group" and isinstance(doc.get("attributes", {}), dict)
                and (doc.get("consolidated_metadata") is None or isinstance(doc["consolidated_metadata"], dict)))

    @classmethod
    def create(cls, path: str | os.PathLike, attributes: dict) -> "JsonGroup":
        """A new group at ``path`` with ``attributes`` (one atomic write), as ``zarr.open_group(mode="a")``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        g = cls(path, {"attributes": dict(attributes), "zarr_format": 3, "node_type": "group"})
        g.save()
        return g

    @classmethod
    def open(cls, path: str | os.PathLike):
        """The group at ``path``: a :class:`JsonGroup` for a plain group document, else zarr's own group
        (``zarr.open_group(mode="r+")``: damaged or unusual metadata fails there, with zarr's message)."""
        path = Path(path)
        try:
            doc = json.loads((path / ZARR_JSON).read_bytes())
        except (OSError, ValueError):
            doc = None
        if doc is not None and cls.is_plain_group(doc):
            doc.setdefault("attributes", {})
            if doc.get("consolidated_metadata", 0) is None:
                doc.pop("consolidated_metadata")         # zarr leaves an unset value out
            return cls(path, doc)
        import zarr

        return zarr.open_group(str(path), mode="r+", use_consolidated=False)

    def require_group(self, name: str):
        """The subgroup ``name``, created empty when absent (as zarr's ``require_group``)."""
        sub = self.path / name
        zj = sub / ZARR_JSON
        if not zj.exists():
            sub.mkdir(parents=True, exist_ok=True)
            _write(zj, {"attributes": {}, "zarr_format": 3, "node_type": "group"})
            return JsonGroup(sub, {"attributes": {}, "zarr_format": 3, "node_type": "group"})
        return JsonGroup.open(sub)

    def __getitem__(self, name: str):
        sub = self.path / name
        if not (sub / ZARR_JSON).exists():
            raise KeyError(name)
        return JsonGroup.open(sub)
