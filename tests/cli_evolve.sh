#!/usr/bin/env bash
# dam_dist evolve (CMA-ES over per-layer merge weights) end to end on a tiny toy:
#   - the fitness of the initial mean (the plain average) equals the summed KL of the plain average
#     that the main job's --eval-rows table computes on the same rows (another code path: it sets
#     f(c) = 1/N directly), and the best merge written to output.dir, loaded by the main job as
#     merge.init, has the KL the report gives as best_fitness;
#   - best fitness never increases over the generations and ends below the initial one;
#   - 1 rank and mpirun -n 2 with dp=2 (candidates split over the replicas) and with pp=2 (one
#     candidate over two stages) give the same trajectory and the same merged coefficients, bit for bit;
#   - SIGUSR1 stops after a saved state with exit 75 and the printed resume line continues to the
#     uninterrupted run's trajectory and coefficients; --resume auto starts fresh when there is none;
#   - bad options and a resume with other settings: one error line, exit status 1.
set -u
BIN=${DAM_BIN:-$PWD/dam_dist}
BUILD=${BUILD:-build}
CMP="$PWD/$BUILD/tests/tool_compare_coefs" # make test builds both tools
REPORT="$PWD/$BUILD/tests/tool_evolve_report"
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPI="timeout 120 mpirun --oversubscribe -q"
T=$(mktemp -d /tmp/dam_cli_evolve.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }

$BIN toy --out "$T/toy" --size tiny --models 2 --seed 3 >/dev/null || { bad toy; exit 1; }
# 2 micro-batches of 1 row, so that dp=2 is a valid layout; the same settings for every run
sed -i 's/"micro_batches": 1/"micro_batches": 2/; s/"batch_size": 2/"batch_size": 1/' "$T/toy/config.json"
layout() { # layout NAME DP PP TP : a config with that parallel section, writing to $T/NAME
  sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": $2, \"pp\": $3, \"tp\": $4}/; s|\"dir\": \"merged\"|\"dir\": \"$T/$1\"|" \
    "$T/toy/config.json" > "$T/toy/$1.json"
}
gens() { grep '^gen ' "$1" | sed 's/ | [0-9.]* s$//'; } # progress lines without the wall time
# the report's trajectory and best genome, exactly
traj() { "$REPORT" "$1" traj; }
# the same merged coefficients (tensor order in the file differs between layouts)
same_coefs() { "$CMP" "$1/dam_coefficients.safetensors" "$2/dam_coefficients.safetensors" 0 > /dev/null; }
layout one 1 1 1

# 1. the initial mean against --eval-rows's plain average, on all 48 rows (first 48 = last 48)
$BIN --config "$T/toy/one.json" --out "$T/dam0" --max-steps 0 --eval-rows 48 > "$T/dam0.log" 2>&1 \
  || bad "main job --eval-rows: $(tail -2 "$T/dam0.log")"
want=$(sed -n 's/.*plain average.s (\([0-9.]*\) vs \([0-9.]*\))$/\2/p' "$T/dam0.log")
$BIN evolve --config "$T/toy/one.json" --rows 48 --generations 0 > "$T/e0.log" 2>&1 || bad "evolve --generations 0: $(tail -2 "$T/e0.log")"
have=$(sed -n 's/^evolve: initial mean (plain average) fitness \([0-9.]*\) .*/\1/p' "$T/e0.log")
[ -n "$want" ] && [ "$want" = "$have" ] && ok "initial fitness = the plain average's summed KL of --eval-rows ($have)" \
  || bad "initial fitness $have, --eval-rows plain average $want"

# 2. a run: best fitness never increases and improves on the start; report and output complete
if $BIN evolve --config "$T/toy/one.json" --rows 48 --generations 8 --seed 5 > "$T/e1.log" 2>&1; then
  for f in config.json model.safetensors dam_coefficients.safetensors dam_report.json evolve_report.json; do
    [ -f "$T/one-evolve/$f" ] || bad "output lacks $f"
  done
  [ "$(grep -c '^gen ' "$T/e1.log")" -eq 8 ] && ok "one progress line per generation" || bad "progress lines"
  "$REPORT" "$T/one-evolve/evolve_report.json" check 8 8 > "$T/check.txt" \
    && ok "best fitness never increases, ends below the initial; evals and tokens add up; genome 2 x (2 layers + 2)" \
    || bad "report: $(cat "$T/check.txt")"
  # the written best merge, loaded by the main job (merge.init), has the reported best fitness
  sed "s|\"init\": \"uniform\"|\"init\": \"$T/one-evolve/dam_coefficients.safetensors\"|" "$T/toy/one.json" > "$T/toy/init.json"
  $BIN --config "$T/toy/init.json" --out "$T/dam1" --max-steps 0 --eval-rows 48 > "$T/dam1.log" 2>&1 \
    || bad "main job on the best merge: $(tail -2 "$T/dam1.log")"
  dam=$(sed -n 's/.*plain average.s (\([0-9.]*\) vs \([0-9.]*\))$/\1/p' "$T/dam1.log")
  best=$("$REPORT" "$T/one-evolve/evolve_report.json" best)
  [ -n "$dam" ] && [ "$dam" = "$best" ] && ok "the written best merge has the reported best fitness ($best)" \
    || bad "written merge's KL $dam, reported best $best"
else
  bad "evolve run: $(tail -3 "$T/e1.log")"
fi

# 3. 1 rank against mpirun -n 2: dp=2 and pp=2, the same trajectory and coefficients bit for bit
$BIN evolve --config "$T/toy/one.json" --rows 24 --generations 6 --seed 2 --force > "$T/r1.log" 2>&1 || bad "1-rank run"
for l in "dp2 2 1 1" "pp2 1 2 1"; do
  set -- $l
  layout "$1" "$2" "$3" "$4"
  if $MPI -n 2 $BIN evolve --config "$T/toy/$1.json" --rows 24 --generations 6 --seed 2 > "$T/$1.log" 2>&1; then
    grep -q "layout dp=$2 x pp=$3 x tp=$4" "$T/$1.log" || bad "$1: layout not in the header"
    if [ "$(gens "$T/$1.log")" = "$(gens "$T/r1.log")" ] && [ -n "$(gens "$T/r1.log")" ] \
       && same_coefs "$T/one-evolve" "$T/$1-evolve" \
       && [ "$(traj "$T/one-evolve/evolve_report.json")" = "$(traj "$T/$1-evolve/evolve_report.json")" ]; then
      ok "mpirun -n 2 $1: the 1-rank trajectory and coefficients, bit for bit"
    else
      bad "$1: trajectory differs: $(diff <(gens "$T/r1.log") <(gens "$T/$1.log") | head -4)"
    fi
  else
    bad "mpirun -n 2 $1: $(tail -3 "$T/$1.log")"
  fi
done

# 4. SIGUSR1 after a few generations, then the printed resume line: the uninterrupted run's result
stop_and_resume() { # NAME CONFIG LAUNCHER... : the run of section 3's settings, stopped and resumed
  local name=$1 cfg=$2 dir; shift 2
  dir=$(sed -n 's|.*"dir": "\([^"]*\)".*|\1|p' "$cfg")-evolve # evolve's own default output
  rm -rf "$dir" "$dir.ckpt"
  (cd "$T" && exec "$@" evolve --config "$cfg" --rows 24 --generations 6 --seed 2 > "$T/s.log" 2>&1) &
  local pid=$! i
  for i in $(seq 600); do grep -q '^gen    1/' "$T/s.log" 2>/dev/null && break; sleep 0.05; done
  kill -USR1 $pid
  wait $pid
  local rc=$?
  local line; line=$(sed -n 's/.*resume with: //p' "$T/s.log")
  if [ $rc -ne 75 ] || [ -z "$line" ] || [ -e "$dir" ]; then
    bad "$name: rc=$rc (want 75), resume line '$line', output present: $(tail -2 "$T/s.log")"; return
  fi
  (cd / && eval "$line") > "$T/s2.log" 2>&1 || { bad "$name: resume: $(tail -2 "$T/s2.log")"; return; }
  grep -q '^evolve: resumed from ' "$T/s2.log" || bad "$name: no resume note"
  if [ "$(gens "$T/s.log"; gens "$T/s2.log")" = "$(gens "$T/r1.log")" ] \
     && same_coefs "$T/one-evolve" "$dir" \
     && [ "$(traj "$T/one-evolve/evolve_report.json")" = "$(traj "$dir/evolve_report.json")" ]; then
    ok "$name: exit 75 after generation $(grep -c '^gen ' "$T/s.log"), resumed: the uninterrupted trajectory and coefficients"
  else
    bad "$name: resumed run differs: $(diff <(gens "$T/r1.log") <(gens "$T/s.log"; gens "$T/s2.log") | head -4)"
  fi
}
layout stop 1 1 1
stop_and_resume "SIGUSR1 to one process" "$T/toy/stop.json" "$BIN"
layout stopdp 2 1 1
stop_and_resume "SIGUSR1 to mpirun -n 2 (dp=2)" "$T/toy/stopdp.json" mpirun --oversubscribe -q -n 2 "$BIN"
grep -q "resume with: cd .* && mpirun -n 2 .* evolve --config" "$T/s.log" && ok "the mpirun resume line names the launcher and the command" \
  || bad "mpirun resume line: $(sed -n 's/.*resume with: //p' "$T/s.log")"
layout auto 1 1 1
$BIN evolve --config "$T/toy/auto.json" --rows 24 --generations 1 --resume auto > "$T/auto.log" 2>&1 \
  && grep -q "no state in .*; starting fresh" "$T/auto.log" && ok "--resume auto without a state starts fresh" \
  || bad "--resume auto: $(tail -2 "$T/auto.log")"

# --max-evals: no generation starts that would pass it (1 initial + 2 x 10 = 21 <= 25 < 31)
$BIN evolve --config "$T/toy/auto.json" --rows 24 --generations 100 --max-evals 25 --force > "$T/me.log" 2>&1 \
  && [ "$(grep -c '^gen ' "$T/me.log")" -eq 2 ] && grep -q "2 generations, 21 evaluations" "$T/me.log" \
  && ok "--max-evals 25 at population 10: 2 generations, 21 evaluations" || bad "--max-evals: $(tail -2 "$T/me.log")"

# 5. bad options and refused resumes: one line, exit 1
expect_error() { # NAME SUBSTRING ARGS...
  local name=$1 want=$2; shift 2
  $BIN evolve "$@" > "$T/err.out" 2> "$T/err.txt"
  local rc=$? lines; lines=$(wc -l < "$T/err.txt")
  if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$T/err.txt"; then ok "$name: $(cat "$T/err.txt")"
  else bad "$name: rc=$rc lines=$lines: $(head -3 "$T/err.txt")"; fi
}
C="$T/toy/auto.json"
expect_error "unknown option" "evolve: unknown option '--bogus'" --config "$C" --bogus
expect_error "missing value" "evolve: option '--sigma' needs a value" --config "$C" --sigma
expect_error "no --config" "--config is required" --generations 3
expect_error "population 1" "--population: expected a whole number from 2" --config "$C" --population 1
expect_error "negative sigma" "--sigma: expected a positive number, got '-0.1'" --config "$C" --sigma -0.1
expect_error "sigma not a number" "--sigma: expected a positive number, got '0.1x'" --config "$C" --sigma 0.1x
expect_error "more rows than a dataset" "--rows 49: " --config "$C" --rows 49
expect_error "--resume without a state" "evolve --resume: no saved state" --config "$T/toy/one.json" --resume "$T/nothing.bin"
expect_error "resume with another population" "--population differs" --config "$C" --rows 24 --population 7 --resume
expect_error "resume with other rows" "--rows differs" --config "$C" --rows 12 --resume
expect_error "resume from a file that is not a state" "not an evolve state file" --config "$C" --resume "$T/toy/config.json"

# 6. nothing lost: evolve never writes over the DAM run of its config (output or checkpoints), and
# no model-writing command replaces another's complete output without --force
sums() { (cd "$1" && find . -type f | sort | xargs md5sum); }
layout nl 1 1 1
$BIN --config "$T/toy/nl.json" --max-steps 2 > "$T/nl.log" 2>&1 || bad "DAM run: $(tail -2 "$T/nl.log")"
sums "$T/nl" > "$T/nl.sums"; sums "$T/nl.ckpt" > "$T/nl.ckpt.sums"
if $BIN evolve --config "$T/toy/nl.json" --rows 24 --generations 1 > "$T/nle.log" 2>&1 \
   && [ -f "$T/nl-evolve/evolve_report.json" ] && [ -f "$T/nl-evolve.ckpt/evolve_state.bin" ] \
   && grep -Eq '"written_by":[[:space:]]*"dam_dist evolve"' "$T/nl-evolve/dam_report.json"; then
  ok "evolve's default output and checkpoint: nl-evolve, nl-evolve.ckpt (its report inside, its name in the marker)"
else bad "evolve default dirs: $(tail -2 "$T/nle.log"; ls "$T")"; fi
[ "$(sums "$T/nl")" = "$(cat "$T/nl.sums")" ] && [ "$(sums "$T/nl.ckpt")" = "$(cat "$T/nl.ckpt.sums")" ] \
  && ok "the DAM run's output and checkpoints are untouched by evolve" || bad "evolve changed the DAM run's files"
expect_error "evolve --out over the DAM merge" "--out $T/nl holds the complete output of \`dam_dist train\`" \
  --config "$T/toy/nl.json" --rows 24 --generations 1 --out "$T/nl"
expect_error "evolve into the DAM run's checkpoints" "--checkpoint-dir $T/nl.ckpt holds the checkpoints of \`dam_dist train\`" \
  --config "$T/toy/nl.json" --rows 24 --generations 1 --out "$T/nl2" --checkpoint-dir "$T/nl.ckpt"
[ "$(sums "$T/nl")" = "$(cat "$T/nl.sums")" ] && [ "$(sums "$T/nl.ckpt")" = "$(cat "$T/nl.ckpt.sums")" ] && [ ! -e "$T/nl2" ] \
  && ok "refusals touched nothing" || bad "a refusal changed files"
one_line() { # NAME SUBSTRING COMMAND...: exit 1 with one stderr line holding SUBSTRING
  local name=$1 want=$2; shift 2
  "$@" > "$T/err.out" 2> "$T/err.txt"
  local rc=$?
  if [ $rc -eq 1 ] && [ "$(wc -l < "$T/err.txt")" -eq 1 ] && grep -qF -- "$want" "$T/err.txt"; then ok "$name: $(cat "$T/err.txt")"
  else bad "$name: rc=$rc: $(head -3 "$T/err.txt")"; fi
}
one_line "merge --out over the DAM merge" "holds the complete output of \`dam_dist train\`" \
  $BIN merge --method linear --config "$T/toy/nl.json" --out "$T/nl"
one_line "finetune --out over the DAM merge" "--out $T/nl holds the complete output of \`dam_dist train\`" \
  $BIN finetune --model "$T/toy/m0" --steps 0 --out "$T/nl"
one_line "the DAM run --out over evolve's merge" "--out $T/nl-evolve holds the complete output of \`dam_dist evolve\`" \
  $BIN --config "$T/toy/nl.json" --max-steps 1 --out "$T/nl-evolve"
sed "s|\"output\": {|\"checkpoint\": {\"dir\": \"$T/nl-evolve.ckpt\"}, \"output\": {|; s|\"dir\": \"$T/nl\"|\"dir\": \"$T/nl3\"|" \
  "$T/toy/nl.json" > "$T/toy/nl3.json"
one_line "the DAM run into evolve's checkpoints" "checkpoint.dir $T/nl-evolve.ckpt holds the checkpoints of \`dam_dist evolve\`" \
  $BIN --config "$T/toy/nl3.json" --max-steps 1
[ "$(sums "$T/nl")" = "$(cat "$T/nl.sums")" ] && ok "the DAM merge is still intact" || bad "the DAM merge changed"
$BIN evolve --config "$T/toy/nl.json" --rows 24 --generations 1 --out "$T/nl" --force > "$T/nlf.log" 2>&1 \
  && grep -Eq '"written_by":[[:space:]]*"dam_dist evolve"' "$T/nl/dam_report.json" && ok "--force replaces it" \
  || bad "evolve --out --force: $(tail -2 "$T/nlf.log")"

[ $fails -eq 0 ] && echo "cli_evolve: all passed" || echo "cli_evolve: $fails failed"
exit $((fails > 0))
