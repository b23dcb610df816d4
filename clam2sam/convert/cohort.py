"""``clam2sam convert`` as a Python API: a feature archive -> one Zarr store with SAM segments.

Usage::

    from clam2sam.convert.cohort import ConvertOptions, convert_cohort
    report = convert_cohort(ConvertOptions(archive="feat_dir", out="cohort.zarr",
                                           segments_dir="feat_dir/segments", membership="reference"))
    print(report, report.return_code)

Slides are converted one by one (or in ``workers`` processes, one writer per slide); complete slides
already in the store are skipped (resume), incomplete ones are redone. The first failure stops the run
unless ``skip_errors``; completed slides are always kept. A JSON report is written (default
``<out>/convert_report.json``).
"""
from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from clam2sam.store import schema
from clam2sam.sources.checksums import prefetch
from clam2sam.convert.slide_job import (SegmentProvider, SlideJob, SlidePipeline, drop_slide_properties_ahead, input_paths,
                                    input_spans, read_slide_properties_ahead, run_job_safe)
from clam2sam.sources.discover import LAYOUTS, discover
from clam2sam.errors import InputFormatError, StoreError, UsageError
from clam2sam.store.fast_write import encode_threads
from clam2sam.ids import normalise_slide_id, slide_key
from clam2sam.sources.process_list import PROCESS_LIST_NAME, read_dataset_csv, read_mpp_csv, read_process_list
from clam2sam.convert.report import Report
from clam2sam.store.writer import StoreWriter, slide_is_complete, write_error
from clam2sam.convert.labels import check_labels_match, update_labels
from clam2sam.sources.urls import local_path

REPORT_NAME = "convert_report.json"
Progress = Callable[["str | None", int, int], None]


@dataclass
class ConvertOptions:
    """Options of :func:`convert_cohort` (the CLI flags of ``clam2sam convert``, same names)."""

    archive: Path
    out: Path
    layout: str | None = None                 # auto: clam-fp | clam-legacy | trident | sammil
    features_dir: Path | None = None
    pt_dir: Path | None = None
    patches_dir: Path | None = None
    sam_info_dir: Path | None = None
    segments_dir: Path | None = None          # default: <archive>/segments when present
    slides_dir: Path | None = None            # slide files: mpp, level downsamples, SAM pass input
    encoder: str | None = None
    process_list: Path | None = None          # default: <archive>/process_list_autogen.csv when present
    use_process_list: bool = True
    dataset_csv: Path | None = None           # case_id,slide_id,label
    label_col: str = "label"
    slides: tuple[str, ...] = ()              # restrict to these slide ids
    mpp: float | None = None                  # fallback mpp when the slide gives none
    mpp_csv: Path | None = None               # slide_id,mpp (wins over the slide)
    patch_size_level0: float | None = None
    level_downsamples: tuple[str, ...] = ()   # "LEVEL:FACTOR" or "SLIDE=LEVEL:FACTOR"
    legacy_downsample: float | None = None
    membership: str = schema.MEMBERSHIP_PARTITION
    overwrite: bool = False
    skip_errors: bool = False
    workers: int = 1
    report_path: Path | None = None
    checksums: bool | str = True              # True: files stored from; "all": + cross-check-only .pt; False
    break_stale_lock: bool = False
    clevel: int | None = None               # None: the codec's default (lz4 9, zstd 3)
    codec: str = "lz4"
    dask_scheduler: str | None = None         # tcp://HOST:PORT of a running Dask cluster (clam2sam.convert.dask_executor)
    dask_local: int | None = None             # start a LocalCluster of N worker processes
    extra: dict = field(default_factory=dict)  # reserved for plug-ins

    def __post_init__(self):
        for name in ("archive", "out", "features_dir", "pt_dir", "patches_dir", "sam_info_dir", "segments_dir",
                     "slides_dir", "process_list", "dataset_csv", "mpp_csv", "report_path"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                setattr(self, name, local_path(v, what=name))  # plain path or file:// URL
        self.slides = tuple(self.slides or ())
        self.level_downsamples = tuple(self.level_downsamples or ())


def parse_level_downsamples(specs) -> tuple[dict[int, float], dict[str, dict[int, float]]]:
    """Parse ``LEVEL:FACTOR`` (all slides) and ``SLIDE=LEVEL:FACTOR`` entries (comma lists allowed)."""
    glob: dict[int, float] = {}
    per: dict[str, dict[int, float]] = {}
    for spec in specs:
        for item in str(spec).split(","):
            item = item.strip()
            if not item:
                continue
            sid, _, rest = item.rpartition("=")
            try:
                lvl, fac = rest.split(":")
                lvl_i, fac_f = int(lvl), float(fac)
            except ValueError as e:
                raise UsageError(f"bad --level-downsample {item!r}",
                                 fix="write LEVEL:FACTOR or SLIDE=LEVEL:FACTOR, e.g. 1:2 or ihc_tiled=1:2") from e
            if lvl_i < 0 or not fac_f >= 1:
                raise UsageError(f"bad --level-downsample {item!r}", fix="LEVEL >= 0 and FACTOR >= 1")
            (per.setdefault(normalise_slide_id(sid), {}) if sid else glob)[lvl_i] = fac_f
    return glob, per


def _check(o: ConvertOptions) -> None:
    if o.membership not in schema.MEMBERSHIP_RULES:
        raise UsageError(f"unknown membership rule {o.membership!r}", fix=f"use one of {schema.MEMBERSHIP_RULES}")
    if o.layout is not None and o.layout not in LAYOUTS:
        raise UsageError(f"unknown layout {o.layout!r}", fix=f"use one of {LAYOUTS}")
    if o.workers < 1:
        raise UsageError("--workers must be >= 1", fix="pass --workers 1 or more")
    if o.dask_scheduler or o.dask_local is not None:
        from clam2sam.convert.dask_executor import check_dask_options
        check_dask_options(o)
    for name in ("mpp", "patch_size_level0", "legacy_downsample"):
        v = getattr(o, name)
        if v is not None and not v > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0", fix="pass a positive number")
    _check_out_apart(o)


SOURCE_OPTIONS = ("archive", "features_dir", "pt_dir", "patches_dir", "sam_info_dir", "segments_dir", "slides_dir",
                  "process_list", "dataset_csv", "mpp_csv")


def _check_out_apart(o: ConvertOptions) -> None:
    """--out must be neither a source path nor a folder holding one (the store may be written, and with
    --overwrite replaced, there)."""
    out = o.out.resolve()
    for name in SOURCE_OPTIONS:
        src = getattr(o, name)
        if src is None:
            continue
        src = src.resolve()
        flag = "ARCHIVE" if name == "archive" else f"--{name.replace('_', '-')}"
        if src == out:
            raise UsageError(f"--out is the source {flag}: the store would be written into it", path=o.out,
                             fix="choose another --out, e.g. a new folder cohort.zarr beside the archive")
        if out in src.parents:
            raise UsageError(f"--out is a folder that holds the source {flag} ({src})", path=o.out,
                             fix="choose another --out: a new folder that is not above any source "
                                 "(e.g. cohort.zarr beside the archive)")
        if o.report_path is not None:
            rp = o.report_path.resolve()
            if rp == src or (src.is_dir() and src in rp.parents and rp.exists()):
                raise UsageError(f"--report would overwrite a file of the source {flag}", path=o.report_path,
                                 fix="write the report elsewhere (default: OUT/convert_report.json)")


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
    _check(o)
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
                 and (o.overwrite or not slide_is_complete(o.out, i))][:_ahead(o.workers)]
        for sid in first:
            _read_ahead(disc.slides[sid], props=o.workers <= 1)
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
            files=disc.slides[sid], layout=disc.layout, out=o.out, membership=o.membership, label=lab.get("label"),
            case_id=lab.get("case_id"), mpp=mpps.get(sid), default_mpp=o.mpp, patch_size_level0=o.patch_size_level0,
            legacy_downsample=o.legacy_downsample, level_downsamples={**glob_lds, **slide_lds.get(sid, {})},
            process_list=plist.provenance(sid) if plist else None, encoder=disc.encoder or o.encoder,
            expect_pt=expect_pt, checksums=o.checksums, clevel=o.clevel, codec=o.codec)))
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


def _record(o, writer: StoreWriter, report: Report, sid: str, status: str, res) -> bool:
    """Book one slide's outcome; returns False when the run must stop."""
    if status == "ok":
        try:
            writer.check_compatible(sid, res.feature_dim, res.feature_dtype)
        except StoreError as e:
            shutil.rmtree(o.out / schema.SLIDES_GROUP / slide_key(sid), ignore_errors=True)
            status, res = "error", e
        else:
            try:
                writer.record_features(res.feature_dim, res.feature_dtype)
                writer.set_encoder(res.encoder)
            except StoreError as e:  # the slide is complete; the root attrs are recovered by finalize
                report.error(str(e))
            for w in res.warnings:
                report.warn(w)
            try:
                writer.commit_overwrite()   # the first new slide is there: the replaced store goes
            except StoreError as e:
                report.error(str(e))
            report.converted(sid, path=res.path, seconds=round(res.seconds, 3), n_patches=res.n_patches,
                             n_segments=res.n_segments)
            return True
    report.failed(sid, res if isinstance(res, BaseException) else str(res), path=getattr(res, "path", None))
    if not o.skip_errors:
        report.warn(f"stopped at the first failure (slide {sid!r}); completed slides are kept -- fix it, or pass "
                    "--skip-errors to record failures and go on")
        return False
    return True


PREFETCH_AHEAD = 2  # slides whose input files are read ahead into the page cache (1 worker)


def _ahead(workers: int) -> int:
    """Slides read ahead: the ones being converted by the other workers, + PREFETCH_AHEAD."""
    return PREFETCH_AHEAD + max(1, workers) - 1


def _read_ahead(files, *, props: bool = True):
    """Queue a later slide's inputs for the page cache: whole files, and the cross-checked parts of its .pt;
    ``props``: first open the slide (OpenSlide), in this process, for :func:`run_job` to take."""
    before = partial(read_slide_properties_ahead, files.slide_path) if props and files.slide_path else None
    return prefetch(input_paths(files), input_spans(files), before=before)


def _worker_init(threads: int) -> None:
    """Worker process start: its share of the encode threads (:func:`clam2sam.store.fast_write.encode_threads`)."""
    os.environ["CLAM2SAM_THREADS"] = str(threads)


def _run(o: ConvertOptions, writer: StoreWriter, pending, report: Report, provider, progress) -> None:
    if o.dask_scheduler or o.dask_local:
        from clam2sam.convert.dask_executor import run_on_dask
        return run_on_dask(o, writer, pending, report, provider, progress)
    total = len(pending)
    if progress:
        progress(None, 0, total)
    done = 0
    workers = min(o.workers, max(total, 1))
    if workers > 1 and provider is not None:
        try:
            pickle.dumps(provider)
        except Exception:  # noqa: BLE001
            report.warn("the segment provider cannot be sent to worker processes: converting with --workers 1")
            workers = 1
    if workers <= 1:
        jobs = [j for _, j in pending if isinstance(j, SlideJob)]
        pos = {id(j): i for i, j in enumerate(jobs)}   # the first PREFETCH_AHEAD: see convert_cohort
        pipe = SlidePipeline(provider)                  # the next slide is prepared while this one is written
        try:
            for sid, job in pending:
                if isinstance(job, SlideJob):
                    ahead = pos[id(job)] + PREFETCH_AHEAD  # later slides' files come off the disk meanwhile
                    if ahead < len(jobs):
                        _read_ahead(jobs[ahead].files)
                    nxt = jobs[pos[id(job)] + 1] if pos[id(job)] + 1 < len(jobs) else None
                    for j in (job, nxt):
                        if j is not None:
                            j.expected_dim = writer.root.attrs.get("feature_dim")
                            j.expected_dtype = writer.root.attrs.get("feature_dtype")
                    status, res = pipe.run(job, nxt)
                else:
                    status, res = "error", job
                done += 1
                keep_going = _record(o, writer, report, sid, status, res)
                if progress:
                    progress(sid, done, total)
                if not keep_going:
                    return
        finally:
            pipe.close()
        return
    for sid, job in pending:  # failures known before any work (duplicates)
        if not isinstance(job, SlideJob):
            done += 1
            if not _record(o, writer, report, sid, "error", job):
                return
    jobs = [(sid, j) for sid, j in pending if isinstance(j, SlideJob)]
    threads = max(1, encode_threads() // workers)  # the CPUs are shared out: no oversubscription
    import multiprocessing as mp                      # only with --workers N: not loaded otherwise
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as ex:
        futs = {ex.submit(run_job_safe, j, provider): sid for sid, j in jobs}
        stop = False
        nxt = _ahead(workers)        # jobs start in submission order: keep the next ones coming off the disk
        for fut in as_completed(futs):
            if nxt < len(jobs) and not stop:
                _read_ahead(jobs[nxt][1].files, props=False)   # each worker opens its own slides
                nxt += 1
            sid = futs[fut]
            if fut.cancelled():
                continue
            try:
                status, res = fut.result()
            except Exception as e:  # noqa: BLE001 - worker crashed (e.g. killed for memory)
                status, res = "error", e
            done += 1
            if not stop and not _record(o, writer, report, sid, status, res):
                stop = True
                for f in futs:
                    f.cancel()
            elif stop and status == "ok":
                _record(o, writer, report, sid, status, res)
            if progress:
                progress(sid, done, total)
