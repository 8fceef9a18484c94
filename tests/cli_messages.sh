#!/usr/bin/env bash
# Messages that say what to do (issue 9, item 6), on the toy: a layout error under mpirun is one
# line from rank 0 with every rank ending by MPI_Finalize (no MPI_Abort and its banner), status
# nonzero; the run header gives the tokens of a step and how they are made up (datasets x
# batch_size x micro_batches x seq_len), each progress line its tokens; the --eval-rows table says
# that lower is better and by how much DAM beat the plain average. (Config and JSON wording:
# tests/test_bad_input.c; prepare --out into a missing directory: tests/cli_prepare.sh.)
set -u
BIN=${DAM_BIN:-./dam_dist}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPI="timeout 120 mpirun --oversubscribe"
T=$(mktemp -d /tmp/dam_cli_messages.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }

$BIN toy --out "$T/toy" --size tiny --models 2 --seed 3 > /dev/null || { bad "toy"; exit 1; }

# 1. a layout error under mpirun: the line once, no MPI_Abort banner, nonzero status
sed 's/"seed": 1}/"seed": 1}, "parallel": {"dp": 1, "pp": 2, "tp": 1}/' "$T/toy/config.json" > "$T/toy/bad.json"
$MPI -n 3 $BIN --config "$T/toy/bad.json" --out "$T/badout" > "$T/bad.out" 2> "$T/bad.err"; rc=$?
n=$(cat "$T/bad.out" "$T/bad.err" | grep -c "error:")
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -eq 1 ] && grep -q "3 ranks: no dp x pp x tp layout .* rank counts that work: 2" "$T/bad.err" \
   && ! grep -q "MPI_ABORT" "$T/bad.out" "$T/bad.err" && [ ! -e "$T/badout" ]; then
  ok "layout error: one line, no MPI_ABORT banner, rc=$rc: $(grep "error:" "$T/bad.err")"
else
  bad "layout error: rc=$rc errors=$n $(cat "$T/bad.err" | head -12)"
fi
# with mpirun -q (Open MPI's own note on a nonzero exit silenced) stderr is that line alone
$MPI -q -n 3 $BIN --config "$T/toy/bad.json" --out "$T/badout" > "$T/badq.out" 2> "$T/badq.err"; rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$(grep -c '' "$T/badq.err")" -eq 1 ] && grep -q "error:" "$T/badq.err"; then
  ok "layout error under mpirun -q: stderr is one line, rc=$rc"
else
  bad "layout error under mpirun -q: rc=$rc $(head -12 "$T/badq.err")"
fi

# 2. the header: tokens per step and their make-up; each progress line: its tokens
sed 's/"micro_batches": 1/"micro_batches": 2/' "$T/toy/config.json" > "$T/toy/mb2.json"
if $BIN --config "$T/toy/mb2.json" --out "$T/run" --eval-rows 8 > "$T/run.log" 2>&1; then
  grep -q "steps of 256 tokens each (2 datasets x batch_size 2 x micro_batches 2 x seq_len 32)" "$T/run.log" \
    && ok "header: $(grep -o '[0-9]* steps of .*)' "$T/run.log")" || bad "header: $(grep '^dam_dist: 2 sources' "$T/run.log")"
  [ "$(grep '^step' "$T/run.log" | grep -c '| 256 tok/step |')" -eq "$(grep -c '^step' "$T/run.log")" ] \
    && ok "every progress line says 256 tok/step" || bad "progress lines: $(grep -m1 '^step' "$T/run.log")"
  # 3. the --eval-rows table: lower is better, and by how much DAM beat the average
  line=$(grep "^lower is better" "$T/run.log")
  if echo "$line" | grep -Eq "DAM's KL is [0-9.]+ % (below|above) the plain average's"; then
    ok "eval table: $line"
  else
    bad "eval table: $(sed -n '/^KL(source/,$p' "$T/run.log")"
  fi
else
  bad "run failed: $(tail -3 "$T/run.log")"
fi

echo "cli_messages: $fails failure(s)"
[ $fails -eq 0 ]
