"""``jsonable``: any attr / statistics value as plain JSON types (one definition for store attrs and inspect)."""
from __future__ import annotations

import math
from pathlib import Path


def jsonable(v):
    """``v`` as plain JSON types: str keys, lists, Python scalars; NaN/inf become None (JSON has neither)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "dtype"):   # numpy scalar or array, without importing numpy here
        import numpy as np

        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
