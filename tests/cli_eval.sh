#!/usr/bin/env bash
# dam_dist eval end to end on the tiny toy: a source against itself has KL 0 and top-1 1 on its own
# dataset; the toy's files have no /answer_mask, so exact match is "-" (JSON null); the KL of the DAM
# output after `dam_dist --config` equals the KL the trainer's --eval-rows prints for the same rows
# within 1 % (the trainer evaluates the fp32 merge, eval the bf16 output: measured 2e-4 to 5e-4);
# mpirun under dp=2, pp=2, tp=2 and dp=2 x pp=2 equals one process (1e-6 relative; tp splits the
# fp32 GEMM sums, measured 4e-9); on rows whose last two tokens are m0's greedy continuation (half
# of them spoiled), exact match and --generate give 0.5 on every layout; bad input gives one error
# line and exit status 1. Needs h5dump and h5import (hdf5-tools).
set -u
BIN=${DAM_BIN:-./dam_dist}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN") # the test runs in the toy directory
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPI="timeout 120 mpirun --oversubscribe -q"
T=$(mktemp -d /tmp/dam_cli_eval.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }

$BIN toy --out "$T/toy" --size tiny --models 2 --seed 4 >/dev/null || { bad toy; exit 1; }
# 2 micro-batches of 2 rows per step (so that dp=2 is a valid layout), 24 training rows, 8 held out
sed -i 's/"micro_batches": 1/"micro_batches": 2/; s/"steps": 12/"steps": 6/' "$T/toy/config.json"
cd "$T/toy"

# metric FILE MODEL DATASET FIELD: a field of the table's row (3 CE, 4 KL, 5 top-1, 6 exact, 7 rows)
metric() { awk -v m="$2" -v d="$3" -v f="$4" '$1 == m && $2 == d {print $f}' "$1"; }
close() { awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN {d = a - b; if (d < 0) d = -d; s = b < 0 ? -b : b; exit !(a != "" && d <= r * s + 1e-12)}'; }

# 1. sources against themselves, the table's wording, "-" without /answer_mask
if $BIN eval --config config.json --model m0 --model m1 > "$T/self.txt" 2> "$T/self.err"; then
  for k in 0 1; do
    kl=$(metric "$T/self.txt" m$k m$k 4) top=$(metric "$T/self.txt" m$k m$k 5) ex=$(metric "$T/self.txt" m$k m$k 6)
    [ "$kl" = 0.000000 ] && [ "$top" = 1.0000 ] && [ "$ex" = - ] && ok "m$k on its own data: KL $kl, top-1 $top, exact $ex" \
      || bad "m$k on its own data: KL '$kl' top-1 '$top' exact '$ex'"
  done
  other=$(metric "$T/self.txt" m0 m1 4)
  close "$other" 0 0 && bad "m0 on m1's data has KL 0" || ok "m0 on m1's data: KL $other > 0"
  [ "$(metric "$T/self.txt" m0 m0 7)" = 48 ] && ok "all 48 rows by default" || bad "rows: $(metric "$T/self.txt" m0 m0 7)"
  grep -q "lower is better" "$T/self.txt" && grep -q "higher is better" "$T/self.txt" && ok "table says lower/higher is better" \
    || bad "table lacks the direction of the metrics"
else
  bad "eval failed: $(cat "$T/self.err")"
fi

# 2. the DAM output's KL equals the trainer's --eval-rows table for the same 8 rows
if $BIN --config config.json --out "$T/dam" --eval-rows 8 > "$T/train.txt" 2>&1 \
   && $BIN eval --config config.json --model "$T/dam" --rows 8 > "$T/dam.txt" 2> "$T/dam.err"; then
  for k in 0 1; do
    want=$(awk -v d="m$k" '$1 == d && NF == 4 {print $2}' "$T/train.txt")
    got=$(metric "$T/dam.txt" "$T/dam" m$k 4)
    close "$got" "$want" 0.01 && ok "DAM output on m$k: eval KL $got, trainer's $want" \
      || bad "DAM output on m$k: eval KL '$got', trainer's '$want'"
  done
else
  bad "DAM run or its eval failed: $(tail -2 "$T/train.txt") $(cat "$T/dam.err" 2>/dev/null)"
fi

# 3. JSON: exact_match null, the same numbers as the table
if $BIN eval --config config.json --model m1 --rows 8 --json > "$T/one.json" 2> "$T/json.err"; then
  jq -e '.models.m1.m0.exact_match == null and .models.m1.m1.kl == 0 and .models.m1.m1.top1 == 1
         and .models.m1.m0.rows == 8 and .models.m1.m0.tokens == 256' "$T/one.json" > /dev/null \
    && ok "--json: models -> datasets -> metrics, exact_match null" || bad "--json: $(head -c 400 "$T/one.json")"
else
  bad "--json failed: $(cat "$T/json.err")"
fi

# 4. layouts: the same numbers as one process
$BIN eval --config config.json --model m1 --model "$T/dam" --json > "$T/ref.json" 2>/dev/null
layout() { sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": $3, \"pp\": $4, \"tp\": $5}/" "$2" > "$1.json"; }
flat() { jq -r '.models | to_entries[] | .key as $m | .value | to_entries[] | "\($m) \(.key) \(.value.cross_entropy) \(.value.kl) \(.value.top1) \(.value.rows) \(.value.tokens)"' "$1"; }
for l in "dp2 2 1 1" "pp2 1 2 1" "tp2 1 1 2" "dp2pp2 2 2 1"; do
  set -- $l
  layout "$1" config.json "$2" "$3" "$4"
  if $MPI -n $(($2 * $3 * $4)) $BIN eval --config "$1.json" --model m1 --model "$T/dam" --json > "$T/$1.out" 2> "$T/$1.err"; then
    if paste -d' ' <(flat "$T/ref.json") <(flat "$T/$1.out") | awk '
        {for (i = 3; i <= 7; i++) {d = $i - $(i + 7); if (d < 0) d = -d; s = $i < 0 ? -$i : $i; if ($1 != $8 || d > 1e-6 * s + 1e-12) bad = 1}; n++}
        END {exit bad || n != 4}'; then
      ok "$1 ($(($2 * $3 * $4)) ranks) equals one process"
    else
      bad "$1 differs: $(paste -d'|' <(flat "$T/ref.json") <(flat "$T/$1.out") | head -4)"
    fi
  else
    bad "$1 failed: $(head -3 "$T/$1.err")"
  fi
done

# 5. /answer_mask: rows whose last two tokens are m0's own greedy continuation (made with precompute's
# top-1 teacher cache, one token at a time, and h5import), half of them with the last token changed:
# exact match and greedy generation are both 0.5 for m0, on every layout
mkdir -p ans
num() { h5dump -d "$2" -y -w 0 -o "$T/dump.txt" "$1" > /dev/null && tr -s ', \n' '\n\n\n' < "$T/dump.txt" | grep -v '^$'; }
put() { # put FILE.h5 NAME BITS TEXT: an int dataset [48, 32] from whitespace-separated numbers
  printf 'PATH %s\nINPUT-CLASS TEXTIN\nRANK 2\nDIMENSION-SIZES 48 32\nOUTPUT-CLASS IN\nOUTPUT-SIZE %s\nOUTPUT-ARCHITECTURE STD\nOUTPUT-BYTE-ORDER LE\n' "$2" "$3" > "$T/h5import.conf"
  h5import "$4" -c "$T/h5import.conf" -o "$1" > /dev/null
}
sed 's|data/m0.h5|ans/m0.h5|; s|data/m1.h5|ans/m1.h5|' config.json > ans.json
cp data/m1.h5 ans/m1.h5
num data/m0.h5 /input_ids > "$T/ids.txt"
for pos in 30 31; do # ids[r][pos] = m0's argmax at pos - 1, given the row so far (odd rows: + 1 at 31)
  rm -f ans/m0.h5; put ans/m0.h5 input_ids 32 "$T/ids.txt"
  $BIN precompute --config ans.json --topk 1 > /dev/null 2>&1 || bad "precompute for the answer rows"
  num ans/m0.h5 /topk_indices > "$T/top.txt"
  awk -v pos=$pos 'NR == FNR {top[FNR - 1] = $1; next}
       {r = int((FNR - 1) / 32); t = (FNR - 1) % 32; v = $1
        if (t == pos) v = (top[r * 32 + t - 1] + (pos == 31 && r % 2 == 1)) % 256
        print v}' "$T/top.txt" "$T/ids.txt" > "$T/ids2.txt" && mv "$T/ids2.txt" "$T/ids.txt"
done
rm -f ans/m0.h5; put ans/m0.h5 input_ids 32 "$T/ids.txt"
awk 'BEGIN {for (i = 0; i < 48 * 32; i++) print (i % 32 >= 30)}' > "$T/ans.txt"
put ans/m0.h5 answer_mask 8 "$T/ans.txt"
for l in "one 1 1 1" "dp2 2 1 1" "pp2 1 2 1" "tp2 1 1 2"; do
  set -- $l
  layout "ans_$1" ans.json "$2" "$3" "$4"
  $MPI -n $(($2 * $3 * $4)) $BIN eval --config "ans_$1.json" --model m0 --generate --json > "$T/ans_$1.json" 2> "$T/ans.err"
  got=$(jq -r '.models.m0.m0 | "\(.exact_match) \(.generate) \(.answer_rows)"' "$T/ans_$1.json" 2>/dev/null)
  [ "$got" = "0.5 0.5 48" ] && ok "answers on $1: exact match, generated, rows = $got" \
    || bad "answers on $1: exact match, generated, rows = '$got' (want 0.5 0.5 48) $(head -2 "$T/ans.err")"
done

# 6. bad input: one line, exit status 1
expect_error() { # expect_error NAME SUBSTRING ARGS...
  local name=$1 want=$2; shift 2
  $BIN eval "$@" > "$T/err.out" 2> "$T/err.txt"
  local rc=$? lines; lines=$(wc -l < "$T/err.txt")
  if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -q "error:" "$T/err.txt" && grep -qF -- "$want" "$T/err.txt"; then
    ok "$name: $(cat "$T/err.txt")"
  else
    bad "$name: rc=$rc lines=$lines stderr: $(head -3 "$T/err.txt")"
  fi
}
expect_error "missing model dir" "--model nowhere: no such directory" --config config.json --model nowhere
expect_error "no --model" "at least one --model" --config config.json
expect_error "no --config" "--config FILE is required" --model m0
expect_error "--rows 0" "--rows: expected a whole number from 1" --config config.json --model m0 --rows 0
expect_error "--rows x" "--rows: expected a whole number" --config config.json --model m0 --rows x
expect_error "--rows beyond the file" "--rows 49: data/m0.h5 has only 48 rows" --config config.json --model m0 --rows 49
expect_error "unknown option" "eval: unknown option '--nope'" --config config.json --model m0 --nope
$BIN toy --out "$T/small" --size small --models 2 --seed 4 >/dev/null
expect_error "another architecture" "differ in config field" --config config.json --model "$T/small/m0"

# under mpirun: still one line (from rank 0), every rank ends with status 1
$MPI -n 2 $BIN eval --config config.json --model nowhere > "$T/err.out" 2> "$T/err.txt"
rc=$?
[ $rc -eq 1 ] && [ "$(grep -c 'error:' "$T/err.txt")" -eq 1 ] && grep -q "no such directory" "$T/err.txt" \
  && ok "mpirun -n 2, missing model dir: one line, status 1" || bad "mpirun -n 2, missing model dir: rc=$rc $(head -3 "$T/err.txt")"

echo "$fails failed"
[ "$fails" -eq 0 ]
