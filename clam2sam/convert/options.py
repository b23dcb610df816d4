"""The settings of a conversion (:class:`ConvertOptions`) and their checks.

One frozen value, built from the ``clam2sam convert`` flags (same names) or by a Python caller, handed
down unchanged to the cohort driver, the executors and every per-slide job.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from clam2sam.errors import UsageError
from clam2sam.ids import normalise_slide_id
from clam2sam.sources.discover import LAYOUTS
from clam2sam.sources.urls import local_path
from clam2sam.store import schema


@dataclass(frozen=True)
class ConvertOptions:
    """Options of :func:`~clam2sam.convert.cohort.convert_cohort` (the CLI flags of ``clam2sam convert``, same
    names). Frozen: built once (by the CLI from its flags, or by a caller) and handed down as one value; each
    :class:`~clam2sam.convert.slide_job.SlideJob` carries it."""

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
        for name in path_fields(ConvertOptions):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, name, local_path(v, what=name))  # plain path or file:// URL
        object.__setattr__(self, "slides", tuple(self.slides or ()))
        object.__setattr__(self, "level_downsamples", tuple(self.level_downsamples or ()))


def path_fields(cls) -> tuple[str, ...]:
    """Names of the fields of a settings dataclass that hold a path (annotated ``Path``)."""
    return tuple(f.name for f in fields(cls) if "Path" in str(f.type))


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


def check_options(o: ConvertOptions) -> None:
    if o.membership not in schema.MEMBERSHIP_RULES:
        raise UsageError(f"unknown membership rule {o.membership!r}", fix=f"use one of {schema.MEMBERSHIP_RULES}")
    if o.layout is not None and o.layout not in LAYOUTS:
        raise UsageError(f"unknown layout {o.layout!r}", fix=f"use one of {LAYOUTS}")
    if o.workers < 1:
        raise UsageError("--workers must be >= 1", fix="pass --workers 1 or more")
    if o.dask_scheduler or o.dask_local is not None:
        check_dask_options(o)
    for name in ("mpp", "patch_size_level0", "legacy_downsample"):
        v = getattr(o, name)
        if v is not None and not v > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0", fix="pass a positive number")
    _check_out_apart(o)


# the paths that are read (never written): every path option but the outputs
SOURCE_OPTIONS = tuple(n for n in path_fields(ConvertOptions) if n not in ("out", "report_path"))


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


def check_dask_options(o) -> None:
    """Validate the Dask fields of a ConvertOptions.

    Raises:
        UsageError: both executors, ``--workers`` with Dask, N < 1, or distributed not installed.
    """
    if o.dask_scheduler and o.dask_local:
        raise UsageError("--dask-scheduler and --dask-local exclude each other",
                         fix="connect to a running cluster (--dask-scheduler) or start a local one (--dask-local)")
    if o.dask_local is not None and int(o.dask_local) < 1:
        raise UsageError("--dask-local must be >= 1", fix="pass the number of worker processes, e.g. --dask-local 4")
    if o.workers > 1:
        raise UsageError("--workers does not combine with --dask-scheduler/--dask-local",
                         fix="drop --workers: the Dask workers convert the slides")
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise UsageError("--dask-scheduler/--dask-local need dask.distributed",
                         fix="pip install 'dask[distributed]'") from e
