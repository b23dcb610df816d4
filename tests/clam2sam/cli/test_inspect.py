"""``clam2sam inspect`` end to end: output contract, exit codes, and stores made by ``clam2sam convert``
from the reference fixtures and the demo data."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clam2sam.cli.main import main
from clam2sam.store.writer import open_store
from tests.clam2sam.inspect.test_stats import grid_slide, make_store

REF = Path("/work/shared/fixtures/reference")
HAS_CONVERTER = importlib.util.find_spec("clam2sam.convert.cohort") is not None
needs_converter = pytest.mark.skipif(not HAS_CONVERTER, reason="clam2sam.convert.cohort not available")


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "c.zarr", [grid_slide("a", 120, seed=1, label="0"), grid_slide("b", 90, seed=2)],
                      incomplete=[])


def test_human_summary_on_stdout(store, capsys):
    code, out, err = run(["inspect", str(store)], capsys)
    assert code == 0
    for text in ("Slides 2 complete, 0 incomplete", "Features 8-d float32", "Labels 0: 1, 1: 1",
                 "Patches 210 total", "compression ratio", "segment size (patches)", "Membership"):
        assert text in out, text
    assert "{" not in err


def test_slide_summary_lists_largest_segments(store, capsys):
    code, out, _ = run(["inspect", str(store), "--slide", "a", "--top", "2"], capsys)
    assert code == 0 and "Slide a" in out and "Largest 2 segments" in out
    assert "sam.model_type: vit_b" in out


def test_json_only_on_stdout_with_all_modes(store, tmp_path, capsys):
    code, out, err = run(["inspect", str(store), "--json", "--check", "--plot", str(tmp_path / "p")], capsys)
    assert code == 0
    got = json.loads(out)  # would fail if anything but JSON were on stdout
    assert got["kind"] == "cohort" and got["check"]["ok"] is True
    assert sorted(Path(f).name for f in got["plots"]["files"]) == ["cohort_histograms.png", "slide_a.png",
                                                                    "slide_b.png"]


def test_unknown_slide_and_bad_path(store, tmp_path, capsys):
    code, out, err = run(["inspect", str(store), "--slide", "zz"], capsys)
    assert code == 1 and "zz" in err and "not in store" in err and out == ""
    code, _, err = run(["inspect", str(tmp_path / "missing.zarr")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(["inspect", str(tmp_path / "empty")], capsys)
    assert code == 1 and "not a clam2sam store" in err


def test_slide_check_restricted(tmp_path, capsys):
    path = make_store(tmp_path / "c.zarr", [grid_slide("a", 40), grid_slide("b", 40)], incomplete=["b"])
    code, out, _ = run(["inspect", str(path), "--slide", "a", "--check"], capsys)
    assert code == 0 and "check passed: 1 slides" in out
    code, out, _ = run(["inspect", str(path), "--slide", "b", "--check", "--json"], capsys)
    got = json.loads(out)
    assert code == 1 and got["check"]["problems"][0]["slide"] == "b"
    assert "incomplete" in got["check"]["problems"][0]["message"]


# ------------------------------------------------------------------------- stores made by the converter

@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    if not HAS_CONVERTER:
        pytest.skip("clam2sam.convert.cohort not available")
    if not (REF / "clam" / "h5_files").is_dir():
        pytest.skip("reference fixtures not available")
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(REF / "clam"), "--segments-dir", str(REF / "sammil" / "segments"),
              "--slides-dir", str(REF / "slides"), "--level-downsample", "ihc_tiled=1:2",
              "--membership", "reference", "--out", str(out), "--skip-errors", "-q"])
    assert e.value.code == 0
    return out


@needs_converter
def test_reference_store_check_json_plot(reference_store, tmp_path, capsys):
    code, out, err = run(["inspect", str(reference_store), "--check", "--json"], capsys)
    got = json.loads(out)
    assert code == 0 and got["check"]["ok"], got["check"]["problems"]
    assert got["check"]["slides_checked"] == 3 and got["check"]["notes"] == []  # sources reachable + verified
    # facts from the reference README: 182 + 256 + 237 patches; cmu_small_region has 11 non-empty masks,
    # 93 patches in several masks and 36 in none; ihc_tiled has one mask holding all 237 patches
    assert got["patches"]["total"] == 182 + 256 + 237
    assert got["segments"]["total"] == 11 + 0 + 1 and got["segments"]["slides_without_segments"] == 1
    assert got["coverage"]["multi_member"] == 93
    assert got["coverage"]["covered"] == (182 - 36) + 237
    assert got["membership"] == {"reference": 3} and got["sam"]["slides_with_sam"] == 2
    code, out, _ = run(["inspect", str(reference_store), "--slide", "cmu_small_region", "--json"], capsys)
    s = json.loads(out)
    # seg_files sizes in ascending mask index (masks 8 and 9 are empty and dropped)
    ref_sizes = {0: 6, 1: 2, 2: 3, 3: 8, 4: 12, 5: 69, 6: 33, 7: 86, 10: 5, 11: 23, 12: 20}
    for row in s["largest_segments"]:
        assert row["n_patches"] == ref_sizes[row["source_index"]]
    assert s["largest_segments"][0]["source_index"] == 5 and s["largest_segments"][0]["sam_area"] == 197912
    assert s["segments"]["size_patches"]["median"] == 12 and s["mpp"] == pytest.approx(0.499)
    r = open_store(reference_store).read_slide("cmu_small_region")
    assert s["segments"]["area_level0_px"]["max"] == pytest.approx(r.segment_areas.max())
    # pictures, over the real slide's thumbnail
    code, _, err = run(["inspect", str(reference_store), "--plot", str(tmp_path / "pics"),
                        "--slides-dir", str(REF / "slides")], capsys)
    assert code == 0
    pngs = sorted(p.name for p in (tmp_path / "pics").glob("*.png"))
    assert pngs == ["cohort_histograms.png", "slide_cmu_small_region.png", "slide_he_tiled.png",
                    "slide_ihc_tiled.png"]
    w, h = Image.open(tmp_path / "pics" / "slide_cmu_small_region.png").size
    assert 1000 <= w <= 1600 and 800 <= h <= 1400
    px = np.asarray(Image.open(tmp_path / "pics" / "slide_cmu_small_region.png").convert("RGB"))
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 1000  # a photograph underneath, not flat colours
    assert "ihc_tiled" in err and "no slide file" in err  # its .tif is not shipped


@needs_converter
def test_reference_store_changed_source_detected(reference_store, tmp_path, capsys):
    """A store whose recorded source checksum no longer matches fails --check naming slide and 'sources'."""
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(reference_store, path)
    zj = path / "slides" / "ihc_tiled" / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["sources"][0]["sha256"] = "0" * 64
    zj.write_text(json.dumps(meta))
    code, out, _ = run(["inspect", str(path), "--check", "--json"], capsys)
    got = json.loads(out)
    assert code == 1 and [(p["slide"], p["array"]) for p in got["check"]["problems"]] == [("ihc_tiled", "sources")]


@needs_converter
def test_demo_data_store(tmp_path, capsys):
    demo = Path(__file__).resolve().parents[3] / "fixtures" / "demo"
    if not (demo / "h5_files").is_dir():
        pytest.importorskip("fixtures.make_fixtures")
        from fixtures.make_fixtures import generate

        demo = tmp_path / "demo"
        generate(demo, "demo", slides=10)
    out = tmp_path / "demo.zarr"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(demo), "--dataset-csv", str(demo / "dataset.csv"), "--out", str(out), "-q"])
    assert e.value.code == 0
    capsys.readouterr()
    code, text, _ = run(["inspect", str(out), "--json", "--plot", str(tmp_path / "p"), "--max-slides", "2"],
                        capsys)
    got = json.loads(text)
    r = open_store(out)
    n = [r.read_array(s, "features").shape[0] for s in r.slide_ids()]
    assert code == 0 and got["patches"]["total"] == sum(n) and got["slides"]["complete"] == len(n)
    assert sum(got["labels"]["counts"].values()) == len(n)
    assert len(got["plots"]["files"]) == 3
    code, text, _ = run(["inspect", str(out), "--check"], capsys)
    assert code == 0, text
