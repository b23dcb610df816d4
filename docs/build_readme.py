"""Assemble README.md from docs/README_head.md and the per-topic docs (the docs are the source of truth).

    python docs/build_readme.py          # rewrite README.md
    python docs/build_readme.py --check  # exit 1 when README.md is out of date (used by a test)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# (file, section title in the README)
PARTS = [
    ("convert.md", None), ("sam.md", None), ("inspect.md", None), ("trainer.md", None), ("report.md", None),
    ("baselines.md", None), ("cluster.md", None), ("failure-modes.md", None), ("fixtures.md", None),
]


def _demote(text: str) -> str:
    """Shift headings one level down and make relative links work from the repository root."""
    out = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"^#{1,5} ", line):
            line = "#" + line
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\]\((?!https?://|#|/|\.\./|docs/)(img/[^)]+)\)", r"](docs/\1)", text)
    return text


def build() -> str:
    head = (DOCS / "README_head.md").read_text()
    body = [head.rstrip(), ""]
    for name, _ in PARTS:
        p = DOCS / name
        if p.exists():
            body += [_demote(p.read_text()).rstrip(), ""]
    tail = DOCS / "README_tail.md"
    if tail.exists():
        body += [tail.read_text().rstrip(), ""]
    return "\n".join(body)


if __name__ == "__main__":
    text = build()
    target = ROOT / "README.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.exists() and target.read_text() == text else 1)
    target.write_text(text)
    print(f"wrote {target} ({len(text.splitlines())} lines)")
