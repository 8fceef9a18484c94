#!/usr/bin/env bash
# toy_gpu.sh DAM_DIST WORKDIR FIGURES — stage 6 of tests/cuda/run.sh, through dam_dist:
#   - toy DAMs (tiny, small) on the GPU against the CPU: every step's loss and the learned
#     coefficients (tests/cuda/compare_runs.py);
#   - pp=2 and tp=2 with two ranks on the one GPU over the host-staged transport (mpirun, carried)
#     against the one-rank GPU run;
#   - checkpoints are portable: half of the tiny run on the CPU resumed on the GPU, and the other
#     way round, against the uninterrupted CPU run;
#   - a bench-size toy on the GPU: step time, and the peak device memory sampled by nvidia-smi
#     against `plan --device cuda` (within 10 %).
# Figures go to FIGURES; every part runs even when an earlier one failed. Exit status 0 when all held.
set -u
D=$1 W=$2 FIG=$3
HERE=$(dirname "$0")
MPIRUN=$(dirname "$D")/../ompi/bin/mpirun
mkdir -p "$W"
bad=0
ok() { echo "OK      $*"; }
notok() { echo "NOT OK  $*"; bad=1; }
run() { # run NAME LOG ARGS... : dam_dist ARGS into LOG, one line when it fails
  local name=$1 log=$2
  shift 2
  "$@" > "$log" 2>&1 && return 0
  notok "$name: $(grep -m1 'error' "$log" || tail -1 "$log")"
  return 1
}
compare() { # compare NAME REF_DIR OTHER_DIR
  if python3 "$HERE/compare_runs.py" "$W/$2.log" "$W/$3.log" "$W/$2" "$W/$3" > "$W/cmp.txt"; then
    sed "s/^OK      /OK      $1: /" "$W/cmp.txt"
  else
    sed "s/^\(NOT OK\|OK\)  */\1  $1: /" "$W/cmp.txt"
    bad=1
  fi
}
layout() { # layout SIZE NAME PP TP : SIZE's config with that parallel section, host-staged
  sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"pp\": $3, \"tp\": $4, \"device\": \"cuda\", \"transport\": \"mpi\"}/" \
    "$W/$1/config.json" > "$W/$1/$2.json"
}

# portable CHECKPOINT: the first half of the tiny run on device $1, resumed on $2 (the two logs
# together hold every step), against the uninterrupted CPU run
portable() {
  local o="$W/tiny-$1to$2" total half
  total=$(sed -n 's/^step *1\/\([0-9]*\) .*/\1/p' "$W/tiny-cpu.log" | head -1)
  half=$((${total:-8} / 2))
  run "tiny, $half steps on $1" "$o.a.log" "$D" --config "$W/tiny/config.json" --out "$o" --device "$1" \
    --max-steps "$half" &&
    run "tiny resumed on $2" "$o.b.log" "$D" --config "$W/tiny/config.json" --out "$o" --device "$2" --resume &&
    cat "$o.a.log" "$o.b.log" > "$o.log" &&
    compare "a checkpoint of $1 resumed on $2, against the cpu run" tiny-cpu "tiny-$1to$2"
}

for size in tiny small; do
  "$D" toy --out "$W/$size" --size "$size" --models 2 --seed 3 > /dev/null || { notok "toy $size"; continue; }
  run "$size on cpu" "$W/$size-cpu.log" "$D" --config "$W/$size/config.json" --out "$W/$size-cpu" --device cpu &&
    run "$size on cuda" "$W/$size-cuda.log" "$D" --config "$W/$size/config.json" --out "$W/$size-cuda" --device cuda &&
    compare "toy $size, cuda against cpu" "$size-cpu" "$size-cuda"
  grep '^step' "$W/$size-cuda.log" 2> /dev/null | tail -1
  if [ "$size" = tiny ] && [ -f "$W/tiny-cuda.log" ]; then
    if [ -x "$MPIRUN" ]; then
      for l in "pp2 2 1" "tp2 1 2"; do
        set -- $l
        layout tiny "$1" "$2" "$3"
        run "tiny $1 (2 ranks, one GPU)" "$W/tiny-$1.log" timeout 60 "$MPIRUN" -n 2 --oversubscribe \
          "$D" --config "$W/tiny/$1.json" --out "$W/tiny-$1" &&
          compare "toy tiny $1 (2 ranks, one GPU, host-staged) against 1 rank" tiny-cuda "tiny-$1"
      done
    else
      echo "SKIP    multi-rank: no carried mpirun"
    fi
    portable cpu cuda
    portable cuda cpu
  fi
done

echo "-- bench-size toy on the GPU: step time, peak device memory against plan"
if "$D" toy --out "$W/bench" --size bench --models 3 --seed 3 > /dev/null; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$W/mem.txt" 2> /dev/null &
  smi=$!
  run "bench toy on cuda" "$W/bench-gpu.log" "$D" --config "$W/bench/config.json" --out "$W/bench-gpu" \
    --device cuda --max-steps 3
  kill $smi 2> /dev/null
  wait $smi 2> /dev/null
  grep '^step' "$W/bench-gpu.log" | tail -2
  grep '^step' "$W/bench-gpu.log" | tail -1 | sed 's/^/bench toy_bench_last_step: /' >> "$FIG"
  peak=$(sort -n "$W/mem.txt" 2> /dev/null | tail -1)
  plan=$("$D" plan --config "$W/bench/config.json" --ranks 1 --device cuda --gpu-mem 80 --json 2> /dev/null |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["ranks"][0]["bytes"]["total"] / 2**20))' 2> /dev/null)
  echo "bench toy_bench_peak_device_MiB ${peak:-0} MiB (nvidia-smi, the whole GPU)" >> "$FIG"
  echo "bench toy_bench_plan_device_MiB ${plan:-0} MiB" >> "$FIG"
  if [ -z "$peak" ] || [ -z "$plan" ]; then
    notok "plan against measured device memory: measured '${peak:-none}' MiB, plan '${plan:-none}' MiB"
  else
    python3 -c "import sys; p, q = float('$peak'), float('$plan'); d = abs(q - p) / max(p, 1)
print('%-7s plan %.0f MiB against a measured peak of %.0f MiB: %.1f %%' % ('OK' if d <= 0.10 else 'NOT OK', q, p, 100 * d))
sys.exit(0 if d <= 0.10 else 1)" || bad=1
  fi
else
  notok "toy bench"
fi
echo "toy_gpu: $([ $bad -eq 0 ] && echo 'all held' || echo 'failures above')"
exit $bad
