"""Tests of the synthetic cohort generator ``fixtures/make_fixtures.py`` (formats, determinism, ground truth)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from clam2sam.safe_load import load_pickle, load_pt_array
from fixtures.make_fixtures import generate, main
from fixtures.synth.presets import PRESETS, parse_range, resolve
from fixtures.synth.segments import sam_frame
from fixtures.synth.writers import PROCESS_LIST_COLUMNS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("fx") / "tiny"
    summary = generate(out, "tiny", seed=0)
    return out, summary


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("fx") / "demo"
    return out, generate(out, "demo", seed=0)


def _ids(summary):
    return [e["slide_id"] for e in summary["slides"]]


def _features(path):
    with h5py.File(path, "r") as f:
        return f["features"][:]


def test_tiny_summary_and_sizes(tiny):
    out, s = tiny
    p = PRESETS["tiny"]
    assert len(s["slides"]) == p.slides == 8
    for e in s["slides"]:
        assert p.min_patches <= e["n_patches"] <= p.max_patches
    assert s["seconds"] < 10  # ~1.5 s on the dev box; generous for a loaded CI
    assert json.loads((out / "manifest.json").read_text())["params"]["dim"] == 32


def test_determinism_same_seed_byte_identical(tmp_path):
    a = generate(tmp_path / "a", "tiny", seed=3, slides=3)
    generate(tmp_path / "b", "tiny", seed=3, slides=3)
    c = generate(tmp_path / "c", "tiny", seed=4, slides=3)
    for sid in _ids(a):
        fa, fb = _features(tmp_path / "a/h5_files" / f"{sid}.h5"), _features(tmp_path / "b/h5_files" / f"{sid}.h5")
        assert fa.tobytes() == fb.tobytes()
        assert (tmp_path / "a/segments" / f"{sid}.pkl").read_bytes() == \
            (tmp_path / "b/segments" / f"{sid}.pkl").read_bytes()
    assert a["slides"] != c["slides"] or not np.array_equal(
        _features(tmp_path / "a/h5_files/slide_000.h5"), _features(tmp_path / "c/h5_files/slide_000.h5"))


def test_clam_patches_h5_format(tiny):
    out, s = tiny
    for e in s["slides"]:
        sid = e["slide_id"]
        with h5py.File(out / "patches" / f"{sid}.h5", "r") as f:
            assert dict(f.attrs) == {} and list(f.keys()) == ["coords"]
            d = f["coords"]
            assert d.dtype == np.int64 and d.shape == (e["n_patches"], 2)
            assert d.chunks == (1, 2) and d.maxshape == (None, 2) and d.compression is None
            a = d.attrs
            assert a["patch_size"] == 256 and a["patch_size"].dtype == np.int64
            assert a["patch_level"] == 0 and a["patch_level"].dtype == np.int64
            assert a["downsample"].dtype == np.float64 and a["downsample"].tolist() == [1.0, 1.0]
            assert a["level_dim"].dtype == np.int64 and a["level_dim"].tolist() == a["downsampled_level_dim"].tolist()
            assert a["name"] == sid and a["save_path"] == "tiny/patches"
            c = d[:]
            assert len(np.unique(c, axis=0)) == len(c)
            # one 256-px lattice, inside the slide
            assert ((c - c.min(0)) % 256 == 0).all()
            assert (c.max(0) + 256 <= a["level_dim"]).all()


def test_clam_features_h5_and_pt(tiny):
    out, s = tiny
    for e in s["slides"]:
        sid = e["slide_id"]
        with h5py.File(out / "h5_files" / f"{sid}.h5", "r") as f, \
                h5py.File(out / "patches" / f"{sid}.h5", "r") as g:
            assert dict(f.attrs) == {} and sorted(f.keys()) == ["coords", "features"]
            feats, coords = f["features"], f["coords"]
            assert feats.dtype == np.float32 and feats.shape == (e["n_patches"], 32)
            assert feats.chunks == (32, 32) and feats.maxshape == (None, 32)
            assert coords.dtype == np.int32 and coords.chunks == (32, 2) and coords.maxshape == (None, 2)
            assert dict(feats.attrs) == {} and dict(coords.attrs) == {}
            assert np.array_equal(coords[:], g["coords"][:])
            x = feats[:]
        pt = torch.load(out / "pt_files" / f"{sid}.pt", weights_only=True)
        assert type(pt) is torch.Tensor and pt.dtype == torch.float32
        assert pt.numpy().tobytes() == x.tobytes()
        assert load_pt_array(out / "pt_files" / f"{sid}.pt").tobytes() == x.tobytes()


def test_process_list_and_dataset_csv(tiny):
    out, s = tiny
    with open(out / "process_list_autogen.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == PROCESS_LIST_COLUMNS and len(rows[0]) == 17
    assert [r[0] for r in rows[1:]] == sorted(f"{sid}.svs" for sid in _ids(s))
    assert all(r[2] == "processed" and r[1] == "0" for r in rows[1:])
    with open(out / "dataset.csv", newline="") as f:
        ds = list(csv.DictReader(f))
    assert list(ds[0]) == ["case_id", "slide_id", "label"]
    assert [r["slide_id"] for r in ds] == _ids(s)
    labels = [r["label"] for r in ds]
    assert labels.count("tumor") == labels.count("normal") == 4
    by_case: dict[str, set] = {}
    for r in ds:
        by_case.setdefault(r["case_id"], set()).add(r["label"])
    assert all(len(v) == 1 for v in by_case.values())  # a case never mixes labels
    assert len(by_case) < len(ds)                          # some case has several slides


def _sammil_members(info, rec, coords):
    """SAM-MIL's extract_features_from_h5 membership rule, written independently of clam2sam."""
    d = int(info["vis_level"] == 0) * int(info["downsample_ratio"])
    aps = int(info["patch_size"]) // d
    a = np.round((coords - np.array([info["start_x"], info["start_y"]])) / d).astype(int)
    bx, by, bw, bh = rec["bbox"]
    out = []
    for row, (x, y) in enumerate(a):
        if bx <= x < bx + bw and by <= y < by + bh and rec["segmentation"][y:y + aps, x:x + aps].any():
            out.append(row)
    return np.array(out, np.int64)


def _centre_members(info, rec, coords):
    """Centre rule: the SAM pixel under the patch centre is set (floor mapping)."""
    d = int(info["downsample_ratio"])
    u = np.floor((coords + int(info["patch_size"]) / 2 - [info["start_x"], info["start_y"]]) / d).astype(int)
    seg = rec["segmentation"]
    ok = (u[:, 0] < seg.shape[1]) & (u[:, 1] < seg.shape[0])
    hit = np.zeros(len(coords), bool)
    hit[ok] = seg[u[ok, 1], u[ok, 0]]
    return np.flatnonzero(hit)


def _check_membership(out, sid):
    obj = load_pickle(out / "segments" / f"{sid}.pkl")
    gt = np.load(out / "ground_truth" / f"{sid}.npz")
    ip, ix = gt["seg_indptr"], gt["seg_indices"]
    assert len(ip) == len(obj)
    for m, r in enumerate(obj[1:]):
        want = np.sort(ix[ip[m]:ip[m + 1]])
        assert np.array_equal(_sammil_members(obj[0], r, gt["coords"]), want), (sid, m)
        assert np.array_equal(_centre_members(obj[0], r, gt["coords"]), want), (sid, m)


def test_segments_pickles(tiny):
    out, s = tiny
    for e in s["slides"]:
        sid = e["slide_id"]
        obj = load_pickle(out / "segments" / f"{sid}.pkl")  # allow-list unpickler: numpy + builtins only
        assert isinstance(obj, list) and len(obj) == e["n_masks"] + 1
        assert (out / "segments" / f"{sid}.pkl").read_bytes()[:2] == b"\x80\x05"  # protocol 5
        info, recs = obj[0], obj[1:]
        for k in ("start_x", "start_y", "stop_x", "stop_y", "w", "h"):
            assert type(info[k]) is np.int32
        assert info["w"] == info["stop_x"] - info["start_x"] and info["h"] == info["stop_y"] - info["start_y"]
        assert type(info["patch_size"]) is int and info["patch_size"] == 256
        assert info["vis_level"] == 0 and type(info["downsample_ratio"]) is int
        d = info["downsample_ratio"]
        side = max(int(info["w"]), int(info["h"]))
        assert side / d <= 1024 and (d == 1 or side / (d // 2) > 1024)  # the smallest such power of two
        gt = np.load(out / "ground_truth" / f"{sid}.npz")
        ip, ix = gt["seg_indptr"], gt["seg_indices"]
        assert len(ip) == len(recs) + 1
        for m, r in enumerate(recs):
            seg = r["segmentation"]
            assert seg.dtype == bool and seg.shape == (int(info["h"]) // d, int(info["w"]) // d)
            assert type(r["area"]) is int and r["area"] == int(seg.sum()) > 0
            ys, xs = np.nonzero(seg)
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
            assert all(type(v) is int for v in r["bbox"])
            assert type(r["predicted_iou"]) is float and type(r["stability_score"]) is float
            assert len(r["point_coords"]) == 1 and all(type(v) is float for v in r["point_coords"][0])
            assert len(r["crop_box"]) == 4
        _check_membership(out, sid)


def test_ground_truth_tumour_and_coverage(tiny):
    out, s = tiny
    lo, hi = PRESETS["tiny"].tumour_frac
    for e in s["slides"]:
        gt = np.load(out / "ground_truth" / f"{e['slide_id']}.npz", allow_pickle=False)
        n = e["n_patches"]
        assert gt["tumour"].shape == gt["tissue_type"].shape == gt["region_id"].shape == (n,)
        n_t = int(gt["tumour"].sum())
        assert not (gt["tumour"] & gt["decoy"]).any() and gt["decoy"].sum() > 0  # look-alikes everywhere
        kinds = gt["region_kind"][gt["region_id"]]
        assert np.array_equal(kinds == 1, gt["tumour"])
        if e["label"] == "tumor":
            n_lesions = int((gt["region_kind"] == 1).sum())
            assert 1 <= n_lesions <= 3 and n_t > 0
            assert lo * n - 1 <= n_t <= hi * n + 1
            for r in np.flatnonzero(gt["region_kind"] == 1):  # a lesion keeps its host's tissue type
                assert gt["region_type"][r] == gt["region_type"][gt["region_host"][r]]
        else:
            assert n_t == 0 and not (gt["region_kind"] == 1).any()
        covered = np.zeros(n, bool)
        covered[gt["seg_indices"]] = True
        assert covered.mean() > 0.7
        assert abs(e["segment_coverage"] - covered.mean()) < 1e-3


def test_segments_are_imperfect_but_follow_regions(tiny):
    out, s = tiny
    purity, n_unassigned, n_masks_multi = [], 0, 0
    for e in s["slides"]:
        gt = np.load(out / "ground_truth" / f"{e['slide_id']}.npz")
        ip, ix, reg = gt["seg_indptr"], gt["seg_indices"], gt["region_id"]
        counts = np.bincount(ix, minlength=len(reg))
        n_unassigned += int((counts == 0).sum())
        n_masks_multi += int((counts > 1).sum())
        for m in range(len(ip) - 1):
            rows = ix[ip[m]:ip[m + 1]]
            if len(rows):
                purity.append(np.bincount(reg[rows]).max() / len(rows))
    assert n_unassigned > 0 and n_masks_multi > 0       # unassigned and overlapping patches exist
    assert 0.6 < np.mean(purity) < 1.0                  # masks mostly follow one true region, not perfectly


def test_demo_separability_and_committed_copy(demo):
    out, s = demo
    assert len(s["slides"]) == 40 and sum(e["label"] == "tumor" for e in s["slides"]) == 20
    u = np.load(out / "ground_truth/cohort.npz")["tumour_direction"]
    y, s_max, s_seg = [], [], []
    for e in s["slides"]:
        x = _features(out / "h5_files" / f"{e['slide_id']}.h5")
        gt = np.load(out / "ground_truth" / f"{e['slide_id']}.npz")
        proj = x @ u                                                  # (N,) projection on the tumour direction
        ip, ix = gt["seg_indptr"], gt["seg_indices"]
        seg_means = [proj[ix[a:b]].mean() for a, b in zip(ip[:-1], ip[1:]) if b > a]
        y.append(int(gt["label"]))
        s_max.append(proj.max())
        s_seg.append(max(seg_means))
        if e["slide_id"] in ("slide_000", "slide_001", "slide_002"):  # small SAM images: aps = 2 or 4
            _check_membership(out, e["slide_id"])
    auc_max, auc_seg = roc_auc_score(y, s_max), roc_auc_score(y, s_seg)
    # The demo is tuned to be learnable by a short fit (snr 14, decoy_snr 6): the oracle statistic (max
    # projection on the TRUE tumour direction, unknown to a model) separates it (measured 1.0, seed 0); a
    # model must still find that direction in D = 64 from 40 slides (AB-MIL 3-fold: AUC 0.86).
    # Harder, non-trivial cohorts are the medium/large presets used by the benches.
    assert auc_max > 0.9, auc_max
    assert auc_seg > 0.65, auc_seg
    assert s["bytes"] < 8_000_000
    committed = REPO / "fixtures" / "demo"
    if (committed / "manifest.json").is_file():  # the bundled demo is what the generator writes today
        assert json.loads((committed / "manifest.json").read_text())["slides"] == \
            json.loads((out / "manifest.json").read_text())["slides"]
        for sid in ("slide_000", "slide_039"):
            assert _features(committed / "h5_files" / f"{sid}.h5").tobytes() == \
                _features(out / "h5_files" / f"{sid}.h5").tobytes()


def test_sam_frame_rule():
    # SAM-MIL: smallest power of two D with both sides / D <= 1024; aps = patch_size // D
    frame, aps = sam_frame((64, 70), (8, 12), 256, 1024)    # 2048 x 3072 px
    assert (frame.downsample, aps, frame.width, frame.height) == (4, 64, 512, 768)
    assert (frame.stop_x, frame.stop_y) == (64 + 2048, 70 + 3072)
    frame, aps = sam_frame((0, 0), (170, 120), 256, 1024)   # large-preset sized slide
    assert frame.downsample == 64 and aps == 4
    with pytest.raises(ValueError, match="sam-max-side"):
        sam_frame((0, 0), (170, 120), 256, 64)


def test_cli_recreate_and_errors(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["--preset", "tiny", "--out", str(out), "--slides", "2", "--min-patches", "30", "--max-patches", "40",
            "--quiet"]
    assert main(args) == 0
    assert main(args) == 2
    assert f"{out} already exists, use --recreate to reset it" in capsys.readouterr().err
    assert main(args + ["--recreate", "--dim", "8"]) == 0
    assert _features(out / "h5_files/slide_000.h5").shape[1] == 8
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    assert main(["--out", str(other), "--recreate", "--quiet"]) == 2
    assert (other / "precious.txt").exists()
    assert main(args + ["--recreate", "--tumour-frac", "0.4,0.1"]) == 2


def test_params_resolution():
    assert parse_range("0.01,0.04") == (0.01, 0.04) and parse_range(0.02) == (0.02, 0.02)
    p = resolve("medium", seed=5, snr=0.5, slides=None)
    assert p.seed == 5 and p.snr == 0.5 and p.slides == 120 and p.dim == 128
    assert resolve("large").dim == 1024 and resolve("demo").dim == 64
    with pytest.raises(TypeError, match="unknown generator parameter"):
        resolve("tiny", bogus=1)
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("huge")
