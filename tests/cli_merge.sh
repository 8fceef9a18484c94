#!/usr/bin/env bash
# `dam_dist merge` end to end on a tiny toy (base + 2 specialists, bf16):
#  - every method, in one process and under mpirun -n 2, with small shards so that both ranks write:
#    the two outputs byte-identical (every file but merge_report.json), loadable (dam_dist inspect
#    against the base), the report naming the method;
#  - exact identities: linear with weights (1, 0) is model 0's bf16 tensors; slerp at t = 0 is the
#    base and at t = 1 the model; task_arithmetic with lambda 0 is the base;
#  - --config takes base_model and models[].path from a DAM config;
#  - the output directory's rules: an earlier merge is replaced, another directory only with --force,
#    an input never;
#  - bad inputs: exit 1 and one line naming what is wrong (also under mpirun -n 2: the ranks stop).
set -u
BIN=${DAM_BIN:-./dam_dist}
BUILD=${BUILD:-build}
CMP="$BUILD/tests/tool_compare_models"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

$BIN toy --out "$T/toy" --size tiny --models 2 >/dev/null || { echo "FAIL toy"; exit 1; }
B=$T/toy/base M0=$T/toy/m0 M1=$T/toy/m1

# the model files of two output directories are the same bytes (merge_report.json differs: times)
same_files() {
  local a=$1 b=$2 f
  [ "$(ls "$a" | grep -v merge_report.json)" = "$(ls "$b" | grep -v merge_report.json)" ] || return 1
  for f in $(ls "$a" | grep -v merge_report.json); do cmp -s "$a/$f" "$b/$f" || return 1; done
}

# ---------------------------------------------------------------- every method, 1 and 2 ranks
declare -A ARGS=(
  [linear]="--model $M0 --model $M1 --weights 0.3,0.7"
  [task_arithmetic]="--base $B --model $M0 --model $M1 --lambda 0.5"
  [ties]="--base $B --model $M0 --model $M1 --density 0.4 --weights 1,0.5"
  [dare_ties]="--base $B --model $M0 --model $M1 --density 0.5 --seed 3"
  [slerp]="--base $B --model $M0 --t 0.3"
)
for m in linear task_arithmetic ties dare_ties slerp; do
  $BIN merge --method $m ${ARGS[$m]} --shard-size 40KB --out "$T/$m.1" >"$T/log1" 2>&1
  rc1=$?
  timeout 120 mpirun -n 2 $BIN merge --method $m ${ARGS[$m]} --shard-size 40KB --out "$T/$m.2" >"$T/log2" 2>&1
  rc2=$?
  check "$m: exit 0 on 1 and 2 ranks ($(head -1 "$T/log1" | cut -c1-90))" test $rc1 -eq 0 -a $rc2 -eq 0
  check "$m: several shards with an index" test -f "$T/$m.1/model.safetensors.index.json"
  check "$m: 1 rank and 2 ranks wrote the same bytes" same_files "$T/$m.1" "$T/$m.2"
  check "$m: both ranks wrote shards" grep -Eq '"shards_per_rank":.*\[[1-9][0-9]*, [1-9]' \
    <(tr -d '\n\t' <"$T/$m.2/merge_report.json")
  check "$m: report names the method and is complete" \
    grep -q "\"method\":.\"$m\"" <(tr -d '\n' <"$T/$m.1/merge_report.json")
  check "$m: no temporary directory left" test ! -e "$T/$m.1.tmp" -a ! -e "$T/$m.2.tmp"
  $BIN inspect --model "$T/$m.1" --model "$B" >"$T/log" 2>&1
  check "$m: the output loads back (inspect, mergeable with the base)" grep -q "can be merged" "$T/log"
  check "$m: config.json and the toy's tokenizer files copied" \
    test -f "$T/$m.1/config.json" -a -f "$T/$m.1/tokenizer.json" -a -f "$T/$m.1/tokenizer_config.json"
done
check "the methods give different models" \
  bash -c "! cmp -s '$T/ties.1/model-00001-of-00006.safetensors' '$T/dare_ties.1/model-00001-of-00006.safetensors'"

# ---------------------------------------------------------------- exact identities
ident() { # what, want dir, merge args...
  local what=$1 want=$2; shift 2
  rm -rf "$T/id"
  $BIN merge "$@" --out "$T/id" >/dev/null 2>&1 && $CMP "$T/id" "$want" 0 >"$T/cmp" 2>&1
  local rc=$?
  check "$what: $(cat "$T/cmp")" test $rc -eq 0
}
ident "linear weights (1, 0) = model 0" "$M0" --method linear --model "$M0" --model "$M1" --weights 1,0
ident "linear weights (0, 1), unnormalized = model 1" "$M1" --method linear --model "$M0" --model "$M1" \
  --weights 0,1 --no-normalize
ident "slerp t = 0 = the base" "$B" --method slerp --base "$B" --model "$M0" --t 0
ident "slerp t = 1 = the model" "$M0" --method slerp --base "$B" --model "$M0" --t 1
ident "task_arithmetic lambda 0 = the base" "$B" --method task_arithmetic --base "$B" --model "$M0" \
  --model "$M1" --lambda 0
# and a real merge is neither input
$CMP "$T/linear.1" "$M0" 0 >/dev/null 2>&1
check "linear (0.3, 0.7) differs from model 0" test $? -ne 0

# ---------------------------------------------------------------- --config
$BIN merge --method ties --config "$T/toy/config.json" --out "$T/cfg" >"$T/log" 2>&1
check "--config: exit 0 ($(tail -1 "$T/log"))" test $? -eq 0
check "--config: base and both models from the config" \
  grep -q "\"base\":.*toy/base\".*\"models\":.*m0\".*m1\"" <(tr -d '\n\t' <"$T/cfg/merge_report.json")
$BIN merge --method ties --config "$T/toy/config.json" --out "$T/cfg2" --shard-size 40KB \
  --base "$B" --model "$M0" --model "$M1" >/dev/null 2>&1
check "--config with the same inputs as flags: the same tensors" "$CMP" "$T/cfg" "$T/cfg2" 0

# ---------------------------------------------------------------- the output directory
$BIN merge --method linear --model "$M0" --model "$M1" --out "$T/linear.1" >/dev/null 2>&1
check "an earlier merge output is replaced" test $? -eq 0
mkdir -p "$T/mine" && echo keep >"$T/mine/notes.txt"
$BIN merge --method linear --model "$M0" --model "$M1" --out "$T/mine" >/dev/null 2>"$T/err"
rc=$?
check "a directory that is not a merge output: refused ($(cat "$T/err"))" \
  test $rc -eq 1 -a "$(wc -l <"$T/err")" -eq 1 -a -f "$T/mine/notes.txt"
$BIN merge --method linear --model "$M0" --model "$M1" --out "$T/mine" --force >/dev/null 2>&1
check "... replaced with --force" test $? -eq 0 -a -f "$T/mine/merge_report.json" -a ! -e "$T/mine/notes.txt"
$BIN merge --method linear --model "$M0" --model "$M1" --out "$M1" --force >/dev/null 2>"$T/err"
rc=$?
check "an input as --out: refused even with --force ($(cat "$T/err"))" test $rc -eq 1 -a -f "$M1/config.json"

# ---------------------------------------------------------------- bad inputs: one line, exit 1
$BIN toy --out "$T/other" --size small --models 2 >/dev/null
refused() { # want-substring, args...
  local want=$1; shift
  $BIN merge "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -qF -- "$want" "$T/err" && [ ! -e "$T/bad" ]; then
    ok "refused: $(cat "$T/err")"
  else
    bad "merge $*: rc=$rc, stderr '$(cat "$T/err")' (want one line with '$want')"
  fi
}
refused "unknown --method 'dare'" --method dare --model "$M0" --out "$T/bad"
refused "--method is required" --model "$M0" --out "$T/bad"
refused "--out DIR is required" --method linear --model "$M0"
refused "--density must be in (0, 1]" --method ties --base "$B" --model "$M0" --density 0 --out "$T/bad"
refused "--density must be in (0, 1]" --method ties --base "$B" --model "$M0" --density 1.5 --out "$T/bad"
refused "--t must be in [0, 1]" --method slerp --base "$B" --model "$M0" --t 2 --out "$T/bad"
refused "--lambda expects a number" --method ties --base "$B" --model "$M0" --lambda x --out "$T/bad"
refused "--weights has 3 value(s) for 2 model(s)" --method linear --model "$M0" --model "$M1" --weights 1,2,3 \
  --out "$T/bad"
refused "ties needs a base model" --method ties --model "$M0" --model "$M1" --out "$T/bad"
refused "slerp merges exactly two models" --method slerp --base "$B" --model "$M0" --model "$M1" --out "$T/bad"
refused "--density does not apply to --method linear" --method linear --model "$M0" --density 0.5 --out "$T/bad"
refused "--weights sum to 0" --method linear --model "$M0" --model "$M1" --weights 1,-1 --out "$T/bad"
refused "linear takes no --base" --method linear --base "$B" --model "$M0" --out "$T/bad"
refused "tensor '" --method ties --base "$B" --model "$M0" --model "$T/other/m0" --out "$T/bad"
refused "unknown option '--frobnicate'" --method linear --model "$M0" --out "$T/bad" --frobnicate
refused "needs a value" --method linear --model "$M0" --out "$T/bad" --weights
refused "does not exist" --method linear --model "$T/nope" --out "$T/bad"
# hand-made safetensors files: an integer tensor, and tensor sets that differ
mkst() { # dir, header JSON, data bytes
  mkdir -p "$1" && cp "$M0/config.json" "$1/"
  { printf "\\x$(printf %02x ${#2})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$2"; head -c "$3" /dev/zero; } \
    >"$1/model.safetensors"
}
mkst "$T/int" '{"step":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}' 8
mkst "$T/a" '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' 8
mkst "$T/ab" '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}' 12
refused "tensor 'step' has dtype I64; merge takes BF16, F16 or F32 tensors only" --method linear --model "$T/int" \
  --out "$T/bad"
refused "$T/ab: tensor 'b' is not in $T/a" --method linear --model "$T/a" --model "$T/ab" --out "$T/bad"
refused "$T/a: tensor 'b' of $T/ab is missing" --method linear --model "$T/ab" --model "$T/a" --out "$T/bad"
timeout 120 mpirun -n 2 $BIN merge --method ties --base "$B" --model "$M0" --model "$T/other/m0" --out "$T/bad" \
  >"$T/out" 2>"$T/err"
rc=$?
check "mpirun -n 2, mismatched models: the ranks stop (rc=$rc), one error line, no output" \
  test $rc -ne 0 -a $rc -ne 124 -a "$(grep -c "error: .*tensor 'lm_head.weight' has shape" "$T/err")" -eq 1 -a ! -e "$T/bad"

echo "cli_merge: $fails failure(s)"
[ $fails -eq 0 ]
