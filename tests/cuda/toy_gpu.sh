#!/usr/bin/env bash
# toy_gpu.sh DAM_DIST WORKDIR FIGURES — stage 6 of tests/cuda/run.sh: toy DAMs through dam_dist on
# the GPU against the CPU (tests/cuda/compare_runs.py: every step's loss, the coefficients), then a
# bench-size toy on the GPU (step time; the peak device memory sampled by nvidia-smi against
# `plan --device cuda`, within 10 %). Figures appended to FIGURES. Exit status 0 when all held.
set -u
D=$1 W=$2 FIG=$3
mkdir -p "$W"
bad=0
for size in tiny small; do
  echo "-- toy $size: GPU against CPU"
  "$D" toy --out "$W/$size" --size "$size" --models 2 --seed 3 > /dev/null || exit 1
  for dev in cpu cuda; do
    if ! "$D" --config "$W/$size/config.json" --out "$W/$size-$dev" --device $dev > "$W/$size-$dev.log" 2>&1; then
      echo "NOT OK  $size on $dev: $(tail -2 "$W/$size-$dev.log")"
      exit 1
    fi
  done
  grep '^step' "$W/$size-cuda.log" | tail -1
  python3 "$(dirname "$0")/compare_runs.py" "$W/$size-cpu.log" "$W/$size-cuda.log" "$W/$size-cpu" "$W/$size-cuda" || bad=1
done

echo "-- bench-size toy on the GPU: step time, peak device memory against plan"
"$D" toy --out "$W/bench" --size bench --models 3 --seed 3 > /dev/null || exit 1
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$W/mem.txt" 2> /dev/null &
smi=$!
"$D" --config "$W/bench/config.json" --out "$W/bench-gpu" --device cuda --max-steps 3 > "$W/bench-gpu.log" 2>&1
rc=$?
kill $smi 2> /dev/null
wait $smi 2> /dev/null
grep '^step' "$W/bench-gpu.log" | tail -2
if [ $rc -ne 0 ]; then
  echo "NOT OK  bench toy on cuda: $(tail -2 "$W/bench-gpu.log")"
  exit 1
fi
grep '^step' "$W/bench-gpu.log" | tail -1 | sed 's/^/bench toy_bench_last_step: /' >> "$FIG"
peak=$(sort -n "$W/mem.txt" 2> /dev/null | tail -1)
plan=$("$D" plan --config "$W/bench/config.json" --ranks 1 --device cuda --gpu-mem 80 --json 2> /dev/null |
  python3 -c 'import json, sys; print(round(json.load(sys.stdin)["ranks"][0]["bytes"]["total"] / 2**20))')
echo "bench toy_bench_peak_device_MiB ${peak:-0} MiB (nvidia-smi, the whole GPU)" >> "$FIG"
echo "bench toy_bench_plan_device_MiB ${plan:-0} MiB" >> "$FIG"
if python3 -c "import sys; p, q = float('${peak:-0}'), float('${plan:-0}'); d = abs(q - p) / max(p, 1)
print('%-7s plan %.0f MiB against a measured peak of %.0f MiB: %.1f %%' % ('OK' if d <= 0.10 else 'NOT OK', q, p, 100 * d))
sys.exit(0 if d <= 0.10 else 1)"; then :; else bad=1; fi
exit $bad
