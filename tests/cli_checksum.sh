#!/usr/bin/env bash
# Checksums (issue 24): a flipped bit in a checkpoint's coefficient data is refused on --resume, and
# --resume / --resume auto fall back to the previous checkpoint and end bit for bit where an
# uninterrupted run ends; none verifying is refused in one line; pruning keeps the newest verified
# checkpoint; a flipped bit in a token file's ids is refused when a run opens it; a changed output
# shard is found by inspect --verify. Then the fast mutation corpus (tools/mutation_corpus.py).
set -u
BIN=${DAM_BIN:-./dam_dist}
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 OPENBLAS_NUM_THREADS=1
T=$(mktemp -d /tmp/dam_cli_checksum.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
# flip FILE DATASET BYTE [MASK]: xor MASK (0x10) into byte BYTE of DATASET's raw data (h5dump gives its offset)
flip() {
  local off b
  off=$(h5dump -p -H -d "$2" "$1" | awk '/OFFSET/ {print $2; exit}')
  [ -n "$off" ] || { echo "no offset for $2 in $1"; return 1; }
  off=$((off + $3))
  b=$(od -An -tu1 -j "$off" -N1 "$1" | tr -d ' ')
  printf "$(printf '\\%03o' $((b ^ ${4:-16})))" | dd of="$1" bs=1 seek="$off" conv=notrunc status=none
}
one_line() { [ "$(wc -l < "$1")" -eq 1 ] && grep -q '^dam_dist: error: ' "$1"; }

$BIN toy --out "$T/toy" --size tiny --models 2 --seed 5 > /dev/null || { bad toy; exit 1; }
# a checkpoint every 2 steps, all kept
sed 's/"output":/"checkpoint": {"every": 2, "keep": 0}, "output":/' "$T/toy/config.json" > "$T/toy/ck.json"
$BIN --config "$T/toy/ck.json" --out "$T/ref" > "$T/ref.log" 2>&1 || bad "reference run: $(tail -2 "$T/ref.log")"
W="/coefficients/model.layers.0.mlp.down_proj.weight"

# 1. --resume: the flipped newest checkpoint is refused (named in one line), step 4 is used instead
for mode in plain auto; do
  rm -rf "$T/r" "$T/r.ckpt" "$T/r.metrics.jsonl"
  $BIN --config "$T/toy/ck.json" --out "$T/r" --max-steps 6 > /dev/null 2>&1
  flip "$T/r.ckpt/step_00000006.h5" "$W" 40
  arg=(--resume); [ $mode = auto ] && arg=(--resume auto)
  $BIN --config "$T/toy/ck.json" --out "$T/r" "${arg[@]}" > "$T/$mode.out" 2> "$T/$mode.err"
  rc=$?
  if [ $rc -eq 0 ] && [ "$(grep -c 'step_00000006.h5 fails verification' "$T/$mode.err")" -eq 1 ] \
     && grep -q "coefficients/model.layers.0.mlp.down_proj.weight' does not match its checksum" "$T/$mode.err" \
     && grep -q 'falling back to .*step_00000004.h5' "$T/$mode.out" && grep -q 'resumed from .*step_00000004.h5 at step 4' "$T/$mode.out"; then
    ok "--resume$([ $mode = auto ] && echo " auto"): flipped bit in step 6's coefficients refused in one line, fell back to step 4"
  else
    bad "--resume $mode with a flipped checkpoint (rc $rc): $(cat "$T/$mode.err" | tail -2)"
  fi
  cmp -s "$T/r/dam_coefficients.safetensors" "$T/ref/dam_coefficients.safetensors" \
    && ok "--resume$([ $mode = auto ] && echo " auto") from the fallback: coefficients identical to the uninterrupted run" \
    || bad "--resume $mode: coefficients differ from the uninterrupted run"
done

# 2. every checkpoint damaged: refused in one line, nothing written
rm -rf "$T/r" "$T/r.ckpt"
$BIN --config "$T/toy/ck.json" --out "$T/r" --max-steps 4 > /dev/null 2>&1
flip "$T/r.ckpt/step_00000004.h5" "$W" 8; flip "$T/r.ckpt/step_00000002.h5" /adam_v/model.norm.weight 0
$BIN --config "$T/toy/ck.json" --out "$T/r" --resume auto > "$T/none.out" 2> "$T/none.err"
rc=$?
[ $rc -eq 1 ] && grep -q 'none of the 2 checkpoint(s) .* verifies' "$T/none.err" && [ "$(grep -c '^dam_dist: error' "$T/none.err")" -eq 1 ] \
  && ! grep -q 'resumed from' "$T/none.out" \
  && ok "no checkpoint verifies: refused ('$(grep error "$T/none.err" | cut -c1-80)...')" || bad "none verifies (rc $rc): $(tail -2 "$T/none.err")"
$BIN inspect --checkpoint "$T/r.ckpt" > "$T/insp.out" 2> "$T/insp.err"
[ $? -eq 1 ] && one_line "$T/insp.err" && [ "$(grep -c DAMAGED "$T/insp.out")" -eq 2 ] \
  && ok "inspect --checkpoint DIR: both damaged files named, one error line" || bad "inspect --checkpoint: $(cat "$T/insp.err")"
$BIN inspect --checkpoint "$T/ref.ckpt/step_00000012.h5" > "$T/insp.out" 2>&1 && grep -q 'verified' "$T/insp.out" \
  && ok "inspect --checkpoint FILE: a good one verifies" || bad "inspect good checkpoint: $(cat "$T/insp.out")"

# 3. keep: pruning never removes the newest checkpoint that verifies (tests/test_checkpoint.c)

# 4. token files: a flipped bit in /input_ids is refused when a run opens it; the old format is read with a note
cp "$T/toy/data/m0.h5" "$T/m0.bak"
flip "$T/toy/data/m0.h5" /input_ids 16 1 # the lowest bit of id [0][4]: still inside the vocabulary
for cmd in run eval; do
  rm -rf "$T/d"
  if [ $cmd = run ]; then $BIN --config "$T/toy/config.json" --out "$T/d" > /dev/null 2> "$T/d.err"
  else $BIN eval --config "$T/toy/config.json" --model "$T/ref" > /dev/null 2> "$T/d.err"; fi
  rc=$?
  [ $rc -eq 1 ] && one_line "$T/d.err" && grep -q 'm0.h5: /input_ids does not match its checksum' "$T/d.err" \
    && ok "$cmd: a flipped bit in a token file's ids refused: '$(cut -c1-90 "$T/d.err")...'" || bad "$cmd with a flipped token file (rc $rc): $(cat "$T/d.err")"
done
DAM_SKIP_DATA_CHECKSUMS=1 $BIN inspect --data "$T/toy/data/m0.h5" > /dev/null 2>&1 \
  && ok "DAM_SKIP_DATA_CHECKSUMS=1 skips the check" || bad "DAM_SKIP_DATA_CHECKSUMS"
cp "$T/m0.bak" "$T/toy/data/m0.h5"

# prepare writes the checksums (every dataset, and the root's marker)
$BIN prepare --tokenizer tests/fixtures/tokenizers/bytelevel_llama3 --input tests/fixtures/prepare_corpus.jsonl \
  --field text --out "$T/p.h5" --seq-len 32 > /dev/null 2>&1
h5dump -A "$T/p.h5" > "$T/p.attrs" 2>&1
[ "$(grep -c 'ATTRIBUTE "xxh64"' "$T/p.attrs")" -eq 2 ] && grep -q 'ATTRIBUTE "checksums"' "$T/p.attrs" \
  && $BIN inspect --data "$T/p.h5" > "$T/p.out" 2>&1 && ! grep -q 'no checksum' "$T/p.out" \
  && ok "prepare: /input_ids and /attention_mask carry xxh64, verified on open" || bad "prepare checksums: $(cat "$T/p.out")"

# 5. an output shard changed after the run: inspect --verify names it
$BIN inspect --verify "$T/ref" > /dev/null 2>&1 && ok "inspect --verify: a fresh output matches its report" || bad "inspect --verify fresh"
cp -r "$T/ref" "$T/copy"
printf 'x' | dd of="$T/copy/model.safetensors" bs=1 seek=4000 conv=notrunc status=none
$BIN inspect --verify "$T/copy" > "$T/v.out" 2> "$T/v.err"
[ $? -eq 1 ] && one_line "$T/v.err" && grep -q 'model.safetensors *CHANGED' "$T/v.out" \
  && ok "inspect --verify: a changed shard is named" || bad "inspect --verify changed: $(cat "$T/v.err")"

# 6. the mutation corpus, fast
if command -v python3 > /dev/null; then
  python3 tools/mutation_corpus.py --fast --bin "$BIN" > "$T/corpus.log" 2>&1 \
    && ok "mutation corpus: $(tail -1 "$T/corpus.log")" || bad "mutation corpus: $(tail -3 "$T/corpus.log")"
else
  echo "SKIP    mutation corpus (no python3)"
fi

[ $fails -eq 0 ] && echo "cli_checksum: all passed" || echo "cli_checksum: $fails failed"
exit $((fails > 0))
