#!/usr/bin/env bash
# Install everything into .venv and run the main job on the bundled demo cohort (fixtures/demo):
# convert (CLAM h5 + SAM-MIL Segments pickles -> Zarr store) -> inspect (summary, check, pictures) -> short fit.
# Outputs go to demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
export PATH="$PWD/.venv/bin:$PATH"
OUT=demo_out
rm -rf "$OUT"; mkdir -p "$OUT"
clam2sam convert fixtures/demo --segments-dir fixtures/demo/segments --dataset-csv fixtures/demo/dataset.csv \
    --out "$OUT/demo.zarr"
clam2sam inspect "$OUT/demo.zarr"
clam2sam inspect "$OUT/demo.zarr" --check
clam2sam inspect "$OUT/demo.zarr" --plot "$OUT/pictures" --max-slides 4
samtrain fit "$OUT/demo.zarr" --out "$OUT/run_sammil" --model sam-mil --folds 3 --max-epochs 30 --lr 1e-3 --seed 0 --cache --threads 1
echo "Demo finished: store $OUT/demo.zarr, pictures $OUT/pictures, run $OUT/run_sammil (results.json," \
     "report $OUT/run_sammil/report/index.html)" >&2
