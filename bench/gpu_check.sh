#!/usr/bin/env bash
# One prepared GPU check of the project (clam2sam + samtrain) on the project's GPU machine, run once:
#   0. install the carried wheels (.whl/) to /tmp/site; versions, nvidia-smi, import check          -> env.json
#   1. the demo store exactly as scripts/demo.sh builds it (clam2sam convert fixtures/demo ...)
#   2. samtrain fit on CUDA with the demo's settings (sam-mil, 3 folds, 30 epochs, --cache, 1 thread) -> fit_cuda.json
#      + samtrain predict of that run on CUDA (--patch-probs) and on CPU (CUDA-trained checkpoint read on CPU)
#   3. the same fit with --device cpu                                                               -> fit_cpu.json
#   4. training-step benchmark on CUDA (bench/bench_step.py --device cuda; 1k/10k/50k, D=1024)       -> step_cuda.json
#   5. the SAM pass of bench/gpu_sam.sh (random-weight vit_h, SAM-MIL defaults), one process per slide,
#      capped by the time left                                                                      -> sam_gpu.json
#   summary of every step (rc, seconds, figures)                                          -> summary.json, summary.md
# Everything is logged to $OUT/gpu_check.log. At most 8 files land in $OUT (the device tool returns 8).
# No tests here: no test of the suite needs CUDA (no `gpu`-marked test; the CUDA ones monkeypatch torch.cuda).
#
# Before the run, on the development machine, in the repo root (wheels for what the GPU image lacks):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl zarr==3.1.6 numcodecs==0.16.6 \
#       donfig==0.8.1.post1 google-crc32c==1.9.0 segment-anything==1.0 openslide-python==1.4.7 \
#       openslide-bin==4.0.1.2 tifffile==2026.3.3
# then call the device tool with carry [".whl"] and the command `bash bench/gpu_check.sh` (timeout_s ~480).
#
# Dry run on a CPU machine (tiny sizes, tiny SAM model, no wheel install):
#   DEVICE=cpu QUICK=1 PY=.venv/bin/python SKIP_WHEELS=1 bash bench/gpu_check.sh    # -> bench/out_gpu_dry/
# Knobs: BUDGET (seconds for the whole script, default 400), WORK (scratch, default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PY:-python3}
BUDGET=${BUDGET:-400}
WORK=${WORK:-/tmp/gpu_check}
if [ -n "${OUT:-}" ]; then OUTDIR=$OUT; elif [ "$QUICK" = 1 ]; then OUTDIR=bench/out_gpu_dry; else OUTDIR=bench/out_gpu; fi
mkdir -p "$OUTDIR" "$WORK"
OUTDIR=$(cd "$OUTDIR" && pwd)
rm -f "$WORK/steps.tsv"
exec > >(tee "$OUTDIR/gpu_check.log") 2>&1
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
echo "gpu_check: DEVICE=$DEVICE QUICK=$QUICK BUDGET=${BUDGET}s WORK=$WORK OUT=$OUTDIR start $(date -u +%FT%TZ)"

now() { date +%s.%N; }
left() { echo $((DEADLINE - $(date +%s))); }
# step NAME CAP_SECONDS cmd...: runs cmd under timeout min(CAP, time left - 15); records rc and seconds.
step() {
  local name=$1 cap=$2; shift 2
  local l; l=$(left); l=$((l - 15))
  [ "$l" -lt "$cap" ] && cap=$l
  if [ "$cap" -lt 10 ]; then
    echo "=== [$(( $(date +%s) - T0 ))s] SKIP $name (only ${l}s left)"
    printf '%s\t%s\t%s\n' "$name" "skipped" "0" >> "$WORK/steps.tsv"
    return 99
  fi
  echo "=== [$(( $(date +%s) - T0 ))s] $name (cap ${cap}s): $*"
  local t; t=$(now)
  timeout --kill-after=10 "$cap" "$@"
  local rc=$?
  local dt; dt=$(python3 -c "print(round($(now) - $t, 2))" 2>/dev/null || echo 0)
  echo "=== [$(( $(date +%s) - T0 ))s] $name rc=$rc ${dt}s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$WORK/steps.tsv"
  return $rc
}

# ---- 0. wheels, machine, imports --------------------------------------------------------------------------
if [ "${SKIP_WHEELS:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
  step wheels 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$ROOT
else
  export PYTHONPATH=$ROOT
fi
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
nproc; free -g || true; $PY --version

step env 60 $PY - "$OUTDIR/env.json" <<'EOF'
import importlib, importlib.metadata as md, json, platform, sys, traceback
info = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version(), threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sm=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count)
except Exception as e:
    info["torch_error"] = repr(e)
try:
    from clam2sam.sam.tv_standin import ensure_torchvision
    info["torchvision_mode"] = str(ensure_torchvision())
except Exception as e:
    info["torchvision_mode"] = repr(e)
imports = {}
for mod in ("zarr", "numcodecs", "google_crc32c", "donfig", "segment_anything", "openslide", "tifffile", "h5py",
            "sklearn", "torchvision", "click", "rich", "PIL", "matplotlib", "clam2sam", "trainer",
            "clam2sam.cli.main", "trainer.cli.main", "trainer.cli.fit", "trainer.cli.predict", "clam2sam.sam.segment_pass"):
    try:
        m = importlib.import_module(mod)
        imports[mod] = {"ok": True, "version": getattr(m, "__version__", None), "file": getattr(m, "__file__", None)}
    except Exception as e:
        imports[mod] = {"ok": False, "error": "".join(traceback.format_exception_only(e)).strip()}
try:
    import openslide
    imports["openslide"]["library_version"] = openslide.__library_version__
except Exception:
    pass
dists = {}
for d in ("torch", "torchvision", "numpy", "h5py", "scikit-learn", "scipy", "tifffile", "click", "rich", "pillow",
          "matplotlib", "zarr", "numcodecs", "donfig", "google-crc32c", "segment-anything", "openslide-python",
          "openslide-bin", "pytest", "psutil", "typing-extensions", "packaging", "pyyaml"):
    try:
        dists[d] = md.version(d)
    except Exception:
        dists[d] = None
info["imports"] = imports
info["dists"] = dists
print(json.dumps(info, indent=1))
open(sys.argv[1], "w").write(json.dumps(info, indent=1))
bad = [k for k, v in imports.items() if not v["ok"]]
if bad:
    print("IMPORT FAILURES:", bad, file=sys.stderr)
    sys.exit(1)
EOF

# ---- background: SAM inputs (random vit_h checkpoint, 3 pyramidal slides) on the CPU while the GPU trains --------
if [ "$QUICK" = 1 ]; then SAM_MODEL=tiny; SCALE=8; else SAM_MODEL=vit_h; SCALE=1; fi
SAMDIR=$WORK/sam
mkdir -p "$SAMDIR"
(
  $PY - "$SAMDIR" "$SAM_MODEL" <<'EOF' &
import sys, time
from pathlib import Path
from clam2sam.sam import model as sam_model
p = Path(sys.argv[1]) / f"random_{sys.argv[2]}.pth"
if not p.exists():
    t = time.perf_counter()
    tmp = p.with_suffix(".tmp")
    sam_model.save_random_checkpoint(sys.argv[2], tmp, seed=0)
    tmp.rename(p)
    print(f"[bg] wrote {p} ({p.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
EOF
  for spec in "big 8192 8192 4 1" "wide 4000 6000 3 2" "small 3000 3000 1 3"; do
    set -- $spec
    $PY - "$SAMDIR" "$SCALE" "$@" <<'EOF' &
# the slides of bench/gpu_sam.sh: 8192^2 (4 levels), 6000x4000 (3 levels), 3000^2 (1 level)
import sys, time
from pathlib import Path
import numpy as np
import tifffile
from PIL import Image
sys.path.insert(0, ".")
from tests.clam2sam._sam_fixtures import synthetic_rgb
work, scale, name = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
h, w, levels, seed = (int(x) for x in sys.argv[4:8])
h, w = h // scale, w // scale
path = work / f"{name}.tif"
if not path.exists():
    t = time.perf_counter()
    tile = synthetic_rgb(2048 // scale, seed)
    ts = tile.shape[0]
    img = np.tile(tile, (h // ts + 1, w // ts + 1, 1))[:h, :w]
    tmp = work / f"{name}.tmp.tif"
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k in range(levels):
            lvl = img if k == 0 else np.asarray(Image.fromarray(img).resize((w // 2 ** k, h // 2 ** k), Image.BILINEAR))
            tw.write(lvl, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=0 if k == 0 else 1,
                     resolution=(2e4 / 2 ** k, 2e4 / 2 ** k), resolutionunit="CENTIMETER", metadata=None)
    tmp.rename(path)
    print(f"[bg] wrote {path} {path.stat().st_size // 2**20} MiB in {time.perf_counter() - t:.1f} s", flush=True)
EOF
  done
  wait
) &
BG=$!

# ---- 1. demo store (scripts/demo.sh) -----------------------------------------------------------------------
C2S=(env $PY -c "from clam2sam.cli.main import main; main()")
SAMTRAIN=(env $PY -m trainer.cli.main)
rm -rf "$WORK/demo.zarr" "$WORK"/run_* "$WORK"/pred_*
step convert 90 "${C2S[@]}" convert fixtures/demo --segments-dir fixtures/demo/segments \
    --dataset-csv fixtures/demo/dataset.csv --out "$WORK/demo.zarr"
step inspect_check 40 "${C2S[@]}" inspect "$WORK/demo.zarr" --check

# ---- 2. fit + predict on the device --------------------------------------------------------------------------
FIT=(fit "$WORK/demo.zarr" --model sam-mil --folds 3 --max-epochs 30 --lr 1e-3 --seed 0 --cache --threads 1)
step fit_$DEVICE 150 "${SAMTRAIN[@]}" "${FIT[@]}" --out "$WORK/run_$DEVICE" --device "$DEVICE" \
  && cp "$WORK/run_$DEVICE/results.json" "$OUTDIR/fit_cuda.json"
step predict_${DEVICE}_on_$DEVICE 60 "${SAMTRAIN[@]}" predict "$WORK/run_$DEVICE" "$WORK/demo.zarr" \
    --out "$WORK/pred_dev" --patch-probs -q --device "$DEVICE"
step predict_${DEVICE}_on_cpu 60 "${SAMTRAIN[@]}" predict "$WORK/run_$DEVICE" "$WORK/demo.zarr" \
    --out "$WORK/pred_cpu" --patch-probs -q --device cpu

# ---- 3. the same fit on the CPU (after the background CPU work, so that it has the cores) ----------------------
echo "=== [$(( $(date +%s) - T0 ))s] waiting for the background SAM inputs"
wait $BG; echo "=== [$(( $(date +%s) - T0 ))s] background done"; ls -la "$SAMDIR"
if [ "$DEVICE" != cpu ]; then
  step fit_cpu 120 "${SAMTRAIN[@]}" "${FIT[@]}" --out "$WORK/run_cpu" --device cpu \
    && cp "$WORK/run_cpu/results.json" "$OUTDIR/fit_cpu.json"
fi

# ---- 4. training step on the device -------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then STEP=(--sizes 1000 5000 --dim 64 --repeats 1 --steps 2); else STEP=(--sizes 1000 10000 50000 --repeats 3 --steps 5); fi
step step_$DEVICE 120 $PY bench/bench_step.py --device "$DEVICE" "${STEP[@]}" --json "$OUTDIR/step_cuda.json"

# ---- 5. SAM pass (bench/gpu_sam.sh's settings), one process per slide, merged after each ------------------------
merge_sam() {
  $PY - "$OUTDIR/sam_gpu.json" "$SAMDIR"/res_*.json <<'EOF'
import json, sys
rows, meta = [], None
for f in sys.argv[2:]:
    try:
        d = json.load(open(f))
    except Exception as e:
        print("unreadable", f, e); continue
    meta = meta or d["meta"]
    for r in d["rows"]:
        r["run"] = f.rsplit("/", 1)[-1]
    rows += d["rows"]
json.dump({"meta": meta, "rows": rows}, open(sys.argv[1], "w"), indent=1)
print(f"sam_gpu.json: {len(rows)} rows")
EOF
}
SAM=($PY bench/bench_sam.py --models "$SAM_MODEL" --device "$DEVICE" --crop-n-layers 1 --points-per-side 32 \
     --coords none --workdir "$SAMDIR")
if [ -f "$SAMDIR/random_$SAM_MODEL.pth" ]; then
  # wide first, twice (the second run is warm), then the small and the big slide once each
  step sam_wide 150 "${SAM[@]}" --repeat 2 --slides "$SAMDIR/wide.tif" --out "$SAMDIR/res_1_wide.json"; merge_sam
  step sam_small 100 "${SAM[@]}" --repeat 1 --slides "$SAMDIR/small.tif" --out "$SAMDIR/res_2_small.json"; merge_sam
  step sam_big 100 "${SAM[@]}" --repeat 1 --slides "$SAMDIR/big.tif" --out "$SAMDIR/res_3_big.json"; merge_sam
  if [ "$(left)" -gt 80 ]; then
    # worst case for the post-processing: every candidate mask kept (thresholds 0)
    step sam_small_thresh0 60 "${SAM[@]}" --thresh 0 --slides "$SAMDIR/small.tif" --out "$SAMDIR/res_4_small_thresh0.json"
    merge_sam
  fi
else
  echo "no SAM checkpoint was written: SAM pass skipped"
fi

# ---- summary ----------------------------------------------------------------------------------------------
$PY - "$OUTDIR" "$WORK" "$DEVICE" <<'EOF'
import csv, json, sys
from pathlib import Path
out, work, dev = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
S = {"steps": [], "device": dev}
for line in (work / "steps.tsv").read_text().splitlines():
    n, rc, s = line.split("\t")
    S["steps"].append({"step": n, "rc": rc, "seconds": float(s)})
md = ["# gpu_check summary", "", "| step | rc | seconds |", "|---|---|---|"]
md += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in S["steps"]]
try:
    env = json.load(open(out / "env.json"))
    md += ["", f"python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
           f"GPU {env.get('gpu')}, {env.get('gpu_mem_gib')} GiB"]
except Exception as e:
    md += ["", f"env.json: {e!r}"]
fits = {}
for name in ("fit_cuda", "fit_cpu"):
    f = out / f"{name}.json"
    if not f.exists():
        continue
    d = json.load(open(f))
    fits[name] = {"device_cfg": d["config"].get("device"), "wall_seconds": d["wall_seconds"],
                  "test_auc": [x["test"]["auc"] for x in d["folds"]], "val_auc": [x["val"]["auc"] for x in d["folds"]],
                  "test_acc": [x["test"]["acc"] for x in d["folds"]],
                  "best_epoch": [x["best_epoch"] for x in d["folds"]], "epochs_run": [x["epochs_run"] for x in d["folds"]],
                  "mean_test_auc": d["summary"]["test"]["auc"]["mean"], "mean_test_acc": d["summary"]["test"]["acc"]["mean"]}
S["fits"] = fits
if fits:
    md += ["", "| run | wall s | test AUC per fold | mean test AUC | best epoch | epochs run |", "|---|---|---|---|---|---|"]
    for k, v in fits.items():
        md.append(f"| {k} | {v['wall_seconds']:.1f} | {', '.join(f'{a:.3f}' for a in v['test_auc'])} | "
                  f"{v['mean_test_auc']:.3f} | {v['best_epoch']} | {v['epochs_run']} |")
def preds(p):
    try:
        return {r["slide_id"]: r for r in csv.DictReader(open(p / "predictions.csv"))}
    except Exception as e:
        return None
a, b = preds(work / "pred_dev"), preds(work / "pred_cpu")
if a and b:
    diff = max(abs(float(a[k]["prob"]) - float(b[k]["prob"])) for k in a)
    same = sum(a[k]["pred"] == b[k]["pred"] for k in a)
    S["predict"] = {"n": len(a), "max_abs_prob_diff_device_vs_cpu": diff, "same_pred": same}
    md += ["", f"predict of the {dev} run: on {dev} vs on cpu, {len(a)} slides, max |prob diff| {diff:.2e}, "
           f"same predicted class {same}/{len(a)}"]
try:
    st = json.load(open(out / "step_cuda.json"))
    S["step"] = st
    md += ["", "| patches | AB-MIL ms | SAM-MIL ms | ratio | AB peak MB | SAM peak MB |", "|---|---|---|---|---|---|"]
    for n, c in st["cells"].items():
        pk = c["peak_alloc_mb"] or {}
        md.append(f"| {n} | {c['abmil_ms']:.2f} | {c['sammil_ms']:.2f} | {c['ratio']:.2f} | "
                  f"{pk.get('abmil', float('nan')):.0f} | {pk.get('sam-mil', float('nan')):.0f} |")
except Exception as e:
    md += ["", f"step_cuda.json: {e!r}"]
try:
    sam = json.load(open(out / "sam_gpu.json"))
    cols = ("run", "slide", "repeat", "image", "masks", "n_images", "n_batches", "model_load", "read", "encoder_s",
            "decoder_s", "model_s", "generate", "cache", "total", "outside_share")
    md += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in sam["rows"]]
except Exception as e:
    md += ["", f"sam_gpu.json: {e!r}"]
(out / "summary.json").write_text(json.dumps(S, indent=1, default=str))
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
echo "gpu_check done in $(( $(date +%s) - T0 ))s; files in $OUTDIR:"; ls -la "$OUTDIR"
exec 1>&- 2>&-   # let tee finish the log before the command returns
sleep 1
