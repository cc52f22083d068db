#!/usr/bin/env bash
# Prepare benchmarks/gpu_check.sh here, on a machine that reaches the package registry, for a
# device machine that reaches nothing. The device image has Python 3.12 with torch, timm,
# torchvision, pillow, tifffile, scipy, pandas and pyarrow; it lacks OpenSlide and imagecodecs,
# and the H&E texture files the benchmark slide is made of. This script puts, in the repository
# root, both ignored by git:
#   .whl/       wheels of openslide-python, openslide-bin and imagecodecs (CPython 3.12, x86-64)
#   .gpucache/  the project's asset cache (real H&E texture sources), used as PATHGEN_CACHE
# Then run on the device (both folders carried):
#   command: bash benchmarks/gpu_check.sh     carry: [".whl", ".gpucache"]     timeout: 420 s
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exclude=$(git rev-parse --git-path info/exclude)
for d in /.whl/ /.gpucache/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"; done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    openslide-python openslide-bin imagecodecs
"$PY" - <<'EOF'
import shutil
from pathlib import Path

from pathgen_batch.assets import cache_dir, he_texture_sources

dest = Path(".gpucache")
shutil.rmtree(dest, ignore_errors=True)
for src in he_texture_sources():  # fetched into the local cache first if missing
    tree = src.relative_to(cache_dir()).parts[0]  # <package>-<version>, with its marker
    shutil.copytree(cache_dir() / tree, dest / tree)
    print(dest / tree)
EOF
du -sh .whl .gpucache
