"""Convert one slide: read + validate inputs, get segments, assign membership, write the slide group.

A :class:`SlideJob` is plain picklable data, so the same :func:`run_job` runs in the parent process or
in a worker of ``--workers N`` (each worker writes only its own slide group).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from clam2sam.sources.checksums import describe_sources_async
from clam2sam.sources.coords_check import check_coords
from clam2sam.sources.discover import SlideFiles
from clam2sam.errors import StoreError, UsageError
from clam2sam.masks import MaskSet
from clam2sam.convert.options import ConvertOptions
from clam2sam.convert.membership import assign_membership, build_slide_arrays, empty_membership
from clam2sam.sources.readers import PATCH_SIZE_FLAG, read_slide_inputs
from clam2sam.sources.segments_pickle import check_geometry, load_segments_pickle
from clam2sam.store.writer import write_slide_group

SegmentProvider = Callable[[str, np.ndarray, float, "Path | None"], "MaskSet | None"]


@dataclass(frozen=True)
class SlideJob:
    """Everything needed to convert one slide (picklable, frozen): the run's settings as one value
    (``options``, a :class:`~clam2sam.convert.options.ConvertOptions`) and what is this slide's own."""

    files: SlideFiles
    layout: str                              # the archive's layout as discovered
    options: ConvertOptions                  # out, membership, --mpp, --patch-size-level0, codec, ...
    label: str | None = None
    case_id: str | None = None
    mpp: float | None = None                 # from --mpp-csv (wins over the slide)
    level_downsamples: dict = field(default_factory=dict)  # {level: factor} for this slide (flags)
    process_list: dict | None = None
    encoder: str | None = None
    expect_pt: bool = False
    expected_dim: int | None = None          # the store's feature dim / dtype when the job starts
    expected_dtype: str | None = None


Expected = Callable[[], "tuple[int | None, str | None]"]   # the store's feature dim and dtype so far


def with_expected(job: SlideJob, expected: Expected) -> SlideJob:
    """The job, told the store's feature dim and dtype as they are now."""
    dim, dtype = expected()
    return replace(job, expected_dim=dim, expected_dtype=dtype)


@dataclass
class SlideResult:
    slide_id: str
    n_patches: int
    n_segments: int
    feature_dim: int
    feature_dtype: str
    encoder: str | None
    seconds: float
    path: str
    warnings: list[str] = field(default_factory=list)


def slide_properties(path: Path | None) -> dict:
    """mpp, level downsamples and level-0 size of a slide via OpenSlide (``{}`` when unavailable)."""
    if path is None:
        return {}
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as s:
            mpp = s.properties.get(openslide.PROPERTY_NAME_MPP_X)
            return {"mpp": float(mpp) if mpp else None, "level_downsamples": [float(d) for d in s.level_downsamples],
                    "dimensions": tuple(int(v) for v in s.dimensions)}
    except Exception as e:  # noqa: BLE001 - any unreadable slide only loses optional metadata
        return {"error": f"{type(e).__name__}: {e}"}


_PROPS_AHEAD: dict[str, dict] = {}


def read_slide_properties_ahead(path: Path | None) -> None:
    """Open a later slide with OpenSlide now (on the read-ahead thread, before its files are queued): its
    handful of small header reads would otherwise wait behind the whole read-ahead queue when
    :func:`run_job` opens the slide (measured: 0.06 s on an idle disk, 1.2 s behind 300 MB of queued reads
    at 200 MiB/s). :func:`run_job` takes the result."""
    if path is not None:
        _PROPS_AHEAD[str(path)] = slide_properties(path)


def drop_slide_properties_ahead() -> None:
    """Forget results of :func:`read_slide_properties_ahead` that no slide used (failed or skipped slides)."""
    _PROPS_AHEAD.clear()


def _slide_properties(path: Path | None) -> dict:
    """:func:`slide_properties`, from the read-ahead when it got there first."""
    got = _PROPS_AHEAD.pop(str(path), None) if path is not None else None
    return got if got is not None else slide_properties(path)


def _check_store_compat(job: SlideJob, dim: int, dtype) -> None:
    sid = job.files.slide_id
    if job.expected_dim is not None and dim != job.expected_dim:
        raise StoreError(f"feature dim {dim} differs from the store's {job.expected_dim}", slide=sid,
                         fix="features from different encoders go into different stores (--out)")
    if job.expected_dtype is not None and str(np.dtype(dtype)) != job.expected_dtype:
        raise StoreError(f"feature dtype {np.dtype(dtype)} differs from the store's {job.expected_dtype}", slide=sid,
                         fix="convert slides of one dtype per store (no silent casting)")


def input_paths(files: SlideFiles) -> list[Path]:
    """The files a conversion reads in full (for :func:`clam2sam.sources.checksums.prefetch`)."""
    return [p for p in (files.features_h5 or files.features_pt, files.patches_h5, files.sam_info_h5,
                        files.segments_pkl) if p is not None]


PT_SPAN = 256 << 10   # bytes of a cross-checked .pt read ahead at its head, middle and tail


def input_spans(files: SlideFiles) -> list[tuple[Path, str, int]]:
    """Parts of files a conversion reads only a few blocks of: a CLAM ``.pt`` beside its h5 is cross-checked
    at its first, middle and last rows (:func:`clam2sam.sources.readers.pt_rows_direct`). A plain tensor's rows
    fill the file between a few hundred bytes of zip records at each end, so its middle row lies within one
    row of the file's middle, and the zip directory, the pickle and rows 0 / N-1 lie in its head and tail."""
    if files.features_h5 is None or files.features_pt is None:
        return []
    return [(files.features_pt, w, PT_SPAN) for w in ("head", "middle", "tail")]


@dataclass
class PreparedSlide:
    """One slide read, checked and assigned (:func:`prepare_job`), waiting to be written (:func:`write_prepared`)."""

    arrays: object                      # SlideArrays without "sources" yet
    digests: object                     # Future of the source descriptions (hashed on a background thread)
    feature_dim: int
    feature_dtype: str
    encoder: str | None
    warnings: list[str]
    t0: float


def run_job(job: SlideJob, segment_provider: SegmentProvider | None = None) -> SlideResult:
    """Convert and write one slide; raises a Clam2SamError naming slide, file and fix on bad input."""
    return write_prepared(job, prepare_job(job, segment_provider))


def prepare_job(job: SlideJob, segment_provider: SegmentProvider | None = None) -> PreparedSlide:
    """Everything of :func:`run_job` before the write: read and check the inputs, get the segments, assign
    membership, compute group features (the sources are hashed meanwhile on a background thread)."""
    t0 = time.perf_counter()
    f = job.files
    sid = f.slide_id
    roles = [(r, getattr(f, r)) for r in ("features_h5", "features_pt", "patches_h5", "sam_info_h5")
             if getattr(f, r) is not None]
    use_pickle = segment_provider is None and f.segments_pkl is not None
    if use_pickle:
        roles.append(("segments_pkl", f.segments_pkl))
    # a .pt beside its h5 is only cross-checked (rows + samples), not stored: hashed with --checksums all
    cross = ("features_pt",) if f.features_h5 is not None and job.options.checksums != "all" else ()
    digests = describe_sources_async(roles, checksums=bool(job.options.checksums), cross_check=cross)  # overlaps reading
    loaded = read_slide_inputs(f, layout=job.layout, patch_size_level0=job.options.patch_size_level0,
                               legacy_downsample=job.options.legacy_downsample, expect_pt=job.expect_pt)
    warns = list(loaded.warnings)
    _check_store_compat(job, loaded.features.shape[1], loaded.features.dtype)
    props = _slide_properties(f.slide_path)
    if props.get("error"):
        warns.append(f"slide {sid!r}: {f.slide_path}: not readable by OpenSlide ({props['error']}); "
                     "mpp and level downsamples not taken from it")
    mpp = job.mpp or props.get("mpp") or job.options.mpp
    # the coords themselves first: a bad coords file must not be blamed on the Segments pickle
    check_coords(loaded.coords, sid, coords_path=loaded.coords_path,
                 slide_dims=props.get("dimensions"), slide_path=f.slide_path)

    def level_ds(level: int) -> float | None:
        if level in job.level_downsamples:
            return float(job.level_downsamples[level])
        lds = props.get("level_downsamples") or []
        return lds[level] if level < len(lds) else None

    ps = loaded.patch_size_level0
    maskset = None
    if segment_provider is not None:
        maskset = segment_provider(sid, loaded.coords, ps, f.slide_path)
    elif use_pickle:
        maskset = load_segments_pickle(f.segments_pkl, sid, level_ds)
        if maskset.n_masks == 0:
            warns.append(f"slide {sid!r}: {f.segments_pkl}: the Segments pickle holds no masks: converted without "
                         "segments (S = 0, every patch -1) -- regenerate the pickle if SAM should have found tissue")
    if maskset is not None:
        if ps is None:
            pps = maskset.provenance.get("image_info", {}).get("patch_size")
            if pps is None:
                raise UsageError("the patch size at level 0 is unknown (no patches h5 with attrs)", slide=sid,
                                 path=f.features_h5 or f.features_pt,
                                 fix=f"pass {PATCH_SIZE_FLAG} PIXELS or --patches-dir")
            ps = float(pps)
            warns.append(f"slide {sid!r}: patch size {ps:g} taken from the Segments pickle (assumes patch_level 0); "
                         f"pass {PATCH_SIZE_FLAG} to override")
        check_geometry(maskset, loaded.coords, ps, sid, path=f.segments_pkl if use_pickle else None,
                       slide_dims=props.get("dimensions"))
        memb = assign_membership(loaded.coords, ps, maskset, job.options.membership)
        sam = {"geometry": maskset.geometry.to_dict(), "n_masks": maskset.n_masks, **maskset.provenance}
        D = maskset.geometry.total_downsample
    else:
        memb = empty_membership(loaded.coords.shape[0], job.options.membership)
        sam, D = {}, None
    attrs = {
        "label": job.label, "case_id": job.case_id, "patch_size_level0": ps, "mpp": mpp, "layout": loaded.layout,
        "membership": job.options.membership, "sam": sam, "process_list": job.process_list,
        "encoder": loaded.encoder or job.encoder, "n_group_rows_dropped": loaded.n_group_rows,
        "patch_geometry": loaded.patch_info, "slide_path": str(f.slide_path) if f.slide_path else None,
        "source_byte_order": loaded.source_byte_order,   # the store holds little-endian features whatever it is
    }
    arrays = build_slide_arrays(sid, loaded.features, loaded.coords, memb, total_downsample=D, mpp=mpp, attrs=attrs)
    return PreparedSlide(arrays=arrays, digests=digests, feature_dim=int(loaded.features.shape[1]),
                         feature_dtype=str(loaded.features.dtype), encoder=attrs["encoder"], warnings=warns, t0=t0)


def write_prepared(job: SlideJob, p: PreparedSlide) -> SlideResult:
    """Write a prepared slide (its group, ``complete`` last) and describe the result."""
    arrays = p.arrays
    arrays.attrs["sources"] = p.digests.result()
    arrays.validate()
    write_slide_group(job.options.out, arrays, clevel=job.options.clevel, codec=job.options.codec)
    f = job.files
    return SlideResult(slide_id=f.slide_id, n_patches=arrays.n_patches, n_segments=arrays.n_segments,
                       feature_dim=p.feature_dim, feature_dtype=p.feature_dtype, encoder=p.encoder,
                       seconds=time.perf_counter() - p.t0, path=str(f.features_h5 or f.features_pt),
                       warnings=p.warnings)


class SlidePipeline:
    """Convert slides one after the other in this process, preparing the next slide (read, hash, segments,
    membership, group features: :func:`prepare_job`) on a background thread while the current one is
    compressed and written. On a machine whose CPUs would otherwise wait for one another (sources in the page
    cache or on fast storage) both phases then run at once; results, order and errors are those of
    :func:`run_job_safe` slide by slide.

    A slide is prepared ahead only when the store's feature dim and dtype are already known (set on the job
    by the caller): its compatibility check then sees the same values it would see when run in turn. The
    segment provider of a SAM pass is never run ahead (it caches results: no work for a slide the run may
    not reach); with a provider every slide runs in turn.
    """

    def __init__(self, segment_provider: SegmentProvider | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.provider = segment_provider
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clam2sam-prepare")
        self._ahead: tuple[SlideJob, object] | None = None     # (job, Future of prepare_job)

    def run(self, job: SlideJob, next_job: SlideJob | None = None):
        """Convert ``job`` (prepared ahead when it was ``next_job`` of the previous call); start preparing
        ``next_job`` meanwhile. ``("ok", SlideResult)`` or ``("error", exception)``, never raises."""
        ahead, self._ahead = self._ahead, None
        try:
            try:
                prepared = (ahead[1].result() if ahead is not None and ahead[0] == job
                            else prepare_job(job, self.provider))
            except Exception as e:  # noqa: BLE001 - reported per slide by the caller
                return "error", e
            finally:
                ahead = None                    # the future holds the slide's arrays: let them go with it
            if (next_job is not None and self.provider is None and next_job.expected_dim is not None
                    and next_job.expected_dtype is not None):
                self._ahead = (next_job, self._pool.submit(prepare_job, next_job))
            try:
                return "ok", write_prepared(job, prepared)
            except Exception as e:  # noqa: BLE001
                return "error", e
            finally:
                del prepared
        finally:
            release_memory()

    def close(self) -> None:
        """Wait for a slide being prepared ahead (nothing is written by it) and stop the thread."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].cancel()
        self._pool.shutdown(wait=True)


def run_job_safe(job: SlideJob, segment_provider: SegmentProvider | None = None):
    """Worker entry point: ``("ok", SlideResult)`` or ``("error", exception)`` (never raises)."""
    try:
        return "ok", run_job(job, segment_provider)
    except Exception as e:  # noqa: BLE001 - reported per slide by the parent
        return "error", e
    finally:
        release_memory()


def release_memory() -> None:
    """Give the freed memory of the last slide back to the OS (glibc keeps freed heap and thread arenas
    mapped otherwise, and the process would carry one slide's worth of RSS into the next). Best effort."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass
