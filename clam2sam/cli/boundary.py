"""The one place where errors become exit codes, shared by ``clam2sam`` and ``samtrain``.

Exit codes: 0 ok, 1 some slides failed / checks found problems / a library error, 2 usage error,
130 interrupted. Library code raises :class:`clam2sam.errors.Clam2SamError` subclasses and never exits;
:func:`run_cli` turns them into one ``Error: ...`` line on stderr and the exit code.
"""
from __future__ import annotations

import sys

import click

from clam2sam.errors import Clam2SamError, UsageError


class LazyConsole:
    """A rich Console made on first use: a command that has nothing to draw or say on a stream (``--quiet``,
    ``--json`` on a pipe) never imports rich, a noticeable share of its start-up."""

    def __init__(self, **kwargs):
        self._kwargs, self._console = kwargs, None

    def real(self):
        """The rich Console itself (for rich objects that take one, e.g. a Progress)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name):
        return getattr(self.real(), name)


def run_cli(group: click.Group, argv=None) -> None:
    """Run a click group with the project's single error boundary (exits with the command's code)."""
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
