"""clam2sam.convert.dask_executor: convert on a Dask cluster == the single-process conversion; killed workers resume."""
import json
import os
import shutil

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

from clam2sam.store import schema  # noqa: E402
from clam2sam.cli.main import main  # noqa: E402
from clam2sam.convert.cohort import ConvertOptions, convert_cohort  # noqa: E402
from clam2sam.errors import UsageError  # noqa: E402
from clam2sam.sources.segments_pickle import load_segments_pickle  # noqa: E402
from clam2sam.store.writer import LOCK_NAME, open_store  # noqa: E402
from clam2sam.sources.urls import local_path  # noqa: E402
from fixtures.make_fixtures import generate  # noqa: E402

N_SLIDES = 6
KILL = "slide_002"


def _arrays(path):
    r = open_store(path)
    return {sid: {n: r.read_array(sid, n) for n in schema.ALL_ARRAYS} for sid in r.slide_ids()}


def _assert_same_store(a, b):
    A, B = _arrays(a), _arrays(b)
    assert sorted(A) == sorted(B) and len(A) == N_SLIDES
    for sid in A:
        for n in schema.ALL_ARRAYS:
            assert A[sid][n].dtype == B[sid][n].dtype, (sid, n)
            np.testing.assert_array_equal(A[sid][n], B[sid][n], err_msg=f"{sid}/{n}")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The seeded fixture cohort (tiny preset) and its single-process store."""
    root = tmp_path_factory.mktemp("dask")
    arch = root / "arch"
    generate(arch, "tiny", seed=3, slides=N_SLIDES)
    shutil.rmtree(arch / "pt_files")  # h5 only: workers then never import torch (seconds each on 2 cores)
    ref = root / "single.zarr"
    rep = convert_cohort(ConvertOptions(archive=arch, out=ref, dataset_csv=arch / "dataset.csv"))
    assert rep.counts() == {"converted": N_SLIDES, "skipped": 0, "failed": 0}, rep.to_dict()
    assert open_store(ref).read_slide("slide_000").n_segments > 0  # segments really mapped
    return arch, ref


@pytest.fixture(scope="module")
def scheduler():
    """One 2-process LocalCluster for the module. A worker death fails its tasks at once (no retries on
    other workers)."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


class KillOnSlide:
    """Segment provider that reads the Segments pickles, but on one slide leaves a half-written group
    and kills its worker process (as the OOM killer would)."""

    def __init__(self, seg_dir, out, kill):
        self.seg_dir, self.out, self.kill = seg_dir, out, kill

    def __call__(self, sid, coords, patch_size, slide_path):
        if sid == self.kill:
            import zarr
            g = zarr.open_group(str(self.out / schema.SLIDES_GROUP / sid), mode="w")
            g.create_array("features", shape=(len(coords), 4), dtype="float32")[:2] = 1.0
            os._exit(17)
        return load_segments_pickle(self.seg_dir / f"{sid}.pkl", sid, None)


def test_dask_conversion_equals_single_process(cohort, scheduler, tmp_path):
    arch, ref = cohort
    out = tmp_path / "dask.zarr"
    seen = []
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=arch / "dataset.csv",
                                        dask_scheduler=scheduler),
                         progress=lambda sid, done, total: seen.append((sid, done, total)))
    assert rep.counts() == {"converted": N_SLIDES, "skipped": 0, "failed": 0}, rep.to_dict()
    _assert_same_store(ref, out)
    # progress: one start call, then one call per completed slide (in completion order)
    assert seen[0] == (None, 0, N_SLIDES)
    assert [d for _, d, _ in seen[1:]] == list(range(1, N_SLIDES + 1))
    assert sorted(s for s, _, _ in seen[1:]) == [f"slide_{i:03d}" for i in range(N_SLIDES)]
    r = open_store(out)
    assert r.attrs["n_slides"] == N_SLIDES and r.attrs["feature_dim"] == 32
    assert r.read_slide("slide_001").attrs["label"] == open_store(ref).read_slide("slide_001").attrs["label"]
    assert json.loads((out / "zarr.json").read_text())["consolidated_metadata"] is not None
    assert not (out / LOCK_NAME).exists()
    # resume: everything complete -> all skipped, nothing rewritten
    rep2 = convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=arch / "dataset.csv",
                                         dask_scheduler=scheduler))
    assert rep2.counts() == {"converted": 0, "skipped": N_SLIDES, "failed": 0}


def test_killed_worker_leaves_store_resumable(cohort, scheduler, tmp_path):
    arch, ref = cohort
    out = tmp_path / "killed.zarr"
    opts = dict(archive=arch, out=out, dataset_csv=arch / "dataset.csv", skip_errors=True,
                dask_scheduler=scheduler)
    rep = convert_cohort(ConvertOptions(**opts), segment_provider=KillOnSlide(arch / "segments", out, KILL))
    # the killed slide fails; a slide already queued on the dying worker may fail with it (no retries here)
    failed = {o.slide_id: o.reason for o in rep.by_status("failed")}
    assert KILL in failed and len(failed) <= 2, rep.to_dict()
    assert all("worker" in why and "re-run the same command" in why for why in failed.values()), failed
    assert rep.counts() == {"converted": N_SLIDES - len(failed), "skipped": 0, "failed": len(failed)}
    assert rep.return_code == 1
    assert not (out / LOCK_NAME).exists()  # the client released the lock
    r = open_store(out)
    assert not set(failed) & set(r.slide_ids()) and r.incomplete_slide_ids() == [KILL]
    # the same command again: complete slides are skipped, the half-written (and any unstarted) one is redone
    rep2 = convert_cohort(ConvertOptions(**opts))
    assert rep2.counts() == {"converted": len(failed), "skipped": N_SLIDES - len(failed), "failed": 0}, \
        rep2.to_dict()
    assert {o.slide_id for o in rep2.by_status("converted")} == set(failed)
    _assert_same_store(ref, out)


def test_skip_errors_and_first_failure_like_single_process(cohort, scheduler, tmp_path):
    arch, _ = cohort
    bad = tmp_path / "bad"
    shutil.copytree(arch, bad)
    h5 = bad / "h5_files" / "slide_004.h5"
    h5.write_bytes(h5.read_bytes()[:600])  # truncated
    single = convert_cohort(ConvertOptions(archive=bad, out=tmp_path / "s.zarr", skip_errors=True))
    dist = convert_cohort(ConvertOptions(archive=bad, out=tmp_path / "d.zarr", skip_errors=True,
                                         dask_scheduler=scheduler))
    assert dist.counts() == single.counts() == {"converted": N_SLIDES - 1, "skipped": 0, "failed": 1}
    assert [(o.slide_id, o.reason) for o in dist.by_status("failed")] == \
        [(o.slide_id, o.reason) for o in single.by_status("failed")]
    assert "slide_004" in dist.by_status("failed")[0].reason
    # without --skip-errors: stop at the first failure, keep the completed slides, exit code 1
    stop = convert_cohort(ConvertOptions(archive=bad, out=tmp_path / "stop.zarr", dask_scheduler=scheduler))
    assert stop.return_code == 1 and [o.slide_id for o in stop.by_status("failed")] == ["slide_004"]
    assert any("stopped at the first failure" in w for w in stop.warnings)
    assert set(open_store(tmp_path / "stop.zarr").slide_ids()) == {o.slide_id for o in stop.by_status("converted")}
    json_rep = json.loads((tmp_path / "d.zarr" / "convert_report.json").read_text())
    assert json_rep["counts"]["failed"] == 1


def test_cli_file_urls_and_dask_local(cohort, tmp_path, capsys):
    arch, ref = cohort
    out = tmp_path / "url store.zarr"  # a space, percent-encoded in the URL
    url_out = "file://" + str(out).replace(" ", "%20")
    with pytest.raises(SystemExit) as e:
        main(["convert", f"file://{arch}", "--out", url_out, "--dataset-csv", f"file://localhost{arch}/dataset.csv",
              "--report", f"file://{tmp_path}/rep.json", "--dask-local", "1", "-q"])
    assert e.value.code == 0, capsys.readouterr().err
    _assert_same_store(ref, out)
    assert json.loads((tmp_path / "rep.json").read_text())["counts"]["converted"] == N_SLIDES


def test_urls_and_option_errors(cohort, tmp_path, monkeypatch, capsys):
    arch, _ = cohort
    assert local_path("file:///data/x.zarr") == local_path("file://localhost/data/x.zarr") == \
        local_path("/data/x.zarr") == local_path("file:/data/x.zarr")
    assert str(local_path("rel/x")) == "rel/x"
    for bad in ("s3://bucket/cohort.zarr", "gs://b/x", "file://otherhost/x"):
        with pytest.raises(UsageError):
            local_path(bad)
    with pytest.raises(UsageError, match="mount the bucket"):
        ConvertOptions(archive=arch, out="s3://bucket/cohort.zarr")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(arch), "--out", "s3://bucket/c.zarr", "-q"])
    assert e.value.code == 2 and "s3:// URLs are not supported" in capsys.readouterr().err
    for kw, msg in ((dict(dask_scheduler="tcp://x:1", dask_local=2), "exclude each other"),
                    (dict(dask_local=2, workers=2), "--workers"), (dict(dask_local=0), ">= 1")):
        with pytest.raises(UsageError, match=msg):
            convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "o.zarr", **kw))
    from clam2sam.convert import dask_executor as dask_run
    monkeypatch.setattr(dask_run, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"):
        convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "o.zarr", dask_scheduler="tcp://127.0.0.1:9"))
    assert not (tmp_path / "o.zarr" / LOCK_NAME).exists()
