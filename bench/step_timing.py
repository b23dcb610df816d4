"""Training-step timing for the bench harness: SAM-MIL vs AB-MIL on one synthetic bag.

    from bench.step_timing import time_step
    time_step("sam-mil", 10_000)      # seconds per optimiser step (forward + backward + Adam)

Run as a script for the 1k / 10k / 50k table: ``python -m bench.step_timing --sizes 1000 10000 50000``.
"""
from __future__ import annotations

import argparse
import time

import torch

from trainer.config import TrainConfig
from trainer.data import Bag
from trainer.models import build_model


def synthetic_bag(n_patches: int, dim: int = 1024, n_segments: int | None = None, seed: int = 0) -> Bag:
    """A bag with ``n_segments`` (default ``n_patches // 50``) random segments and 10 % unassigned patches."""
    g = torch.Generator().manual_seed(seed)
    S = max(1, n_patches // 50) if n_segments is None else n_segments
    seg = torch.randint(0, S, (n_patches,), generator=g)
    seg[torch.rand(n_patches, generator=g) < 0.1] = -1
    seg[:S] = torch.arange(S)
    feats = torch.randn(n_patches, dim, generator=g)
    sizes = torch.bincount(seg[seg >= 0], minlength=S)
    gf = torch.zeros(S, dim).index_add_(0, seg[seg >= 0], feats[seg >= 0]) / sizes.clamp_min(1)[:, None]
    return Bag("bench", feats, gf, seg, sizes, sizes.double() * 40, torch.ones(n_patches, dtype=torch.float64),
               torch.tensor(1))


def time_step(model_name: str, n_patches: int, dim: int = 1024, *, steps: int = 5, warmup: int = 1,
              device: str = "cpu", threads: int | None = None, seed: int = 0, clock: str = "wall",
              **cfg_overrides) -> float:
    """Median seconds per training step (train_forward + backward + Adam step) of ``model_name`` on one bag.

    ``clock="cpu"`` measures this process's CPU time (with ``threads=1`` it is robust to a busy machine).
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(store="-", out="-", model=model_name, **cfg_overrides).resolve()
    torch.manual_seed(seed)
    model = build_model(model_name, dim, 2, cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    bag = synthetic_bag(n_patches, dim, seed=seed).to(device)
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = now()
        model.train_forward(bag).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(now() - t)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    a = ap.parse_args(argv)
    print("n_patches | AB-MIL s/step | SAM-MIL s/step | ratio")
    for n in a.sizes:
        ab = time_step("abmil", n, a.dim, steps=a.steps, threads=a.threads, device=a.device, clock=a.clock)
        sm = time_step("sam-mil", n, a.dim, steps=a.steps, threads=a.threads, device=a.device, clock=a.clock)
        print(f"{n} | {ab:.4f} | {sm:.4f} | {sm / ab:.2f}")


if __name__ == "__main__":
    main()
