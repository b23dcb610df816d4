"""``clam2sam convert``: the CLI face of :func:`clam2sam.convert.cohort.convert_cohort`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from clam2sam.cli import options as opt
from clam2sam.cli.boundary import LazyConsole
from clam2sam.cli.sam_options import add_sam_options
from clam2sam.convert.cohort import REPORT_NAME, ConvertOptions, convert_cohort
from clam2sam.sam.provider import SamPassOptions, build_sam_provider
from clam2sam.sources.discover import LAYOUTS

_dir = opt.dir_type()    # paths or file:// URLs
_file = opt.file_type()

EPILOG = """\b
Examples:
  # CLAM feat_dir + SAM-MIL Segments pickles, SAM-MIL's own membership rule:
  clam2sam convert feat_dir --segments-dir sammil/segments --slides-dir slides \\
      --membership reference --out cohort.zarr
  # slide files not at hand: give the pickles' vis_level downsample instead
  clam2sam convert feat_dir --segments-dir segments --level-downsample 1:2 --out cohort.zarr
  # TRIDENT job folder, labels from CLAM's dataset CSV, 4 processes, go on after bad slides:
  clam2sam convert trident_job --encoder uni_v1 --dataset-csv labels.csv \\
      --workers 4 --skip-errors --out cohort.zarr
  # one task per slide on a running Dask cluster (shared filesystem):
  clam2sam convert /shared/feat_dir --dask-scheduler tcp://sched:8786 --out /shared/cohort.zarr
\b
Re-running the same command resumes: complete slides are skipped, interrupted ones redone.
Exit codes: 0 all slides converted (or already there), 1 some slides failed, 2 usage error.
"""

def _summary(console, report, out: Path, report_path: Path) -> None:
    from rich.table import Table

    t = Table(title=f"clam2sam convert -> {out}")
    for c in ("slide", "status", "patches", "segments", "seconds"):
        t.add_column(c, overflow="fold")
    rows = report.outcomes
    shown = [o for o in rows if o.status != "skipped"][:40]
    style = {"converted": "green", "skipped": "yellow", "failed": "bold red"}
    for o in shown:
        t.add_row(o.slide_id, f"[{style[o.status]}]{o.status}[/]", "" if o.n_patches is None else str(o.n_patches),
                  "" if o.n_segments is None else str(o.n_segments), f"{o.seconds:.2f}" if o.seconds else "")
    if len(shown) < len(rows):
        t.caption = f"{len(rows) - len(shown)} more rows (skipped or beyond 40) in the JSON report"
    if shown:
        console.print(t)
    reasons: dict[str, int] = {}
    for o in report.by_status("skipped"):
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    for r, n in reasons.items():
        console.print(f"[yellow]skipped {n}:[/] {r}", highlight=False)
    for o in report.by_status("failed"):
        console.print(f"[bold red]failed:[/] {o.reason}", highlight=False)
    for e in report.errors:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
    for w in report.warnings[:30]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if len(report.warnings) > 30:
        console.print(f"... {len(report.warnings) - 30} more warnings in {report_path}")
    console.print(f"{report}. Report: {report_path}", highlight=False)


@click.command("convert", epilog=EPILOG)
@click.argument("archive", type=_dir)
@opt.out_option("Zarr store to create or resume (a path or file:// URL).", type=opt.LocalPath(path_type=Path),
                required=True, short=True)
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="Force the archive layout (default: detect).")
@click.option("--features-dir", type=_dir, default=None, help="Folder of feature .h5 files (default: ARCHIVE/h5_files).")
@click.option("--pt-dir", type=_dir, default=None, help="Folder of feature .pt files (default: ARCHIVE/pt_files).")
@click.option("--patches-dir", type=_dir, default=None, help="Folder of CLAM/TRIDENT patches .h5 (coords + geometry).")
@click.option("--sam-info-dir", type=_dir, default=None, help="SAM-MIL sam_info/ folder (marks group rows).")
@click.option("--segments-dir", type=_dir, default=None,
              help="SAM-MIL segments/<id>.pkl folder (default: ARCHIVE/segments when present).")
@opt.slides_dir_option()
@click.option("--encoder", default=None, help="Encoder name (selects TRIDENT's features_<encoder>; recorded).")
@click.option("--process-list", type=_file, default=None,
              help="CLAM process_list_autogen.csv selecting slides (default: ARCHIVE/process_list_autogen.csv).")
@click.option("--no-process-list", is_flag=True, help="Ignore any process list: convert every slide found.")
@click.option("--dataset-csv", type=_file, default=None, help="CLAM dataset CSV case_id,slide_id,label.")
@click.option("--label-col", default="label", show_default=True, help="Label column of --dataset-csv.")
@opt.slide_option("Convert only this slide (repeatable).", metavar="ID")
@opt.mpp_options
@click.option("--patch-size-level0", type=float, default=None,
              help="Patch side in level-0 pixels (default: from the patches h5 / TRIDENT attrs).")
@opt.level_downsample_option
@click.option("--legacy-downsample", type=float, default=None,
              help="Legacy CLAM (create_patches.py) coords: level-0 pixels per patch-level pixel.")
@opt.membership_option
@opt.overwrite_option()
@opt.skip_errors_option
@opt.workers_option
@click.option("--dask-scheduler", metavar="tcp://HOST:PORT", default=None,
              help="Convert on a running Dask cluster, one task per slide (workers must see ARCHIVE and --out "
                   "at the same paths). See docs/cluster.md.")
@click.option("--dask-local", type=click.IntRange(min=1), default=None, metavar="N",
              help="Start a local Dask cluster of N worker processes for this run.")
@click.option("--report", "report_path", type=opt.LocalPath(dir_okay=False, path_type=Path), default=None,
              help=f"JSON report path (default: OUT/{REPORT_NAME}).")
@click.option("--codec", type=click.Choice(["lz4", "zstd", "none"]), default="lz4", show_default=True,
              help="Blosc codec for the store's arrays: lz4 (fast to write and to read: training keeps up with "
                   "torch.load of .pt files), zstd (a few % smaller, bags load ~2.6x slower), none.")
@click.option("--clevel", type=click.IntRange(0, 9), default=None,
              help="Compression level (default: 9 for lz4, 3 for zstd).")
@click.option("--checksums", "checksums", type=click.Choice(["stored", "all", "none"]), default="stored",
              show_default=True,
              help="sha256 of the source files: 'stored' = every file whose content goes into the store (a CLAM "
                   ".pt beside its h5 is only cross-checked: size recorded), 'all' = also those, 'none' = sizes only.")
@click.option("--no-checksums", is_flag=True, help="Same as --checksums none (faster on huge archives).")
@opt.break_stale_lock_option
@opt.json_option()
@opt.quiet_option("No progress bar or summary table (errors still shown).")
@add_sam_options
def command(archive: Path, out: Path, no_process_list: bool, slides, report_path, checksums: str, no_checksums: bool,
            as_json: bool, quiet: bool, **kwargs) -> int:
    """Convert a CLAM / TRIDENT / SAM-MIL feature archive into one Zarr store with SAM segments.

    ARCHIVE is CLAM's --feat_dir (h5_files/, pt_files/, with patches/ beside them), a TRIDENT job
    or configuration folder, or a SAM-MIL feat_dir. Sources are only read, never modified.
    """
    sam = opt.settings_from(SamPassOptions, kwargs)
    provider = build_sam_provider(sam, slides_dir=kwargs.get("slides_dir"), store=out,
                                  segments_dir=kwargs.get("segments_dir"), workers=kwargs.get("workers") or 1,
                                  verbose=not quiet)
    options = opt.settings_from(ConvertOptions, kwargs, strict=True, archive=archive, out=out, slides=slides,
                                use_process_list=not no_process_list, report_path=report_path,
                                checksums=False if no_checksums or checksums == "none" else
                                ("all" if checksums == "all" else True))
    console = LazyConsole(stderr=True)   # rich only when something is drawn or said (not with -q on success)
    rp = report_path or out / REPORT_NAME
    if quiet:
        report = convert_cohort(options, segment_provider=provider)
    else:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        cols = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*cols, console=console.real(), transient=False) as bar:
            task = bar.add_task("converting", total=None)

            def progress(sid, done, total):
                bar.update(task, total=total, completed=done,
                           description=f"converting {sid}" if sid else "converting")

            report = convert_cohort(options, segment_provider=provider, progress=progress)
        _summary(console, report, out, rp)
    if report.labels_updated:  # the store's content changed: said even with --quiet
        ids = ", ".join(report.labels_updated[:20]) + (" ..." if len(report.labels_updated) > 20 else "")
        console.print(f"labels / case ids updated from {options.dataset_csv} for {len(report.labels_updated)} "
                      f"complete slide(s): {ids}", highlight=False, soft_wrap=True)
    if quiet:
        for o in report.by_status("failed"):
            console.print(f"[red]failed:[/] {o.reason}", highlight=False)
        for e in report.errors:
            console.print(f"[red]error:[/] {e}", highlight=False)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    return report.return_code
