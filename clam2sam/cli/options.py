"""Click options shared by commands that read slides or write stores (convert, SAM pass, ...).

Each helper is a decorator; ``click`` is only imported by CLI modules.
"""
from __future__ import annotations

from pathlib import Path

import click

from clam2sam.store import schema
from clam2sam.errors import UsageError
from clam2sam.sources.urls import local_path


class LocalPath(click.Path):
    """``click.Path`` that also takes ``file://`` URLs (made local paths); other URL schemes fail clearly."""

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = str(local_path(value, what=param.human_readable_name if param else "path"))
            except UsageError as e:
                self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


_dir = LocalPath(exists=True, file_okay=False, path_type=Path)
_file = LocalPath(exists=True, dir_okay=False, path_type=Path)


def _stack(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


slides_dir_option = click.option(
    "--slides-dir", type=_dir, default=None,
    help="Folder of the slide files (.svs, .tif, ...): true mpp, level downsamples and size are read with OpenSlide.")

workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Convert slides in N parallel processes (one writer per slide). 1 already keeps up with a slow disk "
         "(NAS, HDD: the next slides are read ahead); 2+ pay off on large cohorts on fast storage.")

skip_errors_option = click.option(
    "--skip-errors", is_flag=True,
    help="Record a failing slide in the report and go on (default: stop at the first failure; "
         "completed slides are kept either way).")

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace an existing clam2sam store (default: resume it). Only a store clam2sam wrote is replaced, and "
         "only once the new run has its first slide; other files and folders are never deleted.")

break_stale_lock_option = click.option(
    "--break-stale-lock", is_flag=True,
    help="Take over a store lock that cannot be verified: left by a process on another host, or on a file system "
         "without flock (e.g. NFS mounted nolock). Not needed after a crash on this host: the lock dies with it.")

membership_option = click.option(
    "--membership", type=click.Choice(schema.MEMBERSHIP_RULES), default=schema.MEMBERSHIP_PARTITION,
    show_default=True,
    help="'smallest-centre': a patch belongs to the smallest mask covering its centre (a partition). "
         "'reference': SAM-MIL's own rule (patches may be in several masks), to reproduce its inputs exactly.")

level_downsample_option = click.option(
    "--level-downsample", "level_downsamples", multiple=True, metavar="[SLIDE=]LEVEL:FACTOR",
    help="Downsample of a pyramid level when the slide file is not available, e.g. '1:2' for all slides or "
         "'ihc_tiled=1:2' for one (repeatable; wins over the slide file).")

mpp_options = _stack(
    click.option("--mpp", type=float, default=None,
                 help="Microns per level-0 pixel for slides whose file gives none."),
    click.option("--mpp-csv", type=_file, default=None,
                 help="CSV 'slide_id,mpp' (wins over the slide file)."),
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
