#!/usr/bin/env bash
# The benchmark comparison (issue 13): every recipe × seed of data/comparison.yaml on each synthetic
# pool profile, each profile in its own data root and Dagster instance (data/comparison/<profile>/),
# then per profile the comparison report (recipes against uniform at equal compute: paired
# differences, 95% intervals, MDE, verdicts, plots; Dagster asset comparison_report, MLflow) and
# the comparison table block (data/comparison/comparison_table.md, scripts/comparison_table.py; docs/comparison.md).
#
#   bash scripts/compare.sh                          # both profiles, every recipe, every seed
#   bash scripts/compare.sh --profile web --seeds 2 --recipes uniform-100 uniform-50 dynamics-exact-50
#   bash scripts/compare.sh --serial                 # profiles one after the other (default: side by side, 1 thread each)
#
# Resumable: recipe × epoch partitions whose eval_report is materialised are skipped
# (pipeline --skip-existing), so an interrupted comparison continues where it stopped.
# Other arguments after `--` go to python -m dynamics_assets.pipeline.
source "$(dirname "$0")/env.sh"

PROFILE=both SEEDS="" RECIPES=() SERIAL=0 EXTRA=() CONFIG="${DYNAMICS_COMPARISON:-$ROOT/data/comparison.yaml}"
OUT_ROOT="${DYNAMICS_COMPARISON_DIR:-$ROOT/data/comparison}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --recipes) shift; while [[ $# -gt 0 && "$1" != --* ]]; do RECIPES+=("$1"); shift; done ;;
    --serial) SERIAL=1; shift ;;
    --config) CONFIG="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cfg_args=(--config "$CONFIG")
[[ -n "$SEEDS" ]] && cfg_args+=(--seeds "$SEEDS")
[[ ${#RECIPES[@]} -gt 0 ]] && cfg_args+=(--recipes "${RECIPES[@]}")
eval "$(python scripts/comparison_config.py "${cfg_args[@]}" --out "$OUT_ROOT/.probe.yaml")"
rm -f "$OUT_ROOT/.probe.yaml"
case "$PROFILE" in
  both) profiles=($PROFILES) ;;
  web|concept) profiles=("$PROFILE") ;;
  *) echo "compare.sh: --profile web|concept|both (got $PROFILE)" >&2; exit 2 ;;
esac
parallel=$(( SERIAL == 0 && ${#profiles[@]} > 1 ))

run_profile() {  # one profile: its own data root, instance and experiments file
  local profile="$1" dir="$OUT_ROOT/$1"
  mkdir -p "$dir/dagster_home"
  python scripts/comparison_config.py "${cfg_args[@]}" --out "$dir/experiments.yaml" >/dev/null
  cp "${DAGSTER_YAML:-dagster.yaml}" "$dir/dagster_home/dagster.yaml"
  # shellcheck disable=SC2086  # POOL_OPTIONS is a list of options
  DYNAMICS_DATA_DIR="$dir" DAGSTER_HOME="$dir/dagster_home" DYNAMICS_EXPERIMENTS="$dir/experiments.yaml" \
    DYNAMICS_EPOCHS="$EPOCHS" DYNAMICS_PROGRESS=0 \
    python -m dynamics_assets.pipeline --recipes all --skip-existing --no-export --epochs "$EPOCHS" \
      --pool-option profile="$profile" $POOL_OPTIONS "${EXTRA[@]}"
}

started=$(date +%s)
echo "comparison: profiles ${profiles[*]}, $N_RUNS recipe × seed runs each, $EPOCHS epochs; data in $OUT_ROOT"
status=0
if (( parallel )); then
  pids=()
  for p in "${profiles[@]}"; do
    mkdir -p "$OUT_ROOT/$p"
    echo "  $p: log $OUT_ROOT/$p/compare.log"
    ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; run_profile "$p" ) >"$OUT_ROOT/$p/compare.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      echo "  ${profiles[$i]} failed: see $OUT_ROOT/${profiles[$i]}/compare.log" >&2; status=1
    fi
  done
else
  for p in "${profiles[@]}"; do
    mkdir -p "$OUT_ROOT/$p"
    run_profile "$p" 2>&1 | tee "$OUT_ROOT/$p/compare.log" || status=1
  done
fi
wall=$(( $(date +%s) - started ))
python scripts/comparison_table.py --root "$OUT_ROOT" --profiles "${profiles[@]}" --wall-seconds "$wall" \
  --out "$OUT_ROOT/comparison_table.md" || status=1
echo "comparison: wall time $((wall / 60)) min $((wall % 60)) s; table: $OUT_ROOT/comparison_table.md"
echo "  docs block: python scripts/comparison_table.py --root $OUT_ROOT --profiles ${profiles[*]} --doc docs/comparison.md"
exit $status
