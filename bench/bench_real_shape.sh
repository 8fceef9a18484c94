#!/usr/bin/env bash
# dam_dist against a straightforward PyTorch DAM (bench/torch_dam.py: fp32, torch autograd) on the
# real shape of a small model: `dam_dist toy --size smol`, the SmolLM2-135M architecture (d 576,
# 30 layers, 9 heads / 3 KV heads, F 1536, V 49152, tied embeddings), 2 sources, 2 x 128 tokens
# per dataset per step, full-vocabulary KL at temperature 2 and the similarity term. Both run the
# same steps on the same rows in this one run, one after the other, with the same thread count:
#   dam_dist fp32   keeping every layer's activations (parallel.keep_activations KEEP, default 2GB:
#                   as torch's autograd does), fp32 GEMMs (OpenBLAS, the kernel it picks after
#                   dam_dist's own fix of a generic fallback);
#   dam_dist bf16   the same with parallel.cpu_matmul "bf16" (GEMM inputs rounded to bf16, fp32
#                   accumulation, oneDNN) when this dam_dist is built with oneDNN (make info);
#   torch fp32      bench/torch_dam.py;
#   torch bf16      the same under torch.autocast(bfloat16) (TORCH_BF16=0 skips it);
#   dam_dist recompute (RECOMPUTE=1 only) at the default budget (keep_activations 256MB: this
#                   shape's 30 layers do not fit, so the backward recomputes each layer);
# ROUNDS times over (the machine may be shared: medians, the ratios within each round, the load
# average and the share of the CPUs other processes took meanwhile are printed). s/step is the median
# (and the best) over every step but each run's first two (torch gets faster over its first steps).
# The fp32 step-1 losses must agree (the same computation); the bf16 ones are printed beside them.
#
# usage: bash bench/bench_real_shape.sh [STEPS]        (default 8 steps per run, at least 3)
# env:   PYTHON   a python with torch, safetensors and h5py (not needed by dam_dist or CI), e.g.
#                   python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch safetensors h5py
#                   PYTHON=/tmp/torchenv/bin/python bash bench/bench_real_shape.sh
#        THREADS  threads for both (default: nproc; dam_dist's non-GEMM ops follow OPENBLAS_NUM_THREADS);
#                 ROUNDS (default 1); DAM_BIN; BENCH_DIR (the toy, default build/smol-toy, made once:
#                 3 x 270 MB of bf16); RECOMPUTE=1; TORCH_BF16=0
set -euo pipefail
STEPS=${1:-8}
BIN=${DAM_BIN:-./dam_dist}
DIR=${BENCH_DIR:-build/smol-toy}
PY=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=$THREADS
if ! "$PY" -c 'import torch, safetensors, h5py' 2>/dev/null; then
  echo "bench_real_shape: $PY lacks torch, safetensors or h5py; see the usage at the top of $0" >&2
  exit 2
fi
if ! grep -qs '"size": "smol", "models": 2' "$DIR/dam_toy.json"; then
  $BIN toy --out "$DIR" --size smol --models 2 --seed 1
fi
OUT=$(mktemp -d /tmp/dam_bench_real.XXXXXX)
trap 'rm -rf "$OUT" "$DIR/bench_run.json" "$DIR/bench_keep.json" "$DIR/bench_bf16.json"' EXIT
# the toy's config with STEPS steps (rows are reused in order once a dataset's 8 rows are used up)
sed 's/"steps": [0-9]*/"steps": '"$STEPS"'/' "$DIR/config.json" > "$DIR/bench_run.json"
CFG=$DIR/bench_run.json
KEEP=${KEEP:-2GB}
"$PY" - "$CFG" "$DIR/bench_keep.json" "$KEEP" "$DIR/bench_bf16.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.setdefault("parallel", {})["keep_activations"] = sys.argv[3]
json.dump(c, open(sys.argv[2], "w"), indent=1)
c["parallel"]["cpu_matmul"] = "bf16"
json.dump(c, open(sys.argv[4], "w"), indent=1)
PYEOF
# bf16 GEMMs only where this dam_dist has them (built with oneDNN, a CPU with AVX-512)
BF16=1
if ! $BIN --config "$DIR/bench_bf16.json" --out "$OUT/probe" --max-steps 1 --force > "$OUT/probe.log" 2>&1; then
  echo "bench_real_shape: no bf16 GEMMs: $(grep -m1 error "$OUT/probe.log")" >&2
  BF16=0
fi
rm -rf "$OUT/probe" "$OUT/probe.ckpt" "$OUT/probe.metrics.jsonl"

# s/step of a dam_dist run: tokens / tokens_per_s of each metrics line but the first two
dam_steps() { sed -n 's/.*"tokens":\([0-9]*\),"tokens_per_s":\([0-9.]*\).*/\1 \2/p' "$1" | awk 'NR > 2 {print $1 / $2}'; }
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
best() { sort -g | head -1; }
# CPU seconds used by the whole machine (/proc/stat) and by this script's children (bash `times`): the
# difference over the runs is what other processes took from them
machine_cpu() { awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / 100}' /proc/stat; }
children_cpu() { # in this shell (not $(...)): `times` of a subshell would not count its siblings
  times > "$OUT/times"
  tail -1 "$OUT/times" | awk '{n = 0; for (i = 1; i <= 2; i++) {split($i, a, /[ms]/); n += a[1] * 60 + a[2]}; print n}' > "$OUT/cpu"
}
run_dam() { # TAG CONFIG [VAR=VALUE]: appends s/step values to $OUT/TAG.steps
  local tag=$1 cfg=$2; shift 2
  env "$@" $BIN --config "$cfg" --out "$OUT/$tag.out" --max-steps "$STEPS" --force > "$OUT/$tag.log" 2>&1 \
    || { echo "dam_dist ($tag) failed:"; tail -5 "$OUT/$tag.log"; exit 1; }
  dam_steps "$OUT/$tag.out.metrics.jsonl" >> "$OUT/$tag.steps"
  rm -rf "$OUT/$tag.out" "$OUT/$tag.out.ckpt" "$OUT/$tag.out.metrics.jsonl"
}
load0=$(cut -d' ' -f1-3 /proc/loadavg)
children_cpu; c0=$(cat "$OUT/cpu"); m0=$(machine_cpu); w0=$(date +%s.%N)
run_torch() { # TAG [--bf16]: appends s/step values to $OUT/TAG.steps
  local tag=$1; shift
  "$PY" bench/torch_dam.py --config "$CFG" --steps "$STEPS" --threads "$THREADS" "$@" > "$OUT/$tag.log" 2>&1 \
    || { echo "torch_dam ($tag) failed:"; tail -5 "$OUT/$tag.log"; exit 1; }
  sed -n 's/^step .* | \([0-9.]*\) s$/\1/p' "$OUT/$tag.log" | awk 'NR > 2' >> "$OUT/$tag.steps"
}
round_median() { tail -n "$((STEPS - 2))" "$OUT/$1.steps" | median; } # this round's median of TAG
: > "$OUT/rounds"
for r in $(seq 1 "$ROUNDS"); do
  l0=$(cut -d' ' -f1 /proc/loadavg)
  [ "${RECOMPUTE:-0}" = 1 ] && run_dam dam "$CFG"
  run_dam kept "$DIR/bench_keep.json"
  [ $BF16 = 1 ] && run_dam bf16 "$DIR/bench_bf16.json"
  run_torch torch
  [ "${TORCH_BF16:-1}" = 1 ] && run_torch torchbf16 --bf16
  # this round: s/step of each and the ratios torch fp32 / dam_dist fp32, torch fp32 / dam_dist bf16,
  # torch bf16 / dam_dist bf16
  k=$(round_median kept) t=$(round_median torch)
  b=$([ $BF16 = 1 ] && round_median bf16 || echo nan) tb=$([ "${TORCH_BF16:-1}" = 1 ] && round_median torchbf16 || echo nan)
  awk -v r="$r" -v l0="$l0" -v l1="$(cut -d' ' -f1 /proc/loadavg)" -v k="$k" -v b="$b" -v t="$t" -v tb="$tb" 'BEGIN {
    printf "| %d | %s / %s | %.2f | %.2f | %.2f | %.2f | %.2fx | %.2fx | %.2fx |\n", r, l0, l1, k, b, t, tb, t / k, t / b, tb / b}' >> "$OUT/rounds"
done

m1=$(machine_cpu); w1=$(date +%s.%N); children_cpu; c1=$(cat "$OUT/cpu")
others=$(awk -v m0="$m0" -v m1="$m1" -v c0="$c0" -v c1="$c1" -v w0="$w0" -v w1="$w1" \
  -v n="$(nproc)" 'BEGIN {o = (m1 - m0) - (c1 - c0); if (o < 0) o = 0; printf "%.0f%%", 100 * o / ((w1 - w0) * n)}')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa=$(for f in avx2 fma avx512f; do grep -qw $f <<<"$flags" && printf '%s ' "$f"; done)
blas=$(head -1 "$OUT/kept.log")
kernel=$(sed -n 's/^BLAS: [^,]*, kernel \([^, ]*\).*/\1/p' <<<"$blas")
stat() { [ -s "$OUT/$2.steps" ] && $1 < "$OUT/$2.steps" || echo nan; } # median|best TAG
loss1() { [ -f "$OUT/$1.log" ] && grep -m1 '^step' "$OUT/$1.log" | sed 's/.*| loss \([0-9.]*\).*/\1/' || echo -; }
rss() { [ -f "$OUT/$1.log" ] && sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$OUT/$1.log" | awk '{printf "%.0f", $1 / 1024}' || echo -; }
echo "machine: $(nproc) cores, $cpu (${isa% }); $THREADS threads each; $ROUNDS round(s) of $STEPS steps;" \
  "load average $load0 before, $(cut -d' ' -f1-3 /proc/loadavg) after; other processes took $others of the CPUs meanwhile"
echo "dam_dist: $blas"
echo "dam_dist: parallel.keep_activations $KEEP;" \
  "bf16 GEMMs: $([ $BF16 = 1 ] && echo "oneDNN $(dpkg-query -W -f='${Version}' libdnnl2 2>/dev/null || echo '(version unknown)') dnnl_gemm_bf16bf16f32" || echo "not built")"
echo "torch: $(head -1 "$OUT/torch.log" | sed 's/^torch_dam: //')"
echo "step-1 loss: dam_dist fp32 $(loss1 kept), torch fp32 $(loss1 torch); dam_dist bf16 $(loss1 bf16), torch bf16 $(loss1 torchbf16)"
echo
echo "Per round (median s/step of the round; load average at its start / end):"
echo
echo "| round | load | dam_dist fp32 | dam_dist bf16 | torch fp32 | torch bf16 | torch fp32 / dam_dist fp32 | torch fp32 / dam_dist bf16 | torch bf16 / dam_dist bf16 |"
echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
cat "$OUT/rounds"
echo
echo "All rounds: s/step median (best) over $(wc -l < "$OUT/kept.steps") steps of each"
echo
echo "| CPU | BLAS kernel | dam_dist fp32 | dam_dist bf16 | torch fp32 | torch bf16 | dam_dist recompute | peak RSS dam_dist fp32 / bf16 / torch fp32 / torch bf16 (MiB) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
printf '| %s | %s | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %s / %s / %s / %s |\n' "$cpu" "$kernel" \
  "$(stat median kept)" "$(stat best kept)" "$(stat median bf16)" "$(stat best bf16)" "$(stat median torch)" "$(stat best torch)" \
  "$(stat median torchbf16)" "$(stat best torchbf16)" "$(stat median dam)" "$(stat best dam)" \
  "$(rss kept)" "$(rss bf16)" "$(rss torch)" "$(rss torchbf16)"
awk -v a="$(loss1 kept)" -v b="$(loss1 torch)" 'BEGIN {d = a - b; if (d < 0) d = -d; if (d > 1e-3 * (a > 0 ? a : -a)) {print "step-1 losses differ: not the same computation"; exit 1}}'
