"""The ``clam2sam`` command group. The only place (with trainer/cli.py) where errors become exit codes.

Exit codes: 0 ok, 1 some slides failed / checks found problems, 2 usage error.
Diagnostics go to stderr; stdout carries machine-readable output only when asked (``--json``).
"""
from __future__ import annotations

import sys

import click

from clam2sam import __version__
from clam2sam.errors import Clam2SamError, UsageError

EPILOG = """\b
Examples:
  clam2sam convert ARCHIVE --segments-dir ARCHIVE/segments --out cohort.zarr
  clam2sam inspect cohort.zarr
  clam2sam inspect cohort.zarr --check
  clam2sam inspect cohort.zarr --plot pictures/
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clam2sam")
def cli() -> None:
    """Reuse CLAM / TRIDENT / SAM-MIL feature archives for SAM-MIL.

    Converts per-slide features + coordinates + SAM segments into one chunked, compressed
    Zarr store, inspects it, and (with `samtrain`) trains on it.
    """


def _register() -> None:
    import importlib

    for mod in ("clam2sam.cli_convert", "clam2sam.cli_inspect", "clam2sam.cli_export"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # command not built yet
            raise
        cli.add_command(m.command)


_register()


def run_cli(group: click.Group, argv=None) -> None:
    """Run a click group with the project's single error boundary."""
    try:
        rc = group.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UsageError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except Clam2SamError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted; completed slides are kept, re-run to resume.", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


def main(argv=None) -> None:
    run_cli(cli, argv)
