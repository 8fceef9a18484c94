#!/usr/bin/env bash
# tools/make_specialists.sh OUT — specialists that really differ, for the merge experiment (issue 12):
#   OUT/toy        dam_dist toy --tasks: a random character-level model (OUT/toy/base), its tokenizer
#                  and the tasks add, rev, sort and their mix as train/eval token files (OUT/toy/data)
#   OUT/base       that model fine-tuned on the mix of the three tasks
#   OUT/add, OUT/rev, OUT/sort
#                  one specialist per task, fine-tuned from OUT/base on its own task only
#   OUT/config.json  a DAM config merging the three specialists over OUT/base
# then prints every model's exact-match accuracy (teacher forced, on the answer tokens) on every
# task's eval rows, as a markdown table, and the wall time.
# Environment: DAM_BIN (default ./dam_dist), SEED (1), BASE_STEPS (300), SPEC_STEPS (600), BATCH (32),
# LR (0.003).
set -euo pipefail
OUT=${1:?usage: tools/make_specialists.sh OUT}
DAM=${DAM_BIN:-./dam_dist}
SEED=${SEED:-1}
BASE_STEPS=${BASE_STEPS:-300}
SPEC_STEPS=${SPEC_STEPS:-600}
BATCH=${BATCH:-32}
LR=${LR:-0.003}
TASKS="add rev sort"
t0=$(date +%s.%N)

mkdir -p "$OUT"
"$DAM" toy --tasks --out "$OUT/toy" --seed "$SEED"
data="$OUT/toy/data"
train() { # train MODEL OUTDIR STEPS DATA
    "$DAM" finetune --model "$1" --out "$2" --steps "$3" --data "$4" --batch "$BATCH" --lr "$LR" \
        --seed "$SEED" --answer-only | tail -n 1
}
train "$OUT/toy/base" "$OUT/base" "$BASE_STEPS" "$data/mix_train.h5"
for task in $TASKS; do
    train "$OUT/base" "$OUT/$task" "$SPEC_STEPS" "$data/${task}_train.h5"
done

cat >"$OUT/config.json" <<EOF
{
  "base_model": "base",
  "models": [
    {"path": "add", "dataset": "toy/data/add_train.h5"},
    {"path": "rev", "dataset": "toy/data/rev_train.h5"},
    {"path": "sort", "dataset": "toy/data/sort_train.h5"}
  ],
  "merge": {"embeddings": true, "norms": true, "include_base": false, "nonlinearity": "none", "init": "uniform"},
  "loss": {"kl": true, "temperature": 2.0},
  "train": {"optimizer": "adamw", "lr": 0.02, "schedule": "constant", "steps": 100, "batch_size": 8,
            "micro_batches": 1, "seq_len": 16, "max_grad_norm": 1.0, "seed": 1},
  "output": {"dir": "merged", "shard_size": "5GB"}
}
EOF

evals=()
for task in $TASKS; do evals+=(--eval "$data/${task}_eval.h5"); done
echo
echo "exact match (teacher forced) on each task's eval rows:"
echo
printf '| model |'; for task in $TASKS; do printf ' %s |' "$task"; done; echo
printf '|---|'; for task in $TASKS; do printf -- '---|'; done; echo
for model in base $TASKS; do
    printf '| %s |' "$model"
    "$DAM" finetune --model "$OUT/$model" --steps 0 "${evals[@]}" |
        sed -n 's/.*exact_match \([0-9.]*\) .*/\1/p' | while read -r acc; do printf ' %s |' "$acc"; done
    echo
done
echo
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "make_specialists: %.1f s wall\n", b - a }'
