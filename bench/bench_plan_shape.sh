#!/usr/bin/env bash
# `dam_dist plan` against the measured peak RSS at real dimensions: two sources of Llama-3-70B's shape
# cut to one layer (d 8192, vocabulary 128256, 64 heads / 8 KV heads, one layer of FFN 2048, untied
# lm_head: 2.47 G parameters, 4.9 GB of random bf16 each; tests/tool_random_model), one rank,
# parallel.cpu_matmul "bf16" (when this dam_dist has oneDNN; else fp32), 2 datasets x 1 row x 64
# tokens, 2 steps, then the merged model written (the output phase is in the peak). The embedding
# and lm_head dominate as they do at 70B; the run needs about 22 GiB of memory (on a 24 GiB machine:
# nothing else large running) and 10 GB of disk.
#
# usage: bash bench/bench_plan_shape.sh
# env:   DAM_BIN; BUILD (default build: tests/tool_random_model is made there); BENCH_DIR (the sources,
#        default build/plan-shape, made once); THREADS (default nproc); F (FFN width, default 2048)
set -euo pipefail
BIN=${DAM_BIN:-./dam_dist}
BUILD=${BUILD:-build}
DIR=${BENCH_DIR:-build/plan-shape}
THREADS=${THREADS:-$(nproc)}
F=${F:-2048}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=$THREADS
make -s "$BUILD/tests/tool_random_model" BUILD="$BUILD"
mkdir -p "$DIR"
sed "s/\"intermediate_size\": 28672/\"intermediate_size\": $F/; s/\"num_hidden_layers\": 80/\"num_hidden_layers\": 1/" \
  tests/fixtures/configs/llama-3-70b.json > "$DIR/shape.new"
if ! cmp -s "$DIR/shape.new" "$DIR/shape.json" || [ ! -f "$DIR/m1/model.safetensors" ]; then
  mv "$DIR/shape.new" "$DIR/shape.json"
  for k in 0 1; do
    echo "making source m$k (4.9 GB)..."
    rm -rf "$DIR/m$k"
    "$BUILD/tests/tool_random_model" "$DIR/shape.json" "$DIR/m$k" $((k + 1)) "$DIR/d$k.h5" 8 64
  done
fi
rm -f "$DIR/shape.new"
matmul=bf16
grep -q -- '-DDAM_WITH_DNNL' "$BUILD/flags.stamp" 2>/dev/null || matmul=fp32
cat > "$DIR/run.json" <<JSON
{"models": [{"path": "m0", "dataset": "d0.h5"}, {"path": "m1", "dataset": "d1.h5"}],
 "loss": {"kl": true, "temperature": 2.0},
 "train": {"steps": 2, "batch_size": 1, "micro_batches": 1, "seq_len": 64, "lr": 0.001},
 "parallel": {"cpu_matmul": "$matmul"},
 "output": {"dir": "out"}}
JSON
$BIN plan --config "$DIR/run.json" --ranks 1 --json > "$DIR/plan.json" || [ $? -eq 3 ]
$BIN plan --config "$DIR/run.json" --ranks 1 | sed -n '/^ rank/,/^ *0 /p' || true
planned=$(grep '"total"' "$DIR/plan.json" | sed 's/[^0-9.e+]//g')
avail=$(awk '/^MemAvailable:/ {print $2 * 1024}' /proc/meminfo)
if awk -v p="$planned" -v a="$avail" 'BEGIN {exit !(p > a)}'; then
  echo "bench_plan_shape: plan says $(awk -v p="$planned" 'BEGIN {printf "%.1f", p / 2^30}') GiB, only $(awk -v a="$avail" 'BEGIN {printf "%.1f", a / 2^30}') GiB available: not run" >&2
  exit 2
fi
rm -rf "$DIR/out" "$DIR/out.ckpt" "$DIR/out.metrics.jsonl"
t0=$(date +%s)
/usr/bin/time -v $BIN --config "$DIR/run.json" > "$DIR/run.log" 2> "$DIR/time.log" || { tail -5 "$DIR/run.log" "$DIR/time.log"; exit 1; }
t1=$(date +%s)
measured=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$DIR/run.log")
maxrss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$DIR/time.log")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "machine: $(nproc) cores, $cpu, $(awk '/^MemTotal:/ {printf "%.1f", $2 / 2^20}' /proc/meminfo) GiB; cpu_matmul $matmul; $THREADS threads; run $((t1 - t0)) s"
echo
echo "| shape | cpu_matmul | plan (GiB) | peak RSS, dam_dist (GiB) | max RSS, time -v (GiB) | plan - peak |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
awk -v p="$planned" -v m="$measured" -v t="$maxrss" -v mm="$matmul" -v f="$F" 'BEGIN {
  printf "| 2 sources, d 8192, V 128256, 1 layer F %d, bf16 | %s | %.2f | %.2f | %.2f | %+.1f%% |\n", f, mm, p / 2^30, m / 2^20, t / 2^20, 100 * (p / 1024 - m) / m}'
rm -rf "$DIR/out" "$DIR/out.ckpt" "$DIR/out.metrics.jsonl"
awk -v p="$planned" -v m="$measured" 'BEGIN {exit !(p / 1024 >= 0.85 * m && p / 1024 <= 1.15 * m)}' \
  || { echo "bench_plan_shape: plan is not within 15 % of the measured peak" >&2; exit 1; }
