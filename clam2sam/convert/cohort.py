"""``clam2sam convert`` as a Python API: a feature archive -> one Zarr store with SAM segments.

Usage::

    from clam2sam.convert.cohort import ConvertOptions, convert_cohort
    report = convert_cohort(ConvertOptions(archive="feat_dir", out="cohort.zarr",
                                           segments_dir="feat_dir/segments", membership="reference"))
    print(report, report.return_code)

Slides are converted one by one (or in ``workers`` processes, or on Dask: :mod:`clam2sam.convert.executors`,
one writer per slide); complete slides
already in the store are skipped (resume), incomplete ones are redone. The first failure stops the run
unless ``skip_errors``; completed slides are always kept. A JSON report is written (default
``<out>/convert_report.json``).
"""
from __future__ import annotations

from clam2sam.convert.booking import Booking, Progress
from clam2sam.convert.executors import make_executor
from clam2sam.convert.labels import check_labels_match, update_labels
from clam2sam.convert.options import ConvertOptions, check_options, parse_level_downsamples  # noqa: F401 - API
from clam2sam.convert.read_ahead import read_ahead, slides_ahead
from clam2sam.convert.report import Report
from clam2sam.convert.slide_job import SegmentProvider, SlideJob, drop_slide_properties_ahead
from clam2sam.errors import InputFormatError, StoreError, UsageError
from clam2sam.ids import normalise_slide_id
from clam2sam.sources.discover import discover
from clam2sam.sources.process_list import PROCESS_LIST_NAME, read_dataset_csv, read_mpp_csv, read_process_list
from clam2sam.store.writer import StoreWriter, slide_is_complete, write_error

REPORT_NAME = "convert_report.json"


def convert_cohort(options: ConvertOptions, segment_provider: SegmentProvider | None = None,
                   progress: Progress | None = None) -> Report:
    """Convert every selected slide of an archive into the store ``options.out``.

    Args:
        options: see :class:`ConvertOptions`.
        segment_provider: optional ``(slide_id, coords (N,2) int64, patch_size_level0, slide_path | None)
            -> MaskSet | None`` (e.g. the SAM pass); when given it replaces the Segments pickles.
        progress: optional callback ``(slide_id | None, done, total)``, called once at the start and after
            each slide.

    Returns:
        The Report (``report.return_code``: 0 all good, 1 some slides failed).

    Raises:
        UsageError: bad options. InputFormatError: unknown layout / unreadable CSVs. StoreError: the store is
        locked, of another schema, or not a store.
    """
    o = options
    check_options(o)
    report = Report()
    disc = discover(o.archive, layout=o.layout, features_dir=o.features_dir, pt_dir=o.pt_dir,
                    patches_dir=o.patches_dir, sam_info_dir=o.sam_info_dir, segments_dir=o.segments_dir,
                    slides_dir=o.slides_dir, encoder=o.encoder)
    for w in disc.warnings:
        report.warn(w)
    pl_path = o.process_list or ((o.archive / PROCESS_LIST_NAME) if (o.archive / PROCESS_LIST_NAME).is_file() else None)
    plist = read_process_list(pl_path) if (o.use_process_list and pl_path) else None
    labels = read_dataset_csv(o.dataset_csv, o.label_col) if o.dataset_csv else None
    mpps = read_mpp_csv(o.mpp_csv) if o.mpp_csv else {}
    glob_lds, slide_lds = parse_level_downsamples(o.level_downsamples)
    if segment_provider is None and disc.dirs.get("segments_pkl") is None:
        report.warn("no segments (no --segments-dir, no SAM pass): every patch gets segment -1, S = 0")

    ids = list(disc.slides) + [s for s in disc.duplicates if s not in disc.slides]
    ids = sorted(set(ids))
    if o.slides:
        wanted = {normalise_slide_id(s) for s in o.slides}
        missing = sorted(wanted - set(ids))
        if missing:  # before the store is created: a typo leaves nothing behind
            some = ", ".join(repr(i) for i in ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")
            raise UsageError(f"--slide {', '.join(map(repr, missing))}: no such slide in the archive "
                             f"(it has {some or 'no slides'})", path=o.archive,
                             fix="check the id (the file name without its extension) or drop that --slide")
        ids = [i for i in ids if i in wanted]
    if plist is not None:
        for sid in sorted(set(plist.rows) - set(disc.slides)):
            why = (f"its feature file {disc.hidden[sid]} is hidden (name starts with '.') and was left out: rename it"
                   if sid in disc.hidden else "has no features")
            report.warn(f"slide {sid!r} is listed in {plist.path} (status {plist.status(sid)}) but {why}")
        for sid in [i for i in ids if i not in plist.rows]:
            report.skipped(sid, f"features present but not listed in {plist.path} (pass --no-process-list "
                                "to convert it anyway)")
        ids = [i for i in ids if i in plist.rows]
    if labels is not None:
        check_labels_match(labels, ids, o.dataset_csv, report, hidden=disc.hidden)

    if not (o.dask_scheduler or o.dask_local):  # the disk starts on the first slides now
        first = [i for i in ids if i in disc.slides and i not in disc.duplicates
                 and (o.overwrite or not slide_is_complete(o.out, i))][:slides_ahead(o.workers)]
        for sid in first:
            read_ahead(disc.slides[sid], props=o.workers <= 1)
    writer = StoreWriter(o.out, encoder=disc.encoder or o.encoder, membership=o.membership,
                         overwrite=o.overwrite, break_stale_lock=o.break_stale_lock, clevel=o.clevel,
                         codec=o.codec)
    for note in writer.notes:
        report.warn(note)
    expect_pt = disc.layout in ("clam-fp", "clam-legacy", "sammil") and disc.dirs.get("features_pt") is not None
    pending: list[tuple[str, object]] = []   # ("job", SlideJob) | ("fail", error)
    relabel: dict[str, dict] = {}            # complete slides: labels / case ids from the dataset CSV
    for sid in ids:
        if sid in disc.duplicates:
            pending.append((sid, InputFormatError(
                f"duplicate slide id after normalisation: {disc.duplicates[sid]}", slide=sid,
                fix="rename or remove one of the files (ids drop extensions such as .ome.tif)")))
            continue
        if not o.overwrite and writer.is_complete(sid):
            report.skipped(sid, "already complete in the store (resume); pass --overwrite to redo")
            if labels is not None and sid in labels:
                relabel[sid] = labels[sid]
            continue
        lab = (labels or {}).get(sid, {})
        if segment_provider is None and disc.dirs.get("segments_pkl") and disc.slides[sid].segments_pkl is None:
            report.warn(f"slide {sid!r}: no Segments pickle in {disc.dirs['segments_pkl']}: converted without "
                        "segments (S = 0)")
        pending.append((sid, SlideJob(
            files=disc.slides[sid], layout=disc.layout, options=o, label=lab.get("label"),
            case_id=lab.get("case_id"), mpp=mpps.get(sid), level_downsamples={**glob_lds, **slide_lds.get(sid, {})},
            process_list=plist.provenance(sid) if plist else None, encoder=disc.encoder or o.encoder,
            expect_pt=expect_pt)))
    try:
        if relabel:
            update_labels(writer, relabel, o.dataset_csv, report)
        _run(o, writer, pending, report, segment_provider, progress)
    finally:
        drop_slide_properties_ahead()
        try:
            if writer.abandon_overwrite():
                report.warn(f"no slide was converted: the store that --overwrite was to replace is kept as it was "
                            f"({o.out})")
            writer.finalize()
        except StoreError as e:  # disk full / permissions: complete slides stay readable; a re-run redoes it
            report.error(str(e))
        finally:
            writer.close()
    report.outcomes.sort(key=lambda x: x.slide_id)
    rp = o.report_path or (o.out / REPORT_NAME)
    try:
        report.write_json(rp)
    except OSError as e:
        report.error(str(write_error(e, path=rp, what="cannot write the JSON report")))
    return report


def _run(o: ConvertOptions, writer: StoreWriter, pending, report: Report, provider, progress) -> None:
    """Run the pending jobs on the executor ``o`` asks for; book every outcome (stop at the first failure
    unless ``o.skip_errors``)."""
    booking = Booking(o, writer, report, progress, total=len(pending))
    executor = make_executor(o, provider, len(pending), booking.expected, report.warn)
    outcomes = executor.run(pending)
    try:
        for sid, status, res in outcomes:
            booking.book(sid, status, res)
            if booking.stopped:
                executor.stop()
    finally:
        outcomes.close()
