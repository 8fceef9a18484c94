#!/usr/bin/env bash
# Runs every test binary in $BUILD/tests and every tests/cli_*.sh script, and ends with one line
# "N passed, N failed" counting test cases (cmocka's own counts for binaries; one case per script),
# so that a run which executed nothing cannot look green.
set -u
BUILD=${BUILD:-build}
export DAM_BIN=${DAM_BIN:-./dam_dist}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export CMOCKA_MESSAGE_OUTPUT=STDOUT
passed=0; failed=0; failed_names=()
log=$(mktemp)
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  echo "== $t"
  "$t" >"$log" 2>&1; rc=$?
  cat "$log"
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or exited badly outside a test case
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" -ne 0 ] && failed_names+=("$t")
done
for s in tests/cli_*.sh; do
  [ -f "$s" ] || continue
  echo "== $s"
  if bash "$s" >"$log" 2>&1; then passed=$((passed + 1)); cat "$log"; echo "[ OK ] $s";
  else failed=$((failed + 1)); failed_names+=("$s"); cat "$log"; echo "[ NOT OK ] $s"; fi
done
rm -f "$log"
[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
