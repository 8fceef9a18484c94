#!/usr/bin/env bash
# Pipeline and tensor parallelism over MPI on this machine against the torch reference: losses,
# every coefficient gradient and the merged logits (tests/mpi_parallel_check.c) for the layouts
# (pp, tp) = (1,1), (1,2), (2,1), (2,2), for the Llama, Qwen2 and Qwen3 cases; tp = 4, which does not divide the fixtures' 2 KV heads,
# must be refused by every rank, naming the field, in time.
set -u
BUILD=${BUILD:-build}
# under make test-asan: Open MPI's plugins leak at exit from frames LSan cannot attribute
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
fails=0
T=$(mktemp -d /tmp/dam_cli_parallel.XXXXXX)
trap 'rm -rf "$T"' EXIT
for layout in "1 1" "1 2" "2 1" "2 2"; do
  set -- $layout
  if timeout 300 mpirun -n $(($1 * $2)) --oversubscribe "$BUILD/tests/mpi_parallel_check" $1 $2 "$T/out-$1-$2" "$T/out-1-1"; then
    echo "OK      pp=$1 tp=$2"
  else
    echo "NOT OK  pp=$1 tp=$2"; fails=$((fails + 1))
  fi
done
out=$(timeout 60 mpirun -n 4 --oversubscribe "$BUILD/tests/mpi_parallel_check" 1 4 2>&1); rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "$out" | grep -q "error: tensor parallel size 4 does not divide num_key_value_heads = 2"; then
  echo "OK      tp=4 refused: $(echo "$out" | grep -m1 'error:')"
else
  echo "NOT OK  tp=4: rc=$rc"; fails=$((fails + 1))
fi
echo "cli_parallel: $fails failure(s)"
[ $fails -eq 0 ]
