#!/usr/bin/env bash
# Tokens per second on one core: the C tokenizer (build/bench/bench_tokenizer, the code path of
# `dam_dist tokenize` / `prepare`) beside the `tokenizers` library's single-threaded encode
# (RAYON_NUM_THREADS=1), on the same documents, in the same run. Needs python3 with `tokenizers`
# (benchmark only). Usage: bash bench/bench_tokenizer.sh [MB]   (default 4 MB of text)
set -euo pipefail
MB=${1:-4}
BENCH=${BUILD:-build}/bench/bench_tokenizer
[ -x "$BENCH" ] || make "$BENCH" >/dev/null
CORPUS=$(mktemp)
trap 'rm -f "$CORPUS"' EXIT
python3 bench/bench_tokenizer.py corpus "$CORPUS" "$MB"
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PIN="taskset -c 0"
command -v taskset >/dev/null || PIN=""
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); pinned to one core: ${PIN:+yes}"
echo "corpus: $(wc -c <"$CORPUS") bytes, fixture corpus lines repeated (NUL-separated documents)"
echo
printf "| tokenizer | implementation | tokens | MB/s | tokens/s | C / tokenizers |\n| --- | --- | ---: | ---: | ---: | ---: |\n"
for name in bytelevel_llama3 bytelevel_gpt2 spm_legacy spm_metaspace; do
  dir=tests/fixtures/tokenizers/$name
  c=$($PIN "$BENCH" "$dir" "$CORPUS" 3)
  py=$($PIN python3 bench/bench_tokenizer.py encode "$dir" "$CORPUS")
  ctoks=$(awk '{print $2}' <<<"$c"); csum=$(awk '{print $4}' <<<"$c")
  while read -r mode _ ptoks _ psum _ bytes _ secs _ rate; do
    [ "$ptoks" = "$ctoks" ] && [ "$psum" = "$csum" ] || { echo "MISMATCH $name $mode: C $ctoks/$csum vs tokenizers $ptoks/$psum" >&2; exit 1; }
    awk -v n="$name" -v m="$mode" -v t="$ptoks" -v b="$bytes" -v s="$secs" -v r="$rate" \
      'BEGIN {printf "| %s | tokenizers %s | %d | %.2f | %.0f | |\n", n, m, t, b / s / 1e6, r}'
    eval "rate_$(tr -d -c 'a-z_' <<<"$mode")=$rate"
  done <<<"$py"
  read -r _ ctoks _ csum _ bytes _ secs _ crate <<<"$c"
  awk -v n="$name" -v t="$ctoks" -v b="$bytes" -v s="$secs" -v r="$crate" -v p1="$rate_onebyone" -v p2="$rate_encode_batch" \
    'BEGIN {best = p1 > p2 ? p1 : p2; printf "| %s | dam_dist C | %d | %.2f | %.0f | %.2fx |\n", n, t, b / s / 1e6, r, r / best}'
done
echo
echo "(ids identical: token counts and id checksums of C and tokenizers agree for every row; C / tokenizers is"
echo " against the faster of the two tokenizers modes; best of 3 passes each, cold word cache per pass)"
