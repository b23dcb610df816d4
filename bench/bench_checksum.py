"""Cost of the per-chunk CRC32C on training reads: the same slides written with and without the ``crc32c``
codec, read with ``read_bag`` (what ``samtrain fit`` does), page cache warm, the two stores interleaved in
every repeat, medians. Prints one JSON line per codec with the ratio (with / without; > 1 = slower).

    python bench/bench_checksum.py --slides 4 --patches 6000 --dim 1024 --repeats 7
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write(path: Path, slides, codec: str, checksum: bool) -> None:
    from clam2sam.store import writer as store_mod
    from clam2sam.store.fast_write import write_array

    real = store_mod.write_array
    store_mod.write_array = functools.partial(write_array, checksum=checksum)
    try:
        with store_mod.StoreWriter(path, codec=codec) as w:
            for s in slides:
                w.write_slide(s)
            w.finalize()
    finally:
        store_mod.write_array = real


def _read_all(path: Path, ids: list[str]) -> float:
    from trainer.data import BagDataset

    ds = BagDataset(str(path), ids, [0] * len(ids))
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--patches", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--codecs", default="lz4,none")
    a = ap.parse_args(argv)
    import numpy as np

    from clam2sam.store.writer import SlideArrays

    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(a.patches)))
    coords = np.stack(np.divmod(np.arange(a.patches), side), 1) * 256
    slides = []
    for k in range(a.slides):      # features like an encoder's: correlated dims, moderate range (compressible a bit)
        base = rng.normal(size=(a.patches, 64)).astype(np.float32) @ rng.normal(size=(64, a.dim)).astype(np.float32)
        f = (base / 8 + rng.normal(scale=0.1, size=base.shape)).astype(np.float32)
        slides.append(SlideArrays.from_partition(f"s{k}", f, coords, rng.integers(-1, 40, a.patches),
                                                 attrs={"patch_size_level0": 256}))
    ids = [s.slide_id for s in slides]
    root = Path(tempfile.mkdtemp(prefix="c2s-crc-bench-"))
    try:
        for codec in a.codecs.split(","):
            paths = {True: root / f"{codec}_crc.zarr", False: root / f"{codec}_plain.zarr"}
            for crc, p in paths.items():
                _write(p, slides, codec, crc)
            times = {True: [], False: []}
            for crc in (True, False):                  # warm the page cache and the read pools
                _read_all(paths[crc], ids)
            for r in range(a.repeats):
                for crc in ((True, False) if r % 2 else (False, True)):
                    times[crc].append(_read_all(paths[crc], ids))
            med = {k: statistics.median(v) for k, v in times.items()}
            mb = a.slides * a.patches * a.dim * 4 / 1e6
            print(json.dumps({"codec": codec, "slides": a.slides, "patches": a.patches, "dim": a.dim,
                              "feature_MB": round(mb, 1), "repeats": a.repeats,
                              "median_s_with_crc": round(med[True], 4), "median_s_without": round(med[False], 4),
                              "ratio_with_over_without": round(med[True] / med[False], 3)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
