#!/usr/bin/env bash
# The main job end to end on the embedded defaults (no servers): build the semi-synthetic cohort,
# extract features, cross-validate, train and register both models through `mlflow run`, promote
# them to Production through the gate. Rerunning reuses what exists.
#
# Usage: scripts/demo.sh [WORKSPACE]   (default: workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-${WORKSPACE:-workspace}}"
BIN="${VENV:-.venv}/bin"
export PATH="$PWD/$BIN:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

step() { printf '\n== %s\n' "$*"; }

step "MLflow store under $W/mlflow"
export PATHGEN_WORKSPACE="$W"
eval "$(pathgen-batch models init | grep '^export ')"
echo "MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"
MLRUN=(mlflow run . --env-manager local --experiment-name pathgen)

run_id_of() { sed -n "s/.*=== Run (ID '\([0-9a-f]*\)') succeeded ===.*/\1/p" "$1" | tail -1; }

step "cohort: 198 patients, real expression/grade/outcome, slides from real H&E texture"
"${MLRUN[@]}" -e cohort -P out="$W/cohort" -P workspace="$W"
pathgen-batch synth inventory "$W/cohort"

step "features: stain-texture encoder, one Parquet file per slide"
"${MLRUN[@]}" -e features -P cohort="$W/cohort" -P out="$W/features" -P device=cpu -P workspace="$W"

if [ -f "$W/cv/eval_run_id" ]; then
  EVAL="$(cat "$W/cv/eval_run_id")"
  step "evaluate: reusing run $EVAL ($W/cv)"
else
  step "evaluate: 5-fold CV of generator, fusion and baselines"
  "${MLRUN[@]}" -e evaluate -P cohort="$W/cohort" -P features="$W/features" -P out="$W/cv" \
    -P workspace="$W" 2>&1 | tee "$W/evaluate.log"
  EVAL="$(run_id_of "$W/evaluate.log")"
  echo "$EVAL" > "$W/cv/eval_run_id"
fi
cat "$W/cv/table.txt"

if [ ! -f "$W/models/registered" ]; then
  step "train and register the generator and the fusion model"
  "${MLRUN[@]}" -e train_generator -P cohort="$W/cohort" -P features="$W/features" \
    -P out="$W/models/generator" -P eval_run_id="$EVAL" -P workspace="$W"
  "${MLRUN[@]}" -e train_fusion -P cohort="$W/cohort" -P features="$W/features" \
    -P generator="$W/models/generator" -P out="$W/models/fusion" -P eval_run_id="$EVAL" \
    -P workspace="$W"
  touch "$W/models/registered"
fi

step "promote to Production through the gate"
for name in pathgen-generator pathgen-fusion; do
  if pathgen-batch models show "$name" Production >/dev/null 2>&1; then
    echo "$name: a Production version exists"
  else
    latest="$(python -c "
from pathgen_batch.registry import RegistryConfig, list_versions, open_store
store = open_store(RegistryConfig(workspace='$W'))
print(list_versions(store, '$name')[-1].version)")"
    pathgen-batch models promote "$name" "$latest" --to staging --reason demo
    pathgen-batch models promote "$name" "$latest" --reason demo
  fi
done
pathgen-batch models list

step "done"
echo "runs and registered models: mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
