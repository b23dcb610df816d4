"""Messages that could name a wrong cause or fix: each must name the real cause and what to do."""
from __future__ import annotations

import errno
import os
import types

import numpy as np
import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.sources.discover import SlideFiles
from clam2sam.errors import InputFormatError, StoreError
from clam2sam.sources.process_list import read_dataset_csv
from clam2sam.sources.readers import read_slide_inputs

from tests.clam2sam import archive_factory as af
from ._helpers import cohort, run_cli


def _read(tmp_path, *, h5=True, pt=False, patches=True, sam_info=False):
    return read_slide_inputs(SlideFiles(
        "s", features_h5=tmp_path / "h5_files/s.h5" if h5 else None, features_pt=tmp_path / "pt_files/s.pt" if pt else None,
        patches_h5=tmp_path / "patches/s.h5" if patches else None), layout="clam-fp")


def test_1d_features_not_called_an_empty_bag(tmp_path):
    af.write_features_h5(tmp_path / "h5_files/s.h5", np.ones(40, np.float32), af.grid_coords(40))
    with pytest.raises(InputFormatError) as e:
        _read(tmp_path, patches=False)
    msg = str(e.value)
    assert "1-D" in msg and "(40,)" in msg and "per-patch features" in msg, msg
    assert "empty bag" not in msg and "no tissue" not in msg


def test_zero_feature_columns_named(tmp_path):
    import h5py

    (tmp_path / "h5_files").mkdir()
    with h5py.File(tmp_path / "h5_files/s.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((40, 0), np.float32))
        f.create_dataset("coords", data=af.grid_coords(40))
    with pytest.raises(InputFormatError) as e:
        _read(tmp_path, patches=False)
    msg = str(e.value)
    assert "(40, 0): 0 values per patch" in msg and "empty bag" not in msg, msg


def test_fewer_coords_than_features_in_one_h5_no_sammil_hint(tmp_path):
    af.write_features_h5(tmp_path / "h5_files/s.h5", af.features(40), af.grid_coords(35))
    with pytest.raises(InputFormatError) as e:
        _read(tmp_path, patches=False)
    msg = str(e.value)
    assert "coords have 35 rows but features have 40" in msg and "both in this h5" in msg, msg
    assert "SAM-MIL" not in msg and ".pt" not in msg and "re-extract" in msg


def test_fewer_coords_than_pt_rows_keeps_the_sammil_hint(tmp_path):
    """The one case the SAM-MIL hint is for: a .pt with appended group rows, coords from the patches h5."""
    af.write_pt(tmp_path / "pt_files/s.pt", af.features(45))
    af.write_patches_h5(tmp_path / "patches/s.h5", af.grid_coords(40))
    with pytest.raises(InputFormatError) as e:
        _read(tmp_path, h5=False, pt=True)
    msg = str(e.value)
    assert "5 extra rows are group features" in msg and "--sam-info-dir" in msg, msg


def test_patches_from_another_run_named(tmp_path):
    af.write_pt(tmp_path / "pt_files/s.pt", af.features(30))
    af.write_patches_h5(tmp_path / "patches/s.h5", af.grid_coords(40))
    with pytest.raises(InputFormatError) as e:
        _read(tmp_path, h5=False, pt=True)
    msg = str(e.value)
    assert "different patching or extraction runs" in msg and "SAM-MIL" not in msg, msg


def test_too_long_file_name_not_blamed_on_disk_space(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch, n_slides=1)
    long_id = "é" * 120  # 240 bytes as a file name, 720 once percent-encoded as a group name
    af.write_features_h5(arch / "h5_files" / f"{long_id}.h5", af.features(40), af.grid_coords(40))
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", skip_errors=True))
    reason = next(o.reason for o in rep.by_status("failed") if o.slide_id == long_id)
    assert "File name too long" in reason and "shorten the slide's file name" in reason, reason
    assert "free disk space" not in reason and "permissions" not in reason


def test_read_only_file_system_named(tmp_path, monkeypatch):
    arch, out = tmp_path / "arch", tmp_path / "c.zarr"
    cohort(arch, n_slides=1)
    assert convert_cohort(ConvertOptions(archive=arch, out=out)).return_code == 0
    real_open = os.open

    def ro_open(path, flags, *a, **k):  # what a read-only mount answers to a write open
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    fake_os = {k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
    fake_os["open"] = ro_open
    monkeypatch.setattr("clam2sam.store.lock.os", types.SimpleNamespace(**fake_os))
    with pytest.raises(StoreError) as e:
        convert_cohort(ConvertOptions(archive=arch, out=out))
    msg = str(e.value)
    assert "read-only file system" in msg and "--out on a writable file system" in msg, msg
    assert "cannot create the store" not in msg and "free disk space" not in msg


def test_missing_label_column_points_to_label_col(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("case_id,slide_id,Diagnosis\nc,s0,tumor\n")
    with pytest.raises(InputFormatError) as e:
        read_dataset_csv(csv)
    msg = str(e.value)
    assert "lacks column(s) ['label']" in msg and "--label-col" in msg and "'Diagnosis'" in msg, msg
    assert read_dataset_csv(csv, label_col="Diagnosis")["s0"]["label"] == "tumor"


def test_latin1_csv_says_encoding_and_how_to_fix(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch, n_slides=1)
    csv = tmp_path / "d.csv"
    csv.write_bytes("case_id,slide_id,label\nc,s0,tumeur b\xe9nigne\n".encode("latin-1"))
    p = run_cli("convert", arch, "-o", tmp_path / "c.zarr", "--dataset-csv", csv, "-q")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    err = " ".join(p.stderr.split())
    assert "not UTF-8" in err and "0xe9 on line 2" in err and "iconv -f latin1 -t utf-8" in err, err
    assert "check the file" not in err
