#!/usr/bin/env bash
# Tensor parallelism (tp = 1 and 2 ranks over MPI on this machine) against the torch reference:
# losses, every coefficient gradient and the merged logits (see tests/mpi_tp_check.c); tp = 4, which
# does not divide the fixtures' 2 KV heads, must be refused by every rank, naming the field, in time.
set -u
BUILD=${BUILD:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
fails=0
for n in 1 2; do
  if timeout 300 mpirun -n $n --oversubscribe "$BUILD/tests/mpi_tp_check"; then echo "OK      tp=$n"; else echo "NOT OK  tp=$n"; fails=$((fails + 1)); fi
done
out=$(timeout 60 mpirun -n 4 --oversubscribe "$BUILD/tests/mpi_tp_check" 2>&1); rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "$out" | grep -q "error: tensor parallel size 4 does not divide num_key_value_heads = 2"; then
  echo "OK      tp=4 refused: $(echo "$out" | grep -m1 'error:')"
else
  echo "NOT OK  tp=4: rc=$rc"; fails=$((fails + 1))
fi
echo "cli_tp: $fails failure(s)"
[ $fails -eq 0 ]
