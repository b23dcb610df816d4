"""clam2sam: turn CLAM / TRIDENT / SAM-MIL feature archives into one chunked Zarr store with SAM segments.

Public API (library code never imports click):

    from clam2sam import open_store, StoreWriter, SlideArrays

The store classes are imported on first use, so that ``import clam2sam`` (and ``clam2sam --help``) does
not load numpy or zarr.
"""
__version__ = "0.1.0"

from clam2sam.errors import Clam2SamError  # noqa: E402

__all__ = ["__version__", "Clam2SamError", "SlideArrays", "StoreReader", "StoreWriter", "open_store"]

_LAZY = {"SlideArrays": "clam2sam.store.slide_arrays", "StoreReader": "clam2sam.store.reader",
         "StoreWriter": "clam2sam.store.writer", "open_store": "clam2sam.store.reader"}


def __getattr__(name: str):
    """``clam2sam.open_store`` etc.: imported from their module on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clam2sam' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
