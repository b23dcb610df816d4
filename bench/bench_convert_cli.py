"""Whole-process convert against a whole-process h5py read of the same features (page cache warm, and disk).

    python bench/bench_convert_cli.py --archive /tmp/c2s_bench_16 --repeats 5
    python bench/bench_convert_cli.py --archive /tmp/c2s_bench_16 --repeats 5 --old-tree /tmp/old --regimes warm,disk

Both sides are complete processes started from the shell's point of view: the baseline is
``python -c "import h5py; <read every slide's features>"``, the conversion is the ``clam2sam convert`` console
script (default codec and checksums, Segments pickles, the dataset CSV) into a fresh store. Repeats are
interleaved (baseline, convert[, convert of the old tree], per repeat) and the table shows medians of the
wall time; CPU seconds and peak RSS come from ``wait4`` of each process. ``--old-tree DIR`` (a plain copy of
another commit: ``git archive COMMIT clam2sam | tar -x -C DIR``) adds the same conversion run with DIR first on
``sys.path``: before / after in the same run. The cohort defaults to 16 slides of about 5k patches x 1024
float32 (``fixtures/make_fixtures.py --preset large --slides 16 --min-patches 4500 --max-patches 5500``,
generated once).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PY, ROOT, Ctx, Section, fmt, md_table, median  # noqa: E402
from bench.bench_convert import _cmd, _prepare, _rlabel, slide_sizes, throttle_cgroup  # noqa: E402

TARGET = {"warm": 3.0, "cold": None, "disk": 1.35}
COHORT = {"slides": 16, "min_patches": 4500, "max_patches": 5500}
H5READ = ("import sys, h5py\n"
          "for p in sys.argv[1:]:\n"
          "    with h5py.File(p, 'r') as f:\n"
          "        x = f['features'][...]\n")


def ensure_cohort(path: Path, log=print) -> Path:
    if (path / "manifest.json").is_file():
        return path
    from fixtures.make_fixtures import generate

    log(f"[convert-cli] generating the 16-slide cohort into {path} (once)")
    generate(path, preset="large", seed=0, recreate=True, **COHORT)
    return path


def _bin(name: str) -> str:
    p = Path(PY).parent / name
    return str(p) if p.is_file() else name


TIME = "/usr/bin/time"   # GNU time: the peak RSS of the measured process alone (see run_proc)


def timed(argv: list[str]) -> list[str]:
    """``argv`` under GNU time, which reports the process's own peak RSS: a child forked straight from this
    (large) Python process would carry the parent's RSS in its max-RSS record until its exec."""
    return [TIME, "-f", "@@%M", *argv] if Path(TIME).is_file() else argv


def run_proc(argv: list[str], env: dict | None = None) -> dict:
    """Wall seconds (parent clock), CPU seconds (wait4: the process and its waited-for children) and peak
    RSS (MB, from GNU time when ``argv`` was made with :func:`timed`) of one process."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/tmp",
                         env={**os.environ, **env} if env else None)
    err = p.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed (rc {rc}): {err[-2000:]}")
    marks = [ln for ln in err.splitlines() if ln.startswith("@@")]
    peak = int(marks[-1][2:]) / 1024 if marks else ru.ru_maxrss / 1024
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "peak_rss_mb": peak}


def _convert_argv(archive: Path, out: Path, old_tree: Path | None) -> tuple[list[str], dict | None]:
    args = ["convert", str(archive), "--segments-dir", str(archive / "segments"), "--dataset-csv",
            str(archive / "dataset.csv"), "--out", str(out), "-q"]
    if old_tree is None:
        return [_bin("clam2sam"), *args], None
    return [PY, "-m", "clam2sam", *args], {"PYTHONPATH": str(old_tree)}


def run(ctx: Ctx, *, archive: Path | None = None, old_tree: Path | None = None,
        regimes: tuple = ("warm", "disk")) -> Section:
    if ctx.quick:   # the harness's tiny speed cohort (made by run_all.py), page cache only
        archive, regimes = ctx.large_dir, ("warm",)
    else:
        archive = ensure_cohort(archive or Path("/tmp/c2s_bench_16"), ctx.log)
    sizes = slide_sizes(archive)
    slides = sorted(sizes)
    feat_mb, largest_mb = sum(sizes.values()) / 1e6, max(sizes.values()) / 1e6
    if "disk" in regimes and throttle_cgroup(archive) is None:
        ctx.log("[convert-cli] no cgroup-v1 blkio throttle here: the disk regime is skipped")
        regimes = tuple(g for g in regimes if g != "disk")
    reps = 1 if ctx.quick else max(3, ctx.repeats)
    out = ctx.work / "convert_cli.zarr"
    ctx.work.mkdir(parents=True, exist_ok=True)
    h5s = [str(archive / "h5_files" / f"{s}.h5") for s in slides]
    variants = [("h5py", None)] + [("convert", None)] + ([("convert (old tree)", old_tree)] if old_tree else [])
    runs = {(v, g): [] for v, _ in variants for g in regimes}
    for r in range(reps):
        for g in regimes:
            for label, tree in variants:
                if label == "h5py":
                    argv, env = [PY, "-c", H5READ, *h5s], None
                else:
                    shutil.rmtree(out, ignore_errors=True)
                    argv, env = _convert_argv(archive, out, tree)
                _prepare(g, archive, slides)
                runs[(label, g)].append(run_proc(_cmd(timed(argv), g, archive), env))
                ctx.log(f"[convert-cli] {r + 1}/{reps} [{g}] {label}: {runs[(label, g)][-1]['wall_s']:.2f} s")
    shutil.rmtree(out, ignore_errors=True)
    rows, data = [], {"slides": len(slides), "feature_mb": feat_mb, "largest_slide_mb": largest_mb, "regimes": {}}
    for g in regimes:
        base = median([x["wall_s"] for x in runs[("h5py", g)]])
        base_pk = max(x["peak_rss_mb"] for x in runs[("h5py", g)])   # interpreter + h5py + one slide
        data["regimes"][g] = {}
        for label, _ in variants:
            rr = runs[(label, g)]
            m = median([x["wall_s"] for x in rr])
            cpu = median([x["cpu_s"] for x in rr])
            pk = max(x["peak_rss_mb"] for x in rr)
            ratio = m / base
            tgt = TARGET.get(g) if label == "convert" else None
            data["regimes"][g][label] = {"wall_s": [x["wall_s"] for x in rr], "median_s": m, "ratio_vs_h5py": ratio,
                                         "cpu_s": cpu, "peak_rss_mb": pk, "target": tgt}
            rows.append([f"{label} [{_rlabel(g)}]", fmt(m), fmt(feat_mb / m, 0), f"{ratio:.2f}",
                         "-" if tgt is None else ("met" if ratio <= tgt else "MISSED") + f" (<= {tgt}x)",
                         fmt(cpu), fmt(median([x['sys_s'] for x in rr])), fmt(pk, 0),
                         "-" if label == "h5py" else fmt((pk - base_pk) / largest_mb)])
    load = os.getloadavg()
    body = "\n".join([
        f"Cohort `{archive}`: {len(slides)} slides, {feat_mb:.0f} MB of float32 features (largest slide "
        f"{largest_mb:.0f} MB), Segments pickles, CLAM `.pt` files beside the h5 (cross-checked). Whole processes "
        f"on both sides, {reps} interleaved repeats, medians. Baseline: `python -c \"import h5py; ...\"` reading "
        "every slide's `features`. Convert: the `clam2sam convert` console script, default codec (lz4) and "
        "checksums, `--segments-dir`, `--dataset-csv`, a fresh store. **warm**: every source file read just "
        f"before each run; **{_rlabel('disk')}**: sources dropped from the page cache and reads throttled "
        "(cgroup-v1 blkio), both sides alike. CPU s = user + sys of the process and its children (wait4); peak "
        f"RSS = their max RSS; the last column subtracts the h5py process's peak (interpreter, h5py, one slide). Load average at the end: {load[0]:.2f} (the machine is shared: other jobs ran).",
        "", md_table(["variant", "median s", "MB/s", "x h5py read", "target", "CPU s", "sys s", "peak RSS MB",
                      "(peak RSS - h5py's) / largest slide"], rows)])
    return Section("convert_cli", "1b. Convert, whole processes (page cache and disk)", body, data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=Path("/tmp/c2s_bench_16"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--old-tree", type=Path, default=None)
    ap.add_argument("--regimes", default="warm,disk")
    ap.add_argument("--work", type=Path, default=Path("/tmp/c2s_bench"))
    a = ap.parse_args(argv)
    sec = run(Ctx(out=ROOT / "bench" / "out", repeats=a.repeats, work=a.work), archive=a.archive,
              old_tree=a.old_tree, regimes=tuple(a.regimes.split(",")))
    print(sec.body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
