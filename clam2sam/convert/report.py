"""Per-slide outcomes of a batch run; owns the exit code (0 ok, 1 some slides failed)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    slide_id: str
    status: str                 # "converted" | "skipped" | "failed"
    reason: str = ""
    path: str | None = None
    seconds: float = 0.0
    n_patches: int | None = None
    n_segments: int | None = None


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)   # run-level problems (store metadata / report not written)
    labels_updated: list[str] = field(default_factory=list)  # complete slides whose label / case_id was rewritten

    def converted(self, slide_id: str, **kw) -> None:
        self.outcomes.append(Outcome(slide_id, "converted", **kw))

    def skipped(self, slide_id: str, reason: str, **kw) -> None:
        self.outcomes.append(Outcome(slide_id, "skipped", reason, **kw))

    def failed(self, slide_id: str, err: BaseException | str, **kw) -> None:
        self.outcomes.append(Outcome(slide_id, "failed", str(err), **kw))

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def error(self, msg: str) -> None:
        """A problem outside any one slide (e.g. disk full while consolidating): the exit code becomes 1."""
        self.errors.append(msg)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def return_code(self) -> int:
        return 1 if self.by_status("failed") or self.errors else 0

    def counts(self) -> dict[str, int]:
        return {s: len(self.by_status(s)) for s in ("converted", "skipped", "failed")}

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "warnings": list(self.warnings), "errors": list(self.errors),
                "labels_updated": list(self.labels_updated), "slides": [asdict(o) for o in self.outcomes]}

    def write_json(self, path: str | os.PathLike) -> None:
        """Atomic write (tmp + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)

    def __str__(self) -> str:
        c = self.counts()
        up = f", labels updated for {len(self.labels_updated)}" if self.labels_updated else ""
        return f"{c['converted']} converted, {c['skipped']} skipped, {c['failed']} failed{up}"
