"""``clam2sam inspect``: what a store holds, whether it is intact, and pictures of its segments.

Output contract: the human summary is the command's output and goes to stdout; with ``--json`` stdout
carries only one JSON object. Progress, notes and skipped checks go to stderr. Exit code 1 when
``--check`` finds a problem.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from clam2sam.cli import options as opt
from clam2sam.cli.boundary import LazyConsole
from clam2sam.errors import StoreError
from clam2sam.inspect.stats import QUANTILE_KEYS, cohort_stats, flatten_scalars, slide_stats, to_json
from clam2sam.store.reader import open_store

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from clam2sam.inspect.checks import CheckResult

_GEOMETRY_KEYS = ("geometry.", "image_info.")  # SAM attrs that differ per slide by nature

EPILOG = """\b
Examples:
  clam2sam inspect cohort.zarr                       # cohort summary
  clam2sam inspect cohort.zarr --slide TCGA-01       # one slide + its largest segments
  clam2sam inspect cohort.zarr --json > stats.json   # the same numbers as JSON
  clam2sam inspect cohort.zarr --check               # integrity check, exit code 1 on problems
  clam2sam inspect cohort.zarr --plot pictures/ --slides-dir /data/slides --max-slides 5


The summary goes to stdout (with --json: only the JSON object); progress and notes go to stderr.
Exit codes: 0 ok, 1 --check found a problem / store or slide unreadable, 2 usage error.
"""


def _stderr_is_plain() -> bool:
    """stderr is not a terminal and nothing asks rich to treat it as one (then a progress bar shows nothing)."""
    forced = any(os.environ.get(k) is not None for k in ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE"))
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return not (tty or forced or "ipykernel" in sys.modules)


class _PlainProgress:
    """What a transient rich Progress writes to a stream that is not a terminal (one line end when it stops),
    without loading rich."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        sys.stderr.write("\n")
        sys.stderr.flush()

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass


def _progress(err):
    if _stderr_is_plain():
        return _PlainProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err.real(), transient=True)


@click.command("inspect", epilog=EPILOG)
@click.argument("store", type=opt.dir_type(path_type=None))
@opt.slide_option("Report one slide (plus its largest segments).", multiple=False, dest="slide_id", metavar="ID")
@opt.json_option("Print the numbers as one JSON object on stdout.")
@click.option("--check", "do_check", is_flag=True,
              help="Verify the store against itself; exit code 1 when a problem is found.")
@click.option("--no-source-check", is_flag=True, help="With --check: do not re-hash the source files.")
@click.option("--plot", "plot_dir", type=opt.dir_type(exists=False, path_type=None), metavar="DIR",
              help="Write PNG segment maps per slide and cohort histograms into DIR.")
@opt.slides_dir_option("With --plot: draw segments over slide thumbnails found here (any extension).",
                       path_type=None, metavar="DIR")
@click.option("--max-slides", type=click.IntRange(min=0), default=20, show_default=True,
              help="With --plot: at most this many per-slide pictures.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --slide: number of largest segments listed.")
@click.pass_context
def command(ctx, store, slide_id, as_json, do_check, no_source_check, plot_dir, slides_dir, max_slides, top):
    """Summarise, check and draw a clam2sam store.

    Shows slides (complete / incomplete), patches, features, labels, segments per slide, coverage
    (share of patches in a segment), segment sizes and areas, group-feature norms, membership rule,
    SAM provenance and the store's size and compression ratio.
    """
    err = LazyConsole(stderr=True)
    result = {}
    check: CheckResult | None = None
    if do_check:
        from clam2sam.inspect.checks import check_store

        with _progress(err) as prog:
            task = prog.add_task("checking", total=None)
            check = check_store(store, slide_ids=[slide_id] if slide_id else None,
                                verify_sources=not no_source_check, on_slide=lambda _s: prog.advance(task))
    try:
        reader = open_store(store)
    except StoreError:
        if check is None:
            raise
        reader = None  # the check already names the problem
    if reader is not None:
        try:
            if slide_id:
                result = slide_stats(reader, slide_id, top=top)
            else:
                with _progress(err) as prog:
                    task = prog.add_task("reading slides", total=len(reader.slide_ids()))
                    result = cohort_stats(reader, on_slide=lambda _s: prog.advance(task))
        except StoreError as e:
            if check is None:
                raise
            err.print(f"[yellow]no statistics:[/] {e}", highlight=False)
    if check is not None:
        result["check"] = check.to_dict()
    if plot_dir and reader is not None:
        from clam2sam.inspect.plots import plot_store

        with _progress(err) as prog:
            task = prog.add_task("drawing", total=None)
            pr = plot_store(reader, plot_dir, slide_ids=[slide_id] if slide_id else None, slides_dir=slides_dir,
                            max_slides=max_slides, on_slide=lambda _s: prog.advance(task))
        result["plots"] = {"files": [str(p) for p in pr.files], "notes": pr.notes}
        for n in pr.notes:
            err.print(f"note: {n}", highlight=False)
    if check is not None:
        for n in check.notes:
            err.print(f"note: {n}", highlight=False)

    if as_json:
        click.echo(to_json(result))
    else:
        from rich.console import Console

        out = Console()
        if not out.is_terminal:
            out = Console(width=150)  # files and pipes: wide enough for the tables
        if result.get("kind") == "cohort":
            _print_cohort(out, result)
        elif result.get("kind") == "slide":
            _print_slide(out, result)
        if "plots" in result:
            out.print(f"wrote {len(result['plots']['files'])} pictures to {plot_dir}", highlight=False)
        if check is not None:
            _print_check(out, check)
    if check is not None and not check.ok:
        ctx.exit(1)
    return 0


# --------------------------------------------------------------------------------------------- render

def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def _bytes(n) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _dist_table(title: str, rows: list[tuple[str, dict]]) -> Table:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("quantity")
    for k in QUANTILE_KEYS:
        t.add_column(k, justify="right")
    for name, q in rows:
        t.add_row(name, *[_fmt(q.get(k)) for k in QUANTILE_KEYS])
    return t


def _store_lines(out: Console, st: dict) -> None:
    ratio = st.get("compression_ratio")
    out.print(f"[bold]Store[/] {st['path']}  (schema {st['schema_version']}, clam2sam {st['tool_version']}, "
              f"membership {st['membership']}, encoder {st.get('encoder') or 'unknown'})", highlight=False)
    out.print(f"  on disk {_bytes(st['disk_bytes'])}, uncompressed arrays {_bytes(st['uncompressed_bytes'])}, "
              f"compression ratio {ratio:.2f}x" if ratio is not None else "  empty store", highlight=False)


def _print_cohort(out: Console, r: dict) -> None:
    _store_lines(out, r["store"])
    sl, p, seg, cov = r["slides"], r["patches"], r["segments"], r["coverage"]
    inc = f" ({', '.join(sl['incomplete_ids'][:10])})" if sl["incomplete"] else ""
    out.print(f"[bold]Slides[/] {sl['complete']} complete, {sl['incomplete']} incomplete{inc}"
              + (f", {sl['unreadable']} unreadable" if sl["unreadable"] else ""), highlight=False)
    out.print(f"[bold]Features[/] {r['features']['dim']}-d {r['features']['dtype']}", highlight=False)
    labels = ", ".join(f"{k}: {v}" for k, v in r["labels"]["counts"].items()) or "none"
    out.print(f"[bold]Labels[/] {labels}; unlabelled {r['labels']['unlabelled']}", highlight=False)
    out.print(f"[bold]Patches[/] {_fmt(p['total'])} total   [bold]Segments[/] {_fmt(seg['total'])} total, "
              f"{seg['slides_without_segments']} slides without segments", highlight=False)
    share = cov["share"]
    cov_text = "-" if share is None else (f"{share:.1%} of patches in a segment ({_fmt(cov['unassigned'])} "
                                          f"unassigned, {_fmt(cov['multi_member'])} in several segments)")
    out.print(f"[bold]Coverage[/] {cov_text}", highlight=False)
    out.print(f"[bold]Membership[/] {r['membership']}   [bold]Layouts[/] {r['layouts']}", highlight=False)
    out.print(_dist_table("Distributions", [
        ("patches / slide", p["per_slide"]), ("segments / slide", seg["per_slide"]),
        ("coverage / slide", cov["per_slide"]), ("segment size (patches)", seg["size_patches"]),
        ("segment area (px^2, L0)", seg["area_level0_px"]), ("segment area (um^2)", seg["area_um2"]),
        ("group-feature norm", r["group_feature_norm"])]))
    sam = r["sam"]
    out.print(f"[bold]SAM[/] {sam['slides_with_sam']} slides with SAM provenance", highlight=False)
    for k, v in sam["provenance"].items():
        if k.startswith(_GEOMETRY_KEYS):
            continue  # per-slide geometry: see --slide
        if v["distinct"] == 1 or (v["distinct"] <= 3 and v["distinct"] < sam["slides_with_sam"]):
            vals = ", ".join(f"{x} ({n} slides)" for x, n in v["top"].items())
        else:
            vals = f"{v['distinct']} distinct values"
        out.print(f"  {k}: {vals}", highlight=False)
    from rich.table import Table

    t = Table(title="Slides", title_justify="left")
    for c in ("slide", "label", "patches", "segments", "coverage", "median segment size"):
        t.add_column(c, justify="left" if c in ("slide", "label") else "right")
    for row in r["slide_table"][:50]:
        t.add_row(row["slide_id"], str(row["label"]), _fmt(row["n_patches"]), _fmt(row["n_segments"]),
                  "-" if row["coverage"] is None else f"{row['coverage']:.1%}", _fmt(row["median_segment_size"]))
    out.print(t)
    if len(r["slide_table"]) > 50:
        out.print(f"  ... {len(r['slide_table']) - 50} more slides (use --json for all)")
    for e in r["errors"]:
        out.print(f"[red]unreadable[/] {e['slide']}: {e['message']}", highlight=False)


def _print_slide(out: Console, r: dict) -> None:
    _store_lines(out, r["store"])
    seg, cov, d = r["segments"], r["coverage"], r["disk"]
    out.print(f"[bold]Slide[/] {r['slide_id']}  label {r['label']}, case {r['case_id']}, layout {r['layout']}, "
              f"membership {r['membership']}, mpp {r['mpp']}, patch size {r['patch_size_level0']} px",
              highlight=False)
    out.print(f"  {_fmt(r['patches']['total'])} patches, {r['features']['dim']}-d {r['features']['dtype']}; "
              f"{seg['total']} segments ({seg['empty']} empty); extent {r['patches']['extent_level0']}",
              highlight=False)
    if cov["share"] is not None:
        out.print(f"  coverage {cov['share']:.1%} ({cov['unassigned']} unassigned, {cov['multi_member']} in "
                  f"several segments); on disk {_bytes(d['disk_bytes'])}, ratio "
                  f"{(d['compression_ratio'] or 0):.2f}x", highlight=False)
    out.print(_dist_table("Distributions", [
        ("segment size (patches)", seg["size_patches"]), ("segment area (px^2, L0)", seg["area_level0_px"]),
        ("segment area (um^2)", seg["area_um2"]), ("group-feature norm", r["group_feature_norm"])]))
    from rich.table import Table

    t = Table(title=f"Largest {len(r['largest_segments'])} segments", title_justify="left")
    for c in ("segment", "source index", "patches", "area (level-0 px^2)", "area (um^2)", "SAM area",
              "group-feature norm"):
        t.add_column(c, justify="right")
    for s in r["largest_segments"]:
        t.add_row(*[_fmt(s[k]) for k in ("segment", "source_index", "n_patches", "area_level0_px", "area_um2",
                                         "sam_area", "group_feature_norm")])
    out.print(t)
    for k, v in (r["sam"] or {}).items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in flatten_scalars(v).items())
        out.print(f"  sam.{k}: {v}", highlight=False)
    for s in r["sources"]:
        out.print(f"  source {s.get('role')}: {s.get('path')} ({_fmt(s.get('size'))} B)", highlight=False)


def _print_check(out: Console, check: CheckResult) -> None:
    if check.ok:
        out.print(f"[green]check passed[/]: {check.slides_checked} slides, no problem found", highlight=False)
        return
    from rich.table import Table

    t = Table(title=f"check found {len(check.problems)} problems", title_justify="left")
    for c in ("slide", "array", "problem"):
        t.add_column(c, overflow="fold")
    for p in check.problems:
        t.add_row(p.slide or "-", p.array or "-", p.message)
    out.print(t)
