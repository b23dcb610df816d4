"""A rich progress bar on stderr for predict / eval / heatmap (a no-op when quiet)."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_bar(what: str, total: int, quiet: bool = False):
    """Yields ``advance()``; shows ``what`` with a bar, count and elapsed time unless ``quiet``."""
    if quiet:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as p:
        t = p.add_task(what, total=total)
        yield lambda: p.advance(t)
