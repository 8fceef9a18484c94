#!/usr/bin/env bash
# make experiment: DAM against the baselines it claims to beat, on specialists that really differ.
#
#   1. tools/make_specialists.sh: a character-level base trained on a mix of three tasks (digit
#      addition, string reversal, sorting) and one specialist per task fine-tuned from it;
#   2. DAM (dam_dist --config), linear averaging, task arithmetic, TIES, DARE-TIES (dam_dist merge)
#      and the evolutionary baseline (dam_dist evolve: CMA-ES on the same KL objective and rows);
#   3. dam_dist eval of every model on every task's held-out rows;
#   4. OUT/results.md (per method: exact match per task, mean KL to the sources, compute) and PNG
#      plots with gnuplot: DAM's loss curves, KL against compute for DAM and evolve, and the mean
#      learned coefficient per source, layer and tensor kind.
#
# Compute is counted in forwarded tokens (one token through the whole model once): a DAM step
# forwards its tokens through each dataset's source (teacher) and the merged model and back through
# the merged model, whose backward costs about two forwards, so 4 per token; an evolve evaluation
# forwards the tokens through the teacher and the candidate, 2 per token; the hand-set merges
# forward nothing. Wall times are this machine's.
#
# Usage: tools/experiment.sh [OUT]  (default experiment/). Environment: DAM_BIN (./dam_dist),
# SIZE=ci|full (ci: the CI's few minutes on 2 cores), SEED (1), RANKS (1: MPI ranks for DAM,
# evolve and eval), DENSITY (0.5, TIES and DARE), EVOLVE_EVALS (evolve's budget of evaluations).
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
OUT=${1:-experiment}
DAM=$(realpath "${DAM_BIN:-./dam_dist}")
SIZE=${SIZE:-ci}
SEED=${SEED:-1}
RANKS=${RANKS:-1}
DENSITY=${DENSITY:-0.5}
TASKS="add rev sort"
case $SIZE in
ci) SPEC_ENV=(BASE_STEPS=400 SPEC_STEPS=600) DAM_STEPS=100 EVOLVE_EVALS=${EVOLVE_EVALS:-160} ;;
full) SPEC_ENV=(BASE_STEPS=2000 SPEC_STEPS=3000) DAM_STEPS=200 EVOLVE_EVALS=${EVOLVE_EVALS:-500} ;;
*) echo "experiment: SIZE must be ci or full, not '$SIZE'" >&2; exit 1 ;;
esac
for tool in jq gnuplot; do
    command -v $tool >/dev/null || { echo "experiment: needs $tool (make deps installs it)" >&2; exit 1; }
done
run() { if [ "$RANKS" -gt 1 ]; then mpirun -q -n "$RANKS" "$DAM" "$@"; else "$DAM" "$@"; fi; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\n== %s\n' "$*"; }

rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
T0=$(now)

say "base and specialists"
env DAM_BIN="$DAM" SEED="$SEED" "${SPEC_ENV[@]}" bash "$(dirname "$0")/make_specialists.sh" "$OUT" |
    tee "$OUT/specialists.log"

# The DAM config of make_specialists.sh, with this experiment's steps and the rows it trains on.
cfg="$OUT/config.json"
jq --argjson s "$DAM_STEPS" '.train.steps = $s' "$cfg" >"$cfg.tmp" && mv "$cfg.tmp" "$cfg"
B=$(jq '.train.batch_size * .train.micro_batches' "$cfg")
ROWS=$((DAM_STEPS * B))
# eval reads each task's held-out file; evolve trains on the DAM run's rows
jq '.models |= map(.dataset |= sub("_train.h5$"; "_eval.h5"))' "$cfg" >"$OUT/eval_config.json"
declare -A WALL TOKENS

say "DAM"
t=$(now)
run --config "$cfg" --out "$OUT/merged_dam" | tee "$OUT/dam.log" | grep -E '^step .*(/|$)' | awk 'NR % 10 == 0'
WALL[dam]=$(secs "$t")
# every position of every row is computed, padding included (as evolve counts them)
TOKENS[dam]=$(jq '.train.steps * .train.batch_size * .train.micro_batches * .train.seq_len * (.models | length) * 4' "$cfg")

for method in linear task_arithmetic ties dare_ties; do
    say "merge $method"
    extra=()
    case $method in ties) extra=(--density "$DENSITY") ;; dare_ties) extra=(--density "$DENSITY" --seed "$SEED") ;; esac
    t=$(now)
    run merge --config "$cfg" --method "$method" "${extra[@]}" --out "$OUT/merged_$method" | tail -n 2
    WALL[$method]=$(secs "$t")
    TOKENS[$method]=0
done

say "evolve (CMA-ES, $EVOLVE_EVALS evaluations at most)"
t=$(now)
run evolve --config "$cfg" --out "$OUT/merged_evolve" --rows "$ROWS" --seed "$SEED" --max-evals "$EVOLVE_EVALS" |
    tee "$OUT/evolve.log" | tail -n 3
WALL[evolve]=$(secs "$t")
TOKENS[evolve]=$(jq '.tokens_forwarded * 2' "$OUT/merged_evolve/evolve_report.json")

say "eval"
METHODS="dam linear task_arithmetic ties dare_ties evolve"
models=(--model "$OUT/base")
for task in $TASKS; do models+=(--model "$OUT/$task"); done
for m in $METHODS; do models+=(--model "$OUT/merged_$m"); done
run eval --config "$OUT/eval_config.json" "${models[@]}" --json >"$OUT/eval.json"
run eval --config "$OUT/eval_config.json" "${models[@]}" | tee "$OUT/eval.txt" >/dev/null

bash "$(dirname "$0")/experiment_report.sh" "$OUT" "$METHODS" "$TASKS" \
    "$(for m in $METHODS; do printf '%s=%s:%s ' "$m" "${TOKENS[$m]}" "${WALL[$m]}"; done)"
say "done in $(secs "$T0") s: $OUT/results.md and $OUT/*.png"
