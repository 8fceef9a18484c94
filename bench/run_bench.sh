#!/usr/bin/env bash
# The DAM step's achieved GFLOP/s (FLOPs counted as 6·P·tokens for the merged model's forward and
# backward + 2·P·tokens for the on-the-fly teachers' forward) beside a plain OpenBLAS sgemm of the step's
# main shapes, measured in the same run; and the run's peak RSS beside the source files' bytes.
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BIN=${DAM_BIN:-./dam_dist}
DIR=${BENCH_DIR:-build/bench-toy}
[ -f "$DIR/config.json" ] || $BIN toy --out "$DIR" --size bench --models 3 --seed 1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-unset}"
log=$(mktemp)
$BIN --config "$DIR/config.json" --out "$DIR/merged" | tee "$log"
src_bytes=$(cat "$DIR"/m*/model*.safetensors | wc -c)
# steady-state tokens/s: median of the step lines after the first
tps=$(grep -o '[0-9.]* tok/s' "$log" | awk 'NR>1 {print $1}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
rss_kib=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$log")
params=$(sed -n 's/.*, \([0-9]*\) parameters per source.*/\1/p' "$log")
# the step's GEMM shapes: teachers run 256-token batches, the merged model all 3 datasets at once (768)
d=512; F=1536
g1=$(build/bench/bench_gemm 256 $F $d); g2=$(build/bench/bench_gemm 256 $d $F); g3=$(build/bench/bench_gemm 768 $F $d)
g4=$(build/bench/bench_gemm 768 $d $F)
awk -v tps="$tps" -v P="$params" -v g1="$g1" -v g2="$g2" -v g3="$g3" -v g4="$g4" -v rss="$rss_kib" -v src="$src_bytes" 'BEGIN {
  dam = 8 * P * tps / 1e9; peak = (g1 + g2 + g3 + g4) / 4;
  printf "\n| quantity | value |\n| --- | --- |\n";
  printf "| parameters per source | %.1fM |\n", P / 1e6;
  printf "| DAM step tokens/s (merged-model tokens, all datasets) | %.0f |\n", tps;
  printf "| DAM achieved GFLOP/s (8·P·tokens/s) | %.1f |\n", dam;
  printf "| OpenBLAS sgemm GFLOP/s, MxNxK = 256x1536x512, 256x512x1536, 768x1536x512, 768x512x1536 | %.1f, %.1f, %.1f, %.1f (mean %.1f) |\n", g1, g2, g3, g4, peak;
  printf "| DAM / sgemm | %.0f%% |\n", 100 * dam / peak;
  printf "| peak RSS | %.1f MiB |\n", rss / 1024;
  printf "| source files (3 x bf16) | %.1f MiB |\n", src / 1048576;
  printf "| peak RSS / source bytes | %.2f |\n", rss * 1024 / src;
}'
rm -f "$log"
