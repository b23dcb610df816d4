"""``clam2sam export-segments``: SAM-MIL ``segments/<id>.pkl`` files from the SAM pass cache."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clam2sam.cli import options as opt
from clam2sam.sam import cache as sam_cache
from clam2sam.sam.export import export_segments, resolve_cache_dir

EPILOG = """\b
Examples:
  clam2sam export-segments cohort.zarr --out segments/
  clam2sam export-segments cohort.zarr --out segments/ --slide TCGA-01 --overwrite
  # then, e.g., SAM-MIL: extract_features_from_h5.py ... --use_sam --data_segment_dir segments
  # or back through clam2sam: clam2sam convert feat_dir --segments-dir segments --out other.zarr
"""


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@click.command("export-segments", epilog=EPILOG)
@click.argument("store", type=opt.dir_type())
@opt.out_option("Folder for <slide_id>.pkl (SAM-MIL's --data_segment_dir).", type=opt.dir_type(exists=False),
                required=True, short=True, dest="out_dir")
@opt.slide_option("Export only this slide (repeatable).", metavar="ID")
@opt.sam_cache_option("Cache folder when it is not STORE/sam_cache.", dest="cache_dir", exists=True)
@click.option("--patch-size", type=float, default=None,
              help="image_info['patch_size'] (level-0 patch side) when the cache does not record it.")
@opt.overwrite_option("Replace existing pickles.")
def command(store: Path, out_dir: Path, slides, cache_dir, patch_size, overwrite) -> int:
    """Write SAM-MIL-compatible Segments pickles from STORE's cached SAM results.

    Each pickle is the list SAM-MIL's step 01 writes ([image_info, mask records with a dense bool
    'segmentation', ...]), readable with numpy 1 and 2 and by `clam2sam convert --segments-dir`.
    """
    err = Console(stderr=True)
    cdir = resolve_cache_dir(store, cache_dir)
    todo = list(slides) or sam_cache.list_cached(cdir)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("exporting", total=len(todo))
        for sid in todo or [None]:
            if sid is None:  # nothing cached: let the library raise its clear error
                export_segments(store, out_dir, cache_dir=cdir, overwrite=overwrite, patch_size=patch_size)
                break
            bar.update(task, description=f"exporting {sid}")
            results += export_segments(store, out_dir, slides=[sid], cache_dir=cdir, overwrite=overwrite,
                                       patch_size=patch_size)
            bar.advance(task)
    pk = sum(r.pickle_bytes for r in results)
    cb = sum(r.cache_bytes for r in results)
    for r in results:
        err.print(f"{r.path}: {r.n_masks} masks, {_mb(r.pickle_bytes)} (cache {_mb(r.cache_bytes)})", highlight=False)
    ratio = f", {pk / cb:.0f}x the cache" if cb else ""
    err.print(f"wrote {len(results)} pickles to {out_dir}: {_mb(pk)}{ratio}", highlight=False)
    return 0
