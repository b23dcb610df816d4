"""Section 1 -- convert speed and memory against a plain h5py read of the same features (same run).

Every measurement runs in its own subprocess (``python bench/bench_convert.py _child ...``) so that peak
RSS is that of the converting process(es) alone: the child reports ``getrusage`` of itself and of its
waited-for worker processes, and the parent samples the summed RSS of the whole process tree.

    python bench/bench_convert.py --archive /tmp/c2s_bench_large --subset 10 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PY, Ctx, Section, emit, fmt, md_table, median, run_measured  # noqa: E402

CONFIGS = [("lz4", 1, True), ("lz4", 2, True), ("zstd", 1, True), ("none", 1, True),
           ("lz4", 1, False), ("none", 1, False)]      # (codec, workers, checksums); lz4 = the default
QUICK_CONFIGS = [("lz4", 1, True)]
SELF = str(Path(__file__).resolve())


# ------------------------------------------------------------------------------------------ children

def _cpu() -> float:
    """CPU seconds of this process and its waited-for workers (user + system)."""
    import resource

    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def _child_h5read(archive: Path, slides: list[str]) -> None:
    import h5py

    t, c = time.perf_counter(), _cpu()
    nbytes = 0
    for sid in slides:
        with h5py.File(archive / "h5_files" / f"{sid}.h5", "r") as f:
            x = f["features"][...]                      # (N, D) float32, one read
            nbytes += x.nbytes
            del x
    emit({"seconds": time.perf_counter() - t, "cpu_s": _cpu() - c, "feature_bytes": nbytes})


def _child_convert(archive: Path, out: Path, slides: list[str], codec: str, workers: int, checksums: bool,
                   clevel: int) -> None:
    t0 = time.perf_counter()
    import torch  # noqa: F401 - imported lazily by the pt reader; a one-off cost kept out of the timing

    from clam2sam.convert.cohort import ConvertOptions, convert_cohort

    t, c = time.perf_counter(), _cpu()
    imports = t - t0
    rep = convert_cohort(ConvertOptions(
        archive=str(archive), out=str(out), segments_dir=str(archive / "segments"),
        dataset_csv=str(archive / "dataset.csv"), slides=tuple(slides), workers=workers, codec=codec,
        clevel=clevel, checksums=checksums, overwrite=True))
    secs = time.perf_counter() - t
    if rep.return_code != 0:
        raise SystemExit(f"convert failed: {rep}")
    emit({"seconds": secs, "cpu_s": _cpu() - c, "import_s": imports, "report": str(rep)})


def _child_memprobe(archive: Path, smallest: str, largest: str, work: Path) -> None:
    """Memory attributable to one slide: convert the smallest slide (every lazy import and pool now loaded),
    then the largest one under tracemalloc; report the allocation peak and the max-RSS increment."""
    import resource
    import tracemalloc

    import torch  # noqa: F401

    from clam2sam.convert.cohort import ConvertOptions, convert_cohort

    def conv(sid, out):
        convert_cohort(ConvertOptions(archive=str(archive), out=str(out), segments_dir=str(archive / "segments"),
                                      dataset_csv=str(archive / "dataset.csv"), slides=(sid,), overwrite=True))

    conv(smallest, work / "memprobe_small.zarr")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    conv(largest, work / "memprobe_large.zarr")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for d in ("memprobe_small.zarr", "memprobe_large.zarr"):
        shutil.rmtree(work / d, ignore_errors=True)
    emit({"tracemalloc_peak_mb": peak / 1e6, "maxrss_before_mb": rss0, "maxrss_after_mb": rss1})


def _child_idle() -> None:
    import torch  # noqa: F401 - same imports as the converter child, nothing else

    import clam2sam.convert.cohort  # noqa: F401

    emit({"seconds": 0.0})


# ------------------------------------------------------------------------------------------ parent

def slide_sizes(archive: Path) -> dict[str, int]:
    """slide id -> feature bytes (from the h5 dataset shapes, no data read)."""
    import h5py

    out = {}
    for p in sorted((archive / "h5_files").glob("*.h5")):
        with h5py.File(p, "r") as f:
            d = f["features"]
            out[p.stem] = int(d.shape[0]) * int(d.shape[1]) * d.dtype.itemsize
    return out


def warm_cache(archive: Path, slides: list[str]) -> float:
    """Read every source file of ``slides`` once (page cache warm for every variant alike)."""
    t = time.perf_counter()
    for sid in slides:
        for p in (archive / "h5_files" / f"{sid}.h5", archive / "pt_files" / f"{sid}.pt",
                  archive / "segments" / f"{sid}.pkl", archive / "patches" / f"{sid}.h5"):
            if p.is_file():
                with p.open("rb") as f:
                    while f.read(1 << 24):
                        pass
    return time.perf_counter() - t


def evict(archive: Path, slides: list[str]) -> None:
    """Drop every source file of ``slides`` from this machine's page cache (``POSIX_FADV_DONTNEED``; clean
    pages only, no root needed): the next read comes from the disk (or the hypervisor's cache), as for an
    archive that has not just been read."""
    import os

    for sid in slides:
        for p in _sources(archive, sid):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _sources(archive: Path, sid: str) -> list[Path]:
    return [p for p in (archive / "h5_files" / f"{sid}.h5", archive / "pt_files" / f"{sid}.pt",
                        archive / "segments" / f"{sid}.pkl", archive / "patches" / f"{sid}.h5") if p.is_file()]


def _prepare(regime: str, archive: Path, slides: list[str]) -> None:
    (warm_cache if regime == "warm" else evict)(archive, slides)


DISK_MIB_S = 200   # the "disk" regime: source reads throttled to this, like an archive on a NAS or HDD


def throttle_cgroup(archive: Path) -> Path | None:
    """A cgroup-v1 blkio group that limits reads from the archive's block device to DISK_MIB_S (root only);
    None where that is not possible (no cgroup v1 blkio, not root, no block device)."""
    import os

    cg = Path("/sys/fs/cgroup/blkio/clam2sam_bench")
    try:
        st = os.stat(archive).st_dev
        cg.mkdir(exist_ok=True)
        (cg / "blkio.throttle.read_bps_device").write_text(f"{os.major(st)}:{os.minor(st)} {DISK_MIB_S << 20}\n")
        return cg
    except OSError:
        return None


def _cmd(cmd: list[str], regime: str, archive: Path) -> list[str]:
    """``cmd``, started inside the throttling cgroup for the "disk" regime."""
    if regime != "disk":
        return cmd
    cg = throttle_cgroup(archive)
    return ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", *cmd]


def _h5(archive, slides, regime="warm"):
    _prepare(regime, archive, slides)
    return run_measured(_cmd([PY, SELF, "_child", "h5read", str(archive), *slides], regime, archive))


def _conv(archive, out, slides, codec, workers, checksums, clevel=None, regime="warm"):
    from clam2sam.store.writer import resolve_clevel

    clevel = resolve_clevel(codec, clevel)
    shutil.rmtree(out, ignore_errors=True)
    _prepare(regime, archive, slides)
    r = run_measured(_cmd([PY, SELF, "_child", "convert", str(archive), str(out), codec, str(workers),
                           "1" if checksums else "0", str(clevel), *slides], regime, archive))
    r["store_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return r


def _label(codec, workers, checksums, regime="warm"):
    from clam2sam.store.writer import DEFAULT_CLEVEL

    cl = f" (clevel {DEFAULT_CLEVEL[codec]})" if codec != "none" else ""
    return f"{codec}{cl}, {workers} worker{'s' if workers > 1 else ''}" + \
        ("" if checksums else ", --no-checksums") + f" [{_rlabel(regime)}]"


REGIMES = ("warm", "cold", "disk")


def _rlabel(regime: str) -> str:
    return f"disk {DISK_MIB_S} MiB/s" if regime == "disk" else f"{regime} cache"


def run(ctx: Ctx, *, subset: int = 10, full: bool = True, configs: list | None = None,
        regimes: tuple = REGIMES) -> Section:
    archive = ctx.large_dir
    sizes = slide_sizes(archive)
    all_ids = sorted(sizes)
    sub = all_ids[:3] if ctx.quick else all_ids[:subset]
    configs = configs or (QUICK_CONFIGS if ctx.quick else CONFIGS)
    regimes = ("warm",) if ctx.quick else regimes
    if "disk" in regimes and throttle_cgroup(archive) is None:
        ctx.log("[convert] no cgroup-v1 blkio throttle available here: the 'disk' regime is skipped")
        regimes = tuple(g for g in regimes if g != "disk")
    reps = 1 if ctx.quick else ctx.repeats
    store = ctx.work / "bench_convert.zarr"
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.log(f"[convert] {len(sub)} slides, {sum(sizes[s] for s in sub) / 1e6:.0f} MB features")
    idle = run_measured([PY, SELF, "_child", "idle"])
    runs = {("h5py", g): [] for g in regimes} | {(c, g): [] for c in configs for g in regimes}
    for r in range(reps):
        for g in regimes:
            runs[("h5py", g)].append(_h5(archive, sub, g))
            ctx.log(f"[convert] repeat {r + 1}/{reps} [{g}] h5py read {runs[('h5py', g)][-1]['seconds']:.2f} s")
            for c in configs:
                runs[(c, g)].append(_conv(archive, store, sub, *c, regime=g))
                ctx.log(f"[convert] repeat {r + 1}/{reps} {_label(*c, g)}: {runs[(c, g)][-1]['seconds']:.2f} s")
    feat_mb = sum(sizes[s] for s in sub) / 1e6
    largest_mb = max(sizes[s] for s in sub) / 1e6
    rows, data = [], {"slides": len(sub), "feature_mb": feat_mb, "largest_slide_mb": largest_mb,
                      "idle_rss_mb": idle["self_peak_rss_mb"], "configs": {}, "baseline": {}}
    for g in regimes:
        base = median([x["seconds"] for x in runs[("h5py", g)]])
        base_cpu = median([x.get("cpu_s") for x in runs[("h5py", g)]])
        data["baseline"][g] = {"seconds": [x["seconds"] for x in runs[("h5py", g)]], "median_s": base}
        rows.append([f"h5py read of `features` (baseline) [{_rlabel(g)}]", fmt(base), fmt(feat_mb / base, 0), "1.00",
                     "-", fmt(base_cpu), "1.00", "-", "-", "-", "-"])
        for c in configs:
            rr = runs[(c, g)]
            sec = median([x["seconds"] for x in rr])
            peak_proc = max(max(x["self_peak_rss_mb"], x["children_peak_rss_mb"]) for x in rr)
            tree = max(x["tree_peak_rss_mb"] for x in rr)
            store_mb = median([x["store_bytes"] for x in rr]) / 1e6
            ratio = sec / base
            cpu = median([x.get("cpu_s") for x in rr])
            data["configs"][_label(*c, g)] = {
                "seconds": [x["seconds"] for x in rr], "median_s": sec, "ratio_vs_h5py": ratio,
                "peak_proc_rss_mb": peak_proc, "tree_peak_rss_mb": tree, "store_mb": store_mb, "cpu_s": cpu,
                "cpu_ratio_vs_h5py": cpu / base_cpu, "regime": g, "codec": c[0], "workers": c[1],
                "checksums": c[2]}
            rows.append([_label(*c, g), fmt(sec), fmt(feat_mb / sec, 0),
                         f"**{ratio:.2f}**" if ratio <= 1.5 else f"{ratio:.2f}", "met" if ratio <= 1.5 else "MISSED",
                         fmt(cpu), fmt(cpu / base_cpu), fmt(peak_proc, 0),
                         fmt((peak_proc - idle["self_peak_rss_mb"]) / largest_mb), fmt(tree, 0), fmt(store_mb, 0)])
    heads = ["variant", "median s", "MB/s (features)", "x h5py read", "target <= 1.5x", "CPU s", "CPU x h5py",
             "peak RSS of one process MB",
             "(peak - idle) / largest slide", "peak RSS, whole tree MB", "store MB"]
    body = [f"Cohort: `{archive}` ({len(all_ids)} slides; feature bytes {sum(sizes.values()) / 1e9:.2f} GB). "
            f"Repeated runs on **{len(sub)} slides** ({feat_mb:.0f} MB of float32 features, largest slide "
            f"{largest_mb:.0f} MB), {reps} repeat(s) interleaved (h5py, then every variant, per repeat and "
            "cache regime); medians. **warm cache**: every source file read once before each run (the h5py "
            "baseline is then a memory copy). **cold cache**: every source file of the slides dropped from this "
            "machine's page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`) before each run, baseline and convert "
            f"alike (the hypervisor may still cache the disk). **disk {DISK_MIB_S} MiB/s**: as cold, and every read of the "
            f"archive's block device throttled to {DISK_MIB_S} MiB/s (cgroup-v1 blkio, both processes alike), like "
            "an archive on a NAS or a hard disk; writes of the store are not throttled. Convert uses precomputed SAM-MIL segment pickles "
            "and the dataset CSV, default checksums (sha256 of every file stored from). Timers start after the "
            f"imports (one-off `import torch` + `clam2sam.convert.cohort` in the child: median "
            f"{median([x.get('import_s') for v in runs if v[0] != 'h5py' for x in runs[v]]):.1f} s, not included).",
            "", md_table(heads, rows), "",
            f"Idle RSS of a process that only imports torch and `clam2sam.convert.cohort`: {idle['self_peak_rss_mb']:.0f} MB. "
            "Peak RSS of one process = max over repeats of getrusage(RUSAGE_SELF / RUSAGE_CHILDREN) of the "
            "converting process and its workers; whole tree = sampled sum over parent + workers (50 ms)."]
    smallest, largest = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    mp_ = run_measured([PY, SELF, "_child", "memprobe", str(archive), smallest, largest, str(ctx.work)])
    lg = sizes[largest] / 1e6
    data["memprobe"] = {**mp_, "largest_slide": largest, "largest_slide_mb": lg}
    body += ["", f"Memory attributable to one slide (`_child memprobe`: convert the smallest slide first so that "
                 f"every lazy import and thread pool is loaded, then the cohort's largest slide `{largest}` "
                 f"({lg:.0f} MB of features) under `tracemalloc`): allocation peak "
                 f"{mp_['tracemalloc_peak_mb']:.0f} MB = **{mp_['tracemalloc_peak_mb'] / lg:.2f}x** the slide; "
                 f"max RSS grew by {mp_['maxrss_after_mb'] - mp_['maxrss_before_mb']:.0f} MB = "
                 f"**{(mp_['maxrss_after_mb'] - mp_['maxrss_before_mb']) / lg:.2f}x** the slide."]
    if full and not ctx.quick:
        frows = []
        data["full"] = {"slides": len(all_ids), "feature_mb": sum(sizes.values()) / 1e6,
                        "largest_slide_mb": max(sizes.values()) / 1e6}
        full_mb, full_largest = data["full"]["feature_mb"], data["full"]["largest_slide_mb"]
        reps_full = 1 if ctx.quick else max(1, ctx.repeats)
        for g in regimes:
            fhs, fzs = [], []
            for r in range(reps_full):
                ctx.log(f"[convert] full cohort: {len(all_ids)} slides [{_rlabel(g)}] repeat {r + 1}/{reps_full}")
                fhs.append(_h5(archive, all_ids, g))
                fzs.append(_conv(archive, store, all_ids, "lz4", 1, True, regime=g))
                ctx.log(f"[convert]   h5py {fhs[-1]['seconds']:.2f} s, convert {fzs[-1]['seconds']:.2f} s")
            fh = median([x["seconds"] for x in fhs])
            fz = median([x["seconds"] for x in fzs])
            pk = max(max(x["self_peak_rss_mb"], x["children_peak_rss_mb"]) for x in fzs)
            data["full"][g] = {"h5py_s": fh, "convert_s": fz, "ratio_vs_h5py": fz / fh,
                               "h5py_runs_s": [x["seconds"] for x in fhs], "convert_runs_s": [x["seconds"] for x in fzs],
                               "peak_proc_rss_mb": pk, "regime": g}
            frows.append([f"h5py read [{_rlabel(g)}]", fmt(fh), fmt(full_mb / fh, 0), "1.00", "-", "-", "-"])
            frows.append([f"lz4 (default), 1 worker [{_rlabel(g)}]", fmt(fz), fmt(full_mb / fz, 0),
                          f"**{fz / fh:.2f}**" if fz / fh <= 1.5 else f"{fz / fh:.2f}",
                          "met" if fz / fh <= 1.5 else "MISSED", fmt(pk, 0),
                          fmt((pk - idle["self_peak_rss_mb"]) / full_largest)])
        body += ["", f"**The full cohort: all {len(all_ids)} slides** ({full_mb:.0f} MB features, largest slide "
                     f"{full_largest:.0f} MB; default codec and checksums; {reps_full} repeat(s) interleaved, "
                     "medians):", "",
                 md_table(["variant", "median s", "MB/s", "x h5py read", "target <= 1.5x", "peak RSS one process MB",
                           "(peak - idle) / largest slide"], frows)]
    return Section("convert", "1. Convert (large preset, precomputed segments)", "\n".join(body), data)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_child":
        kind, rest = argv[1], argv[2:]
        if kind == "h5read":
            _child_h5read(Path(rest[0]), rest[1:])
        elif kind == "convert":
            _child_convert(Path(rest[0]), Path(rest[1]), rest[6:], rest[2], int(rest[3]), rest[4] == "1",
                           int(rest[5]))
        elif kind == "memprobe":
            _child_memprobe(Path(rest[0]), rest[1], rest[2], Path(rest[3]))
        elif kind == "idle":
            _child_idle()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=Path("/tmp/c2s_bench_large"))
    ap.add_argument("--subset", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-full", action="store_true")
    ap.add_argument("--configs", default=None, help="comma list of CODEC:WORKERS (default: all variants)")
    ap.add_argument("--regimes", default="warm,cold,disk",
                    help="warm (sources in the page cache), cold (dropped first), disk (cold + reads throttled)")
    ap.add_argument("--write", type=Path, default=None, help="also write the markdown body here")
    a = ap.parse_args(argv)
    cfgs = [(c.split(":")[0], int(c.split(":")[1]), True) for c in a.configs.split(",")] if a.configs else None
    s = run(Ctx(out=Path("bench/out"), repeats=a.repeats, large_dir=a.archive), subset=a.subset, full=not a.no_full,
            configs=cfgs, regimes=tuple(a.regimes.split(",")))
    print(s.body)
    if a.write:
        a.write.write_text(s.body + "\n")
    print(json.dumps(s.data, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
