"""Section 2 -- bags per second: the trainer's store reader against torch.load of pt_files and h5py reads.

Same slides, page cache warm, methods interleaved in every repeat, medians. The store path is the one
``samtrain fit`` uses (``trainer.data.BagDataset`` -> ``read_bag``: features, group features, segment ids,
segment sizes and areas, per-patch areas). ``torch.load`` reads only the features (that is all a CLAM
pt file holds); the h5py path reads features and coords.

    python bench/bench_load.py --archive /tmp/c2s_bench_large --subset 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Ctx, Section, fmt, md_table, median  # noqa: E402

CODECS = ("lz4", "zstd", "none")   # lz4 = the default


def build_store(archive: Path, out: Path, slides: list[str], codec: str) -> Path:
    """Convert ``slides`` once into ``out`` with the codec's default level (reused while complete and alike)."""
    from clam2sam.convert.cohort import ConvertOptions, convert_cohort
    from clam2sam.store.writer import open_store, resolve_clevel

    try:
        r = open_store(out)
        if (sorted(r.slide_ids()) == sorted(slides) and r.attrs.get("codec") == codec
                and r.attrs.get("clevel") == resolve_clevel(codec, None)):
            return out
    except Exception:  # noqa: BLE001 - missing or other store: rebuild
        pass
    rep = convert_cohort(ConvertOptions(archive=archive, out=out, segments_dir=archive / "segments",
                                        dataset_csv=archive / "dataset.csv", slides=tuple(slides), codec=codec,
                                        overwrite=True, checksums=False))
    if rep.return_code != 0:
        raise RuntimeError(f"convert for the load bench failed: {rep}")
    return out


def _time_store(store: Path, slides: list[str], threads: int | None = None) -> tuple[float, int]:
    """``read_bag`` over ``slides``; ``threads`` forces the read threads (``CLAM2SAM_THREADS``) for this run."""
    from trainer.data import BagDataset

    old = os.environ.get("CLAM2SAM_THREADS")
    if threads is not None:
        os.environ["CLAM2SAM_THREADS"] = str(threads)
    try:
        ds = BagDataset(str(store), slides, [0] * len(slides))   # fresh reader: opening the store is counted
        t = time.perf_counter()
        nb = 0
        for i in range(len(ds)):
            b = ds[i]
            nb += b.features.numel() * 4
        return time.perf_counter() - t, nb
    finally:
        if threads is not None:
            if old is None:
                os.environ.pop("CLAM2SAM_THREADS", None)
            else:
                os.environ["CLAM2SAM_THREADS"] = old


def _time_store_features(store: Path, slides: list[str]) -> tuple[float, int]:
    from clam2sam.store.writer import open_store

    r = open_store(store)
    t = time.perf_counter()
    nb = 0
    for sid in slides:
        x = r.group(sid)["features"][...]                     # (N, D) float32, the only array read
        nb += x.nbytes
    return time.perf_counter() - t, nb


def _time_pt(archive: Path, slides: list[str]) -> tuple[float, int]:
    import torch

    t = time.perf_counter()
    nb = 0
    for sid in slides:
        x = torch.load(archive / "pt_files" / f"{sid}.pt", weights_only=True)   # (N, D) float32
        nb += x.numel() * 4
    return time.perf_counter() - t, nb


def _time_h5(archive: Path, slides: list[str]) -> tuple[float, int]:
    import h5py
    import torch

    t = time.perf_counter()
    nb = 0
    for sid in slides:
        with h5py.File(archive / "h5_files" / f"{sid}.h5", "r") as f:
            x = torch.from_numpy(f["features"][...])
            _ = f["coords"][...]
        nb += x.numel() * 4
    return time.perf_counter() - t, nb


def run(ctx: Ctx, *, subset: int = 10) -> Section:
    import torch

    archive = ctx.large_dir
    ids = sorted(p.stem for p in (archive / "h5_files").glob("*.h5"))
    sub = ids[:3] if ctx.quick else ids[:subset]
    codecs = ("lz4",) if ctx.quick else CODECS
    ctx.work.mkdir(parents=True, exist_ok=True)
    stores = {}
    for c in codecs:
        ctx.log(f"[load] store with codec {c} for {len(sub)} slides")
        stores[c] = build_store(archive, ctx.work / f"bench_load_{c}.zarr", sub, c)
    from clam2sam.store.fast_read import read_threads

    n_threads = read_threads()
    methods = {f"store ({c}), trainer read_bag": (lambda c=c: _time_store(stores[c], sub)) for c in codecs}
    if n_threads > 1 and not ctx.quick:   # diagnostic: what the read threads buy (same reader, serial decode)
        for c in codecs:
            methods[f"store ({c}), read_bag, 1 read thread (diagnostic)"] = (
                lambda c=c: _time_store(stores[c], sub, threads=1))
    methods["zarr API (lz4 store), features array only (diagnostic)"] = lambda: _time_store_features(stores["lz4"], sub)
    methods["torch.load pt_files (features only)"] = lambda: _time_pt(archive, sub)
    methods["h5py per-slide read (features + coords)"] = lambda: _time_h5(archive, sub)
    for fn in methods.values():   # warm the page cache for every source
        fn()
    reps = 1 if ctx.quick else max(ctx.repeats, 5)
    times = {k: [] for k in methods}
    nbytes = {}
    for r in range(reps):
        for k, fn in methods.items():
            s, nb = fn()
            times[k].append(s)
            nbytes[k] = nb
        ctx.log(f"[load] repeat {r + 1}/{reps}: " + ", ".join(f"{k.split(',')[0]} {times[k][-1]:.2f}s" for k in times))
    pt_key = "torch.load pt_files (features only)"
    pt_bps = len(sub) / median(times[pt_key])
    rows, data = [], {"slides": len(sub), "threads": torch.get_num_threads(), "read_threads": n_threads,
                      "methods": {}}
    for k in methods:
        med = median(times[k])
        bps = len(sub) / med
        target = ("met" if bps >= pt_bps else "MISSED") if k.endswith("read_bag") else "-"
        rows.append([k, fmt(bps), fmt(nbytes[k] / 1e6 / med, 0), fmt(bps / pt_bps), target])
        data["methods"][k] = {"seconds": times[k], "bags_per_s": bps, "ratio_vs_pt": bps / pt_bps}
    n_patches = nbytes[pt_key] // 4 // (int(torch.load(archive / "pt_files" / f"{sub[0]}.pt",
                                                           weights_only=True).shape[1]))
    body = [f"{len(sub)} slides of `{archive}` ({n_patches:,} patches, {nbytes[pt_key] / 1e6:.0f} MB float32 "
            f"features), page cache warm, {reps} interleaved repeats, medians; one process, "
            f"{torch.get_num_threads()} torch threads, {n_threads} store read threads "
            f"(`CLAM2SAM_THREADS`, default: usable CPUs).", "",
            md_table(["reader", "bags / s", "feature MB / s", "x torch.load", "target: store >= pt"], rows)]
    return Section("load", "2. Loading (bags per second, warm cache)", "\n".join(body), data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=Path("/tmp/c2s_bench_large"))
    ap.add_argument("--subset", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    s = run(Ctx(out=Path("bench/out"), repeats=a.repeats, large_dir=a.archive), subset=a.subset)
    print(s.body)
    print(json.dumps(s.data), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
