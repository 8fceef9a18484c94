#!/usr/bin/env bash
# The main job end to end on a tiny toy, and its refusals of bad input: each bad case must give
# exit status 1 (no signal), exactly one line on stderr naming the file/field, and no output
# directory that looks complete.
set -u
BIN=${DAM_BIN:-./dam_dist}
T=$(mktemp -d /tmp/dam_cli_train.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok()   { echo "OK      $*"; }
bad()  { echo "NOT OK  $*"; fails=$((fails + 1)); }

$BIN toy --out "$T/tiny" --size tiny --models 2 --seed 3 >/dev/null || { bad "toy tiny"; exit 1; }
$BIN toy --out "$T/small" --size small --models 2 --seed 3 >/dev/null || { bad "toy small"; exit 1; }

# 1. a run completes, the loss falls, the output is a complete HF directory
if $BIN --config "$T/tiny/config.json" --out "$T/run1" > "$T/run1.log" 2>&1; then
  first=$(grep -m1 '^step' "$T/run1.log" | sed 's/.*| loss \([0-9.]*\).*/\1/')
  last=$(grep '^step' "$T/run1.log" | tail -1 | sed 's/.*| loss \([0-9.]*\).*/\1/')
  awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a)}' && ok "loss falls ($first -> $last)" || bad "loss did not fall ($first -> $last)"
  for f in config.json model.safetensors dam_coefficients.safetensors dam_report.json; do
    [ -f "$T/run1/$f" ] && ok "output has $f" || bad "output lacks $f"
  done
  [ "$(grep -c '^step' "$T/run1.log")" -eq 12 ] && ok "one progress line per step" || bad "progress lines"
  [ "$(wc -l < "$T/run1.metrics.jsonl" 2>/dev/null || echo 0)" -eq 12 ] && ok "metrics JSON lines" || bad "metrics file"
else
  bad "tiny run failed: $(tail -3 "$T/run1.log")"
fi

# 2. --max-steps stops early
$BIN --config "$T/tiny/config.json" --out "$T/run2" --max-steps 3 > "$T/run2.log" 2>&1 \
  && [ "$(grep -c '^step' "$T/run2.log")" -eq 3 ] && grep -q '^step    3/12' "$T/run2.log" \
  && ok "--max-steps 3 of 12" || bad "--max-steps"

# expect_error NAME SUBSTRING CONFIG [extra args]
expect_error() {
  local name=$1 want=$2 cfg=$3; shift 3
  rm -rf "$T/errout" "$T/errout.tmp"
  $BIN --config "$cfg" --out "$T/errout" "$@" > "$T/err.out" 2> "$T/err.txt"
  local rc=$?
  local lines; lines=$(wc -l < "$T/err.txt")
  if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -q "error:" "$T/err.txt" && grep -qF -- "$want" "$T/err.txt" \
     && [ ! -e "$T/errout" ]; then
    ok "$name: $(cat "$T/err.txt")"
  else
    bad "$name: rc=$rc lines=$lines stderr: $(head -3 "$T/err.txt")"
  fi
}

mk() { # mk NAME SED-EXPR : a copy of the tiny config with one edit
  sed "$2" "$T/tiny/config.json" > "$T/tiny/$1.json"
}
printf '{"models": [' > "$T/tiny/malformed.json"
expect_error "malformed config (line and column)" "malformed.json:1:12: malformed JSON at line 1, column 12" "$T/tiny/malformed.json"
echo '{"merge": {}}' > "$T/tiny/nomodels.json"
expect_error "missing required field" "models" "$T/tiny/nomodels.json"
mk typo 's/"temperature"/"temprature"/'
expect_error "unknown key" "temprature" "$T/tiny/typo.json"
mk badval 's/"adamw"/"sgd"/'
expect_error "bad value" "train.optimizer" "$T/tiny/badval.json"
# token id >= vocab: a dataset of the small toy (vocab 2048) for a tiny model (vocab 256)
mk badids "s|data/m0.h5|$T/small/data/m0.h5|"
expect_error "token id >= vocab" "m0.h5" "$T/tiny/badids.json"
# sources of different shapes
mk shapes "s|\"path\": \"m1\"|\"path\": \"$T/small/m1\"|"
expect_error "shapes differ between sources" "differ in config field" "$T/tiny/shapes.json"
# sequence longer than max_position_embeddings
cp -r "$T/tiny/m0" "$T/tiny/shortpos"
sed -i 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": 16/' "$T/tiny/shortpos/config.json"
cp -r "$T/tiny/m1" "$T/tiny/shortpos1"
sed -i 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": 16/' "$T/tiny/shortpos1/config.json"
mk longseq 's|"path": "m0"|"path": "shortpos"|; s|"path": "m1"|"path": "shortpos1"|; s|"base_model": "base"|"base_model": "shortpos"|'
expect_error "sequence longer than max_position_embeddings" "max_position_embeddings" "$T/tiny/longseq.json"
# a pickle-only source
mkdir -p "$T/tiny/pickle" && cp "$T/tiny/m1/config.json" "$T/tiny/pickle/" && echo junk > "$T/tiny/pickle/pytorch_model.bin"
mk pickle 's|"path": "m1"|"path": "pickle"|'
expect_error "pickle-only model directory" "pickle" "$T/tiny/pickle.json"
# missing dataset file
mk nodata 's|data/m1.h5|data/none.h5|'
expect_error "missing dataset" "none.h5" "$T/tiny/nodata.json"

# precompute: a run on the teacher cache matches the on-the-fly top-K run; a second precompute skips
cp -r "$T/tiny" "$T/topk"
sed -i 's/"similarity": 0.01}/"similarity": 0.01, "topk": 8}/' "$T/topk/config.json"
$BIN --config "$T/topk/config.json" --out "$T/fly" > "$T/fly.log" 2>&1 || bad "on-the-fly top-K run"
$BIN precompute --config "$T/topk/config.json" > "$T/pre.log" 2>&1 && h5ls "$T/topk/data/m0.h5" | grep -q "topk_logits.*{48, 32, 8}" \
  && ok "precompute wrote /topk_indices and /topk_logits [48, 32, 8]" || bad "precompute: $(cat "$T/pre.log")"
$BIN --config "$T/topk/config.json" --out "$T/cached" > "$T/cached.log" 2>&1 || bad "cached top-K run"
a=$(grep '"final_loss"' "$T/fly/dam_report.json" | tr -dc '0-9.e-'); b=$(grep '"final_loss"' "$T/cached/dam_report.json" | tr -dc '0-9.e-')
awk -v a="$a" -v b="$b" 'BEGIN {d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-5 * a)}' \
  && ok "cached top-K run equals the on-the-fly one (final loss $a vs $b)" || bad "cached vs on-the-fly: $a vs $b"
$BIN precompute --config "$T/topk/config.json" 2>&1 | grep -q "skipped" && ok "precompute again: skipped (resumable)" || bad "precompute rerun"

echo "cli_train: $fails failure(s)"
[ $fails -eq 0 ]
