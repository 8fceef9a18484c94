#!/usr/bin/env bash
# The GPU check's own script gets going on a bare GPU machine (tests/cuda/dry_run.sh, `make
# cuda-dry-run`, here without a GPU), each a line of its own:
#   1. make CUDA=1 cuda-test links check_kernels, check_nccl and bench_gpu (it lacked src/engine/threadpool.c);
#   2. the carried mpirun starts two ranks with no ssh or rsh on PATH (Open MPI's rsh launcher
#      aborted), under env -i, from a foreign folder, the system's MPI hidden where unshare allows;
#   3. the carry holds none of glibc's libraries (libresolv, GLIBC_PRIVATE) and no need above
#      GLIBC_2.35 but weak ones served by its compat library; its libraries resolve into it (ldd).
# Skipped (passes, with a line) where there is no nvcc. The first run builds dam_dist with CUDA=1 for
# the carry (a few minutes on 2 cores); later runs reuse it.
set -u
cd "$(dirname "$0")/.."
if [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && ! command -v nvcc > /dev/null; then
  echo "SKIP    cli_cuda_dryrun: no nvcc (CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}): the CUDA dry run needs the CUDA toolkit"
  exit 0
fi
log=$(mktemp /tmp/dam_cli_cuda_dry.XXXXXX)
trap 'rm -f "$log"' EXIT
bash tests/cuda/dry_run.sh > "$log" 2>&1
rc=$?
cat "$log"
fails=0
check() { # check NAME PATTERN: a line of the dry run's that must be OK
  if grep -q "^OK      $2" "$log"; then echo "OK      $1"; else echo "NOT OK  $1"; fails=$((fails + 1)); fi
}
check "make CUDA=1 cuda-test links every CUDA test program" 'link: '
check "the carried mpirun runs two ranks with no ssh or rsh on PATH" 'run.sh: the carried mpirun ran pp2 and tp2'
check "the carry holds none of glibc's libraries" "carry: none of glibc's libraries"
check "the carry needs no glibc above 2.35 (but weak needs it serves itself)" 'carry: no file needs more than'
check "the carry's libraries resolve into it" "carry: with only the carry's lib/"
[ $rc -eq 0 ] || { echo "NOT OK  tests/cuda/dry_run.sh: rc $rc"; fails=$((fails + 1)); }
exit $((fails > 0))
