#!/usr/bin/env bash
# Tokens/s of the toy from 1 to 2 ranks with dp=2 and with pp=2, and per-rank peak RSS, measured
# in one run of this script (OPENBLAS_NUM_THREADS=1 per rank, 2 cores). Pipeline stages run the 1F1B
# schedule, whose bubble is (pp-1)/(m+pp-1) for m micro-batches per step: shown for m = 2 and 8.
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
BIN=${DAM_BIN:-./dam_dist}
DIR=${BENCH_DIR:-build/bench-toy}   # the 51M-parameter toy of run_bench.sh
[ -f "$DIR/config.json" ] || $BIN toy --out "$DIR" --size bench --models 3 --seed 1 > /dev/null
# 2 micro-batches of 1 row of 256 tokens per step (so dp=2 has one each), 4 steps
sed 's/"micro_batches": 1/"micro_batches": 2/' "$DIR/config.json" > "$DIR/base.json"
run() { # NAME RANKS DP PP [MICRO_BATCHES]
  sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": $3, \"pp\": $4, \"tp\": 1}/; s/\"micro_batches\": 2/\"micro_batches\": ${5:-2}/" \
    "$DIR/base.json" > "$DIR/$1.json"
  mpirun --oversubscribe -n "$2" $BIN --config "$DIR/$1.json" --out "$DIR/out-$1" > "$DIR/$1.log" 2>&1
  tps=$(grep -o '[0-9.]* tok/s' "$DIR/$1.log" | awk 'NR>1 {print $1}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  rss=$(sed -n 's/.*peak RSS per rank (KiB): //p' "$DIR/$1.log"); [ -n "$rss" ] || rss=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$DIR/$1.log")
  echo "$1 $2 $tps $rss"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
{ run one 1 1 1; run dp2 2 2 1; run pp2 2 1 2; run one-m8 1 1 1 8; run pp2-m8 2 1 2 8; } | awk 'BEGIN {
    print "| layout | ranks | tokens/s (median step) | speed-up vs 1 rank | peak RSS per rank (MiB) |"; print "| --- | ---: | ---: | ---: | --- |" }
  { if (NR == 1 || $1 == "one-m8") base = $3; rss = ""; for (i = 4; i <= NF; i++) rss = rss sprintf("%s%.0f", i > 4 ? ", " : "", $i / 1024);
    printf "| %s | %d | %.0f | %.2f | %s |\n", $1, $2, $3, $3 / base, rss }'
src=$(cat "$DIR"/m0/model*.safetensors | wc -c)
echo "(one source: $((src / 1048576)) MiB of bf16 weights; 3 sources mapped per rank)"
