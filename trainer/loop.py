"""The training and evaluation loops (nanoGPT-style: small, readable, no framework)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def train_one_epoch(model, loader, optimizer, device, *, accumulate: int = 1, on_step=None) -> dict:
    """One pass over ``loader`` (one bag per step); returns mean loss terms and the epoch's seconds.

    Logs whatever the model's ``train_forward`` returns: ``train_loss`` (the weighted total) and
    ``train_<term>`` for each of its loss terms, averaged over the bags that returned the term.

    Args:
        accumulate: bags per optimiser step (the CLI's ``--batch-size``); losses are averaged.
        on_step: optional callback ``on_step(i)`` for progress bars.
    """
    model.train()
    sums: dict[str, float] = {}
    n = 0
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, bag in enumerate(loader):
        bag = bag.to(device)
        out = model.train_forward(bag)
        (out.loss / accumulate).backward()
        if (i + 1) % accumulate == 0 or i + 1 == len(loader):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for k, v in {"loss": out.loss, **out.terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        if on_step is not None:
            on_step(i)
    res = {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
    res["train_seconds"] = time.perf_counter() - t0
    return res


@dataclass
class Predictions:
    """Slide-level outputs of :func:`evaluate`: ``prob`` is ``(n, C)``."""

    slide_ids: list[str]
    y: np.ndarray
    prob: np.ndarray
    loss: float


@torch.no_grad()
def evaluate(model, loader, device) -> Predictions:
    """Full-bag inference (no masking, no dropout) over ``loader``."""
    model.eval()
    ids, ys, probs, losses = [], [], [], []
    for bag in loader:
        bag = bag.to(device)
        logits = model(bag)["logits"]                        # (1, C)
        losses.append(float(F.cross_entropy(logits, bag.label.view(1))))
        probs.append(torch.softmax(logits.float(), dim=1)[0].cpu().numpy())
        ids.append(bag.slide_id)
        ys.append(int(bag.label))
    model.train()
    C = probs[0].shape[0] if probs else 2
    return Predictions(ids, np.asarray(ys, np.int64), np.asarray(probs).reshape(-1, C),
                       float(np.mean(losses)) if losses else float("nan"))
