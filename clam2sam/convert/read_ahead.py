"""Read a later slide's inputs into the page cache while the current one is converted."""
from __future__ import annotations

from functools import partial

from clam2sam.convert.slide_job import input_paths, input_spans, read_slide_properties_ahead
from clam2sam.sources.checksums import prefetch

PREFETCH_AHEAD = 2  # slides whose input files are read ahead into the page cache (1 worker)


def slides_ahead(workers: int) -> int:
    """Slides read ahead: the ones being converted by the other workers, + PREFETCH_AHEAD."""
    return PREFETCH_AHEAD + max(1, workers) - 1


def read_ahead(files, *, props: bool = True):
    """Queue a later slide's inputs for the page cache: whole files, and the cross-checked parts of its .pt;
    ``props``: first open the slide (OpenSlide), in this process, for :func:`run_job` to take."""
    before = partial(read_slide_properties_ahead, files.slide_path) if props and files.slide_path else None
    return prefetch(input_paths(files), input_spans(files), before=before)
