"""The ``samtrain`` command group (fit, predict, eval, heatmap). Errors become exit codes in clam2sam.cli.run_cli."""
from __future__ import annotations

import click

from trainer import __version__

EPILOG = """\b
Examples:
  samtrain fit cohort.zarr --out runs/sammil
  samtrain fit cohort.zarr --out runs/abmil --model abmil
  samtrain predict runs/sammil cohort.zarr --out preds/
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="samtrain")
def cli() -> None:
    """Train and evaluate SAM-MIL and baseline MIL models on a clam2sam store."""


def _register() -> None:
    import importlib

    for mod in ("trainer.cli_fit", "trainer.cli_predict"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        for c in getattr(m, "commands", [getattr(m, "command", None)]):
            if c is not None:
                cli.add_command(c)


_register()


def main(argv=None) -> None:
    from clam2sam.cli import run_cli

    run_cli(cli, argv)


if __name__ == "__main__":  # python -m trainer.cli / torchrun -m trainer.cli
    main()
