"""A click group that imports a command's module only when that command runs (shared by both CLIs).

Commands are registered explicitly, by name, in each group's ``COMMANDS`` table; a registered module that
cannot be imported fails loudly (no silent skip).
"""
from __future__ import annotations

import importlib

import click


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
