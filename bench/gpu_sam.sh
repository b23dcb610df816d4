#!/usr/bin/env bash
# SAM pass on one GPU: a random-weight vit_h (the compute of sam_vit_h_4b8939.pth) with SAM-MIL's
# defaults (points_per_side 32, crop_n_layers 1, thresholds 0.6) on 3 generated pyramidal slides,
# each run twice (the second run shows warm CUDA timings; the model is loaded once).
#
# Prepared for the project's GPU machine (python3 there holds a CUDA torch and a real torchvision, but not
# segment-anything, openslide, zarr). Before the run, on the development machine, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
#       -d .whl segment-anything==1.0 openslide-python==1.4.7 openslide-bin==4.0.1.2 zarr==3.1.6 \
#       numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 tifffile==2026.3.3
# (zarr 3.1.6 imports google_crc32c at import time -- `crc32c` is not it; openslide-python 1.4.7 is a
# manylinux1 wheel. bench/gpu_check.sh runs this pass too, with the trainer checks, capped in time.)
# and call the device tool with carry [".whl"] and the command:
#   bash bench/gpu_sam.sh
# Budget: about 1 min to write the random vit_h checkpoint, ~2-4 min for 3 slides x 2 runs. Outputs land
# in $OUT (results_sam_gpu.json, gpu_sam.log) or bench/out_gpu when OUT is unset.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-bench/out_gpu}
mkdir -p "$OUTDIR"
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
WORK=${WORK:-/tmp/gpu_sam}
mkdir -p "$WORK"
exec > >(tee "$OUTDIR/gpu_sam.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY - <<'EOF'
import torch, segment_anything, openslide, zarr
from clam2sam.sam.tv_standin import ensure_torchvision
assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0),
      "| torchvision:", ensure_torchvision(), "| zarr", zarr.__version__, "| openslide", openslide.__library_version__)
EOF
# three slides: 8192^2 (4 levels -> D 8, level 3), 6000x4000 (3 levels -> D 8, level 2 + resize 2), 3000^2 (1 level)
$PY - "$WORK" <<'EOF'
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
from tests.clam2sam._sam_fixtures import synthetic_rgb
import tifffile
from PIL import Image

work = Path(sys.argv[1])
def write(path, h, w, levels, seed):
    if path.exists():
        return
    tile = synthetic_rgb(2048, seed)
    img = np.tile(tile, (h // 2048 + 1, w // 2048 + 1, 1))[:h, :w]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(levels):
            lvl = img if k == 0 else np.asarray(Image.fromarray(img).resize((w // 2 ** k, h // 2 ** k), Image.BILINEAR))
            tw.write(lvl, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=0 if k == 0 else 1,
                     resolution=(2e4 / 2 ** k, 2e4 / 2 ** k), resolutionunit="CENTIMETER", metadata=None)
    print("wrote", path, path.stat().st_size // 2**20, "MiB")
write(work / "big.tif", 8192, 8192, 4, 1)
write(work / "wide.tif", 4000, 6000, 3, 2)
write(work / "small.tif", 3000, 3000, 1, 3)
EOF
$PY bench/bench_sam.py --models vit_h --device cuda --crop-n-layers 1 --repeat 2 \
    --slides "$WORK/big.tif" "$WORK/wide.tif" "$WORK/small.tif" --coords none \
    --workdir "$WORK" --out "$OUTDIR/results_sam_gpu.json"
# worst case for the post-processing: every candidate mask kept (thresholds 0), one slide
$PY bench/bench_sam.py --models vit_h --device cuda --crop-n-layers 1 --thresh 0 \
    --slides "$WORK/wide.tif" --coords none --workdir "$WORK" --out "$OUTDIR/results_sam_gpu_thresh0.json"
