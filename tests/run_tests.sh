#!/usr/bin/env bash
# Runs every test binary in $BUILD/tests and every tests/cli_*.sh script, and ends with one line
# "N passed, N failed, N skipped" counting test cases (cmocka's own counts for binaries; one case
# per script), so that a run which executed nothing cannot look green. A script that exits 77 has
# found that what it tests is not here (its "SKIP: reason" line says what): counted as skipped, never
# as passed; so are the scripts DAM_SKIP names.
#
# Then a second pass under the guard backend (DAM_BACKEND=guard: the CPU math on memory that no host
# code may touch, so a host read or write of a device buffer crashes; src/engine/backend_guard.c): the unit
# tests and the end-to-end tests whose code paths depend on the backend: cli_train (one process:
# training, checkpoints, resume, output), cli_parallel (pipeline and tensor parallelism against the
# torch reference) and cli_dist's MPI layouts (dp=2, pp=2 x tp=2, 1F1B; DAM_CLI_DIST_LAYOUTS_ONLY).
# The guard opens every buffer around every call, so runs are several times slower: left out are
# test_gradcheck (~50 s under guard; test_reference checks the same gradients against torch),
# test_backend (it runs the guard backend itself) and the CLI tests of things the backend does not
# touch (tokenizer, prepare, plan, Slurm, stops). The pass adds about 2 minutes; DAM_GUARD_PASS=0
# skips it. Case names of the pass are prefixed "guard:".
set -u
BUILD=${BUILD:-build}
export DAM_BIN=${DAM_BIN:-./dam_dist}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export CMOCKA_MESSAGE_OUTPUT=STDOUT
passed=0; failed=0; failed_names=(); skipped_names=()
log=$(mktemp)

# run_binary PREFIX T [VAR=VALUE...]: the cmocka binary T (with the variables in its environment),
# counted by its own case lines; a crash or a bad exit outside a test case counts as one failure.
# PREFIX ("" or "guard:") names the pass in the output and in the failed list.
run_binary() {
  local pre=$1 t=$2 rc p f
  shift 2
  echo "== ${pre:+$pre }$t"
  env "$@" "$t" >"$log" 2>&1; rc=$?
  cat "$log"
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" -ne 0 ] && failed_names+=("$pre$t")
}
# run_script PREFIX S [VAR=VALUE...]: the script S, one case: exit 0 passed, 77 skipped, else failed
run_script() {
  local pre=$1 s=$2 rc
  shift 2
  echo "== ${pre:+$pre }$s"
  env "$@" bash "$s" >"$log" 2>&1; rc=$?
  cat "$log"
  case $rc in
    0) passed=$((passed + 1)); echo "[ OK ] ${pre:+$pre }$s" ;;
    77) skipped_names+=("$pre$s"); echo "[ SKIP ] ${pre:+$pre }$s" ;;
    *) failed=$((failed + 1)); failed_names+=("$pre$s"); echo "[ NOT OK ] ${pre:+$pre }$s" ;;
  esac
}

for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] && run_binary "" "$t"
done
dam_skipped=()
for s in tests/cli_*.sh; do
  [ -f "$s" ] || continue
  # DAM_SKIP: scripts left out of this run, named (make test-asan leaves out the experiment, a
  # measurement whose code paths the other scripts already run under the sanitizers)
  case " ${DAM_SKIP:-} " in *" $(basename "$s" .sh) "*) dam_skipped+=("$s"); continue ;; esac
  run_script "" "$s"
done
if [ "${DAM_GUARD_PASS:-1}" != 0 ] && [ "${DAM_BACKEND:-}" != guard ]; then
  t0=$(date +%s)
  for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in */test_gradcheck|*/test_backend) continue ;; esac
    run_binary guard: "$t" DAM_BACKEND=guard
  done
  for s in tests/cli_train.sh tests/cli_parallel.sh tests/cli_dist.sh; do
    run_script guard: "$s" DAM_BACKEND=guard DAM_CLI_DIST_LAYOUTS_ONLY=1
  done
  echo "guard pass: $(($(date +%s) - t0)) s"
fi
rm -f "$log"
[ ${#dam_skipped[@]} -gt 0 ] && echo "skipped (DAM_SKIP): ${dam_skipped[*]}"
[ ${#skipped_names[@]} -gt 0 ] && echo "skipped (exit 77, see their SKIP: lines): ${skipped_names[*]}"
[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed, $((${#dam_skipped[@]} + ${#skipped_names[@]})) skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
