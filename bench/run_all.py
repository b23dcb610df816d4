"""Run the bench harness: convert, load, step, accuracy and SAM sections; write bench/RESULTS.md.

    python bench/run_all.py --out bench/out                       # everything (about an hour on 2 cores)
    python bench/run_all.py --out bench/out --sections convert,load
    python bench/run_all.py --out /tmp/q --quick --results /tmp/q/RESULTS.md   # smoke run on tiny cohorts
    python bench/run_all.py --out bench/out --sections ''     # only re-assemble RESULTS.md (e.g. after editing OUT/notes.md)

Each finished section is saved at once as ``OUT/section_<key>.md`` + ``.json`` (with the command that
produced it), and ``RESULTS.md`` is re-assembled from every section file present in ``OUT``: sections
run by separate invocations are merged, and a crash keeps what was measured. Exit status: 0 when every
requested section ran, 1 when one raised (the others still run). A slow figure is never an error.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, Ctx, Section, machine_info, md_table  # noqa: E402

ORDER = ("convert", "convert_cli", "load", "step", "accuracy", "sam", "baselines", "cli")
TITLES = {"convert": "1. Convert", "convert_cli": "1b. Convert, whole processes", "load": "2. Loading",
          "step": "3. Training step", "accuracy": "4. Accuracy", "sam": "5. SAM pass",
          "baselines": "6. Baselines (Tables 1 and 7)", "cli": "7. CLI start-up"}


def _runner(key: str):
    if key == "convert":
        from bench import bench_convert as m
    elif key == "convert_cli":
        from bench import bench_convert_cli as m
    elif key == "cli":
        from bench import bench_cli as m
    elif key == "load":
        from bench import bench_load as m
    elif key == "step":
        from bench import bench_step as m
    elif key == "accuracy":
        from bench import bench_accuracy as m
    elif key == "sam":
        return sam_section
    elif key == "baselines":
        from bench import bench_baselines as m
    else:
        raise ValueError(key)
    return m.run


SAM_COLS = ("model_type", "device", "image", "masks", "n_images", "read", "encoder_s", "decoder_s", "generate",
            "cache", "total", "outside_share")


def sam_section(ctx: Ctx) -> Section:
    """Run the colleague's bench/bench_sam.py (tiny + random-weight vit_b on CPU) and tabulate its JSON.

    In --quick mode the bench is not run (about 30 s of model loading alone); the last full figures
    (``bench/out/results_sam.json``) are quoted when present.
    """
    import subprocess

    js = ctx.out / "results_sam.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_sam.py"), "--models", "tiny,vit_b", "--out", str(js)]
    note = ""
    if ctx.quick:
        js = ROOT / "bench" / "out" / "results_sam.json"
        note = "Quick mode: bench_sam.py not run; quoting the last full run." if js.is_file() else ""
    else:
        ctx.log("[sam] " + " ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=1500)
        if p.returncode != 0:
            raise RuntimeError(f"bench_sam.py failed (rc {p.returncode}): {p.stderr[-2000:]}")
    gpu = ("GPU: the vit_h / CUDA figures are not measured on a CPU-only machine; `bench/gpu_check.sh` "
           "(with `bench/gpu_sam.sh`) is the prepared one-shot script for a GPU machine (`bench/RESULTS_GPU.md`).")
    if not js.is_file():
        return Section("sam", "5. SAM pass (CPU)", "\n".join([
            "Quick mode: `bench/bench_sam.py` not run and no earlier figures found; see `docs/sam.md`.", "", gpu]),
            {"skipped": True})
    d = json.loads(js.read_text())
    rows = [[r.get(c, "") for c in SAM_COLS] for r in d["rows"]]
    body = ([note, ""] if note else []) + [
            "`bench/bench_sam.py` (the code path of `clam2sam convert --sam-checkpoint`) on "
            "`/work/shared/data/cmu_small_region.svs`, random-weight checkpoints (same compute as the real ones). "
            "tiny = the SAM-MIL settings (points_per_side 32, crop_n_layers 1); vit_b on CPU = one image, "
            "64 points (points_per_side 8, crop_n_layers 0). Seconds per slide; outside_share = share of the "
            "provider call spent outside the model (slide read, mask post-processing, cache write).", "",
            md_table(list(SAM_COLS), rows), "",
            f"Command: `python bench/bench_sam.py --models tiny,vit_b --out {js}`; meta: {json.dumps(d.get('meta'))}",
            "", "With random weights SAM finds no mask that passes the 0.6 thresholds (masks = 0); the compute per "
            "image is that of the real model, the post-processing of kept masks is not exercised.", "", gpu]
    return Section("sam", "5. SAM pass (CPU)", "\n".join(b for b in body), {"rows": d["rows"], "meta": d.get("meta")})


def ensure_cohort(path: Path, preset: str, ctx: Ctx, **overrides) -> Path:
    """Generate ``preset`` into ``path`` once; reuse it when its manifest is there."""
    if (path / "manifest.json").is_file():
        ctx.log(f"[cohort] reusing {path}")
        return path
    from fixtures.make_fixtures import generate

    ctx.log(f"[cohort] generating preset {preset} into {path} (once)")
    t = time.perf_counter()
    generate(path, preset=preset, seed=0, recreate=True, **overrides)
    ctx.log(f"[cohort] {preset}: {time.perf_counter() - t:.0f} s")
    return path


REGIME_NAMES = {"warm": "warm cache", "cold": "cold cache", "disk": "disk 200 MiB/s"}


def glance(out: Path) -> list[str]:
    """'Targets at a glance' from the section JSON files present in ``out``."""
    rows = []

    def data(key):
        f = out / f"section_{key}.json"
        return json.loads(f.read_text()).get("data") if f.is_file() else None

    d = data("convert")
    if d and d.get("full"):
        for g, f in d["full"].items():
            if isinstance(f, dict) and "ratio_vs_h5py" in f:
                rows.append([f"convert, all {d['full']['slides']} slides, defaults [{REGIME_NAMES.get(g, g)}]: time vs h5py read",
                             "<= 1.5x", f"{f['ratio_vs_h5py']:.2f}x", "met" if f["ratio_vs_h5py"] <= 1.5 else "MISSED"])
    if d and d.get("configs"):
        for lab, c in d["configs"].items():
            rows.append([f"convert {lab}: time vs h5py read", "<= 1.5x", f"{c['ratio_vs_h5py']:.2f}x",
                         "met" if c["ratio_vs_h5py"] <= 1.5 else "MISSED"])
        c = next((v for k, v in d["configs"].items() if k.startswith("lz4") and v.get("workers") == 1),
                 next(iter(d["configs"].values())))
        mem = (c["peak_proc_rss_mb"] - d["idle_rss_mb"]) / d["largest_slide_mb"]
        rows.append(["convert peak RSS above idle / largest slide (1 worker, lz4 default)", "~2x", f"{mem:.2f}x",
                     "met" if mem <= 2.5 else "MISSED"])
        if d.get("memprobe"):
            m = d["memprobe"]
            for lab, v in (("allocation peak (tracemalloc)", m["tracemalloc_peak_mb"]),
                           ("max-RSS increment", m["maxrss_after_mb"] - m["maxrss_before_mb"])):
                r = v / m["largest_slide_mb"]
                rows.append([f"convert {lab} for the largest slide / its size", "~2x", f"{r:.2f}x",
                             "met" if r <= 2.5 else "MISSED"])
    d = data("convert_cli")
    for g, per in ((d or {}).get("regimes") or {}).items():
        c = per.get("convert")
        if c and c.get("target"):
            rows.append([f"convert, whole process, {d['slides']} slides [{REGIME_NAMES.get(g, g)}]: time vs h5py read",
                         f"<= {c['target']}x", f"{c['ratio_vs_h5py']:.2f}x",
                         "met" if c["ratio_vs_h5py"] <= c["target"] else "MISSED"])
    d = data("load")
    if d and d.get("methods"):
        for lab, m in d["methods"].items():
            if lab.endswith("read_bag"):
                rows.append([f"loading {lab}: bags/s vs torch.load", ">= 1x", f"{m['ratio_vs_pt']:.2f}x",
                             "met" if m["ratio_vs_pt"] >= 1 else "MISSED"])
    d = data("step")
    if d and d.get("cells"):
        for n, c in d["cells"].items():
            rows.append([f"step SAM-MIL / AB-MIL at {int(n):,} patches", "<= 2x", f"{c['ratio']:.2f}x",
                         "met" if c["ratio"] <= 2 else "MISSED"])
    d = data("cli")
    for lab, c in ((d or {}).get("rows") or {}).items():
        if c.get("target"):
            r = c["ratio_vs_h5py"]
            rows.append([f"CLI start: {lab} vs `python -c \"import h5py\"`", "<= 1.5x", f"{r:.2f}x",
                         "met" if r <= 1.5 else "MISSED"])
    if not rows:
        return []
    return ["## Targets at a glance", "", md_table(["figure", "target", "measured", "verdict"], rows), ""]


def assemble(out: Path, results: Path, machine: dict, command: str) -> None:
    """RESULTS.md from every section file in ``out`` (sections in ORDER)."""
    pk = machine["packages"]
    lines = ["# Bench results", "",
             "Written by `bench/run_all.py` (see `bench/README.md`). Every speed target is a ratio measured in the "
             "same run (medians of repeated, interleaved runs), never an absolute threshold.", "",
             "## Machine", "",
             md_table(["field", "value"], [
                 ["date (last assembly)", machine["date"]], ["CPU", machine["cpu"]], ["cores", machine["cores"]],
                 ["RAM", f"{machine['ram_gib']} GiB"], ["load average at start", machine["load_avg_at_start"]],
                 ["OS", machine["os"]], ["Python", machine["python"]], ["git", machine["git"]],
                 ["GPU", machine["gpu"]],
                 ["packages", ", ".join(f"{k} {v}" for k, v in pk.items())]]), "",
             "The machine is a shared 2-core development box: other people's tests ran at the same time, so "
             "absolute seconds are noisy; ratios measured in the same run are what the targets use.", "",
             f"Last command: `{command}`", ""]
    lines += glance(out)
    notes = out / "notes.md"
    if notes.is_file():   # hand-written analysis, kept across runs
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    for key in ORDER:
        f = out / f"section_{key}.json"
        if not f.is_file():
            lines += [f"## {TITLES[key]}", "", "_not run yet_", ""]
            continue
        meta = json.loads(f.read_text())
        body = (out / f"section_{key}.md").read_text()
        lines += [f"## {meta['title']}", "", f"Command: `{meta['command']}` ({meta['date']}, "
                  f"{meta['seconds']:.0f} s{', QUICK mode' if meta.get('quick') else ''})", ""]
        if meta.get("error"):
            lines += ["**Section failed:**", "", "```", meta["error"][-3000:], "```", ""]
        lines += [body, ""]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="per-section files and raw JSON")
    ap.add_argument("--results", type=Path, default=None, help="default: bench/RESULTS.md (OUT/RESULTS.md with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny cohorts, 1 repeat: checks that the harness works")
    ap.add_argument("--sections", default=",".join(ORDER), help=f"comma list of {','.join(ORDER)}")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default /tmp/c2s_bench or OUT/work)")
    ap.add_argument("--large-dir", type=Path, default=Path("/tmp/c2s_bench_large"))
    ap.add_argument("--medium-dir", type=Path, default=Path("/tmp/c2s_bench_medium"))
    ap.add_argument("--repeats", type=int, default=3, help="repeated runs per speed figure (median)")
    ap.add_argument("--accuracy-repeats", type=int, default=1, help="CV repeats of the ablation configs")
    ap.add_argument("--core-repeats", type=int, default=1, help="CV repeats of AB-MIL and full SAM-MIL")
    ap.add_argument("--max-epochs", type=int, default=None, help="accuracy section epochs (default per mode)")
    ap.add_argument("--jobs", type=int, default=2, help="concurrent samtrain fits in the accuracy section")
    a = ap.parse_args(argv)
    keys = [k.strip() for k in a.sections.split(",") if k.strip()]
    bad = [k for k in keys if k not in ORDER]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {','.join(ORDER)}")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = a.results or (out / "RESULTS.md" if a.quick else ROOT / "bench" / "RESULTS.md")
    work = a.work or (out / "work" if a.quick else Path("/tmp/c2s_bench"))
    ctx = Ctx(out=out, quick=a.quick, repeats=1 if a.quick else a.repeats, work=work,
              large_dir=a.large_dir, medium_dir=a.medium_dir,
              extra={"accuracy_repeats": 1 if a.quick else a.accuracy_repeats,
                     "core_repeats": 1 if a.quick else a.core_repeats, "max_epochs": a.max_epochs,
                     "jobs": a.jobs})
    if a.quick:  # tiny cohorts in the scratch folder, never the big ones
        ctx.large_dir = work / "cohort_speed"
        ctx.medium_dir = work / "cohort_acc"
    command = "python bench/run_all.py " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    machine = machine_info()
    (out / "machine.json").write_text(json.dumps(machine, indent=2))
    if any(k in keys for k in ("convert", "load")) or (a.quick and "convert_cli" in keys):
        ensure_cohort(ctx.large_dir, "tiny" if a.quick else "large", ctx,
                      **({"slides": 4, "dim": 64, "min_patches": 300, "max_patches": 600} if a.quick else {}))
    if "accuracy" in keys or "baselines" in keys:
        ensure_cohort(ctx.medium_dir, "tiny" if a.quick else "medium", ctx, **({"slides": 16} if a.quick else {}))
    status = 0
    summary = []
    for key in keys:
        t = time.perf_counter()
        ctx.log(f"==== section {key} ====")
        try:
            sec = _runner(key)(ctx)
        except Exception:  # noqa: BLE001 - record the error, run the other sections, exit 1
            status = 1
            sec = Section(key, TITLES[key], "", error=traceback.format_exc())
            ctx.log(sec.error)
        secs = time.perf_counter() - t
        if sec.error:
            status = 1
        meta = {"key": key, "title": sec.title, "command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                "seconds": secs, "quick": a.quick, "error": sec.error, "data": sec.data}
        (out / f"section_{key}.md").write_text(sec.body + "\n")
        (out / f"section_{key}.json").write_text(json.dumps(meta, indent=1, default=str))
        assemble(out, results, machine, command)
        summary.append([key, "ERROR" if sec.error else "ok", f"{secs:.0f} s"])
        print(f"\n## {sec.title}\n\n{sec.body}\n", flush=True)
    assemble(out, results, machine, command)   # also when no section ran (re-assembly only)
    print(md_table(["section", "status", "time"], summary))
    print(f"wrote {results}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
