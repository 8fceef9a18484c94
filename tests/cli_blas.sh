#!/usr/bin/env bash
# The main job's first line names the BLAS and its kernel (src/engine/blas.c), from rank 0 only:
#   1. "BLAS: OpenBLAS <version>, kernel <name>, N thread(s)" first on stdout; on a CPU with AVX2 and
#      FMA the kernel is not a generic one (where OpenBLAS falls back, dam_dist re-executes itself
#      with OPENBLAS_CORETYPE=Haswell and the line says so);
#   2. a user's OPENBLAS_CORETYPE=Prescott is respected: the line names Prescott, no re-execution;
#   3. under mpirun -n 2, one such line, first;
#   4. other subcommands do not print it.
# The decision to re-execute is tested with forged kernel names and CPU flags in tests/test_blas.c.
# With another CBLAS (make BLAS_LIBS=...) only 3, 4 and the line's form can be checked: the script
# checks them, then prints "SKIP: <why>" and exits 77 (run_tests.sh counts it as skipped, never as
# passed), since the kernel and the OPENBLAS_* variables it is about are not there to check.
set -u
BIN=${DAM_BIN:-./dam_dist}
T=$(mktemp -d /tmp/dam_cli_blas.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
GENERIC='Unknown|Generic|Katmai|Coppermine|Northwood|Prescott|Banias|Atom|Core2|Penryn|Dunnington|Nehalem|Athlon|Opteron|Opteron\(SSE3\)|Barcelona|Nano|Sandybridge|Bobcat|Bulldozer|Piledriver|Steamroller'
LINE='^BLAS: (OpenBLAS [0-9][0-9.]*, kernel [A-Za-z0-9()]+(, [0-9]+ threads?)?( \(.*\))?|[^ ]+ \(not OpenBLAS: kernel not reported\))$'

$BIN toy --out "$T/tiny" --size tiny --models 2 --seed 3 > "$T/toy.log" 2>&1 || { bad "toy: $(tail -2 "$T/toy.log")"; exit 1; }
grep -q '^BLAS:' "$T/toy.log" && bad "toy printed the BLAS line" || ok "toy does not print the BLAS line"

# 1. the first line, and no generic kernel on an AVX2+FMA CPU unless the user asked for one
(unset OPENBLAS_CORETYPE; $BIN --config "$T/tiny/config.json" --out "$T/run1" --max-steps 1 > "$T/run1.log" 2> "$T/run1.err")
first=$(head -1 "$T/run1.log")
if grep -Eq "$LINE" <<<"$first"; then ok "first line: $first"; else bad "first line: '$first'"; fi
not_openblas=$(sed -n 's/^BLAS: \([^ ]*\) (not OpenBLAS.*/\1/p' <<<"$first")
if [ -n "$not_openblas" ]; then
  echo "note: $not_openblas is not OpenBLAS: no kernel to check (the kernel check of 1, and 2 and 2b, are skipped)"
elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  kernel=$(sed -n 's/^BLAS: OpenBLAS [^,]*, kernel \([^, ]*\).*/\1/p' <<<"$first")
  if [ -z "$kernel" ] || grep -Eqix "$GENERIC" <<<"$kernel"; then bad "generic kernel $kernel on an AVX2+FMA CPU"; else ok "kernel $kernel on an AVX2+FMA CPU"; fi
fi
grep -q '^step    1/' "$T/run1.log" && ok "the run goes on" || bad "run 1: $(tail -2 "$T/run1.err")"

# 2. the user's OPENBLAS_CORETYPE
if [ -z "$not_openblas" ]; then
  OPENBLAS_CORETYPE=Prescott $BIN --config "$T/tiny/config.json" --out "$T/run2" --max-steps 1 > "$T/run2.log" 2> "$T/run2.err"
  first=$(head -1 "$T/run2.log")
  grep -q '^BLAS: OpenBLAS .*, kernel Prescott\b' <<<"$first" && ok "OPENBLAS_CORETYPE=Prescott kept: $first" \
    || bad "OPENBLAS_CORETYPE=Prescott: '$first'"
  cat "$T/run2.log" "$T/run2.err" | grep -q 're-execut' && bad "re-executed despite the user's OPENBLAS_CORETYPE" || ok "no re-execution"
fi

# 2b. idle BLAS threads sleep: dam_dist sets OPENBLAS_THREAD_TIMEOUT where the
#     user has not, by re-executing itself once (the libraries read them only when they load)
if [ -z "$not_openblas" ]; then
  line=$(env -u OPENBLAS_THREAD_TIMEOUT -u OMP_WAIT_POLICY OPENBLAS_NUM_THREADS=2 timeout 60 $BIN --config "$T/tiny/config.json" --out "$T/run2b" --max-steps 1 2>&1 | head -1)
  grep -q '(idle threads: OPENBLAS_THREAD_TIMEOUT=4, set by dam_dist)' <<<"$line" && ok "thread timeout set: $line" \
    || bad "no thread timeout set: '$line'"
  line=$(OPENBLAS_THREAD_TIMEOUT=20 OPENBLAS_NUM_THREADS=2 timeout 60 $BIN --config "$T/tiny/config.json" --out "$T/run2c" --max-steps 1 2>&1 | head -1)
  grep -q '(idle threads: OPENBLAS_THREAD_TIMEOUT=20, the user.s)' <<<"$line" && ok "the user's thread timeout kept: $line" \
    || bad "the user's OPENBLAS_THREAD_TIMEOUT=20: '$line'"
fi

# 3. one line from rank 0 under mpirun
if command -v mpirun >/dev/null; then
  mpirun --oversubscribe -n 2 $BIN --config "$T/tiny/config.json" --out "$T/run3" --max-steps 1 > "$T/run3.log" 2> "$T/run3.err"
  n=$(grep -c '^BLAS:' "$T/run3.log")
  [ "$n" -eq 1 ] && head -1 "$T/run3.log" | grep -Eq "$LINE" && ok "mpirun -n 2: one BLAS line, first" \
    || bad "mpirun -n 2: $n BLAS lines, first line '$(head -1 "$T/run3.log")'"
fi

[ $fails -eq 0 ] || exit 1
if [ -n "$not_openblas" ]; then
  echo "SKIP: the BLAS is $not_openblas, not OpenBLAS: its kernel, OPENBLAS_CORETYPE and OPENBLAS_THREAD_TIMEOUT cannot be checked"
  exit 77
fi
