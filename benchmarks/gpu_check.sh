#!/usr/bin/env bash
# The GPU check of the tile encoders, on one CUDA device. Installs nothing from the network
# (only the wheels carried in .whl/, see benchmarks/gpu_prepare.sh) and ends in under 5 minutes.
# Figures go under $OUT (a temporary folder when unset):
#   summary.txt     device, versions, ViT-L tiles/s at bf16 on real JPEG tiles, GPU utilisation
#                   while it ran, slides per hour end to end, the CUDA tests' result
#   vitl.json       bench_encoders.py figures: decode threads feeding ViT-L (uni recipe, random
#                   weights from a file), 16384 real-H&E JPEG tiles of 224 px, batches of 256
#   slide.json      one 32768 x 32768 px slide at 0.5 um/px embedded end to end by ViT-L
#   util_*.csv      nvidia-smi samples every 200 ms (timestamp, GPU %, memory MiB)
#   check.log       everything printed
# Usage (device machine, repository root, .whl and .gpucache carried):
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
LOG=$OUT/check.log
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD PATHGEN_CACHE=$PWD/.gpucache
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site
fi
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }

say "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
"$PY" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__,
    "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")' \
    2>&1 | tee -a "$LOG"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { say "no CUDA device: nothing to check"; exit 1; }

sampler=""
start_sampling() {  # $1: csv file
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
        -lms 200 >"$1" 2>/dev/null &
    sampler=$!
}
stop_sampling() { [ -n "$sampler" ] && kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null; sampler=""; }
trap stop_sampling EXIT

say "== ViT-L at bf16, real JPEG tiles decoded by 12 threads"
start_sampling "$OUT/util_vitl.csv"
timeout 150 "$PY" benchmarks/bench_encoders.py --only vit-l --device cuda --tiles 16384 \
    --batch 256 --decode-threads 12 --json "$OUT/vitl.json" 2>&1 | tee -a "$LOG"
stop_sampling

say "== one real-size slide end to end (ViT-L at bf16)"
start_sampling "$OUT/util_slide.csv"
timeout 150 "$PY" benchmarks/bench_encoders.py --only vit-l --device cuda --tiles 256 \
    --batch 256 --slide-px 32768 --slide-mpp 0.5 --json "$OUT/slide.json" 2>&1 | tee -a "$LOG"
stop_sampling

say "== CUDA tests"
timeout 120 "$PY" -m pytest -p no:cacheprovider -q -m cuda tests/test_features.py \
    tests/test_encoders.py 2>&1 | tee -a "$LOG"
tests_rc=${PIPESTATUS[0]}

"$PY" - "$OUT" "$tests_rc" <<'EOF' 2>&1 | tee "$OUT/summary.txt" | tee -a "$LOG"
import csv
import json
import sys
from datetime import datetime
from pathlib import Path

out, tests_rc = Path(sys.argv[1]), sys.argv[2]


def busy(csv_name: str, t0: float, t1: float) -> str:
    """Mean GPU utilisation and share of samples >= 80% inside [t0, t1] (epoch seconds)."""
    vals = []
    with open(out / csv_name) as f:
        for row in csv.reader(f):
            try:
                ts = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                util = float(row[1])
            except (ValueError, IndexError):
                continue
            if t0 <= ts <= t1:
                vals.append(util)
    if not vals:
        return "no utilisation samples in the timed span"
    hi = sum(v >= 80 for v in vals) / len(vals)
    return f"GPU busy {sum(vals) / len(vals):.0f}% on average, >=80% in {100 * hi:.0f}% of {len(vals)} samples"


for name, label in (("vitl.json", "ViT-L"), ("slide.json", "slide")):
    p = out / name
    if not p.is_file():
        print(f"{label}: no figures (see check.log)")
        continue
    r = json.loads(p.read_text())["vit-l"]
    if label == "ViT-L":
        print(f"ViT-L bf16, {r['tiles']} JPEG tiles decoded and encoded: {r['per_s']:.0f} tiles/s; "
              + busy("util_vitl.csv", r["t0"], r["t1"]))
    else:
        s = r["slide"]
        print(f"slide 32768 px at 0.5 um/px: {s['tiles']} tiles in {s['seconds']:.1f} s "
              f"(encoder {s['encode_seconds']:.1f} s): {s['slides_per_hour']:.0f} slides/h, "
              f"{s['tiles_per_s']:.0f} tiles/s; " + busy("util_slide.csv", s["t0"], s["t1"]))
print("CUDA tests: " + ("passed" if tests_rc == "0" else f"FAILED (pytest exit {tests_rc})"))
EOF
