#!/usr/bin/env bash
# The automatic layout (parallel.dp/pp/tp 0 or absent, layout.c): on the 4-layer toy (6 heads, 2 KV
# heads, micro_batches 1) `mpirun -n 8` runs as dp=1 x pp=4 x tp=2 (the most stages up to the
# layers, then tp by heads, then dp), prints the layout it chose, and `plan --ranks 8` plans the same
# one; a fixed dp=2 x pp=4 with micro_batches 2 runs on 8 ranks too. A rank count that no layout can
# use is named first, with the counts that would work, by the run and by plan alike: 5 ranks on the
# toy; 3 ranks with a fixed parallel.dp=2 although micro_batches=1 does not divide by it either (the
# rank count comes before the config key).
set -u
BIN=${DAM_BIN:-./dam_dist}
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPI="timeout 180 mpirun --oversubscribe"
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_layout.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
t0=$(date +%s)

$BIN toy --out "$T/toy" --size small --models 2 --seed 1 > /dev/null || { bad toy; exit 1; }
C=$T/toy/config.json
with_parallel() { # NAME DP PP TP [MICRO_BATCHES]: the toy's config with that parallel section
  sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": $2, \"pp\": $3, \"tp\": $4}/; s/\"micro_batches\": 1/\"micro_batches\": ${5:-1}/" \
    "$C" > "$T/toy/$1.json"
}
plan_layout() { # CONFIG RANKS: dp:pp:tp of plan --json
  $BIN plan --config "$1" --ranks "$2" --mem-per-rank 4 --json 2> "$T/plan.err" | tr -d '\n\t ' \
    | sed -n 's/.*"layout":{"dp":\([0-9]*\),"pp":\([0-9]*\),"tp":\([0-9]*\).*/\1:\2:\3/p'
}

# 8 ranks, nothing fixed (the toy's config has no parallel section)
if $MPI -n 8 $BIN --config "$C" --out "$T/out8" --max-steps 2 > "$T/run8.log" 2>&1 \
   && grep -q '^dam_dist: layout dp=1 x pp=4 x tp=2 = 8 ranks (dp, pp, tp chosen' "$T/run8.log"; then
  ok "mpirun -n 8 on the 4-layer toy: $(grep -m1 '^dam_dist: layout' "$T/run8.log")"
else
  bad "mpirun -n 8 on the 4-layer toy: $(grep -m2 -e error -e layout "$T/run8.log")"
fi
got=$(plan_layout "$C" 8)
[ "$got" = 1:4:2 ] && ok "plan --ranks 8 agrees: dp:pp:tp $got" || bad "plan --ranks 8: $got $(cat "$T/plan.err")"
# all three as 0 are the same as absent
with_parallel auto 0 0 0
got=$(plan_layout "$T/toy/auto.json" 6)
[ "$got" = 1:3:2 ] && ok "parallel {0, 0, 0}, 6 ranks: dp:pp:tp $got" || bad "parallel {0, 0, 0}, 6 ranks: $got"
# a fixed dp=2 x pp=4 (micro_batches 2)
with_parallel dp2pp4 2 4 1 2
if $MPI -n 8 $BIN --config "$T/toy/dp2pp4.json" --out "$T/out-dp2pp4" --max-steps 2 > "$T/dp2pp4.log" 2>&1; then
  ok "mpirun -n 8 with dp=2 x pp=4 runs"
else
  bad "mpirun -n 8 with dp=2 x pp=4: $(grep -m1 error "$T/dp2pp4.log")"
fi

expect_count_error() { # NAME RANKS CONFIG WANT: the run and plan give the same one line, naming the count
  $MPI -n "$2" $BIN --config "$3" --out "$T/bad" > "$T/bad.out" 2> "$T/bad.err"; rc=$?
  n=$(grep -c "error:" "$T/bad.err")
  line=$(grep -m1 "error:" "$T/bad.err")
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -eq 1 ] && grep -q -- "$2 ranks: no dp x pp x tp layout" "$T/bad.err" \
     && grep -q -- "rank counts that work: $4\$" "$T/bad.err" && [ ! -e "$T/bad" ]; then
    ok "$1: $line"
  else
    bad "$1: rc=$rc errors=$n: $(head -3 "$T/bad.err")"
  fi
  $BIN plan --config "$3" --ranks "$2" --mem-per-rank 4 > /dev/null 2> "$T/plan.err"; rc=$?
  if [ $rc -eq 1 ] && [ "$(sed 's/^.*error: //' "$T/plan.err")" = "$(echo "$line" | sed 's/^.*error: //')" ]; then
    ok "$1: plan --ranks $2 says the same (status 1)"
  else
    bad "$1: plan --ranks $2: rc=$rc $(cat "$T/plan.err")"
  fi
}
expect_count_error "5 ranks, nothing fixed" 5 "$C" "1-4, 6, 8"
with_parallel dp2 2 0 1
expect_count_error "3 ranks with a fixed dp=2 (micro_batches 1)" 3 "$T/toy/dp2.json" "2, 4, 6, 8"
# and with the rank count right, the config key
$BIN plan --config "$T/toy/dp2.json" --ranks 2 --mem-per-rank 4 > /dev/null 2> "$T/plan.err"
grep -q "train.micro_batches=1 is not divisible by parallel.dp=2" "$T/plan.err" \
  && ok "2 ranks with dp=2: $(cat "$T/plan.err")" || bad "2 ranks with dp=2: $(cat "$T/plan.err")"

echo "cli_layout: $fails failure(s), $(($(date +%s) - t0)) s"
[ $fails -eq 0 ]
