#!/usr/bin/env bash
# dam_dist against a straightforward PyTorch DAM (bench/torch_dam.py: fp32, torch autograd) on the
# real shape of a small model: `dam_dist toy --size smol`, the SmolLM2-135M architecture (d 576,
# 30 layers, 9 heads / 3 KV heads, F 1536, V 49152, tied embeddings), 2 sources, 2 x 128 tokens
# per dataset per step, full-vocabulary KL at temperature 2 and the similarity term. Both run the
# same steps on the same rows in this one run, one after the other, with the same thread count:
# dam_dist with the kernel OpenBLAS picks (after dam_dist's own fix of a generic fallback) at its
# default memory budget (parallel.keep_activations 256MB: this shape's 30 layers do not fit, so the
# backward recomputes each layer), dam_dist keeping every layer's activations (keep_activations
# KEEP, default 2GB: as torch's autograd does), then torch, ROUNDS times over (the machine may be shared: medians,
# and the share of the CPUs other processes took meanwhile is printed). s/step is the median (and the
# best) over every step but each run's first two (torch gets faster over its first steps). Their
# step-1 losses must agree: the same computation.
#
# usage: bash bench/bench_real_shape.sh [STEPS]        (default 8 steps per run, at least 3)
# env:   PYTHON   a python with torch, safetensors and h5py (not needed by dam_dist or CI), e.g.
#                   python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch safetensors h5py
#                   PYTHON=/tmp/torchenv/bin/python bash bench/bench_real_shape.sh
#        THREADS  threads for both (default: nproc); ROUNDS (default 1); DAM_BIN; BENCH_DIR (the toy,
#                 default build/smol-toy, made once: 3 x 270 MB of bf16)
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
trap 'rm -rf "$OUT" "$DIR/bench_run.json" "$DIR/bench_keep.json"' EXIT
# the toy's config with STEPS steps (rows are reused in order once a dataset's 8 rows are used up)
sed 's/"steps": [0-9]*/"steps": '"$STEPS"'/' "$DIR/config.json" > "$DIR/bench_run.json"
CFG=$DIR/bench_run.json
KEEP=${KEEP:-2GB}
"$PY" - "$CFG" "$DIR/bench_keep.json" "$KEEP" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.setdefault("parallel", {})["keep_activations"] = sys.argv[3]
json.dump(c, open(sys.argv[2], "w"), indent=1)
PYEOF

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
for r in $(seq 1 "$ROUNDS"); do
  run_dam dam "$CFG"
  run_dam kept "$DIR/bench_keep.json"
  "$PY" bench/torch_dam.py --config "$CFG" --steps "$STEPS" --threads "$THREADS" > "$OUT/torch.log" 2>&1 \
    || { echo "torch_dam failed:"; tail -5 "$OUT/torch.log"; exit 1; }
  sed -n 's/^step .* | \([0-9.]*\) s$/\1/p' "$OUT/torch.log" | awk 'NR > 2' >> "$OUT/torch.steps"
done

m1=$(machine_cpu); w1=$(date +%s.%N); children_cpu; c1=$(cat "$OUT/cpu")
others=$(awk -v m0="$m0" -v m1="$m1" -v c0="$c0" -v c1="$c1" -v w0="$w0" -v w1="$w1" \
  -v n="$(nproc)" 'BEGIN {o = (m1 - m0) - (c1 - c0); if (o < 0) o = 0; printf "%.0f%%", 100 * o / ((w1 - w0) * n)}')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa=$(for f in avx2 fma avx512f; do grep -qw $f <<<"$flags" && printf '%s ' "$f"; done)
blas=$(head -1 "$OUT/dam.log"); 
kernel=$(sed -n 's/^BLAS: [^,]*, kernel \([^, ]*\).*/\1/p' <<<"$blas")
t_dam=$(median < "$OUT/dam.steps"); t_has=$(median < "$OUT/kept.steps"); t_torch=$(median < "$OUT/torch.steps")
b_dam=$(best < "$OUT/dam.steps"); b_has=$(best < "$OUT/kept.steps"); b_torch=$(best < "$OUT/torch.steps")
loss_dam=$(grep -m1 '^step' "$OUT/dam.log" | sed 's/.*| loss \([0-9.]*\).*/\1/')
loss_torch=$(grep -m1 '^step' "$OUT/torch.log" | sed 's/.*| loss \([0-9.]*\).*/\1/')
rss_dam=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$OUT/dam.log"); rss_kept=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$OUT/kept.log"); rss_torch=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$OUT/torch.log")
echo "machine: $(nproc) cores, $cpu (${isa% }); $THREADS threads each; $ROUNDS round(s) of $STEPS steps;" \
  "load average $load0 before, $(cut -d' ' -f1-3 /proc/loadavg) after; other processes took $others of the CPUs meanwhile"
echo "dam_dist: $blas"
echo "dam_dist kept: $(grep -m1 -i "activations" "$OUT/kept.log" || echo "parallel.keep_activations $KEEP")"
echo "torch: $(head -1 "$OUT/torch.log" | sed 's/^torch_dam: //')"
echo "step-1 loss: dam_dist $loss_dam, torch $loss_torch"
echo
echo "s/step: median (best) over $(wc -l < "$OUT/dam.steps") dam_dist and $(wc -l < "$OUT/torch.steps") torch steps"
echo
echo "| CPU | BLAS kernel | dam_dist s/step (recompute) | dam_dist s/step (activations kept) | torch s/step | torch / dam_dist (kept) | peak RSS dam_dist recompute / kept / torch (MiB) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | --- |"
awk -v cpu="$cpu" -v k="$kernel" -v a="$t_dam" -v h="$t_has" -v t="$t_torch" -v ba="$b_dam" -v bh="$b_has" -v bt="$b_torch" \
  -v rd="$rss_dam" -v rk="$rss_kept" -v rt="$rss_torch" 'BEGIN {
  printf "| %s | %s | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %.2fx (%.2fx) | %.0f / %.0f / %.0f |\n", cpu, k, a, ba, h, bh, t, bt,
    t / h, bt / bh, rd / 1024, rk / 1024, rt / 1024}'
awk -v a="$loss_dam" -v b="$loss_torch" 'BEGIN {d = a - b; if (d < 0) d = -d; if (d > 1e-3 * (a > 0 ? a : -a)) {print "step-1 losses differ: not the same computation"; exit 1}}'
