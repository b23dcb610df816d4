"""Click options shared by the commands of both CLIs (``clam2sam`` and ``samtrain``), each declared once.

A flag used by several commands (``--out``, ``--slide``, ``--json``, ``-q``, ``--slides-dir``,
``--overwrite``, ``--device``, ...) is declared here only: its name, destination and type. A command passes
its own help wording (and, where the commands differ, the default or whether the path must exist). A flag of
one command only is declared in that command's module. ``tests/clam2sam/test_layers.py`` checks that no flag
is declared twice.

Every path option and argument takes a local path or a ``file://`` URL (:class:`LocalPath`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from clam2sam.errors import UsageError
from clam2sam.sources.urls import local_path
from clam2sam.store import schema


class LocalPath(click.Path):
    """``click.Path`` that also takes ``file://`` URLs (made local paths); other URL schemes fail clearly."""

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = str(local_path(value, what=param.human_readable_name if param else "path"))
            except UsageError as e:
                self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


def dir_type(*, exists: bool = True, path_type=Path) -> LocalPath:
    """A folder (a path or file:// URL)."""
    return LocalPath(exists=exists, file_okay=False, path_type=path_type)


def file_type(*, exists: bool = True, path_type=Path) -> LocalPath:
    """A file (a path or file:// URL)."""
    return LocalPath(exists=exists, dir_okay=False, path_type=path_type)


def stack(*decorators):
    """One decorator applying ``decorators`` in the order written (the first is the first option shown)."""
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def settings_from(cls, params: dict, *, strict: bool = False, **values):
    """A frozen settings dataclass ``cls`` built from a command's parameters: every field of ``cls`` found in
    ``params`` is taken (and removed from it), ``values`` win. Each option thus travels under its one name.
    ``strict``: every parameter left must be a field (a flag that would go nowhere is a programming error)."""
    names = {f.name for f in dataclasses.fields(cls)}
    taken = {k: params.pop(k) for k in list(params) if k in names}
    if strict and params:
        raise TypeError(f"{cls.__name__} has no field for the parameter(s) {sorted(params)}")
    return cls(**{**taken, **values})


# ------------------------------------------------------------------ flags shared by several commands

def out_option(help: str, *, type=None, required: bool = False, short: bool = False, dest: str = "out"):
    """``--out`` (``-o`` with ``short``): where a command writes; a path or file:// URL."""
    return click.option("--out", *(("-o",) if short else ()), dest, type=type or LocalPath(file_okay=False),
                        required=required, help=help)


def slide_option(help: str, *, multiple: bool = True, dest: str = "slides", metavar: str | None = None):
    """``--slide ID``: restrict a command to this slide (repeatable with ``multiple``)."""
    return click.option("--slide", dest, multiple=multiple, metavar=metavar, help=help)


def json_option(help: str = "Print the JSON report on stdout."):
    """``--json``: machine-readable output on stdout (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def quiet_option(help: str):
    """``-q`` / ``--quiet``: no progress bar (errors are still shown)."""
    return click.option("--quiet", "-q", "quiet", is_flag=True, help=help)


def slides_dir_option(help: str = "Folder of the slide files (.svs, .tif, ...): true mpp, level downsamples and "
                                  "size are read with OpenSlide.", *, path_type=Path, metavar: str | None = None):
    """``--slides-dir DIR``: the folder of the slide files."""
    return click.option("--slides-dir", type=dir_type(path_type=path_type), default=None, metavar=metavar,
                        help=help)


def overwrite_option(help: str = "Replace an existing clam2sam store (default: resume it). Only a store "
                                  "clam2sam wrote is replaced, and only once the new run has its first slide; "
                                  "other files and folders are never deleted."):
    """``--overwrite``: replace what the command would otherwise keep or resume."""
    return click.option("--overwrite", is_flag=True, help=help)


def device_option(help: str, *, default: str, choices=None):
    """``--device``: where the model runs."""
    kw = {"type": click.Choice(choices)} if choices else {}
    return click.option("--device", default=default, show_default=True, help=help, **kw)


def labels_option(help: str, *, exists: bool = False):
    """``--labels CSV``: slide labels from a CSV instead of the store's."""
    return click.option("--labels", type=file_type(exists=exists, path_type=None), help=help)


def seed_option(*, default: int = 0, help: str | None = None):
    """``--seed``: random seed."""
    return click.option("--seed", default=default, show_default=True, type=int, help=help)


def n_boot_option(*, default: int, help: str):
    """``--n-boot``: bootstrap resamples."""
    return click.option("--n-boot", default=default, show_default=True, type=click.IntRange(100, 1_000_000),
                        help=help)


def alpha_option(*, default: float, help: str, type=float):
    """``--alpha``: a weight in [0, ...] (fit: the pseudo-bag loss; heatmap: the patches' opacity)."""
    return click.option("--alpha", default=default, show_default=True, type=type, help=help)


def sam_cache_option(help: str, *, dest: str = "sam_cache", exists: bool = False, metavar: str | None = None):
    """``--sam-cache DIR``: the SAM pass's result cache."""
    return click.option("--sam-cache", dest, type=dir_type(exists=exists), default=None, metavar=metavar,
                        help=help)


# ------------------------------------------------------------------ convert's options of stores and slides

workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Convert slides in N parallel processes (one writer per slide). 1 already keeps up with a slow disk "
         "(NAS, HDD: the next slides are read ahead); 2+ pay off on large cohorts on fast storage.")

skip_errors_option = click.option(
    "--skip-errors", is_flag=True,
    help="Record a failing slide in the report and go on (default: stop at the first failure; "
         "completed slides are kept either way).")

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

mpp_options = stack(
    click.option("--mpp", type=float, default=None,
                 help="Microns per level-0 pixel for slides whose file gives none."),
    click.option("--mpp-csv", type=file_type(), default=None,
                 help="CSV 'slide_id,mpp' (wins over the slide file)."),
)
