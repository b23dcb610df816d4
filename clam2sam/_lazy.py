"""Lazy import of heavy modules, so that `clam2sam --help` and non-SAM commands start fast."""
from __future__ import annotations

import importlib


class LazyModule:
    """Stands in for a module; the real import happens on first attribute access."""

    def __init__(self, name: str):
        self._name = name
        self._mod = None

    def __getattr__(self, attr):
        if self._mod is None:
            self._mod = importlib.import_module(self._name)
        return getattr(self._mod, attr)
