"""Inputs from strangers: pickles, .pt files and SAM checkpoints whose unpickling would run a command are refused
before anything runs (the marker file never appears); names in inputs never make the tool write outside --out."""
from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from clam2sam.cli import main as cli
from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.errors import Clam2SamError, InputFormatError, SamError, UnsafeInputError
from clam2sam.sources.safe_load import load_pickle, load_pt_array
from clam2sam.sources.segments_pickle import load_segments_pickle
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af
from ._helpers import cohort


class _Reduce:
    """Unpickles to ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def payloads(marker) -> dict[str, object]:
    m = str(marker)
    return {
        "os.system": _Reduce(os.system, f"touch {m}"),
        "subprocess.check_call": _Reduce(subprocess.check_call, ["touch", m]),
        "subprocess.Popen": _Reduce(subprocess.Popen, ["touch", m]),
        "builtins.exec": _Reduce(exec, f"open({m!r}, 'w').close()"),
        "builtins.eval": _Reduce(eval, f"open({m!r}, 'w').close()"),
        "builtins.open": _Reduce(open, m, "w"),
        "in-a-segments-list": [{"start_x": 0, "start_y": 0, "vis_level": 0, "downsample_ratio": 4},
                               {"segmentation": _Reduce(os.system, f"touch {m}"), "area": 1}],
        "object-ndarray": np.array([_Reduce(os.system, f"touch {m}")], dtype=object),
    }


def _protocol0_eval(marker) -> bytes:
    """Hand-written protocol-0 opcodes (``__builtin__`` is mapped to ``builtins`` by the unpickler)."""
    return b"c__builtin__\neval\n(Vopen(" + repr(str(marker)).encode() + b", 'w').close()\ntR."


@pytest.mark.parametrize("name", list(payloads("x")) + ["protocol0-eval"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_payloads_refused_never_run(tmp_path, name, protocol):
    marker = tmp_path / "MARKER"
    p = tmp_path / "segments" / "s.pkl"
    p.parent.mkdir()
    p.write_bytes(_protocol0_eval(marker) if name == "protocol0-eval" else
                  pickle.dumps(payloads(marker)[name], protocol=protocol))
    for load in (lambda: load_pickle(p, slide="s"), lambda: load_segments_pickle(p, "s")):
        with pytest.raises(UnsafeInputError) as e:
            load()
        msg = str(e.value)
        assert "not on the allow-list" in msg and "NOT loaded or executed" in msg and str(p) in msg, msg
        assert "slide 's'" in msg and " -- " in msg
    assert not marker.exists()


def _evil_pt(path, obj, legacy=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["os.system", "subprocess.check_call", "builtins.exec", "object-ndarray"])
def test_pt_payloads_refused_never_run(tmp_path, name, legacy):
    marker = tmp_path / "MARKER"
    p = _evil_pt(tmp_path / "s.pt", payloads(marker)[name], legacy)
    with pytest.raises(UnsafeInputError) as e:
        load_pt_array(p, slide="s")
    msg = str(e.value)
    assert "NOT loaded" in msg and str(p) in msg and "slide 's'" in msg and " -- " in msg, msg
    assert not marker.exists()


@pytest.mark.parametrize("where", ["pt_beside_h5", "pt_only", "segments"])
def test_payloads_in_a_cohort_refused_rest_converted(tmp_path, where):
    arch = tmp_path / "arch"
    cohort(arch)
    marker = tmp_path / "MARKER"
    evil = _Reduce(os.system, f"touch {marker}")
    if where == "pt_beside_h5":
        bad = _evil_pt(arch / "pt_files/s1.pt", evil)
    elif where == "pt_only":
        (arch / "h5_files/s1.h5").unlink()
        bad = _evil_pt(arch / "pt_files/s1.pt", {"features": evil})
    else:
        bad = af.write_evil_pickle(arch / "segments/s1.pkl", marker)
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", skip_errors=True))
    assert {o.slide_id: o.status for o in rep.outcomes} == {"s0": "converted", "s1": "failed", "s2": "converted"}
    reason = rep.by_status("failed")[0].reason
    assert "NOT loaded" in reason and str(bad) in reason and "slide 's1'" in reason, reason
    assert not marker.exists()


def test_sam_checkpoint_that_is_not_a_state_dict(tmp_path, capsys):
    pytest.importorskip("clam2sam.sam.model")
    from clam2sam.sam.model import read_state_dict, validate_checkpoint

    marker = tmp_path / "MARKER"
    for name, obj in [("payload", _Reduce(os.system, f"touch {marker}")),
                      ("payload-in-dict", {"image_encoder.patch_embed.proj.weight": _Reduce(os.system, f"touch {marker}")}),
                      ("module", torch.nn.Linear(2, 2))]:
        p = _evil_pt(tmp_path / f"{name}.pth", obj)
        with pytest.raises(SamError) as e:
            read_state_dict(p)
        assert "NOT" in str(e.value) and str(p) in str(e.value), str(e.value)
        with pytest.raises(SamError):
            validate_checkpoint("vit_b", p)
    # through the CLI: refused before any slide is read, exit 2 (bad --sam-checkpoint), marker absent
    arch = tmp_path / "arch"
    af.make_clam(arch, {"s0": 5})
    (tmp_path / "slides").mkdir()
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", str(arch), "--out", str(tmp_path / "c.zarr"), "--slides-dir", str(tmp_path / "slides"),
                  "--sam-checkpoint", str(tmp_path / "payload.pth"), "--sam-model", "vit_b", "-q"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "NOT" in err and "payload.pth" in err, err
    assert not marker.exists() and not (tmp_path / "c.zarr" / "slides").exists()


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_names_in_inputs_cannot_escape_the_store(tmp_path):
    """Slide ids from file names, dataset CSV and process list cells with path syntax stay inside --out."""
    work = tmp_path / "a" / "b"
    arch = work / "arch"
    # file names holding path syntax (backslashes are legal in POSIX names; ids keep the last component)
    names = ["sub\\..\\..\\x", "y\\..", "z\\.", "%2E%2E", "a b", "-rf", "é", "CON", "q%2F..%2F..%2Fw"]
    for i, n in enumerate(names):
        af.write_features_h5(arch / f"{n}.h5", af.features(4, seed=i), af.grid_coords(4))
    ds = work / "labels.csv"
    ds.write_text("case_id,slide_id,label\n../../c,../../x,1\n/etc/passwd,/tmp/evil.svs,0\n")
    pl = arch / "process_list_autogen.csv"
    out = work / "out" / "c.zarr"
    before = _tree(tmp_path)
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=ds, skip_errors=True,
                                        use_process_list=False))
    assert not pl.exists()
    after = _tree(tmp_path)
    new = [p for p in after if p not in before]
    assert new and all(p == "a/b/out" or p.startswith("a/b/out/c.zarr") for p in new), new
    r = open_store(out)
    ids = r.slide_ids()
    assert "x" in ids and r.slide_attrs("x")["label"] == "1" and r.slide_attrs("x")["case_id"] == "../../c"
    assert sorted(ids) == sorted(["x", "..", ".", "%2E%2E", "a b", "-rf", "é", "CON", "q%2F..%2F..%2Fw"])
    for sid in ids:  # every group is one path component directly under slides/
        assert r.read_slide(sid).n_patches == 4
    keys = [p.name for p in (out / "slides").iterdir() if p.is_dir()]
    assert all("/" not in k and not k.startswith(".") for k in keys) and len(keys) == len(ids)
    assert rep.counts()["converted"] == len(ids)
    failed = rep.by_status("failed")
    assert all(isinstance(o.reason, str) and " -- " in o.reason for o in failed), [o.reason for o in failed]


def test_overlong_slide_id_fails_alone(tmp_path):
    """An id whose store key exceeds the file system's name limit fails that slide only, with the path named."""
    arch = tmp_path / "arch"
    cohort(arch)
    long = "é" * 100  # 200 bytes as a name, 600 once percent-encoded: too long for one path component
    af.write_features_h5(arch / f"h5_files/{long}.h5", af.features(40), af.grid_coords(40))
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", skip_errors=True))
    st = {o.slide_id: o.status for o in rep.outcomes}
    assert st == {"s0": "converted", "s1": "converted", "s2": "converted", long: "failed"}, rep.to_dict()
    reason = rep.by_status("failed")[0].reason
    assert "File name too long" in reason and " -- " in reason, reason
    assert open_store(tmp_path / "c.zarr").slide_ids() == ["s0", "s1", "s2"]


def test_blank_file_name_does_not_sink_the_cohort(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch)
    af.write_features_h5(arch / "h5_files" / " .h5", af.features(40), af.grid_coords(40))
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", skip_errors=True))
    assert rep.counts()["converted"] == 3
    assert any("empty slide id" in w and " .h5" in w for w in rep.warnings), rep.warnings


def test_unsafe_error_is_a_project_error():
    assert issubclass(UnsafeInputError, InputFormatError) and issubclass(InputFormatError, Clam2SamError)
