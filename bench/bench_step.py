"""Section 3 -- training-step time per bag, AB-MIL vs SAM-MIL at 1k / 10k / 50k patches (D = 1024).

Uses the trainer's own code path (``bench.step_timing.time_step``: ``build_model`` + ``model.train_forward`` +
backward + Adam step, paper defaults) on a synthetic bag with one segment per 50 patches and 10 %
unassigned patches. Each (model, size) runs in its own subprocess so that its peak RSS is its own; models
and sizes are interleaved in every repeat; medians. One torch thread and the process CPU clock, so that
the ratio is not blurred by the other jobs on the shared machine.

    python bench/bench_step.py --repeats 3

On a GPU (``--device cuda``; in one process, wall clock with ``torch.cuda.synchronize`` around each step,
2 warm-up steps, peak ``torch.cuda.max_memory_allocated`` per cell; optional ``--json`` file):

    python bench/bench_step.py --device cuda --sizes 1000 10000 50000 --repeats 3 --json step_cuda.json

Without ``--device`` the CPU section above runs unchanged (it is what ``bench/run_all.py`` calls).
``--device cpu`` runs the in-process variant on the CPU (a dry run of the GPU path).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PY, Ctx, Section, emit, fmt, md_table, median, run_measured  # noqa: E402

SELF = str(Path(__file__).resolve())
MODELS = ("abmil", "sam-mil")


def _child(model: str, n: int, dim: int, steps: int) -> None:
    import resource

    import torch

    from bench.step_timing import time_step

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = time_step(model, n, dim, steps=steps, warmup=1, threads=1, clock="cpu")
    emit({"cpu_s": cpu, "import_rss_mb": base, "bag_mb": n * dim * 4 * 1.02 / 2**20,   # features + group features (S = N/50)
          "threads": torch.get_num_threads()})


def run(ctx: Ctx) -> Section:
    sizes = (1000,) if ctx.quick else (1000, 10000, 50000)
    dim = 64 if ctx.quick else 1024
    reps = 1 if ctx.quick else ctx.repeats
    res = {(m, n): [] for n in sizes for m in MODELS}
    for r in range(reps):
        for n in sizes:
            for m in MODELS:
                steps = 3 if n >= 50000 else 5
                res[(m, n)].append(run_measured([PY, SELF, "_child", m, str(n), str(dim), str(steps)]))
                ctx.log(f"[step] repeat {r + 1}/{reps} {m} N={n}: {res[(m, n)][-1]['cpu_s']:.3f} s")
    rows, data = [], {"dim": dim, "sizes": list(sizes), "cells": {}}
    for n in sizes:
        ab, sm = (median([x["cpu_s"] for x in res[(m, n)]]) for m in MODELS)
        pk = {m: max(x["self_peak_rss_mb"] for x in res[(m, n)]) for m in MODELS}
        base = {m: median([x["import_rss_mb"] for x in res[(m, n)]]) for m in MODELS}
        ratio = sm / ab
        rows.append([f"{n:,}", fmt(ab, 3), fmt(sm, 3), f"**{ratio:.2f}**" if ratio <= 2 else f"{ratio:.2f}",
                     "met" if ratio <= 2 else "MISSED", fmt(pk["abmil"], 0), fmt(pk["sam-mil"], 0),
                     fmt(pk["abmil"] - base["abmil"], 0), fmt(pk["sam-mil"] - base["sam-mil"], 0)])
        data["cells"][n] = {"abmil_s": ab, "sammil_s": sm, "ratio": ratio, "peak_rss_mb": pk, "import_rss_mb": base,
                            "runs": {m: [x["cpu_s"] for x in res[(m, n)]] for m in MODELS}}
    body = [f"D = {dim}, one bag per optimiser step (forward + all losses + backward + Adam), 1 torch thread, "
            f"process CPU seconds, median of {reps} interleaved subprocess runs (each itself the median of 5 steps, "
            "3 at 50k, after 1 warm-up step). SAM-MIL = paper defaults (SG2M sigmoid masking MR 0.9, group tokens, "
            "5 pseudo-bags, consistency loss).", "",
            md_table(["patches", "AB-MIL s / bag", "SAM-MIL s / bag", "SAM / AB", "target <= 2x",
                      "peak RSS AB-MIL MB", "peak RSS SAM-MIL MB", "AB-MIL above import MB",
                      "SAM-MIL above import MB"], rows), "",
            "Peak RSS = getrusage of the process (bag + model + activations + gradients + Adam state); "
            "'above import' subtracts the RSS after `import torch` + trainer (the bag itself, features + group "
            f"features, is {sizes[-1] * dim * 4 * 1.02 / 2**20:.0f} MB at {sizes[-1]:,} patches)."]
    return Section("step", "3. Training step (CPU)", "\n".join(body), data)


def run_device(device: str, sizes=(1000, 10000, 50000), dim: int = 1024, repeats: int = 3, steps: int = 5,
               warmup: int = 2, log=print) -> dict:
    """In-process step timing on ``device`` (wall clock, synchronised on CUDA); models and sizes interleaved."""
    import torch

    from bench.step_timing import time_step

    cuda = device.startswith("cuda")
    res = {(m, n): [] for n in sizes for m in MODELS}
    mem = {(m, n): 0 for n in sizes for m in MODELS}
    for r in range(repeats):
        for n in sizes:
            for m in MODELS:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t = time_step(m, n, dim, steps=steps, warmup=warmup, device=device, clock="wall")
                if cuda:
                    mem[(m, n)] = max(mem[(m, n)], torch.cuda.max_memory_allocated())
                res[(m, n)].append(t)
                log(f"[step {device}] repeat {r + 1}/{repeats} {m} N={n}: {t * 1e3:.2f} ms")
    cells = {}
    for n in sizes:
        ab, sm = (median(res[(m, n)]) for m in MODELS)
        cells[n] = {"abmil_ms": ab * 1e3, "sammil_ms": sm * 1e3, "ratio": sm / ab,
                    "runs_ms": {m: [x * 1e3 for x in res[(m, n)]] for m in MODELS},
                    "peak_alloc_mb": {m: mem[(m, n)] / 2**20 for m in MODELS} if cuda else None}
    meta = {"device": device, "dim": dim, "sizes": list(sizes), "repeats": repeats, "steps": steps, "warmup": warmup,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None}
    return {"meta": meta, "cells": cells}


def device_table(d: dict) -> str:
    rows = []
    for n, c in d["cells"].items():
        pk = c["peak_alloc_mb"] or {}
        rows.append([f"{int(n):,}", fmt(c["abmil_ms"], 2), fmt(c["sammil_ms"], 2), f"{c['ratio']:.2f}",
                     fmt(pk.get("abmil"), 0), fmt(pk.get("sam-mil"), 0)])
    return md_table(["patches", "AB-MIL ms / step", "SAM-MIL ms / step", "SAM / AB", "AB-MIL peak alloc MB",
                     "SAM-MIL peak alloc MB"], rows)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_child":
        _child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cuda[:i] (or cpu): in-process timing on that device; "
                    "default: the CPU section in subprocesses")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="with --device only")
    ap.add_argument("--dim", type=int, default=1024, help="with --device only")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per cell, with --device only")
    ap.add_argument("--json", type=Path, default=None, help="with --device: write the figures here")
    a = ap.parse_args(argv)
    if a.device is not None:
        d = run_device(a.device, tuple(a.sizes), a.dim, a.repeats, a.steps,
                       log=lambda *x: print(*x, file=sys.stderr, flush=True))
        print(device_table(d))
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(d, indent=2, default=str))
        return 0
    s = run(Ctx(out=Path("bench/out"), repeats=a.repeats))
    print(s.body)
    print(json.dumps(s.data, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
