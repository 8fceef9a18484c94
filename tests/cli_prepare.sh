#!/usr/bin/env bash
# `dam_dist prepare` end to end on tests/fixtures/prepare_corpus.jsonl: both packing modes, shapes,
# mask and attributes (read back with h5ls / h5dump), --max-examples/--seed determinism, and the
# bad-input errors (exit status 1, exactly one stderr line naming file and line, no output left).
set -u
BIN=${DAM_BIN:-./dam_dist}
FIX=${DAM_FIXTURES:-tests/fixtures}
CORPUS=$FIX/prepare_corpus.jsonl
SPM=$FIX/tokenizers/spm_legacy
BL=$FIX/tokenizers/bytelevel_llama3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

attr() { h5dump -a "/$1" "$2" 2>/dev/null | sed -n 's/.*(0): //p' | tr -d '"'; }
shape() { h5ls "$2" | awk -v d="$1" '$1 == d {print $3 $4}'; }
# rows of a 2-D dataset, one line per row (int8 mask or int32 ids)
rows8() { h5dump -d "/$1" -b LE -o "$T/raw" "$2" >/dev/null && od -An -v -tu1 -w"$3" "$T/raw"; }
rows32() { h5dump -d "/$1" -b LE -o "$T/raw" "$2" >/dev/null && od -An -v -td4 -w$(($3 * 4)) "$T/raw"; }

# ---------------------------------------------------------------- one example per row (padded)
out=$T/padded.h5
$BIN prepare --tokenizer "$SPM" --input "$CORPUS" --out "$out" --seq-len 32 --field text >"$T/log" 2>&1
check "padded: exit 0" test $? -eq 0
check "padded: summary line printed" grep -q "40 examples -> 40 rows x 32 (padded)" "$T/log"
check "padded: /input_ids is {40, 32}" test "$(shape input_ids "$out")" = "{40,32}"
check "padded: /attention_mask is {40, 32}" test "$(shape attention_mask "$out")" = "{40,32}"
check "padded: no temporary file left" test ! -e "$out.tmp"
for a in tokenizer_hash vocab_size source_file n_examples n_rows n_tokens n_truncated seq_len packing; do
  check "padded: attribute $a present" test -n "$(attr $a "$out")"
done
check "padded: vocab_size 1456" test "$(attr vocab_size "$out")" = 1456
check "padded: packing = padded" test "$(attr packing "$out")" = padded
check "padded: seq_len 32" test "$(attr seq_len "$out")" = 32
check "padded: n_examples 40" test "$(attr n_examples "$out")" = 40
check "padded: tokenizer_hash is 16 hex digits" grep -Eq '^[0-9a-f]{16}$' <<<"$(attr tokenizer_hash "$out")"
check "padded: some long examples truncated" test "$(attr n_truncated "$out")" -gt 0
rows8 attention_mask "$out" 32 >"$T/mask"
rows32 input_ids "$out" 32 >"$T/ids"
# every mask row is ones then zeros; at least one row has padding
check "padded: mask rows are 1...1 0...0" awk '{z=0; for (i=1;i<=NF;i++) {if ($i==0) z=1; else if (z) exit 1}}' "$T/mask"
check "padded: some padding present" grep -q ' 0' "$T/mask"
# padding positions hold the pad id (no pad_token: eos </s> = 2) and each row starts with <s> = 1
check "padded: pad id 2 under mask 0, bos 1 first" paste -d'|' "$T/ids" "$T/mask" | awk -F'|' '{
  n=split($1,id," "); split($2,m," "); if (id[1]!=1) exit 1; for (i=1;i<=n;i++) if (m[i]==0 && id[i]!=2) exit 1}'
ntok=$(awk '{for (i=1;i<=NF;i++) s+=$i} END {print s}' "$T/mask")
check "padded: n_tokens = sum of mask ($ntok)" test "$(attr n_tokens "$out")" = "$ntok"

# ---------------------------------------------------------------- packed, template
out=$T/packed.h5
$BIN prepare --tokenizer "$BL" --input "$CORPUS" --out "$out" --seq-len 64 --pack \
  --template '{prompt}\n\n{response}' >"$T/log" 2>&1
check "packed: exit 0" test $? -eq 0
rows=$(attr n_rows "$out")
check "packed: shape {n_rows, 64}" test "$(shape input_ids "$out")" = "{$rows,64}"
check "packed: packing = packed" test "$(attr packing "$out")" = packed
check "packed: n_tokens = 64 * n_rows" test "$(attr n_tokens "$out")" = $((64 * rows))
rows8 attention_mask "$out" 64 >"$T/mask"
check "packed: mask all ones" awk '{for (i=1;i<=NF;i++) if ($i!=1) exit 1}' "$T/mask"
eos=2  # <|end_of_text|> in bytelevel_llama3
rows32 input_ids "$out" 64 >"$T/ids"
neos=$(awk -v e=$eos '{for (i=1;i<=NF;i++) if ($i==e) n++} END {print n+0}' "$T/ids")
check "packed: documents separated by EOS ($neos in the rows)" test "$neos" -ge $((rows / 2))
check "packed: starts with <|begin_of_text|> (post_processor)" test "$(awk 'NR==1 {print $1}' "$T/ids")" = 1
# the template filled the fields: decode the first row back
head -1 "$T/ids" | $BIN tokenize --decode --tokenizer "$BL" >"$T/text"
check "packed: row 0 decodes to the templated text" grep -q "Question 0: what is 0 + 0?" "$T/text"
check "packed: template newlines kept" test "$(grep -c '' "$T/text")" -ge 3

# ---------------------------------------------------------------- --max-examples with --seed
for s in 1 1 2; do
  $BIN prepare --tokenizer "$SPM" --input "$CORPUS" --out "$T/s$s.h5" --seq-len 64 --field text \
    --max-examples 5 --seed $s --no-bos --eos >/dev/null 2>&1
  rows32 input_ids "$T/s$s.h5" 64 >"$T/s$s.$RANDOM.ids"
done
check "sample: 5 rows" test "$(attr n_rows "$T/s1.h5")" = 5
set -- "$T"/s1.*.ids
check "sample: same seed, same rows" cmp -s "$1" "$2"
check "sample: other seed, other rows" bash -c "! cmp -s '$1' $T/s2.*.ids"
check "sample: --no-bos honoured" bash -c "! awk '\$1 == 1' '$1' | grep -q ."
check "sample: --eos adds </s>" grep -q ' 2 ' "$1"

# ---------------------------------------------------------------- plain text
printf 'first document\nstill first\n\n\nsecond document\n\nthird\n' >"$T/docs.txt"
$BIN prepare --tokenizer "$SPM" --input "$T/docs.txt" --format text --out "$T/text.h5" --seq-len 16 >/dev/null 2>&1
check "text: blank-line separated blocks -> 3 rows" test "$(attr n_rows "$T/text.h5")" = 3

# ---------------------------------------------------------------- bad input
# expect_error NAME WORDS -- prepare args...: exit 1, one stderr line containing WORDS, no output
expect_error() {
  local name=$1 words=$2; shift 3
  rm -f "$T/bad.h5" "$T/bad.h5.tmp"
  "$BIN" prepare --out "$T/bad.h5" --seq-len 16 "$@" >"$T/out" 2>"$T/err"
  local rc=$? lines
  lines=$(grep -c '' "$T/err")
  if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -qF -- "$words" "$T/err" && [ ! -e "$T/bad.h5" ] && [ ! -e "$T/bad.h5.tmp" ]; then
    ok "error $name: $(cat "$T/err")"
  else
    bad "error $name (rc $rc, $lines stderr lines, output left: $(ls "$T"/bad.h5* 2>/dev/null)): $(cat "$T/err")"
  fi
}
printf '{"text": "fine"}\n{"text": "bad byte \xff here"}\n' >"$T/utf8.jsonl"
expect_error "invalid UTF-8" "$T/utf8.jsonl:2: invalid UTF-8" -- --tokenizer "$SPM" --input "$T/utf8.jsonl" --field text
printf '{"text": "a"}\n{"text": "b"}\n{"other": "c"}\n' >"$T/missing.jsonl"
expect_error "missing field" "$T/missing.jsonl:3: missing field \"text\"" -- --tokenizer "$SPM" --input "$T/missing.jsonl" --field text
expect_error "missing template field" "$T/missing.jsonl:1: missing field \"prompt\"" -- --tokenizer "$SPM" --input "$T/missing.jsonl" --template '{prompt} {text}'
printf '{"text": "a"}\n{"text": "b"\n' >"$T/malformed.jsonl"
expect_error "malformed JSON" "$T/malformed.jsonl:2: malformed JSON" -- --tokenizer "$SPM" --input "$T/malformed.jsonl" --field text
printf '\n  \n' >"$T/empty.jsonl"
expect_error "empty input" "$T/empty.jsonl: no examples" -- --tokenizer "$SPM" --input "$T/empty.jsonl" --field text
expect_error "unsupported model" "unsupported tokenizer model WordPiece" -- --tokenizer "$FIX/tokenizers/wordpiece" --input "$CORPUS" --field text
expect_error "unsupported model names file" "wordpiece/tokenizer.json" -- --tokenizer "$FIX/tokenizers/wordpiece" --input "$CORPUS" --field text
# plain text under the default --format jsonl: the error says which --format to pass
printf 'one document\n\nanother one\n' >"$T/plain.txt"
expect_error ".txt without --format or --field" "for plain text pass --format text" -- --tokenizer "$SPM" --input "$T/plain.txt"
expect_error ".txt without --format, with --field" "$T/plain.txt:1: malformed JSON line (expected one JSON object per line); a .txt input is read as JSON lines unless --format says otherwise: for plain text pass --format text" -- --tokenizer "$SPM" --input "$T/plain.txt" --field text
expect_error "missing input" "nope.jsonl: input file not found" -- --tokenizer "$SPM" --input "$T/nope.jsonl" --field text

# --out into a missing directory: said before any work (the tokenizer is not even loaded), not an HDF5 call
"$BIN" prepare --tokenizer "$T/no_tokenizer_here" --input "$T/missing.jsonl" --field text --seq-len 16 \
  --out "$T/nodir/sub/x.h5" >"$T/out" 2>"$T/err"
rc=$?
if [ $rc -eq 1 ] && [ "$(grep -c '' "$T/err")" -eq 1 ] && grep -qF "the directory $T/nodir/sub does not exist" "$T/err" \
   && ! grep -q HDF5 "$T/err" && [ ! -e "$T/nodir" ]; then
  ok "--out into a missing directory: $(cat "$T/err")"
else
  bad "--out into a missing directory (rc $rc): $(cat "$T/err")"
fi

# tokenize: a character the vocabulary lacks (no unk_token) is named, and a trailing newline is explained
"$BIN" toy --tasks --out "$T/tasks" >/dev/null
for input in 'abc\n' 'abé'; do
  printf "$input" | "$BIN" tokenize --tokenizer "$T/tasks/base" >"$T/out" 2>"$T/err"
  rc=$?
  case $input in *n) want="the character U+000A is not in the vocabulary and the tokenizer has no unk_token (the trailing newline of stdin is part of the text" ;;
                 *) want="the character 'é' (U+00E9) is not in the vocabulary" ;; esac
  if [ $rc -eq 1 ] && [ "$(grep -c '' "$T/err")" -eq 1 ] && grep -qF "$want" "$T/err"; then
    ok "tokenize '$input' with a character outside the vocabulary: $(cat "$T/err")"
  else
    bad "tokenize '$input' (rc $rc): $(cat "$T/err") (want '$want')"
  fi
done

# the default toy walks README's steps: its models' tokenizer.json (byte-level BPE) tokenizes and
# decodes any text, its text prepares into datasets, and a run on them compares the tokenizers
"$BIN" toy --size tiny --models 2 --out "$T/toy" >"$T/log" 2>&1
check "toy: a tokenizer.json in every model and text to prepare" \
  test -f "$T/toy/base/tokenizer.json" -a -f "$T/toy/m0/tokenizer.json" -a -f "$T/toy/m1/tokenizer_config.json" -a -s "$T/toy/text/m1.jsonl"
check "toy: every model has the same tokenizer" cmp -s "$T/toy/base/tokenizer.json" "$T/toy/m1/tokenizer.json"
printf 'Any text, also é and 日本,\nround trips.\n' >"$T/any.txt"
"$BIN" tokenize --tokenizer "$T/toy/m0" --special <"$T/any.txt" >"$T/ids"
check "toy tokenizer: <s> first, </s> last, ids below the vocabulary (256)" \
  awk '{ if ($1 != 1 || $NF != 2) exit 1; for (i = 1; i <= NF; i++) if ($i < 0 || $i >= 256) exit 1 }' "$T/ids"
"$BIN" tokenize --tokenizer "$T/toy/m0" <"$T/any.txt" | "$BIN" tokenize --tokenizer "$T/toy/m0" --decode >"$T/back"
check "toy tokenizer: decode(encode(text)) is the text" cmp -s "$T/any.txt" "$T/back"
for k in 0 1; do
  "$BIN" prepare --tokenizer "$T/toy/m$k" --input "$T/toy/text/m$k.jsonl" --field text --out "$T/toy/p$k.h5" --seq-len 32 >"$T/log" 2>&1
  check "toy: prepare text/m$k.jsonl: $(cat "$T/log")" grep -q "48 examples -> 48 rows x 32" "$T/log"
done
check "toy: the prepared file records the tokenizer hash of the toy's own data" \
  test "$(attr tokenizer_hash "$T/toy/p0.h5")" = "$(attr tokenizer_hash "$T/toy/data/m0.h5")"
sed 's|data/m\([01]\).h5|p\1.h5|; s/"steps": 12/"steps": 2/' "$T/toy/config.json" >"$T/toy/prep.json"
for cfg in config.json prep.json; do
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 \
    "$BIN" --config "$T/toy/$cfg" --out "$T/toy/out_$cfg" --max-steps 2 >"$T/log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && ! grep -q "not compared" "$T/log"; then ok "toy: the DAM run on $cfg compares the tokenizers (no note)"
  else bad "toy: the DAM run on $cfg (rc $rc): $(grep -m1 'note\|error' "$T/log")"; fi
done

echo "cli_prepare: $fails failure(s)"
[ "$fails" -eq 0 ]
