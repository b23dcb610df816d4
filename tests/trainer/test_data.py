import numpy as np
import pytest
import torch

from clam2sam.errors import UsageError
from clam2sam.store.writer import SlideArrays, StoreWriter
from trainer.cohort import load_cohort, read_labels_csv
from trainer.data import BagDataset


@pytest.fixture()
def small_store(tmp_path):
    p = tmp_path / "s.zarr"
    w = StoreWriter(p, feature_dim=4, feature_dtype="float16")
    rng = np.random.default_rng(0)
    for sid, lab in (("001", None), ("002", None), ("010", None)):
        seg = np.array([0, 0, 1, -1, 1], np.int32)
        w.write_slide(SlideArrays.from_partition(sid, rng.normal(size=(5, 4)).astype(np.float16),
                                                 np.arange(10).reshape(5, 2), seg, segment_sam_area=[7, 9],
                                                 attrs={"label": lab}))
    w.finalize()
    w.close()
    return p


def test_labels_csv_ids_stay_strings_and_numeric_class_order(small_store, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("slide_id,label,case_id\n001,10,A\n002,2,A\n010,2,B\n")
    c = load_cohort(str(small_store), str(csv))
    assert c.slide_ids == ["001", "002", "010"]
    assert c.classes == ["2", "10"]                      # numeric, not string, order
    assert c.y.tolist() == [1, 0, 0] and c.case_ids == ["A", "A", "B"]


def test_labels_csv_without_header(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("001.svs,tumor\n002,normal\n")
    assert read_labels_csv(p) == {"001": ("tumor", None), "002": ("normal", None)}


def test_unknown_slides_in_labels_csv_are_refused(small_store, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("slide_id,label\n001,a\n999,b\n")
    with pytest.raises(UsageError, match="999"):
        load_cohort(str(small_store), str(csv))


def test_store_without_labels_needs_csv(small_store):
    with pytest.raises(UsageError, match="--labels"):
        load_cohort(str(small_store))


def test_bag_dataset_reads_float32_and_caches(small_store):
    ds = BagDataset(str(small_store), ["010", "001"], [1, 0], cache=True)
    b = ds[0]
    assert b.slide_id == "010" and int(b.label) == 1
    assert b.features.dtype == torch.float32 and b.features.shape == (5, 4)
    assert b.group_features.shape == (2, 4)
    assert b.segment_ids.tolist() == [0, 0, 1, -1, 1] and b.segment_sizes.tolist() == [2, 2]
    assert b.patch_sam_area.tolist() == [7, 7, 9, 1, 9]
    assert ds[0] is b                                   # cached
