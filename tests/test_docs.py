"""The README front door and the documentation site: the site builds strictly, the README stays short and
links only to files that exist, and no user-facing text tells how the project was developed."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# user-facing prose: the README, CONTRIBUTING, the site's pages, the bench and fixtures READMEs
PROSE = [README, ROOT / "CONTRIBUTING.md", ROOT / "bench" / "README.md", ROOT / "fixtures" / "README.md",
         *sorted((ROOT / "docs").rglob("*.md"))]

# phrases that tell the project's history rather than what a user or contributor can act on
HISTORY_PHRASES = [
    r"\bthe issue\b", r"\bissues? #?\d+\b", r"\bthis session\b", r"\bnext session\b", r"\bsessions?\b",
    r"\bearlier runs?\b", r"\bprevious runs?\b", r"\bwas lent\b", r"\blent\b", r"\bdevice time\b",
    r"\bdeviations? from the plan\b", r"\bthe plan\b", r"\bwe were asked\b", r"\basked for\b",
    r"\bthe brief\b", r"\bthe lead\b", r"\bhelper engineer\b", r"\bold tree\b", r"\bnot run yet\b",
    r"\bbuild_readme\b", r"\bREADME_head\b",
]
_HISTORY = re.compile("|".join(HISTORY_PHRASES), re.IGNORECASE)

# markdown links and images: [text](target) -- targets that are not URLs or in-page anchors
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _local_targets(text: str) -> list[str]:
    out = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_docs_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (or '.[test]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    site = tmp_path / "site"
    # the overview, the install page and an API page generated from the docstrings are there
    assert "Zarr v3 store" in (site / "index.html").read_text()
    assert "torch==2.13.0" in (site / "install" / "index.html").read_text()
    api = (site / "reference" / "errors" / "index.html").read_text()
    assert "Clam2SamError" in api and "StoreLockedError" in api
    # the pages included from outside docs/ carry their text (not the include directive)
    contributing = (site / "contributing" / "index.html").read_text()
    assert "Where new code goes" in contributing and "--8&lt;--" not in contributing


def test_docs_build_fails_on_a_broken_link(tmp_path):
    """The project's mkdocs.yml is strict: a page in the nav that links to a missing page fails the build."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (or '.[test]')")
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "broken.md").write_text("# Broken\n\nSee [the missing page](nowhere.md).\n")
    cfg = (ROOT / "mkdocs.yml").read_text()
    for old, new in (("docs_dir: docs", f"docs_dir: {docs}"), ('paths: ["."]', f'paths: ["{ROOT}"]'),
                     ('base_path: ["."]', f'base_path: ["{ROOT}"]')):
        assert old in cfg, old
        cfg = cfg.replace(old, new)
    (tmp_path / "mkdocs.yml").write_text(cfg.rstrip("\n") + "\n  - Broken: broken.md\n")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode != 0
    assert "nowhere.md" in proc.stdout + proc.stderr


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    assert pages, "docs/ holds no page"
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"


def test_readme_is_a_front_door_with_working_links():
    text = README.read_text()
    n_lines = len(text.splitlines())
    assert n_lines <= 250, f"README.md has {n_lines} lines; the manual belongs in docs/ (at most 250)"
    for heading in ("## Install", "## The pipeline in five commands", "## The store (schema version 1)",
                    "## How it differs from the SAM-MIL reference code", "## Documentation"):
        assert heading in text, heading
    targets = _local_targets(text)
    assert "docs/index.md" in targets and "CONTRIBUTING.md" in targets and "bench/RESULTS.md" in targets
    broken = [t for t in targets if not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    # the accuracy statement comes with its protocol and a paired interval
    assert "95 % CI" in text and "case-grouped K-fold" in text and "samtrain compare" in text


def test_readme_quick_start_scripts_exist_and_ci_runs_the_test_script():
    readme = README.read_text()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"./{script}" in readme and (ROOT / script).stat().st_mode & 0o111
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in (ROOT / "scripts" / "test.sh").read_text()


def test_readme_install_names_own_environment_cpu_and_cuda():
    text = README.read_text()
    assert "pip install ." in text and "pip install -e ." in text
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "CUDA" in text


def test_no_development_history_in_user_facing_text():
    hits = []
    for path in PROSE:
        for no, line in enumerate(path.read_text().splitlines(), 1):
            m = _HISTORY.search(line)
            if m:
                hits.append(f"{path.relative_to(ROOT)}:{no}: {m.group(0)!r}: {line.strip()[:100]}")
    assert not hits, "development-history text in the docs:\n" + "\n".join(hits)


def test_history_check_catches_history_phrases():
    for phrase in ("As the issue asked for, we ...", "In an earlier run this took 3 s", "the machine was lent",
                   "Deviations from the plan", "we were asked to", "see issue 12", "this session measured"):
        assert _HISTORY.search(phrase), phrase
    for fine in ("an equivalent store", "excellent", "the run resumes", "segment-anything issues none"):
        assert not _HISTORY.search(fine), fine
