"""The report and compare pages as a user sees them: opened in headless Chromium, screenshot and rendered DOM.

Needs a Chromium binary (Debian package ``chromium``; .ci/run installs it when apt-get is usable). Without
one the tests skip and say why.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.trainer.fake_runs import assert_picture, make_fake_run
from trainer.compare import compare_runs
from trainer.compare_page import write_compare
from trainer.run_report import HEADINGS, write_report

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_browser():
    env = os.environ.get("SAMTRAIN_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, NAMES) if p), None)


BROWSER = _find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium not found (install Debian's `chromium` "
                                                        "package; .ci/run installs it when apt-get is usable)")


def _chromium(args, tmp_path, timeout=120):
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",  # the page must need no network
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _open(page, tmp_path, name, size=(1280, 2400)):
    shot = tmp_path / f"{name}.png"
    _chromium([f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()], tmp_path)
    dom = _chromium(["--dump-dom", page.resolve().as_uri()], tmp_path)
    return shot, dom


def _check_screenshot(shot, size=(1280, 2400), min_coloured=3000):
    px = assert_picture(shot, min_bytes=20_000, min_std=0.05)
    assert px.shape[:2] == (size[1], size[0])
    non_white = (px.min(axis=2) < 0.9).mean()
    assert non_white > 0.03, non_white
    # the figures rendered: the page's own text and rules are grey, only the inlined plots are coloured
    coloured = (px.max(axis=2) - px.min(axis=2) > 0.25).sum()
    assert coloured > min_coloured, coloured
    # the title is drawn at the top of the page
    assert (px[:80].min(axis=2) < 0.3).sum() > 200


def test_run_report_in_chromium(tmp_path):
    run = make_fake_run(tmp_path / "sammil", seed=4, signal=1.2, folds=3, model="sam-mil",
                        flags={"r0_f2": ["test AUC far from the others"]},
                        extra={"sg2m_ratio_spread": {"per_segment": [0.1, 0.3, 0.5, 0.7, 0.9]}})
    page = write_report(run, n_boot=300)
    shot, dom = _open(page, tmp_path, "report")
    _check_screenshot(shot)
    assert "<h1>Run report: sammil</h1>" in dom
    for h in HEADINGS.values():
        assert f"<h2>{h}</h2>" in dom, h
    assert dom.count("<img") == 7 and "test AUC far from the others" in dom


def test_compare_page_in_chromium(tmp_path):
    a = make_fake_run(tmp_path / "sammil", seed=1, signal=2.0, folds=3)
    b = make_fake_run(tmp_path / "abmil", seed=2, signal=0.8, folds=3)
    paths = write_compare(compare_runs([a, b], n_boot=1000), tmp_path / "cmp")
    shot, dom = _open(paths["page"], tmp_path, "compare", size=(1280, 1600))
    _check_screenshot(shot, size=(1280, 1600), min_coloured=400)  # the forest plot's bars
    assert "<h1>Comparison: sammil vs abmil</h1>" in dom
    for h in ("Runs", "Paired differences", "Forest plot", "Per-fold values"):
        assert f"<h2>{h}</h2>" in dom, h
    assert "test AUC (pooled)" in dom


def test_screenshot_check_rejects_a_blank_page(tmp_path):
    """The checks above can fail: an empty page gives a uniform screenshot."""
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    shot, _ = _open(page, tmp_path, "blank", size=(400, 300))
    px = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(shot).convert("RGB"), float) / 255
    assert px.std() < 0.01
    with pytest.raises(AssertionError):
        _check_screenshot(shot, size=(400, 300))
