"""The ``samtrain`` command group (fit, predict, eval, heatmap, compare, report).

Errors become exit codes in :func:`clam2sam.cli.boundary.run_cli`, shared with ``clam2sam``.
"""
from __future__ import annotations

import click

from clam2sam.cli.boundary import run_cli
from clam2sam.cli.lazy_group import LazyGroup
from trainer import __version__

EPILOG = """\b
Examples:
  samtrain fit cohort.zarr --out runs/sammil
  samtrain fit cohort.zarr --out runs/abmil --model abmil
  samtrain predict runs/sammil cohort.zarr --out preds/
"""


# name -> ("module:attribute", first paragraph of the command's docstring): imported when the command runs
COMMANDS = {
    "fit": ("trainer.cli.fit:fit",
            "Train and evaluate a MIL model on STORE with stratified, case-grouped cross-validation."),
    "predict": ("trainer.cli.predict:predict",
                "Predict every slide of STORE with SOURCE (a run directory, a fold directory or a checkpoint)."),
    "eval": ("trainer.cli.predict:eval_",
             "Predict a labelled STORE with SOURCE and score it (AUC, accuracy, F1, confusion matrix, ROC)."),
    "heatmap": ("trainer.cli.predict:heatmap",
                "Draw one heatmap PNG per slide from SOURCE (a predict output, or a run / checkpoint with --store)."),
    "compare": ("trainer.cli.compare:compare",
                "Compare RUN_A with each further run on the same folds: paired mean differences with 95 % "
                "intervals."),
    "report": ("trainer.cli.compare:report",
               "Draw (again) the report of a finished run: PNGs and one self-contained RUN/report/index.html."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="samtrain")
def cli() -> None:
    """Train and evaluate SAM-MIL and baseline MIL models on a clam2sam store."""


def main(argv=None) -> None:
    run_cli(cli, argv)


if __name__ == "__main__":  # python -m trainer.cli.main / torchrun -m trainer.cli.main
    main()
