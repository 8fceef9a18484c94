#!/usr/bin/env bash
# toy_gpu.sh DAM_DIST WORKDIR FIGURES — stage 6 of tests/cuda/run.sh, through dam_dist, most telling first:
#   1. the tiny toy DAM on the GPU against the CPU: every step's loss and the learned coefficients
#      (tests/cuda/compare_runs.py);
#   2. a bench-size toy on the GPU: step time, and the peak device memory sampled by nvidia-smi
#      against `plan --device cuda` (within 10 %);
#   3. pp=2 and tp=2 with two ranks on the one GPU over the host-staged transport (the carried mpirun)
#      against the one-rank GPU run;
#   4. the small toy, GPU against CPU;
#   5. checkpoints are portable: half of the tiny run on the CPU resumed on the GPU, and the other
#      way round, against the uninterrupted CPU run.
# Every part runs even when an earlier one failed; each dam_dist or mpirun call has its own timeout
# (RUN_CAP, default 60 s). Figures are appended to FIGURES as each part ends, and a failed run's last
# lines are printed, so a run cut off by run.sh's cap still reports what it did. Exit status 0 when
# all held.
#
# The carried libraries go on the library path of dam_dist and mpirun only: DAM_CARRY_LIB (the
# carry's lib/) and DAM_CARRY_PRELOAD (its glibc compat library, if any), set by run.sh.
# TOY_DEVICE=cpu (run.sh without a GPU, the dry run): the CPU runs and the two-rank runs (on the CPU,
# against the one-rank CPU run: the carried mpirun with no ssh or rsh) only; every GPU part says
# "no GPU" in one line.
set -u
D=$1 W=$2 FIG=$3
HERE=$(dirname "$0")
MPIRUN=$(dirname "$D")/../ompi/bin/mpirun
DEV=${TOY_DEVICE:-cuda}
RUN_CAP=${RUN_CAP:-60}
mkdir -p "$W"
bad=0
ok() { echo "OK      $*"; }
notok() { echo "NOT OK  $*"; bad=1; }
nogpu() { echo "SKIP    $*: no GPU"; }
# carried CMD...: CMD with the carried libraries (and only it), under RUN_CAP
carried() {
  local -a e=(LD_LIBRARY_PATH="${DAM_CARRY_LIB:-}${DAM_CARRY_LIB:+:}${LD_LIBRARY_PATH:-}")
  [ -n "${DAM_CARRY_PRELOAD:-}" ] && e+=(LD_PRELOAD="$DAM_CARRY_PRELOAD")
  env "${e[@]}" timeout -k 5 "$RUN_CAP" "$@"
}
run() { # run NAME LOG ARGS... : ARGS (carried) into LOG; on failure one line and the log's last lines
  local name=$1 log=$2 rc
  shift 2
  carried "$@" > "$log" 2>&1 && return 0
  rc=$?
  notok "$name: rc $rc$([ $rc -eq 124 ] && echo " (over ${RUN_CAP} s)"): $(grep -m1 'error' "$log" || tail -1 "$log")"
  tail -5 "$log" | sed 's/^/        | /'
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
figure() { # figure NAME LOG: its last step line into FIGURES, now
  grep '^step' "$2" 2> /dev/null | tail -1 | sed "s/^/toy $1_last_step: /" >> "$FIG"
}
layout() { # layout SIZE NAME PP TP : SIZE's config with that parallel section, host-staged
  sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"pp\": $3, \"tp\": $4, \"device\": \"$DEV\", \"transport\": \"mpi\"}/" \
    "$W/$1/config.json" > "$W/$1/$2.json"
}
# toy SIZE MODELS: make the toy; cpu and (with a GPU) cuda runs, compared
toy() {
  carried "$D" toy --out "$W/$1" --size "$1" --models "$2" --seed 3 > "$W/$1-toy.log" 2>&1 || {
    notok "toy $1: $(tail -1 "$W/$1-toy.log")"
    return 1
  }
  run "$1 on cpu" "$W/$1-cpu.log" "$D" --config "$W/$1/config.json" --out "$W/$1-cpu" --device cpu || return 1
  figure "$1_cpu" "$W/$1-cpu.log"
  if [ "$DEV" != cuda ]; then
    ok "toy $1 on cpu: $(grep '^step' "$W/$1-cpu.log" | tail -1 | cut -c1-60)"
    nogpu "toy $1 on cuda against cpu"
    return 0
  fi
  run "$1 on cuda" "$W/$1-cuda.log" "$D" --config "$W/$1/config.json" --out "$W/$1-cuda" --device cuda &&
    figure "$1_cuda" "$W/$1-cuda.log" &&
    compare "toy $1, cuda against cpu" "$1-cpu" "$1-cuda"
  grep '^step' "$W/$1-cuda.log" 2> /dev/null | tail -1
}
# portable A B: the first half of the tiny run on device A, resumed on B (the two logs together hold
# every step), against the uninterrupted CPU run
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
bench() {
  echo "-- bench-size toy on the GPU: step time, peak device memory against plan"
  if [ "$DEV" != cuda ]; then
    nogpu "bench-size toy on cuda, plan against its peak memory"
    return 0
  fi
  carried "$D" toy --out "$W/bench" --size bench --models 3 --seed 3 > /dev/null 2>&1 || {
    notok "toy bench"
    return 1
  }
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$W/mem.txt" 2> /dev/null &
  local smi=$! peak plan
  run "bench toy on cuda" "$W/bench-gpu.log" "$D" --config "$W/bench/config.json" --out "$W/bench-gpu" \
    --device cuda --max-steps 3
  kill $smi 2> /dev/null
  wait $smi 2> /dev/null
  grep '^step' "$W/bench-gpu.log" | tail -2
  figure bench_gpu "$W/bench-gpu.log"
  peak=$(sort -n "$W/mem.txt" 2> /dev/null | tail -1)
  echo "bench toy_bench_peak_device_MiB ${peak:-0} MiB (nvidia-smi, the whole GPU)" >> "$FIG"
  plan=$(carried "$D" plan --config "$W/bench/config.json" --ranks 1 --device cuda --gpu-mem 80 --json 2> /dev/null |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["ranks"][0]["bytes"]["total"] / 2**20))' 2> /dev/null)
  echo "bench toy_bench_plan_device_MiB ${plan:-0} MiB" >> "$FIG"
  if [ -z "$peak" ] || [ -z "$plan" ]; then
    notok "plan against measured device memory: measured '${peak:-none}' MiB, plan '${plan:-none}' MiB"
  else
    python3 -c "import sys; p, q = float('$peak'), float('$plan'); d = abs(q - p) / max(p, 1)
print('%-7s plan %.0f MiB against a measured peak of %.0f MiB: %.1f %%' % ('OK' if d <= 0.10 else 'NOT OK', q, p, 100 * d))
sys.exit(0 if d <= 0.10 else 1)" || bad=1
  fi
}
multirank() { # pp=2 and tp=2, two ranks (on the one GPU, or on the CPU without one), against one rank
  local ref=tiny-$DEV l
  if [ ! -x "$MPIRUN" ]; then
    echo "SKIP    multi-rank: no carried mpirun"
    return 0
  fi
  [ -f "$W/$ref.log" ] || {
    notok "multi-rank: no one-rank $DEV run to compare with"
    return 1
  }
  for l in "pp2 2 1" "tp2 1 2"; do
    set -- $l
    layout tiny "$1" "$2" "$3"
    run "tiny $1 (2 ranks, $DEV)" "$W/tiny-$1.log" "$MPIRUN" -n 2 --oversubscribe \
      "$D" --config "$W/tiny/$1.json" --out "$W/tiny-$1" &&
      compare "toy tiny $1 (2 ranks on $DEV, host-staged) against 1 rank" "$ref" "tiny-$1"
  done
}

toy tiny 2
bench
multirank
if [ "$DEV" = cuda ]; then
  toy small 2
  portable cpu cuda
  portable cuda cpu
else
  nogpu "toy small on cuda against cpu"
  nogpu "checkpoints of cpu resumed on cuda and back"
fi
echo "toy_gpu: $([ $bad -eq 0 ] && echo "all held$([ "$DEV" != cuda ] && echo " (no GPU: the CPU parts only)")" || echo "failures above")"
exit $bad
