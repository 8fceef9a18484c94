#!/usr/bin/env bash
# "preset": "arcee" on a tiny toy: the run completes, its recorded settings (dam_report.json's
# "config", the same text checkpoints compare) hold the reference's values the preset resolves to
# (docs/config.md, "Preset arcee"), explicit keys override the preset, and the new keys refuse bad
# values with one line listing the allowed ones.
set -u
BIN=${DAM_BIN:-./dam_dist}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_preset.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }

$BIN toy --out "$T/toy" --size tiny --models 2 --seed 3 >/dev/null || { bad "toy tiny"; exit 1; }
MODELS='"base_model": "base", "models": [{"path": "m0", "dataset": "data/m0.h5"}, {"path": "m1", "dataset": "data/m1.h5"}]'

# recorded settings, compact, of a finished run
settings() { tr -d ' \n\t' < "$1/dam_report.json"; }
has() { # has NAME FILE SUBSTRING...
  local name=$1 f=$2; shift 2
  for want in "$@"; do
    case "$f" in *"$want"*) ;; *) bad "$name: recorded settings lack $want"; return ;; esac
  done
  ok "$name"
}

# 1. the preset alone: every resolved value recorded
echo "{\"preset\": \"arcee\", $MODELS, \"train\": {\"steps\": 3, \"seq_len\": 32}}" > "$T/toy/arcee.json"
if $BIN --config "$T/toy/arcee.json" --out "$T/run1" > "$T/run1.log" 2>&1; then
  grep -q 'preset "arcee"' "$T/run1.log" && ok "the run names its preset" || bad "no preset line: $(head -3 "$T/run1.log")"
  s=$(settings "$T/run1")
  has "preset recorded" "$s" '"preset":"arcee"'
  has "merge resolved" "$s" \
    '"merge":{"embeddings":false,"norms":false,"include_base":false,"nonlinearity":"tanh","coef_dtype":"bfloat16","init":"uniform","bias_init":"one"}'
  has "loss resolved" "$s" \
    '"loss":{"kl":true,"temperature":2,"similarity":0.01,"l1":0,"l2":0,"mse":0,"entropy":0,"overlap":0,"topk":0,"kl_reduction":"batchmean","weighted_overlap":0,"reg_biases":false}'
  has "train resolved" "$s" '"optimizer":"mofo","lr":0.001,"weight_decay":0.01,"betas":[0.9,0.999],"eps":1e-08' \
    '"mofo_alpha":0.3,"mofo_scope":"source","mofo_k":"floor","mofo_decay":"all","schedule":"constant","warmup_under_constant":false' \
    '"epochs":1,"batch_size":1,"micro_batches":1' '"max_grad_norm":1,"seed":42,"shuffle":true'
else
  bad "preset run failed: $(tail -3 "$T/run1.log")"
fi

# 2. explicit keys override the preset, the rest stays the preset's
echo "{\"preset\": \"arcee\", $MODELS, \"merge\": {\"norms\": true},
  \"loss\": {\"kl_reduction\": \"token\"},
  \"train\": {\"steps\": 2, \"seq_len\": 32, \"weight_decay\": 0, \"mofo_k\": \"ceil\", \"batch_size\": 2}}" > "$T/toy/over.json"
if $BIN --config "$T/toy/over.json" --out "$T/run2" > "$T/run2.log" 2>&1; then
  s=$(settings "$T/run2")
  has "explicit keys override" "$s" '"embeddings":false,"norms":true' '"kl_reduction":"token"' \
    '"weight_decay":0,' '"mofo_k":"ceil"' '"batch_size":2' '"mofo_scope":"source"' '"nonlinearity":"tanh"'
else
  bad "override run failed: $(tail -3 "$T/run2.log")"
fi

# 3. train.shuffle: a run stopped mid-epoch and resumed equals the uninterrupted one (the order is
# rebuilt from the seed and the checkpoint's cursor), across an epoch boundary (48 rows, 2 a step:
# 24 steps an epoch), and differs from the run in order
for sh in true false; do
  echo "{$MODELS, \"train\": {\"steps\": 26, \"seq_len\": 32, \"batch_size\": 2, \"lr\": 0.02, \"shuffle\": $sh, \"seed\": 5}}" > "$T/toy/sh_$sh.json"
done
if $BIN --config "$T/toy/sh_true.json" --out "$T/sh_full" > "$T/sh_full.log" 2>&1 \
  && $BIN --config "$T/toy/sh_true.json" --out "$T/sh_cut" --max-steps 20 > "$T/sh_cut.log" 2>&1 \
  && $BIN --config "$T/toy/sh_true.json" --out "$T/sh_cut" --resume > "$T/sh_cut2.log" 2>&1 \
  && $BIN --config "$T/toy/sh_false.json" --out "$T/sh_none" > "$T/sh_none.log" 2>&1; then
  cmp -s "$T/sh_full/dam_coefficients.safetensors" "$T/sh_cut/dam_coefficients.safetensors" \
    && ok "shuffled: stopped at step 20, resumed to 26: coefficients identical to the uninterrupted run" \
    || bad "shuffled resume differs from the uninterrupted run"
  cmp -s "$T/sh_full/dam_coefficients.safetensors" "$T/sh_none/dam_coefficients.safetensors" \
    && bad "shuffled and in-order runs gave the same coefficients" || ok "shuffled order differs from the order of the rows"
else
  bad "shuffle runs failed: $(tail -2 "$T"/sh_*.log)"
fi

# 3b. merge.coef_dtype bfloat16: every coefficient the run writes is a bf16
# value; a run stopped and resumed equals the uninterrupted one (c, m, v travel as bf16 values in F32)
echo "{$MODELS, \"merge\": {\"coef_dtype\": \"bfloat16\", \"nonlinearity\": \"tanh\"},
  \"train\": {\"steps\": 6, \"seq_len\": 32, \"lr\": 0.02, \"optimizer\": \"mofo\"}}" > "$T/toy/bf16.json"
if $BIN --config "$T/toy/bf16.json" --out "$T/bf_full" > "$T/bf_full.log" 2>&1 \
  && $BIN --config "$T/toy/bf16.json" --out "$T/bf_cut" --max-steps 3 > "$T/bf_cut.log" 2>&1 \
  && $BIN --config "$T/toy/bf16.json" --out "$T/bf_cut" --resume > "$T/bf_cut2.log" 2>&1; then
  cmp -s "$T/bf_full/dam_coefficients.safetensors" "$T/bf_cut/dam_coefficients.safetensors" \
    && ok "bfloat16: stopped at step 3, resumed to 6: coefficients identical" || bad "bfloat16 resume differs"
  f="$T/bf_full/dam_coefficients.safetensors" # F32 values after the 8-byte header length and the header
  hl=$(od -An -t u8 -N8 "$f" | tr -d ' ')
  words=$(od -An -v -t x4 -j $((8 + hl)) "$f" | tr -s ' ' '\n' | grep -c .)
  low=$(od -An -v -t x4 -j $((8 + hl)) "$f" | tr -s ' ' '\n' | grep . | grep -vc '0000$')
  [ "$words" -gt 0 ] && [ "$low" -eq 0 ] && ok "bfloat16: all $words coefficients are bf16 values" \
    || bad "bfloat16: $low of $words coefficients are not bf16 values"
else
  bad "bfloat16 runs failed: $(tail -2 "$T"/bf_*.log)"
fi

# 4. loss.weighted_overlap under tensor parallelism: its pair weights are per input column over
# all output rows, a row-parallel tensor's columns split over tp, its value summed over them; tp=2
# equals one process (from distinct coefficients: from the uniform start Adam's first step leaves
# near-ties |c_a| ≈ |c_b| that any rounding difference flips, with the whole gradient of a tie
# going to one side). The llama3src fixture's sources, the arcee fixture's rows and initial values.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
FX=$(cd "${DAM_FIXTURES:-tests/fixtures}" && pwd)
BUILD=${BUILD:-build}
if "$BUILD/tests/tool_arcee_data" "$FX/arcee/inputs.safetensors" "$T/wov" 2>"$T/wov.err"; then
  for tp in 1 2; do
    echo "{\"base_model\": \"$FX/dam/llama3src/base\", \"models\": [
      {\"path\": \"$FX/dam/llama3src/m0\", \"dataset\": \"$T/wov/d0.h5\"},
      {\"path\": \"$FX/dam/llama3src/m1\", \"dataset\": \"$T/wov/d1.h5\"},
      {\"path\": \"$FX/dam/llama3src/m2\", \"dataset\": \"$T/wov/d2.h5\"}],
      \"merge\": {\"init\": \"$FX/arcee/coef_init_wov.safetensors\"}, \"loss\": {\"weighted_overlap\": 0.05},
      \"train\": {\"steps\": 5, \"batch_size\": 2, \"lr\": 0.01}, \"parallel\": {\"tp\": $tp}}" > "$T/wov/tp$tp.json"
  done
  if $BIN --config "$T/wov/tp1.json" --out "$T/wov/o1" > "$T/wov/o1.log" 2>&1 \
    && timeout 300 mpirun -n 2 --oversubscribe $BIN --config "$T/wov/tp2.json" --out "$T/wov/o2" > "$T/wov/o2.log" 2>&1; then
    "$BUILD/tests/tool_compare_coefs" "$T/wov/o2/dam_coefficients.safetensors" "$T/wov/o1/dam_coefficients.safetensors" 5e-5 \
      && ok "weighted_overlap: tp=2 equals one process" || bad "weighted_overlap: tp=2 differs from one process"
  else
    bad "weighted_overlap runs failed: $(tail -2 "$T"/wov/o*.log)"
  fi
else
  bad "tool_arcee_data: $(cat "$T/wov.err")"
fi

# 5. refusals: one line naming the field and the allowed values
refused() { # refused NAME CONFIG-TEXT SUBSTRING
  echo "$2" > "$T/toy/bad.json"
  rm -rf "$T/badout"
  $BIN --config "$T/toy/bad.json" --out "$T/badout" > /dev/null 2> "$T/err.txt"
  local rc=$?
  if [ $rc -eq 1 ] && [ "$(wc -l < "$T/err.txt")" -eq 1 ] && grep -qF -- "$3" "$T/err.txt"; then ok "refused: $1"
  else bad "$1: rc $rc, stderr: $(head -3 "$T/err.txt")"; fi
}
refused "unknown preset" "{\"preset\": \"torch\", $MODELS}" "field 'preset': unknown value 'torch' (allowed: \"arcee\")"
refused "kl_reduction" "{$MODELS, \"loss\": {\"kl_reduction\": \"mean\"}}" \
  "field 'loss.kl_reduction': unknown value 'mean' (allowed: \"token\", \"batchmean\")"
refused "mofo_scope" "{$MODELS, \"train\": {\"mofo_scope\": \"row\"}}" \
  "field 'train.mofo_scope': unknown value 'row' (allowed: \"tensor\", \"source\")"
refused "mofo_k" "{$MODELS, \"train\": {\"mofo_k\": \"round\"}}" \
  "field 'train.mofo_k': unknown value 'round' (allowed: \"ceil\", \"floor\")"
refused "mofo_decay" "{$MODELS, \"train\": {\"mofo_decay\": \"none\"}}" \
  "field 'train.mofo_decay': unknown value 'none' (allowed: \"selected\", \"all\")"
refused "bias_init" "{$MODELS, \"merge\": {\"bias_init\": \"zero\"}}" \
  "field 'merge.bias_init': unknown value 'zero' (allowed: \"init\", \"one\")"
refused "coef_dtype" "{$MODELS, \"merge\": {\"coef_dtype\": \"bf16\"}}" \
  "field 'merge.coef_dtype': unknown value 'bf16' (allowed: \"float32\", \"bfloat16\")"
refused "weighted_overlap without base_model" "{${MODELS#*\"base\", }, \"loss\": {\"weighted_overlap\": 0.01}}" \
  "field 'loss.weighted_overlap' is > 0 but 'base_model' is not set"
refused "weighted_overlap < 0" "{$MODELS, \"loss\": {\"weighted_overlap\": -1}}" \
  "field 'loss.weighted_overlap': expected a weight >= 0, got -1"
refused "schedule" "{$MODELS, \"train\": {\"schedule\": \"cosine_with_min_lr\"}}" \
  "field 'train.schedule': unknown value 'cosine_with_min_lr' (allowed: \"constant\", \"linear\", \"cosine\", \"constant_with_warmup\", \"cosine_with_restarts\", \"polynomial\", \"inverse_sqrt\")"
refused "warmup and warmup_ratio" "{$MODELS, \"train\": {\"warmup\": 3, \"warmup_ratio\": 0.1}}" \
  "fields 'train.warmup' and 'train.warmup_ratio': give one of them"
refused "polynomial lr_end" "{$MODELS, \"train\": {\"schedule\": \"polynomial\", \"schedule_args\": {\"lr_end\": 0.01}}}" \
  "field 'train.schedule_args.lr_end': expected >= 0 and below train.lr (0.001), got 0.01"
refused "schedule_args key" "{$MODELS, \"train\": {\"schedule_args\": {\"cycles\": 2}}}" \
  "unknown key 'train.schedule_args.cycles'"
refused "base_dataset without include_base" "{$MODELS, \"base_dataset\": \"data/m0.h5\"}" \
  "field 'base_dataset' needs 'merge.include_base': true"
refused "preset not a string" "{\"preset\": 1, $MODELS}" "field 'preset': expected a string"

echo "cli_preset: $fails failure(s)"
[ $fails -eq 0 ]
