"""Map a plain-tensor ``.pt`` file (CLAM's ``pt_files/<id>.pt``) as a numpy array, without importing torch.

A ``.pt`` written by ``torch.save(tensor)`` is a zip archive (stored, not compressed) holding a small pickle
(``<name>/data.pkl``: ``torch._utils._rebuild_tensor_v2`` of one storage, its offset, size and stride), the
storage's raw bytes (``<name>/data/0``) and its byte order (``<name>/byteorder``). For the cross-check of a
``.pt`` beside its h5 (row count, three sample rows) conversion only needs the shape, the dtype and where the
bytes are: importing torch for that costs more than a second per process.

The pickle is read by an unpickler that knows only the four globals such a file uses (the tensor rebuild
function, the storage classes of float16/32/64 and ``collections.OrderedDict``) and returns descriptions of
them, never calling torch. Anything else (other globals, several storages, a view into a larger storage,
non-contiguous strides, big-endian data, compression, the legacy non-zip format) gives ``None``: the caller
then loads the file with torch as before, which accepts or refuses it and phrases any error.
"""
from __future__ import annotations

import io
import pickle
import re
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {"HalfStorage": "<f2", "FloatStorage": "<f4", "DoubleStorage": "<f8"}
_LOCAL_HEADER = 30          # bytes of a zip local file header before its name and extra field


class _Storage:
    def __init__(self, dtype: str, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _Tensor:
    def __init__(self, storage, offset, size, stride, *_rest):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Refuse(Exception):
    """Not a plain tensor file this module reads: the caller falls back to torch."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise _Refuse(f"{module}.{name}")

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or pid[3] != "cpu"):
            raise _Refuse("persistent id")
        return _Storage(_STORAGE_DTYPES[pid[1].name], str(pid[2]), int(pid[4]))


def _data_start(f, info: zipfile.ZipInfo) -> int:
    """File offset of a stored zip member's first byte (after its local header)."""
    f.seek(info.header_offset)
    hdr = f.read(_LOCAL_HEADER)
    if len(hdr) < _LOCAL_HEADER or hdr[:4] != b"PK\x03\x04":
        raise _Refuse("local header")
    name_len, extra_len = struct.unpack("<HH", hdr[26:30])
    return info.header_offset + _LOCAL_HEADER + name_len + extra_len


def map_plain_tensor(path: str | Path) -> np.ndarray | None:
    """A read-only memory map ``(N, D)`` of the tensor in ``path``, or ``None`` when the file is anything but
    one C-contiguous 2-D float16/32/64 CPU tensor filling its own little-endian storage (then load it with
    torch). Never raises for a bad file: ``None`` sends it down the torch path, which explains the problem."""
    if sys.byteorder != "little":   # torch would swap the bytes: leave it to torch
        return None
    try:
        with open(path, "rb") as f:
            with zipfile.ZipFile(f) as z:
                infos = z.infolist()
                pkl = [i for i in infos if i.filename.endswith("/data.pkl")]
                data = [i for i in infos if re.search(r"/data/[^/]+$", i.filename)]
                order = [i for i in infos if i.filename.endswith("/byteorder")]
                if len(pkl) != 1 or len(data) != 1 or len(order) != 1:
                    return None
                if any(i.compress_type != zipfile.ZIP_STORED for i in (pkl[0], data[0], order[0])):
                    return None
                prefix = pkl[0].filename[:-len("data.pkl")]
                if z.read(order[0]) != b"little" or order[0].filename != prefix + "byteorder":
                    return None
                t = _Unpickler(io.BytesIO(z.read(pkl[0]))).load()
            if not isinstance(t, _Tensor) or not isinstance(t.storage, _Storage):
                return None
            if data[0].filename != f"{prefix}data/{t.storage.key}":
                return None
            dtype = np.dtype(t.storage.dtype)
            if len(t.size) != 2 or t.offset != 0:
                return None
            n, d = (int(v) for v in t.size)
            if t.stride != (d, 1) or n * d != t.storage.numel or data[0].file_size != n * d * dtype.itemsize:
                return None
            start = _data_start(f, data[0])
        if n == 0 or d == 0:
            return np.empty((n, d), dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=(n, d))
    except (_Refuse, OSError, ValueError, EOFError, TypeError, AttributeError, IndexError, KeyError,
            zipfile.BadZipFile, pickle.UnpicklingError, struct.error, UnicodeDecodeError):
        return None
