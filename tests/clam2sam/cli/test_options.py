"""The options shared by both CLIs: file:// URLs everywhere, settings built from the flags by field, SAM
provider options checked with plain values, and explicit command registration that fails loudly."""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass, fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clam2sam.cli import options as opt
from clam2sam.cli.lazy_group import LazyGroup
from clam2sam.cli.main import main
from clam2sam.convert.options import ConvertOptions
from clam2sam.errors import UsageError
from clam2sam.sam.provider import SamPassOptions, build_sam_provider
from tests.clam2sam.inspect.test_stats import grid_slide, make_store


def _run(entry, argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "c.zarr", [grid_slide("a", 60, seed=1, label="0"), grid_slide("b", 50, seed=2)],
                      incomplete=[])


def test_inspect_takes_a_file_url_and_gives_the_same_numbers(store, tmp_path, capsys):
    code, plain, _ = _run(main, ["inspect", str(store), "--json"], capsys)
    assert code == 0
    code, url, err = _run(main, ["inspect", store.resolve().as_uri(), "--json", "--plot",
                                 (tmp_path / "pics").as_uri()], capsys)
    assert code == 0, err
    got, ref = json.loads(url), json.loads(plain)
    assert got["slides"] == ref["slides"] and got["patches"] == ref["patches"]
    assert {Path(f).name for f in got["plots"]["files"]} >= {"slide_a.png", "slide_b.png"}
    assert (tmp_path / "pics" / "slide_a.png").is_file()


def test_inspect_refuses_a_remote_url_as_a_usage_error(capsys):
    code, out, err = _run(main, ["inspect", "s3://bucket/cohort.zarr"], capsys)
    assert code == 2 and out == ""
    assert "s3:// URLs are not supported" in err and "STORE" in err


def test_export_takes_file_urls(store, tmp_path, capsys):
    # no SAM cache in this store: the command runs past its path options to the library's own error
    code, _, err = _run(main, ["export-segments", store.as_uri(), "--out", (tmp_path / "seg").as_uri()], capsys)
    assert code == 1 and "sam_cache" in err and "does not exist" not in err


def test_samtrain_compare_takes_file_urls(tmp_path, capsys):
    from tests.trainer.fake_runs import make_fake_run
    from trainer.cli.main import main as samtrain

    a = make_fake_run(tmp_path / "good", seed=1, signal=2.5, folds=3)
    b = make_fake_run(tmp_path / "weak", seed=2, signal=0.4, folds=3)
    code, _, err = _run(samtrain, ["compare", str(a), str(b), "--out", str(tmp_path / "plain"), "--n-boot", "200"],
                        capsys)
    assert code == 0, err
    code, _, err = _run(samtrain, ["compare", a.as_uri(), b.as_uri(), "--out", (tmp_path / "url").as_uri(),
                                   "--n-boot", "200"], capsys)
    assert code == 0, err
    assert "A = good  vs  B = weak" in err
    plain = json.loads((tmp_path / "plain" / "compare.json").read_text())
    url = json.loads((tmp_path / "url" / "compare.json").read_text())
    assert url["folds"] == plain["folds"] and url["per_fold"] == plain["per_fold"]


def test_samtrain_heatmap_path_options_take_file_urls():
    from trainer.cli.predict import heatmap

    params = {p.name: p for p in heatmap.params}
    for name in ("source", "out", "store", "slides_dir"):
        assert isinstance(params[name].type, opt.LocalPath), name


def test_settings_from_takes_each_field_once_and_refuses_strays():
    @dataclass(frozen=True)
    class S:
        a: int = 0
        b: str = "x"

    params = {"a": 3, "b": "y", "c": 1}
    assert opt.settings_from(S, params, b="z") == S(3, "z") and params == {"c": 1}
    with pytest.raises(TypeError, match=r"no field for the parameter\(s\) \['c'\]"):
        opt.settings_from(S, {"a": 1, "c": 1}, strict=True)


def test_convert_options_are_one_frozen_value_with_local_paths():
    o = ConvertOptions(archive="file:///data/feat", out="out.zarr", slides=["s1"], level_downsamples=None)
    assert o.archive == Path("/data/feat") and o.out == Path("out.zarr")
    assert o.slides == ("s1",) and o.level_downsamples == ()
    with pytest.raises(FrozenInstanceError):
        o.clevel = 3
    # every convert flag lands in a field of the same name (the command builds the options from its flags)
    from clam2sam.cli.convert import command

    names = {f.name for f in fields(ConvertOptions)} | {f.name for f in fields(SamPassOptions)}
    cli_only = {"no_process_list", "checksums", "no_checksums", "as_json", "quiet"}
    assert {p.name for p in command.params} - names - cli_only == set()


def test_sam_options_without_checkpoint_are_refused_with_plain_values():
    assert build_sam_provider(SamPassOptions(), slides_dir=None, store=None) is None
    with pytest.raises(UsageError, match=r"--points-per-side, --sam-seed only apply to the SAM pass"):
        build_sam_provider(SamPassOptions(points_per_side=8, sam_seed=2))
    with pytest.raises(UsageError, match="needs the slide files"):
        build_sam_provider(SamPassOptions(sam_checkpoint=Path("x.pth")))
    with pytest.raises(UsageError, match="both --segments-dir and --sam-checkpoint"):
        build_sam_provider(SamPassOptions(sam_checkpoint=Path("x.pth")), slides_dir="s", segments_dir="seg")
    p = SamPassOptions(points_per_side=8, box_nms_thresh=0.5).params()
    assert (p.points_per_side, p.box_nms_thresh, p.crop_n_layers) == (8, 0.5, 1)


def test_a_registered_command_whose_module_is_missing_fails_loudly():
    group = LazyGroup("x", lazy_commands={"gone": ("clam2sam.cli.no_such_module:command", "Gone.")})
    assert "gone" in group.list_commands(click.Context(group))
    r = CliRunner().invoke(group, ["gone"])
    assert isinstance(r.exception, ModuleNotFoundError) and "no_such_module" in str(r.exception)
