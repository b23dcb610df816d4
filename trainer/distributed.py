"""DistributedDataParallel for ``samtrain fit`` under torchrun (gloo on CPU, NCCL on GPU).

Launch (single node, 4 processes)::

    torchrun --standalone --nproc_per_node=4 -m trainer.cli.main fit cohort.zarr --out runs/ddp --batch-size 4

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env`
reads them (``env://``) and returns a :class:`DistContext`. Without them (a plain ``samtrain fit``) the context
is the single-process no-op :data:`SINGLE` and nothing below changes the run.

How a fold is split across ranks:

- training: every rank holds the same model (DDP broadcasts rank 0's parameters at wrap time and averages
  gradients at every backward). The epoch's global slide order is dealt out by :class:`ShardedOrderSampler`
  (a ``DistributedSampler``): rank r takes ``order[r::W]``, padded by wrapping so that all ranks take the
  same number of steps. Each rank accumulates ``--batch-size / W`` bags per optimiser step, so one step
  sees the same ``--batch-size`` consecutive bags of the order as a single-process run: with
  ``--batch-size`` a multiple of W (and of the training-set size) the run computes the same updates as a
  single process, up to float summation order and the random draws of masking / dropout.
- validation and test: each rank scores ``indices[r::W]`` with the plain (unwrapped) model; the
  predictions are gathered (:meth:`DistContext.gather_predictions`) in the original order on every rank,
  so all ranks take the same early-stopping decision and rank 0 computes the same metrics as one process.
- files: only rank 0 writes (checkpoints, metrics.csv, predictions, done.json, results.json, summary);
  other ranks read what they need through :meth:`DistContext.rank0_call` (rank 0 reads, broadcasts), so
  only the store must be on a filesystem shared by all nodes.

``SAMTRAIN_DDP_DEBUG_DIR=DIR`` makes every rank write ``DIR/rank<r>.jsonl`` with a hash of its parameters
after each fold's training (tests use it); the hashes are also compared across ranks at that point and a
mismatch raises :class:`~clam2sam.errors.TrainError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from clam2sam.errors import TrainError, UsageError

DEBUG_ENV = "SAMTRAIN_DDP_DEBUG_DIR"
BACKEND_ENV = "SAMTRAIN_DDP_BACKEND"     # force "gloo" / "nccl" (default: nccl on CUDA, gloo on CPU)
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARS)


@dataclass
class DistContext:
    """Rank, world size and helpers for one process of a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None           # None: no process group (single process)
    cuda: bool = False                   # each rank trains on cuda:LOCAL_RANK

    # ------------------------------------------------------------------ basics
    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (pickled; small objects and CPU state dicts)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def rank0_call(self, fn, *args, **kwargs):
        """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on all."""
        if not self.enabled:
            return fn(*args, **kwargs)
        res = None
        if self.is_main:
            try:
                res = ("ok", fn(*args, **kwargs))
            except Exception as e:  # noqa: BLE001 - re-raised below on every rank
                res = ("error", e)
        status, value = self.broadcast(res)
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.backend = None

    # ------------------------------------------------------------------ training
    def device(self) -> torch.device | None:
        """``cuda:LOCAL_RANK`` for a distributed CUDA run; None otherwise (the run picks its device)."""
        return torch.device("cuda", self.local_rank) if self.enabled and self.cuda else None

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: itself, or a DDP wrapper with the same ``train()/eval()/train_forward(bag)``."""
        return DDPModel(model) if self.enabled else model

    def accumulate(self, batch_size: int) -> int:
        """Bags each rank accumulates per optimiser step so that one step sees ``batch_size`` bags."""
        if self.world_size == 1:
            return batch_size
        if batch_size % self.world_size:
            if self.is_main:
                warnings.warn(f"--batch-size {batch_size} is not a multiple of the {self.world_size} ranks: "
                              f"each step sees {max(1, batch_size // self.world_size) * self.world_size} bags",
                              stacklevel=2)
        return max(1, batch_size // self.world_size)

    def train_sampler(self, order: list[int]):
        """The global order itself, or this rank's share of it (a DistributedSampler)."""
        return order if not self.enabled else ShardedOrderSampler(order, self.world_size, self.rank)

    def reduce_train_stats(self, stats: dict, n_local: int) -> dict:
        """Mean training losses over all ranks' bags (``train_seconds``: the slowest rank)."""
        if not self.enabled:
            return stats
        every = self.all_gather((stats, n_local))
        n = sum(k for _, k in every) or 1
        out = {key: sum(s.get(key, 0.0) * k for s, k in every) / n for key in stats if key != "train_seconds"}
        out["train_seconds"] = max(s.get("train_seconds", 0.0) for s, _ in every)
        return out

    # ------------------------------------------------------------------ evaluation
    def eval_indices(self, n: int) -> list[int] | None:
        """Indices this rank scores (None: all, in order)."""
        return None if not self.enabled else list(range(self.rank, n, self.world_size))

    def gather_predictions(self, preds, n: int):
        """Rebuild the predictions of all ``n`` items, in dataset order, on every rank.

        Args:
            preds: this rank's :class:`trainer.loop.Predictions` over :meth:`eval_indices`.
            n: dataset length.
        """
        if not self.enabled:
            return preds
        from trainer.loop import Predictions

        every = self.all_gather((self.eval_indices(n), preds))
        idx = np.concatenate([np.asarray(i, np.int64) for i, _ in every])
        order = np.argsort(idx, kind="stable")
        ids = [s for _, p in every for s in p.slide_ids]
        y = np.concatenate([p.y for _, p in every])
        C = max(p.prob.shape[1] for _, p in every)
        prob = np.concatenate([p.prob.reshape(-1, C) for _, p in every])
        counts = [len(i) for i, _ in every]
        loss = (sum(p.loss * k for (_, p), k in zip(every, counts) if k) / max(sum(counts), 1)
                if sum(counts) else float("nan"))
        return Predictions([ids[i] for i in order], y[order], prob[order], float(loss))

    # ------------------------------------------------------------------ checks
    def verify_in_sync(self, model: nn.Module, tag: str) -> str:
        """Hash the parameters; raise TrainError when ranks differ; log to ``$SAMTRAIN_DDP_DEBUG_DIR``."""
        h = parameter_hash(model)
        hashes = self.all_gather(h)
        d = os.environ.get(DEBUG_ENV)
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
            with open(Path(d) / f"rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"rank": self.rank, "world_size": self.world_size, "tag": tag, "hash": h,
                                    "all": hashes}) + "\n")
        if len(set(hashes)) != 1:
            raise TrainError(f"model parameters differ across ranks after {tag}: {hashes}",
                             fix="a bug in the distributed set-up; re-run without torchrun")
        return h


SINGLE = DistContext()


def parameter_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class ShardedOrderSampler(DistributedSampler):
    """A DistributedSampler over a given global order: rank r yields ``order[r::W]``.

    The order is padded by wrapping around to a multiple of W (as DistributedSampler does), so every rank
    takes the same number of steps (DDP's all-reduce needs that).
    """

    def __init__(self, order: list[int], num_replicas: int, rank: int):
        super().__init__(list(order), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.order = [int(i) for i in order]

    def __iter__(self):
        idx = list(self.order)
        while len(idx) < self.total_size:
            idx += self.order[: self.total_size - len(idx)]
        return iter(idx[self.rank:self.total_size:self.num_replicas])


class _LossForward(nn.Module):
    """Makes ``train_forward`` the forward that DDP wraps (DDP only synchronises through ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, bag):
        return self.model.train_forward(bag)


class DDPModel(nn.Module):
    """A model wrapped in DistributedDataParallel, with the interface the training loop uses."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # device_ids=None: inputs (Bag objects) are already on the module's device
        self.ddp = nn.parallel.DistributedDataParallel(_LossForward(model), device_ids=None,
                                                       find_unused_parameters=True)

    @property
    def module(self) -> nn.Module:
        return self.ddp.module.model

    def train_forward(self, bag):
        return self.ddp(bag)

    def forward(self, bag):
        return self.module(bag)


def init_from_env(device: str = "auto", require: bool = False) -> DistContext:
    """Join the process group torchrun describes in the environment, or return :data:`SINGLE`.

    Args:
        device: the run's ``--device`` (``auto`` / ``cpu`` / ``cuda[:i]``): CUDA -> NCCL, CPU -> gloo.
        require: ``samtrain fit --ddp``: fail when not launched by torchrun.

    Raises:
        UsageError: ``require`` without torchrun, or a CUDA device with fewer GPUs than local ranks.
    """
    if not launched_by_torchrun():
        if require:
            raise UsageError("--ddp needs torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)",
                             fix="launch with: torchrun --nproc_per_node=N -m trainer.cli.main fit STORE --out RUN")
        return SINGLE
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if world == 1 and not require:
        return DistContext(rank=0, world_size=1, local_rank=local, backend=None)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise UsageError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)",
                             fix="use --nproc_per_node <= the number of GPUs, or --device cpu (gloo)")
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, cuda=use_cuda)
