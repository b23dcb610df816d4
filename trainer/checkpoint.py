"""Atomic checkpoints with everything needed to resume a fold bit-for-bit on the same machine.

A checkpoint is a plain dict saved with ``torch.save`` to ``<path>.tmp`` then ``os.replace``d, so a
crash never leaves a half-written file. Loaded with ``weights_only=True`` (only tensors, numbers, strings,
lists and dicts; RNG states are stored as tensors / lists for that reason).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from clam2sam.store import schema
from clam2sam.errors import TrainError

CKPT_VERSION = 1


def rng_state() -> dict:
    """Python, numpy and torch RNG states in a weights_only-loadable form."""
    py = random.getstate()
    npst = np.random.get_state()
    st = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)), int(npst[2]), int(npst[3]), float(npst[4])],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None, config: dict, epoch: int,
                    extra: dict | None = None, with_rng: bool = True) -> None:
    """Write a checkpoint atomically (tmp file + os.replace)."""
    path = Path(path)
    payload = {"version": CKPT_VERSION, "store_schema_version": schema.SCHEMA_VERSION,
               "model_name": getattr(model, "model_name", type(model).__name__), "model": model.state_dict(),
               "config": config, "epoch": int(epoch), "extra": extra or {}}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if with_rng:
        payload["rng"] = rng_state()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint (weights_only); raises TrainError naming the file when unreadable."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise TrainError("checkpoint not found", path=path) from e
    except Exception as e:  # noqa: BLE001
        raise TrainError(f"checkpoint unreadable ({type(e).__name__}: {e})", path=path,
                         fix="delete it to restart this fold from scratch") from e
    if ck.get("store_schema_version") != schema.SCHEMA_VERSION:
        raise TrainError(f"checkpoint was trained on store schema {ck.get('store_schema_version')}, this "
                         f"version reads {schema.SCHEMA_VERSION}", path=path)
    return ck
