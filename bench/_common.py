"""Shared helpers of the bench harness: machine facts, measured subprocesses, markdown tables.

Every bench module exposes ``run(ctx) -> Section``; ``bench/run_all.py`` strings them together and writes
``bench/RESULTS.md`` after each section so that partial results survive.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Ctx:
    """What every section needs: output folder, quick mode, cohort folders, repeats."""

    out: Path
    quick: bool = False
    repeats: int = 3
    work: Path = Path("/tmp/c2s_bench")
    large_dir: Path = Path("/tmp/c2s_bench_large")
    medium_dir: Path = Path("/tmp/c2s_bench_medium")
    log: callable = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    extra: dict = field(default_factory=dict)


@dataclass
class Section:
    """One section of RESULTS.md: a markdown body (tables + notes) and raw figures for results JSON."""

    key: str
    title: str
    body: str
    data: dict = field(default_factory=dict)
    error: str | None = None


def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


def fmt(x, nd: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if x != x:  # NaN
        return "n/a"
    return f"{x:,.{nd}f}"


def md_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are str() of the values."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _meminfo_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - not installed
        return "not installed"


def machine_info() -> dict:
    """CPU model, cores, RAM, load, OS, Python and package versions, git commit, date."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=20).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except Exception:  # noqa: BLE001
        commit = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": round(_meminfo_gib(), 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(), "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("clam2sam", "torch", "numpy", "zarr", "numcodecs", "h5py",
                                              "scikit-learn", "segment-anything", "psutil")},
        "git": commit,
        "gpu": "none on this machine (CUDA figures: bench/gpu_check.sh on a GPU machine, bench/RESULTS_GPU.md)",
    }


def run_measured(cmd: list[str], *, timeout: float = 1800, sample_s: float = 0.05, env: dict | None = None) -> dict:
    """Run ``cmd`` (a child that prints one JSON line last), sampling its process tree's RSS.

    Returns the child's JSON merged with ``wall_s`` (parent clock), ``tree_peak_rss_mb`` (peak of the summed
    RSS of the child and its descendants, sampled every ``sample_s``) and ``rc``.
    """
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    peak = 0
    try:
        proc = psutil.Process(p.pid)
        while p.poll() is None:
            try:
                procs = [proc] + proc.children(recursive=True)
                peak = max(peak, sum(_rss(q) for q in procs))
            except psutil.NoSuchProcess:
                pass
            if time.perf_counter() - t0 > timeout:
                p.kill()
                break
            time.sleep(sample_s)
    except psutil.NoSuchProcess:
        pass
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    res = {}
    for line in reversed(out.strip().splitlines()):
        try:
            res = json.loads(line)
            break
        except ValueError:
            continue
    if p.returncode != 0 or not res:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (rc {p.returncode}): {err.strip()[-2000:]}")
    res.update(wall_s=wall, tree_peak_rss_mb=peak / 2**20, rc=p.returncode)
    return res


def _rss(q) -> int:
    try:
        return q.memory_info().rss
    except Exception:  # noqa: BLE001 - process ended between listing and reading
        return 0


def child_peaks() -> dict:
    """Peak RSS (MB) of this process and of its largest waited-for child (getrusage; Linux gives KiB)."""
    import resource

    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self_peak_rss_mb": me.ru_maxrss / 1024, "children_peak_rss_mb": ch.ru_maxrss / 1024,
            "cpu_total_s": me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime}


def emit(d: dict) -> None:
    """Child side of :func:`run_measured`: print the result as the last stdout line."""
    d.update(child_peaks())
    print(json.dumps(d), flush=True)
