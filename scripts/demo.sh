#!/usr/bin/env bash
# The main job end to end on the embedded defaults (no servers): build the semi-synthetic cohort,
# extract features, cross-validate, train and register both models through `mlflow run` (each
# entry point runs the `pathgen-batch` command of its step, which logs to MLflow inside the run),
# promote them to Production through the gate, score an archive of held-out patients' slides (plus
# a few bad files) with the Ray job, query the tables and write the report. Rerunning reuses what
# exists.
#
# Usage: scripts/demo.sh [WORKSPACE]   (default: workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-${WORKSPACE:-workspace}}"
BIN="${VENV:-.venv}/bin"
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
export PATH="$BIN:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# each step's wall time, printed at the end
STEP_TIMES=()
T_START=$SECONDS
STEP_NAME=""
STEP_T=$SECONDS
step() {
  if [ -n "$STEP_NAME" ]; then
    STEP_TIMES+=("$(printf '%6d s  %s' $((SECONDS - STEP_T)) "$STEP_NAME")")
  fi
  STEP_NAME="${1%%:*}"
  STEP_T=$SECONDS
  printf '\n== %s\n' "$*"
}

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
  step "evaluate: 5-fold CV of generator, fusion and baselines, folds side by side (a process per CPU)"
  "${MLRUN[@]}" -e evaluate -P cohort="$W/cohort" -P features="$W/features" -P out="$W/cv" \
    -P workers=0 -P workspace="$W" 2>&1 | tee "$W/evaluate.log"
  EVAL="$(run_id_of "$W/evaluate.log")"
  echo "$EVAL" > "$W/cv/eval_run_id"
fi
cat "$W/cv/table.txt"

if [ ! -f "$W/models/registered" ]; then
  step "train and register the generator and the fusion model"
  # fold 0 stays out of training: its patients are the archive scored below
  mkdir -p "$W/models"
  "${MLRUN[@]}" -e train_generator -P cohort="$W/cohort" -P features="$W/features" \
    -P out="$W/models/generator" -P eval_run_id="$EVAL" -P holdout_fold=0 -P workspace="$W" \
    2>&1 | tee "$W/models/train.log"
  "${MLRUN[@]}" -e train_fusion -P cohort="$W/cohort" -P features="$W/features" \
    -P generator="$W/models/generator" -P out="$W/models/fusion" -P eval_run_id="$EVAL" \
    -P holdout_fold=0 -P workspace="$W" 2>&1 | tee -a "$W/models/train.log"
  touch "$W/models/registered"
fi

step "promote to Production through the gate"
for name in pathgen-generator pathgen-fusion; do
  if [ -f "$W/models/$name.promoted" ]; then
    echo "$name: promoted by an earlier run ($W/models/$name.promoted)"
    continue
  fi
  # the version the train step registered ("registered NAME vN (run ...)")
  latest="$(sed -n "s/^registered $name v\([0-9]*\) .*/\1/p" "$W/models/train.log" | tail -1)"
  if [ -z "$latest" ]; then echo "no registered version of $name in $W/models/train.log"; exit 1; fi
  pathgen-batch models promote "$name" "$latest" --to staging --reason demo
  # The gate compares each model with the baselines of its own evaluation (ridge for the
  # generator, the trained WSI-only model for the fusion model). The demo goes on to score an
  # archive either way: a refusal is printed, then overridden with the reason on record.
  if ! pathgen-batch models promote "$name" "$latest" --reason demo; then
    echo "$name v$latest: the gate refused it (above); the demo forces it to go on scoring"
    pathgen-batch models promote "$name" "$latest" --force \
      --reason "demo: promoted although the gate refused it, to run the scoring job"
  fi
  touch "$W/models/$name.promoted"
done
pathgen-batch models list

step "archive: the held-out patients' slides (fold 0) plus four bad files"
pathgen-batch synth archive "$W/cohort" --out "$W/archive" --fold 0

step "score the archive with the Production models (Ray Data job; exit 3 = some slides failed)"
set +e
pathgen-batch score "$W/archive" --out "$W/scores" --run-id demo --workspace "$W"
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then echo "scoring failed (exit $rc)"; exit "$rc"; fi

step "query the output tables (DuckDB over Parquet)"
pathgen-batch query tables "$W/scores"
pathgen-batch query "$W/scores" "SELECT stage, error_type, count(*) AS n FROM failures GROUP BY ALL ORDER BY n DESC"
pathgen-batch query top-risk "$W/scores" -n 5
pathgen-batch query "$W/scores" "SELECT grade_pred, count(*) AS n, round(avg(risk), 3) AS mean_risk FROM predictions GROUP BY ALL ORDER BY n DESC"
# relative risk groups: the fusion bundle's cut points (tertiles of its calibration patients' risk)
pathgen-batch query "$W/scores" "SELECT risk_group, count(*) AS n, round(min(risk), 3) AS min_risk, round(max(risk), 3) AS max_risk FROM predictions GROUP BY ALL ORDER BY min_risk"
first_gene="$(head -2 "$W/cohort/gene_panel.csv" | tail -1 | cut -d, -f1)"
pathgen-batch query genes "$W/scores" --genes "$first_gene" | head -8

step "report"
pathgen-batch report "$W/scores" --clinical "$W/cohort/clinical.parquet" \
  --expression "$W/cohort/expression.parquet" --out "$W/report"

step "done"
echo "tables:   $W/scores (pathgen-batch query $W/scores \"SELECT ...\")"
echo "report:   $W/report/index.html"
echo "MLflow:   mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
printf '\ntime per step (wall, this invocation; a rerun reuses finished steps):\n'
printf '%s\n' "${STEP_TIMES[@]}"
printf '%6d s  total\n' $((SECONDS - T_START))
