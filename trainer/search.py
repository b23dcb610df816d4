"""Nested hyperparameter selection: candidate settings tried on each outer fold's training part.

``samtrain fit --search beta=0,0.1,1 --search lr=2e-4,1e-3 --inits 2`` trains every combination (here
3 x 2 settings x 2 initialisations = 12 candidates) on the fold's training split, selects each
candidate's epoch on the fold's validation split, and keeps the candidate with the best validation score
(AUC, ties: lower loss; the same key as epoch selection). Only the kept candidate is scored on the test
fold, so test data never influences a choice. The candidates and the chosen one are recorded per fold
in ``done.json`` / ``results.json`` (key ``search``).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

from clam2sam.errors import UsageError

# settings that may be searched, with their type
SEARCHABLE = {"beta": float, "alpha": float, "mask_ratio": float, "lr": float, "weight_decay": float,
              "max_instance_weight": float, "sigmoid_a": float, "sigmoid_b": float, "dropout": float,
              "pseudo_bags": int, "mask_warmup": int}


def parse_search(specs) -> dict[str, list]:
    """``["beta=0,1e-3", "lr=1e-4,1e-3"]`` -> ``{"beta": [0.0, 0.001], "lr": [0.0001, 0.001]}``."""
    out: dict[str, list] = {}
    for spec in specs or ():
        key, sep, vals = str(spec).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not vals.strip():
            raise UsageError(f"--search {spec!r}: expected NAME=V1,V2,...", fix="e.g. --search beta=0,0.1,1")
        if key not in SEARCHABLE:
            raise UsageError(f"--search {key!r} cannot be searched",
                             fix=f"choose among: {', '.join(n.replace('_', '-') for n in SEARCHABLE)}")
        try:
            values = [SEARCHABLE[key](v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--search {spec!r}: values must be numbers") from None
        if len(set(values)) != len(values):
            raise UsageError(f"--search {spec!r}: a value is listed twice")
        out[key] = values
    return out


def grid_points(search: dict[str, list]) -> list[dict]:
    """Every combination of the searched values, in a fixed order (``[{}]`` without a search)."""
    keys = list(search)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(search[k] for k in keys))] or [{}]


def candidates(search: dict[str, list], inits: int) -> list[dict]:
    """Every combination of the searched values times ``inits`` initialisations.

    Returns a list of ``{"params": {name: value}, "init": j}`` in a fixed order (grid order, then init).
    """
    return [{"params": p, "init": j} for p in grid_points(search) for j in range(max(1, inits))]


def init_budget(cfg) -> tuple[int, int]:
    """(initialisations always trained, most trained) per setting: ``--inits``, and ``--max-inits`` when
    ``--reinit-below`` is on (further initialisations only while validation says the earlier ones failed)."""
    low = max(1, cfg.inits)
    return low, (max(low, cfg.max_inits) if cfg.reinit_below > 0 else low)


def needs_reinit(results: list[dict], reinit_below: float) -> bool:
    """True when no initialisation of a setting reached validation AUC ``reinit_below`` (a failed start:
    the attention found nothing and the model memorised its training slides). Undefined AUCs never ask."""
    aucs = [r["val"].get("auc") for r in results]
    aucs = [a for a in aucs if a is not None and math.isfinite(a)]
    return reinit_below > 0 and len(aucs) == len(results) and max(aucs) < reinit_below


def candidate_config(cfg, cand: dict):
    """The single-candidate config: the searched values filled in, no further search."""
    return dataclasses.replace(cfg, **cand["params"], search={}, inits=1)


def selection_key(val_auc: float, val_loss: float, monitor: str = "auc") -> tuple:
    """Higher is better: AUC then lower loss, or loss alone (as epoch selection)."""
    loss = val_loss if math.isfinite(val_loss) else float("inf")
    if monitor == "loss" or not math.isfinite(val_auc):
        return (-loss,)
    return (val_auc, -loss)


def pick(results: list[dict], monitor: str = "auc") -> int:
    """Index of the best candidate result (first one on ties)."""
    keys = [selection_key(r["val"].get("auc", float("nan")), r["val"].get("loss", float("nan")), monitor)
            for r in results]
    if any(len(k) == 1 for k in keys):  # AUC missing for one: compare by loss for all
        keys = [(k[-1],) for k in keys]
    best = 0
    for i, k in enumerate(keys):
        if k > keys[best]:
            best = i
    return best
