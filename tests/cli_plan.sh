#!/usr/bin/env bash
# `dam_dist plan` against measured memory: the 51M-parameter bench toy (3 sources, bf16) trained
# for 2 steps under 1 rank, pp=2, tp=2, pp=2 x tp=2 and pp=2 with 8 micro-batches; every rank's
# peak RSS (as dam_dist prints it at the end of a run) must lie within 15 % of plan's per-rank total
# for that layout (--device cpu). Rows of 64 tokens keep the five runs short.
# Under the ASan suite (DAM_BIN in build-asan) RSS means nothing (shadow memory, quarantine): the
# runs are skipped and only plan's own output is checked, on the tiny toy (quicker to make). The same
# under the guard backend (DAM_BACKEND=guard: sources copied, every buffer in whole pages of its own).
set -u
BIN=${DAM_BIN:-./dam_dist}
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPI="timeout 120 mpirun --oversubscribe"
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_plan.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
. "$(dirname "$0")/plan_compare.sh"
t0=$(date +%s)
asan=0
case "$BIN" in *build-asan*) asan=1 ;; esac
[ "${DAM_BACKEND:-}" = guard ] && asan=1

size=bench
[ $asan -eq 1 ] && size=tiny
$BIN toy --out "$T/toy" --size $size --models 3 --seed 1 >/dev/null || { bad "toy $size"; exit 1; }
sed -i 's/"seq_len": 256/"seq_len": 64/' "$T/toy/config.json"
sed 's/"micro_batches": 1/"micro_batches": 8/' "$T/toy/config.json" > "$T/toy/m8.json"
layout() { # layout NAME DP PP TP BASE : a config with that parallel section
  sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": $2, \"pp\": $3, \"tp\": $4}/" "$5" > "$T/toy/$1.json"
}
# what a fault on a mapped file makes resident on this file system (2048 KiB with large folios, 64
# with 4 KiB pages and fault-around): the toy's tensors are small enough for it to matter under tp
folio=$($BIN plan --probe-folio "$T") || { bad "plan --probe-folio"; folio=2048; }
echo "page-cache granule on $T: $folio KiB (plan --probe-folio)"
# plan's per-rank totals in KiB, in rank order
plan_kib() {
  $BIN plan --config "$T/toy/$1.json" --ranks "$2" --folio-kib "$folio" --json > "$T/$1.plan.json" 2> "$T/$1.plan.err" || return 1
  grep '"total"' "$T/$1.plan.json" | sed 's/[^0-9.e+]//g' | awk '{printf "%.0f ", $1 / 1024}'
}

if [ $asan -eq 1 ]; then
  echo "ASan build ($BIN) or guard backend: peak RSS is meaningless there; the measured runs are skipped," \
       "only plan's output is checked"
fi
printf '%-8s %5s %12s %12s %7s\n' layout rank "plan KiB" "measured KiB" "diff" > "$T/table"
for l in "one 1 1 1 1 config" "pp2 2 1 2 1 config" "tp2 2 1 1 2 config" "pp2tp2 4 1 2 2 config" "pp2m8 2 1 2 1 m8"; do
  set -- $l
  name=$1 ranks=$2
  layout "$name" "$3" "$4" "$5" "$T/toy/$6.json"
  planned=$(plan_kib "$name" "$ranks") || { bad "$name: plan failed: $(cat "$T/$name.plan.err")"; continue; }
  n=$(echo $planned | wc -w)
  [ "$n" -eq "$ranks" ] && ok "$name: plan gives $n per-rank totals" || bad "$name: plan gives $n totals for $ranks ranks"
  [ $asan -eq 1 ] && continue
  if ! $MPI -n "$ranks" $BIN --config "$T/toy/$name.json" --out "$T/out-$name" --max-steps 2 > "$T/$name.log" 2>&1; then
    bad "$name run failed: $(tail -3 "$T/$name.log")"
    continue
  fi
  if [ "$ranks" -eq 1 ]; then
    measured=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$T/$name.log")
  else
    measured=$(sed -n 's/.*peak RSS per rank (KiB): //p' "$T/$name.log")
  fi
  plan_compare "$name" "$planned" "$measured"
done
[ $asan -eq 0 ] && cat "$T/table"
echo "cli_plan: $(($(date +%s) - t0)) s"
echo "cli_plan: $fails failure(s)"
[ $fails -eq 0 ]
