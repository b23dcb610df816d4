"""The ``clam2sam`` command group. The only place (with trainer/cli/main.py) where errors become exit codes.

Exit codes: 0 ok, 1 some slides failed / checks found problems, 2 usage error.
Diagnostics go to stderr; stdout carries machine-readable output only when asked (``--json``).
"""
from __future__ import annotations

import importlib
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



class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when one is run (or its own help is shown).

    ``lazy_commands`` maps a command name to ``("module:attribute", short help)``. The short help is the
    first paragraph of the command's docstring (``tests/clam2sam/cli/test_imports.py`` checks that
    it matches), so ``--help`` and shell completion list every command without importing any of them.
    """

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, attr = self.lazy_commands[cmd_name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return self.commands.get(cmd_name)

    def _listed(self, ctx: click.Context, prefix: str = "") -> list[tuple[str, click.Command]]:
        """(name, command) of the visible commands; a stand-in holding the short help for unloaded ones."""
        out = []
        for name in self.list_commands(ctx):
            if not name.startswith(prefix):
                continue
            cmd = self.commands.get(name) or click.Command(name, help=self.lazy_commands[name][1])
            if not cmd.hidden:
                out.append((name, cmd))
        return out

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, from :meth:`_listed` (same layout, same short help)."""
        commands = self._listed(ctx)
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in commands])

    def shell_complete(self, ctx: click.Context, incomplete: str):
        from click.shell_completion import CompletionItem

        items = [CompletionItem(name, help=cmd.get_short_help_str()) for name, cmd in self._listed(ctx, incomplete)]
        return items + click.Command.shell_complete(self, ctx, incomplete)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            no_such = getattr(click.exceptions, "NoSuchCommand", None)
            if no_such is None or not isinstance(e, no_such) or e.possibilities:
                raise
            # click suggests from the loaded commands only: suggest from every command name
            raise no_such(e.command_name, possibilities=self.list_commands(ctx), ctx=ctx) from None


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
