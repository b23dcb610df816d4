"""CLI start-up: whole `clam2sam` / `samtrain` processes against `python -c "import h5py"`.

    python bench/bench_cli.py --repeats 15                                  # table on stdout
    python bench/bench_cli.py --repeats 15 --old-tree /tmp/old_checkout     # + the same commands of another tree

Each repeat runs every command once as its own process (interleaved: baseline, then each command), from
the console scripts of this interpreter's environment; the table shows medians of the wall times (parent
clock, process start to exit). ``inspect --json`` runs on two small stores converted once into the work
folder: the reference fixtures (3 slides) and the demo cohort (40 slides, `fixtures/demo`).

``--old-tree DIR`` (a plain copy of another commit, e.g. ``git archive COMMIT clam2sam trainer | tar -x -C
DIR``) adds the same commands run with DIR first on ``sys.path``: before / after ratios in the same run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PY, ROOT, Ctx, Section, fmt, md_table, median  # noqa: E402

REF = Path("/work/shared/fixtures/reference")
DEMO = ROOT / "fixtures" / "demo"
TARGET = 1.5


def _bin(name: str) -> str:
    p = Path(PY).parent / name
    return str(p) if p.is_file() else name


def _convert(args: list[str], out: Path) -> Path:
    if (out / "zarr.json").is_file():
        return out
    cmd = [_bin("clam2sam"), "convert", *args, "--out", str(out), "-q", "--skip-errors"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {p.returncode}): {p.stderr[-2000:]}")
    return out


def small_stores(work: Path, quick: bool) -> dict[str, Path]:
    """name -> store: the reference fixtures (3 slides) and, unless quick, the demo cohort (40 slides)."""
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    if (REF / "clam" / "h5_files").is_dir():
        out["reference, 3 slides"] = _convert(
            [str(REF / "clam"), "--segments-dir", str(REF / "sammil" / "segments"), "--slides-dir",
             str(REF / "slides"), "--level-downsample", "ihc_tiled=1:2", "--membership", "reference"],
            work / "ref.zarr")
    if not quick and (DEMO / "h5_files").is_dir():
        out["demo, 40 slides"] = _convert(
            [str(DEMO), "--segments-dir", str(DEMO / "segments"), "--dataset-csv", str(DEMO / "dataset.csv")],
            work / "demo.zarr")
    return out


def commands(stores: dict[str, Path], old_tree: Path | None) -> list[tuple[str, list[str], dict | None]]:
    """(label, argv, extra env) of every timed process; the baseline first."""
    rows = [("python -c \"import h5py\" (baseline)", [PY, "-c", "import h5py"], None),
            ("clam2sam --help", [_bin("clam2sam"), "--help"], None),
            ("samtrain --help", [_bin("samtrain"), "--help"], None)]
    rows += [(f"clam2sam inspect --json ({k})", [_bin("clam2sam"), "inspect", str(p), "--json"], None)
             for k, p in stores.items()]
    if old_tree is not None:
        env = {"PYTHONPATH": str(old_tree)}
        c2s, st = ([PY, "-c", f"import sys; from {m}.cli.main import main; sys.exit(main())"] for m in ("clam2sam", "trainer"))
        rows += [("clam2sam --help (old tree)", c2s + ["--help"], env), ("samtrain --help (old tree)", st + ["--help"], env)]
        rows += [(f"clam2sam inspect --json ({k}) (old tree)", c2s + ["inspect", str(p), "--json"], env)
                 for k, p in stores.items()]
    return rows


def _time(argv: list[str], env: dict | None) -> float:
    import os

    t = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300,
                       env={**os.environ, **env} if env else None, cwd="/tmp")
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (rc {p.returncode}): {p.stderr[-1500:]}")
    return dt


def measure(rows, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label, _a, _e in rows}
    for label, argv, env in rows:   # one untimed warm-up each: page cache, .pyc files
        _time(argv, env)
    for _ in range(repeats):
        for label, argv, env in rows:
            times[label].append(_time(argv, env))
    return times


def run(ctx: Ctx, *, old_tree: Path | None = None) -> Section:
    import os

    repeats = 3 if ctx.quick else max(11, ctx.repeats * 5)
    stores = small_stores(ctx.work / "cli_stores", ctx.quick)
    rows = commands(stores, old_tree)
    load0 = os.getloadavg()
    times = measure(rows, repeats)
    load1 = os.getloadavg()
    base = median(times[rows[0][0]])
    table, data = [], {"repeats": repeats, "baseline_s": base, "rows": {}, "load_avg": [load0, load1]}
    for label, argv, _env in rows:
        m = median(times[label])
        ratio = m / base
        is_target = label != rows[0][0] and "(old tree)" not in label
        verdict = ("met" if ratio <= TARGET else "MISSED") if is_target else "-"
        table.append([label, fmt(m, 3), fmt(min(times[label]), 3), f"{ratio:.2f}", verdict])
        data["rows"][label] = {"median_s": m, "min_s": min(times[label]), "ratio_vs_h5py": ratio,
                               "target": is_target, "times": times[label]}
    body = "\n".join([
        f"Whole processes, {repeats} interleaved repeats (h5py import, then every command, per repeat) after one "
        "untimed warm-up each; medians of the wall time from process start to exit. Console scripts of the "
        "project's virtual environment. Stores for `inspect --json`: "
        + ", ".join(f"{k} (`{p}`)" for k, p in stores.items()) + ". "
        f"Load average before / after: {load0[0]:.2f} / {load1[0]:.2f} (other work on the machine).", "",
        md_table(["command", "median s", "min s", "x h5py import", f"target <= {TARGET}x"], table)])
    return Section("cli", "7. CLI start-up", body, data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="x5 (at least 11) interleaved repeats")
    ap.add_argument("--work", type=Path, default=Path("/tmp/c2s_bench"))
    ap.add_argument("--old-tree", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    sec = run(Ctx(out=a.work, quick=a.quick, repeats=a.repeats, work=a.work), old_tree=a.old_tree)
    print(sec.body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
