#!/usr/bin/env bash
# emu_test.sh — `make cuda-emu-test`: the CUDA backend's own code (cuda/*.cu*, mpi/nccl_comm.c, the
# NCCL branch of mpi/devcomm.c) run on the CPU under the emulation of CUDA's rules (cuda/emu), built
# with AddressSanitizer and UBSan in $EMU_BUILD:
#   1. check_kernels (every op of the CUDA backend against the CPU backend) with the threads of a
#      block and the blocks run forward, reversed and shuffled, each kernel run a second time in the
#      opposite order and required to give the same bits unless it uses float atomics;
#   2. the NCCL transport on 2 ranks (tests/cuda/emu_nccl.c): all-reduce and send/receive against
#      exact results, sends in flight across a scratch and an index-list growth (which deadlocked
#      while those waited for the whole device), and a send with no receive and a receive with no
#      send ending, within DAM_NCCL_TIMEOUT_S, in one line naming the peer;
#   3. the tiny toy merge with parallel.device "cuda": 1 rank, dp2, pp2 and tp2 (NCCL transport),
#      each against the CPU backend's run with parallel.cpu_matmul "bf16" (fp32 where oneDNN has no
#      bf16 GEMM) within tests/cuda/compare_runs.py's bf16 tolerances; the same toy as Qwen3
#      (`toy --arch qwen3`: per-head q/k norms) on 1 rank and tp2.
# One OK / NOT OK line per case, then "cuda-emu-test: N passed, N failed"; exit status 1 on a failure.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
EMU=${EMU_BUILD:-build-emu}
CPU_BIN=${DAM_BIN:-./dam_dist}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 DAM_EMU_TIMEOUT_S=${DAM_EMU_TIMEOUT_S:-120}
MPI="timeout 300 mpirun --oversubscribe -q"
T=$(mktemp -d /tmp/dam_cuda_emu.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0
ok() { echo "OK      $*"; pass=$((pass + 1)); }
bad() { echo "NOT OK  $*"; fail=$((fail + 1)); }
t0=$(date +%s)

# ---- 1. check_kernels in three orders
for order in forward reverse shuffle; do
  if DAM_EMU_ORDER=$order DAM_EMU_ORDER_CHECK=1 timeout 600 "$EMU/cuda/check_kernels" 5 cuda > "$T/ck.log" 2>&1 \
     && grep -q "check_kernels: [0-9]* passed, 0 failed" "$T/ck.log"; then
    ok "check_kernels, threads and blocks $order, each kernel again in another order: $(tail -1 "$T/ck.log")"
  else
    bad "check_kernels ($order): $(grep -m3 -E 'NOT OK|error|ERROR' "$T/ck.log" | tr '\n' ' ' | cut -c1-400)"
  fi
done

# ---- 2. NCCL over 2 ranks
if DAM_EMU_TIMEOUT_S=30 $MPI -n 2 "$EMU/cuda/emu_nccl" > "$T/nccl.log" 2>&1 \
   && grep -q "emu_nccl: [0-9]* passed, 0 failed" "$T/nccl.log"; then
  while read -r l; do ok "NCCL on 2 ranks: ${l#OK     }"; done < <(grep '^OK ' "$T/nccl.log")
else
  bad "NCCL on 2 ranks: $(grep -E 'NOT OK|error' "$T/nccl.log" | head -3 | tr '\n' ' ' | cut -c1-400)"
fi
for mode in no-recv no-send; do
  s=$(date +%s)
  DAM_NCCL_TIMEOUT_S=3 $MPI -n 2 "$EMU/cuda/emu_nccl" $mode > "$T/$mode.log" 2>&1
  rc=$? took=$(($(date +%s) - s))
  want="a $([ $mode = no-recv ] && echo "send to" || echo "receive from") rank 1"
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -lt 60 ] && grep -q "error: NCCL on group world (rank 0 of 2): $want, waited for 3 s" "$T/$mode.log"; then
    ok "NCCL $mode: ends in ${took} s with one line: $(grep -m1 'error: NCCL' "$T/$mode.log")"
  else
    bad "NCCL $mode: rc $rc after ${took} s: $(grep -m2 -E 'error' "$T/$mode.log" | tr '\n' ' ' | cut -c1-300)"
  fi
done

# ---- 3. the toy merges, emulated CUDA against the CPU backend: the Llama toy in every layout, the
# Qwen3 toy (per-head q/k norms, their tp-partial gradients) on 1 rank and tp2
matmul=bf16
grep -q avx512_bf16 /proc/cpuinfo 2> /dev/null || matmul=fp32
toy_runs() { # toy_runs ARCH "NAME RANKS DP PP TP"...
  local arch=$1 D="$T/$1"
  shift
  "$CPU_BIN" toy --out "$D/toy" --size tiny --models 2 --seed 3 --arch "$arch" > /dev/null 2>&1 || { bad "toy --arch $arch"; return; }
  # 2 micro-batches of 1 row (dp=2 is then a valid layout), 6 steps; the same settings for every run
  sed -i 's/"micro_batches": 1/"micro_batches": 2/; s/"batch_size": 2/"batch_size": 1/; s/"steps": 12/"steps": 6/' \
    "$D/toy/config.json"
  layout() { # layout NAME DEVICE DP PP TP
    sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": $3, \"pp\": $4, \"tp\": $5, \"device\": \"$2\", \"cpu_matmul\": \"$matmul\"}/" \
      "$D/toy/config.json" > "$D/toy/$1.json"
  }
  layout cpu cpu 1 1 1
  if ! "$CPU_BIN" --config "$D/toy/cpu.json" --out "$D/cpu" > "$D/cpu.log" 2>&1; then
    bad "the CPU reference run ($arch): $(grep -m1 error "$D/cpu.log")"
  fi
  for l in "$@"; do
    set -- $l
    layout "$1" cuda "$3" "$4" "$5"
    if [ "$2" = 1 ]; then cmd=(timeout 600 "$EMU/dam_dist"); else cmd=($MPI -n "$2" "$EMU/dam_dist"); fi
    if "${cmd[@]}" --config "$D/toy/$1.json" --out "$D/$1" > "$D/$1.log" 2>&1; then
      if grep -q "backend cuda" "$D/$1.log" && python3 tests/cuda/compare_runs.py "$D/cpu.log" "$D/$1.log" "$D/cpu" "$D/$1" > "$D/cmp.txt"; then
        ok "$arch toy $1 (dp=$3 pp=$4 tp=$5) on emulated CUDA = the CPU's cpu_matmul $matmul run: $(tr '\n' ' ' < "$D/cmp.txt" | sed 's/OK      //g' | cut -c1-200)"
      else
        bad "$arch toy $1 against the CPU: $(tr '\n' ' ' < "$D/cmp.txt" | cut -c1-300)"
      fi
    else
      bad "$arch toy $1: $(grep -m2 -E 'error' "$D/$1.log" | tr '\n' ' ' | cut -c1-300)"
    fi
  done
}
toy_runs llama "one 1 1 1 1" "dp2 2 2 1 1" "pp2 2 1 2 1" "tp2 2 1 1 2"
toy_runs qwen3 "one 1 1 1 1" "tp2 2 1 1 2"

echo "cuda-emu-test: took $(($(date +%s) - t0)) s"
echo "cuda-emu-test: $pass passed, $fail failed"
[ $fail -eq 0 ]
