"""``samtrain compare`` (paired comparison of runs) and ``samtrain report`` (re-draw a run's report)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from clam2sam.cli import options as opt
COMPARE_EPILOG = """\b
Examples:
  samtrain compare runs/sammil runs/abmil                   # table on stderr, files in runs/compare_sammil_vs_abmil/
  samtrain compare runs/sammil runs/abmil --json > cmp.json
  samtrain compare runs/sammil runs/abmil runs/t3 --out cmp/  # the first run against each of the others
\b
The runs must share their splits (same store, --seed, --folds, --repeats, --val-frac or --splits);
otherwise the command refuses and names the folds and slides that differ.
Outputs: OUT/forest.png, OUT/index.html (self-contained), OUT/compare.json.
"""

REPORT_EPILOG = """\b
Examples:
  samtrain report runs/sammil                               # re-draws runs/sammil/report/
  samtrain report runs/sammil --out /tmp/sammil_report
\b
Outputs: learning curves per fold, ROC and precision-recall (per fold, pooled with a 95 % bootstrap band),
confusion matrix, probability histograms (PNGs) and index.html with everything inlined.
"""


def _default_out(runs: tuple[str, ...]) -> Path:
    names = [Path(r).resolve().name for r in runs]
    return Path(runs[0]).resolve().parent / ("compare_" + "_vs_".join(names))


@click.command("compare", epilog=COMPARE_EPILOG, context_settings={"max_content_width": 100})
@click.argument("runs", nargs=-1, required=True, type=opt.dir_type(path_type=None),
                metavar="RUN_A RUN_B [RUN ...]")
@opt.out_option("Where to write forest.png, index.html and compare.json. Default: compare_A_vs_B beside RUN_A.")
@opt.json_option("Print the comparison as JSON to stdout.")
@opt.n_boot_option(default=10000, help="Bootstrap resamples of the paired mean differences.")
@opt.seed_option(default=0, help="Bootstrap seed.")
def compare(runs, out, as_json, n_boot, seed):
    """Compare RUN_A with each further run on the same folds: paired mean differences with 95 % intervals.

    For every metric (test AUC, accuracy, F1, balanced accuracy, validation AUC) the folds x repeats of the
    runs are paired; the table gives the mean of A - B, its percentile bootstrap interval and in how many
    folds A beats B; the pooled test AUC is compared on the same slides with a paired bootstrap.
    """
    from clam2sam.jsonable import jsonable
    from trainer.compare import compare_runs, table_text
    from trainer.compare_page import write_compare

    res = compare_runs(list(runs), n_boot=n_boot, seed=seed)
    paths = write_compare(res, Path(out) if out else _default_out(runs))
    click.echo(table_text(res), err=True)
    click.echo(f"forest plot: {paths['forest']}\npage: {paths['page']}", err=True)
    if as_json:
        click.echo(json.dumps(jsonable(res), indent=1))


@click.command("report", epilog=REPORT_EPILOG, context_settings={"max_content_width": 100})
@click.argument("run", type=opt.dir_type(path_type=None))
@opt.out_option("Where to write. Default: RUN/report.")
@opt.n_boot_option(default=2000, help="Bootstrap resamples of the pooled test AUC interval.")
def report(run, out, n_boot):
    """Draw (again) the report of a finished run: PNGs and one self-contained RUN/report/index.html."""
    from trainer.run_report import write_report

    page = write_report(run, out, n_boot=n_boot)
    click.echo(f"report: {page}", err=True)


commands = [compare, report]
