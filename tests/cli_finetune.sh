#!/usr/bin/env bash
# `dam_dist toy --tasks` and `dam_dist finetune` end to end:
#  - toy --tasks is deterministic by seed; its tokenizer.json gives the ids of the vocabulary's order
#    (hand-written below) through `tokenize`, and `prepare` makes the generator's own rows from their
#    decoded text;
#  - every eval row says what its task says (sums checked with shell arithmetic, reversal and sorting
#    with rev / sort), no eval row is trained on, and /answer_mask is 1 exactly after '=' up to and including </s>;
#  - finetune: the loss falls on the addition task, the fine-tuned model's eval cross-entropy is below
#    the random model's, the output is a model directory `inspect` accepts;
#  - refusals: one line, exit 1 (two ranks, no data, writing over its input).
set -u
BIN=${DAM_BIN:-./dam_dist}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
rows8() { h5dump -d "/$1" -b LE -o "$T/raw" "$2" >/dev/null && od -An -v -tu1 -w16 "$T/raw"; }
rows32() { h5dump -d "/$1" -b LE -o "$T/raw" "$2" >/dev/null && od -An -v -td4 -w64 "$T/raw"; }

# ---------------------------------------------------------------- toy --tasks
$BIN toy --tasks --out "$T/a" --seed 5 >"$T/log" 2>&1
check "toy --tasks: exit 0" test $? -eq 0
$BIN toy --tasks --out "$T/b" --seed 5 >/dev/null 2>&1
$BIN toy --tasks --out "$T/c" --seed 6 >/dev/null 2>&1
D=$T/a/data
for f in add rev sort mix; do for s in train eval; do
  check "toy --tasks: ${f}_$s.h5 written" test -s "$D/${f}_$s.h5"
done; done
check "toy --tasks: the same seed, the same rows" \
  test "$(rows32 input_ids "$D/mix_train.h5" | md5sum)" = "$(rows32 input_ids "$T/b/data/mix_train.h5" | md5sum)"
check "toy --tasks: another seed, other rows" \
  test "$(rows32 input_ids "$D/mix_train.h5" | md5sum)" != "$(rows32 input_ids "$T/c/data/mix_train.h5" | md5sum)"

# ids by the vocabulary's order: <pad> <s> </s> 0..9 + = R S a..z
check "tokenize: 12+35=47 -> <s> 1 2 + 3 5 = 4 7 </s>" \
  test "$(printf '12+35=47' | $BIN tokenize --tokenizer "$T/a/base" --special)" = "1 4 5 13 6 8 14 7 10 2"
check "tokenize: Rcab=bac -> <s> R c a b = b a c </s>" \
  test "$(printf 'Rcab=bac' | $BIN tokenize --tokenizer "$T/a/base" --special)" = "1 15 19 17 18 14 18 17 19 2"

# the text of each eval row (between <s> and </s>), from the vocabulary's order written out here
texts() { # FILE -> one text per row
  rows32 input_ids "$1" | awk 'BEGIN { n = split("0 1 2 3 4 5 6 7 8 9 + = R S a b c d e f g h i j k l m n o p q r s t u v w x y z", v, " ") }
    { line = ""; for (i = 2; i <= NF && $i != 2; i++) line = line v[$i - 2]; print line }'
}
texts "$D/add_eval.h5" >"$T/add.txt"
texts "$D/rev_eval.h5" >"$T/rev.txt"
texts "$D/sort_eval.h5" >"$T/sort.txt"
for task in add rev sort; do
  texts "$D/${task}_train.h5" | sort -u >"$T/train.txt"
  texts "$D/${task}_eval.h5" | sort -u >"$T/eval.txt"
  check "$task: no eval row is a train row" test -z "$(comm -12 "$T/train.txt" "$T/eval.txt")"
done
check "add: 256 rows" test "$(grep -c . "$T/add.txt")" = 256
check "add: every row is a+b=c with c the sum" \
  test "$(awk -F'[+=]' 'NF == 3 && $1 + $2 == $3 && $1 < 100 && $2 < 100' "$T/add.txt" | wc -l)" = 256
revok=0; sortok=0
while read -r t; do
  s=${t#R}; s=${s%%=*}; [ "R$s=$(echo "$s" | rev)" = "$t" ] && revok=$((revok + 1))
done <"$T/rev.txt"
while read -r t; do
  s=${t#S}; s=${s%%=*}; [ "S$s=$(echo "$s" | fold -w1 | LC_ALL=C sort | tr -d '\n')" = "$t" ] && sortok=$((sortok + 1))
done <"$T/sort.txt"
check "rev: every row is Rs=reverse(s) ($revok of 256)" test "$revok" = 256
check "sort: every row is Ss=sorted(s) ($sortok of 256)" test "$sortok" = 256

# /answer_mask: 1 after '=' (id 14) up to and including </s> (id 2), from the ids alone
rows32 input_ids "$D/mix_eval.h5" | awk '{ on = 0; line = "";
  for (i = 1; i <= NF; i++) { line = line " " (on ? 1 : 0); if ($i == 14) on = 1; if ($i == 2) on = 0 }
  print line }' >"$T/want"
rows8 answer_mask "$D/mix_eval.h5" | awk '{ line = ""; for (i = 1; i <= NF; i++) line = line " " $i; print line }' >"$T/got"
check "answer_mask: 1 exactly after '=' through </s>, every row of mix_eval" cmp -s "$T/want" "$T/got"

# prepare with the toy tokenizer makes the generator's rows from their text
head -3 "$T/add.txt" | awk '{ printf "{\"text\": \"%s\"}\n", $0 }' >"$T/add.jsonl"
$BIN prepare --tokenizer "$T/a/base" --input "$T/add.jsonl" --out "$T/add.h5" --seq-len 16 --field text \
  >/dev/null 2>&1
check "prepare: the same ids as the generator" \
  test "$(rows32 input_ids "$T/add.h5")" = "$(rows32 input_ids "$D/add_eval.h5" | head -3)"
check "prepare: the same attention mask" \
  test "$(rows8 attention_mask "$T/add.h5")" = "$(rows8 attention_mask "$D/add_eval.h5" | head -3)"

# ---------------------------------------------------------------- finetune
$BIN finetune --model "$T/a/base" --data "$D/add_train.h5" --out "$T/ft" --steps 60 --batch 16 --lr 0.003 \
  --answer-only >"$T/ft.log" 2>&1
check "finetune: exit 0" test $? -eq 0
first=$(sed -n 's/.*step [0-9]*\/60 loss \([0-9.]*\).*/\1/p' "$T/ft.log" | head -1)
last=$(sed -n 's/.*step [0-9]*\/60 loss \([0-9.]*\).*/\1/p' "$T/ft.log" | tail -1)
check "finetune: the loss falls ($first -> $last)" awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.6 * a) }'
ce() { $BIN finetune --model "$1" --steps 0 --eval "$D/add_eval.h5" | sed -n 's/.*cross-entropy \([0-9.]*\).*/\1/p'; }
before=$(ce "$T/a/base") after=$(ce "$T/ft")
check "finetune: eval cross-entropy on add below the random model's ($before -> $after)" \
  awk -v a="$before" -v b="$after" 'BEGIN { exit !(b < 0.6 * a) }'
inspect_ok() { $BIN inspect --model "$1" >/dev/null 2>&1; }
check "finetune: the output is a model directory inspect accepts" inspect_ok "$T/ft"
check "finetune: tokenizer copied" cmp -s "$T/a/base/tokenizer.json" "$T/ft/tokenizer.json"
check "finetune: dam_report.json complete" grep -q '"complete":[[:space:]]*true' "$T/ft/dam_report.json"

refuse() { # WHAT PATTERN CMD...: exit 1, one line on stderr matching PATTERN
  local what=$1 pat=$2; shift 2
  "$@" >/dev/null 2>"$T/err"; local rc=$?
  if [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "$pat" "$T/err"; then ok "$what"
  else bad "$what: rc=$rc, stderr: $(head -3 "$T/err")"; fi
}
mpirun -n 2 --oversubscribe $BIN finetune --model "$T/a/base" --data "$D/add_train.h5" --out "$T/x" \
  >/dev/null 2>"$T/err"
rc=$?
check "finetune: two ranks refused (exit $rc, every rank's line: one process)" \
  test $rc -ne 0 -a "$(grep -c 'error: finetune runs in one process' "$T/err")" -ge 1 -a ! -e "$T/x"
refuse "finetune: training without --data refused" "needs --data" $BIN finetune --model "$T/a/base" --out "$T/x"
refuse "finetune: --out over the model refused" "$T/a/base" \
  $BIN finetune --model "$T/a/base" --data "$D/add_train.h5" --out "$T/a/base" --steps 1
refuse "finetune: a bad --lr refused" "finetune --lr" \
  $BIN finetune --model "$T/a/base" --data "$D/add_train.h5" --out "$T/x" --lr -1

echo "cli_finetune: $fails failure(s)"
[ $fails -eq 0 ]
