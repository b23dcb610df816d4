"""Load untrusted pickles and .pt files with an allow-list: never plain ``pickle.load``.

Pickles written by SAM-MIL reference only ``numpy.core.multiarray.scalar``, ``numpy.dtype`` and
``numpy.core.numeric._frombuffer`` (plus builtins); numpy-2 writers use ``numpy._core``. Anything else
(``os.system``, ``subprocess``, arbitrary classes) is refused *before* it can run.
"""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np

from clam2sam.errors import UnsafeInputError, InputFormatError

_ALLOWED = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "bool"),
    ("builtins", "str"), ("builtins", "bytes"), ("builtins", "complex"), ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str, slide: str | None):
        super().__init__(f)
        self._path = path
        self._slide = slide

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafeInputError(
                f"pickle references {module}.{name}, which is not on the allow-list (numpy arrays, "
                "numpy scalars and plain Python containers); it was NOT loaded or executed",
                slide=self._slide, path=self._path,
                fix="regenerate the file with SAM-MIL/CLAM, or remove it from the input")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import importlib
            mod = importlib.import_module(module)
        return getattr(mod, name)


def load_pickle(path: str | Path, *, slide: str | None = None, max_objects: int = 1):
    """Load the first object of a pickle file through the allow-list unpickler.

    Raises:
        UnsafeInputError: a global outside the allow-list is referenced.
        InputFormatError: the file is truncated or not a pickle.
    """
    path = str(path)
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _AllowListUnpickler(f, path, slide).load()
    except UnsafeInputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise InputFormatError(f"not a readable pickle ({type(e).__name__}: {e})", slide=slide, path=path,
                               fix="the file is truncated or corrupt; regenerate it") from e


def loads_pickle(data: bytes, *, path: str = "<bytes>", slide: str | None = None):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _AllowListUnpickler(io.BytesIO(data), path, slide).load()
    except UnsafeInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed input becomes our error
        raise InputFormatError(f"not a readable pickle ({type(e).__name__}: {e})", slide=slide,
                               path=path, fix="regenerate the file") from e


def load_pt_array(path: str | Path, *, slide: str | None = None) -> np.ndarray:
    """Load a CLAM ``.pt`` (a tensor) or TRIDENT ``.pt`` (a pickled numpy array) as a numpy array.

    Uses ``torch.load(weights_only=True)`` with numpy's reconstruct globals added to the safe list only for
    this call, so code-running payloads are refused.
    """
    import torch

    path = str(path)
    safe = [np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct as _rc2  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct as _rc2
    safe.append(_rc2)
    safe.append((_rc2, "numpy.core.multiarray._reconstruct"))  # written under numpy 1
    for dt in (np.float16, np.float32, np.float64):
        safe.append(type(np.dtype(dt)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(safe):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeInputError(
            f".pt file holds objects outside torch's weights-only allow-list; it was NOT loaded ({e})"[:600],
            slide=slide, path=path, fix="regenerate it with CLAM/TRIDENT or drop it from the input") from e
    except Exception as e:  # noqa: BLE001
        raise InputFormatError(f"unreadable .pt file ({type(e).__name__}: {e})"[:600], slide=slide, path=path,
                               fix="the file is truncated or corrupt; re-extract or remove it") from e
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise InputFormatError(f".pt file holds a {type(obj).__name__}, expected a tensor or numpy array",
                           slide=slide, path=path, fix="pass the h5 features instead")
