"""Smoke test of the bench harness: ``bench/run_all.py --quick`` on tiny cohorts in tmp_path.

Checks that one command runs every section, exits 0 and writes a RESULTS markdown with every section
header and real numbers (ratios, bags/s, seconds, AUCs) -- not that any speed target is met.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADERS = ("## Machine", "## 1. Convert", "## 2. Loading", "## 3. Training step", "## 4. Accuracy", "## 5. SAM pass",
           "## 6. Baselines")


def _section(md: str, title: str) -> str:
    start = md.index(title)
    nxt = md.find("\n## ", start + 1)
    return md[start:nxt if nxt > 0 else len(md)]


def test_quick_harness_writes_results(tmp_path):
    out = tmp_path / "out"
    results = tmp_path / "RESULTS.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--out", str(out), "--quick",
                        "--results", str(results), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    md = results.read_text()
    for h in HEADERS:
        assert h in md, f"missing section header {h!r}"
    assert "Section failed" not in md
    assert re.search(r"\| cores \| \d+ \|", md)
    # every measured section has a table row with at least one real number
    for title in HEADERS[1:5]:
        body = _section(md, title)
        rows = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("|---")]
        assert len(rows) >= 2, title
        assert any(re.search(r"\d+\.\d+", r) for r in rows[1:]), title
    # raw figures: ratios are finite and positive
    conv = json.loads((out / "section_convert.json").read_text())["data"]
    for c in conv["configs"].values():
        assert c["ratio_vs_h5py"] > 0 and math.isfinite(c["ratio_vs_h5py"])
        assert c["peak_proc_rss_mb"] > 0
    load = json.loads((out / "section_load.json").read_text())["data"]["methods"]
    assert all(m["bags_per_s"] > 0 for m in load.values()) and len(load) == 4
    step = json.loads((out / "section_step.json").read_text())["data"]["cells"]
    assert all(c["abmil_s"] > 0 and c["sammil_s"] > 0 for c in step.values())
    acc = json.loads((out / "section_accuracy.json").read_text())["data"]["configs"]
    assert set(acc) == {"abmil", "sammil"}
    for c in acc.values():
        assert 0.0 <= c["auc"][0] <= 1.0
    # the default results file is never touched by a quick run
    assert str(results) in p.stderr


def test_glance_reports_the_full_cohort_per_regime(tmp_path):
    # the target is stated for the whole (>= 50 slide) cohort: its medians head the glance table
    sys.path.insert(0, str(ROOT))
    from bench.run_all import glance

    data = {"full": {"slides": 50, "feature_mb": 2523.0, "largest_slide_mb": 77.0,
                     "disk": {"ratio_vs_h5py": 1.34}, "warm": {"ratio_vs_h5py": 13.9}}}
    (tmp_path / "section_convert.json").write_text(json.dumps({"data": data}))
    table = "\n".join(glance(tmp_path))            # header lines + one markdown table block
    disk = [ln for ln in table.splitlines() if "all 50 slides" in ln and "disk 200 MiB/s" in ln]
    warm = [ln for ln in table.splitlines() if "all 50 slides" in ln and "warm cache" in ln]
    assert len(disk) == 1 and "1.34x" in disk[0] and disk[0].rstrip(" |").endswith("met")
    assert len(warm) == 1 and "13.90x" in warm[0] and "MISSED" in warm[0]
