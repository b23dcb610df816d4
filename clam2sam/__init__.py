"""clam2sam: turn CLAM / TRIDENT / SAM-MIL feature archives into one chunked Zarr store with SAM segments.

Public API (library code never imports click):

    from clam2sam import open_store, StoreWriter, SlideArrays
"""
__version__ = "0.1.0"

from clam2sam.errors import Clam2SamError  # noqa: E402
from clam2sam.store import SlideArrays, StoreReader, StoreWriter, open_store  # noqa: E402

__all__ = ["__version__", "Clam2SamError", "SlideArrays", "StoreReader", "StoreWriter", "open_store"]
