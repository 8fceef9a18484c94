#!/usr/bin/env bash
# tests/cuda/run.sh — the whole GPU check in one call on a GPU machine (see tests/cuda/README.md):
#   1. nvidia-smi            the card, its driver and memory
#   2. build                 make CUDA=1 cuda-test: check_kernels, check_nccl, bench_gpu (nvcc + gcc only)
#   3. kernels               every op of the CUDA backend against the CPU backend (fresh random inputs,
#                            outputs poisoned; fp32 paths < 1e-5, bf16 paths < 1e-2)
#   4. nccl                  mpi/nccl_comm.c on one-rank communicators (all-reduce, send/recv)
#   5. bench                 bf16 GEMM rate, copy bandwidth, the DAM passes against it, attention
#   6. toy                   tests/cuda/toy_gpu.sh: dam_dist (carried: build/cudacarry, made by
#                            prepare_carry.sh) on toy DAMs, GPU against CPU (losses and coefficients),
#                            a bench-size run on the GPU, `plan --device cuda` against its peak memory
#   7. sanitizer             check_kernels under compute-sanitizer memcheck, in the time left
# Also, needing no GPU: harness (check_kernels SEED guard: the check itself, on the guard backend).
# Without a GPU (nvidia-smi does not answer) every GPU stage says "no GPU" in one line (SKIP) and the
# toy stage runs its CPU parts only (the CPU runs, the carried mpirun's two ranks on the CPU);
# nvidia-smi's own line is then a FAIL, or a SKIP with DRY_RUN=1 (make cuda-dry-run, no GPU expected).
# Each stage runs under its own timeout inside a 260 s budget and writes to $OUT as it goes, so a
# cut-off run still reports. $OUT gets at most 8 files (the device tool's limit): summary.txt (the
# stages, nvidia-smi, the final line), figures.txt (numbers for bench/RESULTS.md), build.log,
# kernels.log, nccl.log, bench.log, toy.log, sanitizer.log. The last line of summary.txt (and of the
# output) is the summary: "run.sh: N passed, N failed, N skipped (card, seconds)".
set -u
OUT=$(realpath -m "${OUT:-/tmp/dam_cuda_out}") # before the cd: a relative OUT names the caller's folder
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
SUM=$OUT/summary.txt FIG=$OUT/figures.txt
: > "$SUM"
: > "$FIG"
BUDGET=${BUDGET:-260}
T0=$(date +%s)
pass=0 fail=0 skip=0
WORK=$(mktemp -d /tmp/dam_cuda_run.XXXXXX)

say() { echo "$*" | tee -a "$SUM"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
result() { # NAME STATUS DETAIL
  case $2 in
  PASS) pass=$((pass + 1)) ;;
  SKIP) skip=$((skip + 1)) ;;
  *) fail=$((fail + 1)) ;;
  esac
  say "$(printf '%-10s %-7s %s' "$1" "$2" "$3")"
}
# stage NAME MAX_SECONDS LOG CMD... : CMD under a timeout (capped by the budget left), output into LOG
stage() {
  local name=$1 max=$2 log=$3 t rc secs
  shift 3
  secs=$(left)
  secs=$((secs - 5 < max ? secs - 5 : max))
  if [ "$secs" -lt 5 ]; then
    result "$name" SKIP "no time left in the ${BUDGET} s budget"
    return 1
  fi
  t=$(date +%s)
  timeout -k 5 "$secs" "$@" >> "$log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t)) tailmsg
  tailmsg=$(tail -1 "$log" 2>/dev/null | cut -c1-150)
  if [ $rc -eq 0 ]; then
    result "$name" PASS "${dt}s: $tailmsg"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    result "$name" TIMEOUT "after ${secs}s: $tailmsg"
  else
    result "$name" FAIL "rc $rc, ${dt}s: $tailmsg"
  fi
  return $rc
}

# ---- 1. the card
say "== tests/cuda/run.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if timeout 20 nvidia-smi >> "$SUM" 2>&1; then
  CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
  result nvidia-smi PASS "$CARD"
  GPU=1
else
  CARD="no GPU" GPU=0
  result nvidia-smi "$([ "${DRY_RUN:-0}" = 1 ] && echo SKIP || echo FAIL)" "no GPU: nvidia-smi did not answer"
fi
echo "card $CARD" >> "$FIG"

# ---- 2. build (nvcc from CUDA_HOME or PATH; cuBLAS and NCCL from /usr/local/cuda or pip's nvidia-* wheels)
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  else CUDA_HOME=/usr/local/cuda; fi
fi
export CUDA_HOME
NVLIBS=$(python3 -c 'import glob, site; print(":".join(d for s in site.getsitepackages() for d in glob.glob(s + "/nvidia/*/lib")))' 2>/dev/null)
export LD_LIBRARY_PATH="${NVLIBS}${NVLIBS:+:}$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BUILD=${BUILD:-build/cuda-gpu}
stage build 150 "$OUT/build.log" bash -c "make -j$(nproc) CUDA=1 BUILD=$BUILD cuda-test && echo 'built $BUILD/cuda/{check_kernels,check_nccl,bench_gpu}'"
built=$?

# ---- 3..5. kernel checks, NCCL, benchmark
if [ $built -eq 0 ]; then
  stage harness 30 "$OUT/kernels.log" "$BUILD/cuda/check_kernels" 5 guard
fi
if [ $built -eq 0 ] && [ $GPU -eq 0 ]; then
  for s in kernels nccl bench; do result $s SKIP "no GPU"; done
elif [ $built -eq 0 ]; then
  stage kernels 60 "$OUT/kernels.log" "$BUILD/cuda/check_kernels" "${SEED:-$(date +%s)}"
  grep 'NOT OK' "$OUT/kernels.log" | head -20 >> "$SUM"
  stage nccl 40 "$OUT/nccl.log" "$BUILD/cuda/check_nccl"
  stage bench 60 "$OUT/bench.log" "$BUILD/cuda/bench_gpu" "$FIG"
else
  for s in kernels nccl bench; do result $s SKIP "the build failed (build.log)"; done
fi

# ---- 6. the toy DAM through dam_dist, with the carried MPI / HDF5 / cJSON / OpenBLAS libraries
# The carried libraries (and the glibc compat library, when prepare_carry.sh packed one) are put on the
# library path of dam_dist and mpirun only (toy_gpu.sh's `carried`), never in front of python3 or
# nvidia-smi. Open MPI is relocated (OPAL_PREFIX, the component path) and launches its ranks on this
# node only (plm isolated: no ssh or rsh needed, a bare container has neither); runs as root allowed.
CARRY=build/cudacarry/dam_carry.tar.xz
if [ -f "$CARRY" ]; then
  C=$WORK/carry
  mkdir -p "$C" && tar -C "$C" -xJf "$CARRY"
  DAM_CARRY_PRELOAD=
  [ -f "$C/lib/libdam_glibc_compat.so" ] && DAM_CARRY_PRELOAD="$C/lib/libdam_glibc_compat.so"
  stage toy "${TOY_MAX:-150}" "$OUT/toy.log" env TOY_DEVICE="$([ $GPU -eq 1 ] && echo cuda || echo cpu)" DAM_CARRY_LIB="$C/lib" DAM_CARRY_PRELOAD="$DAM_CARRY_PRELOAD" \
    OPAL_PREFIX="$C/ompi" OMPI_MCA_mca_base_component_path="$C/ompi/lib/openmpi3" OMPI_MCA_plm=isolated \
    OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_mca_base_component_show_load_errors=0 \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    bash tests/cuda/toy_gpu.sh "$C/bin/dam_dist" "$WORK/toy" "$FIG"
else
  result toy SKIP "no $CARRY (run tests/cuda/prepare_carry.sh on the development machine and carry build/cudacarry)"
fi

# ---- 7. memory errors, in the time left
if [ $GPU -eq 0 ]; then
  result sanitizer SKIP "no GPU"
elif [ $built -eq 0 ] && command -v compute-sanitizer > /dev/null; then
  if ! stage sanitizer 60 "$OUT/sanitizer.log" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$BUILD/cuda/check_kernels" 7 && grep -q 'Device not supported' "$OUT/sanitizer.log"; then
    # gVisor machines refuse compute-sanitizer (KINDS.md): the tool's limit, not a finding of ours
    fail=$((fail - 1))
    result sanitizer SKIP "compute-sanitizer does not support this machine's device (gVisor): the FAIL above is void"
  fi
else
  result sanitizer SKIP "no build or no compute-sanitizer"
fi

rm -rf "$WORK"
say "run.sh: $pass passed, $fail failed, $skip skipped ($CARD, $(($(date +%s) - T0)) s)"
[ $fail -eq 0 ]
