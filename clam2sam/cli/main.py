"""The ``clam2sam`` command group: its commands, registered by name. Errors become exit codes in
:mod:`clam2sam.cli.boundary` (shared with ``samtrain``).

Exit codes: 0 ok, 1 some slides failed / checks found problems, 2 usage error.
Diagnostics go to stderr; stdout carries machine-readable output only when asked (``--json``).
"""
from __future__ import annotations

import click

from clam2sam import __version__
from clam2sam.cli.boundary import run_cli
from clam2sam.cli.lazy_group import LazyGroup

EPILOG = """\b
Examples:
  clam2sam convert ARCHIVE --segments-dir ARCHIVE/segments --out cohort.zarr
  clam2sam inspect cohort.zarr
  clam2sam inspect cohort.zarr --check
  clam2sam inspect cohort.zarr --plot pictures/
"""


# name -> ("module:attribute", first paragraph of the command's docstring): imported when the command runs
COMMANDS = {
    "convert": ("clam2sam.cli.convert:command",
                "Convert a CLAM / TRIDENT / SAM-MIL feature archive into one Zarr store with SAM segments."),
    "export-segments": ("clam2sam.cli.export:command",
                        "Write SAM-MIL-compatible Segments pickles from STORE's cached SAM results."),
    "inspect": ("clam2sam.cli.inspect:command", "Summarise, check and draw a clam2sam store."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clam2sam")
def cli() -> None:
    """Reuse CLAM / TRIDENT / SAM-MIL feature archives for SAM-MIL.

    Converts per-slide features + coordinates + SAM segments into one chunked, compressed
    Zarr store, inspects it, and (with `samtrain`) trains on it.
    """


def main(argv=None) -> None:
    run_cli(cli, argv)
