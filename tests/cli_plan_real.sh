#!/usr/bin/env bash
# `dam_dist plan` against measured peak RSS on a real vocabulary: two random bf16 sources of the
# Llama-3 family's shape at a width CI can afford (vocabulary 128256 of Llama-3, hidden 256, one
# layer of FFN 2048, untied lm_head: 135 MB each; tests/tool_random_model), where the embedding and
# the lm_head dominate as they do at 70B (bench/bench_plan_shape.sh runs d 8192). Trained for 2 steps
# and written (the output phase is in the peak) under 1 rank with fp32 GEMMs, 1 rank with
# parallel.cpu_matmul "bf16" (when this dam_dist has oneDNN) and tp=2; every rank's peak RSS must lie
# within 15 % of plan's total. Under ASan or the guard backend RSS means nothing: skipped.
set -u
BIN=${DAM_BIN:-./dam_dist}
BUILD=${BUILD:-build}
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
MPI="timeout 300 mpirun --oversubscribe"
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
. "$(dirname "$0")/plan_compare.sh"
case "$BIN" in *build-asan*) echo "cli_plan_real: skipped under ASan (RSS means nothing there)"; exit 0 ;; esac
[ "${DAM_BACKEND:-}" = guard ] && { echo "cli_plan_real: skipped under the guard backend"; exit 0; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_plan_real.XXXXXX")
trap 'rm -rf "$T"' EXIT
t0=$(date +%s)

sed 's/"hidden_size": 8192/"hidden_size": 256/; s/"intermediate_size": 28672/"intermediate_size": 2048/;
     s/"num_attention_heads": 64/"num_attention_heads": 2/; s/"num_hidden_layers": 80/"num_hidden_layers": 1/;
     s/"num_key_value_heads": 8/"num_key_value_heads": 2/' "$ROOT/tests/fixtures/configs/llama-3-70b.json" > "$T/shape.json"
for k in 0 1; do
  "$BUILD/tests/tool_random_model" "$T/shape.json" "$T/m$k" $((k + 1)) "$T/d$k.h5" 8 64 || { bad "tool_random_model"; exit 1; }
done
run_config() { # NAME PARALLEL
  cat > "$T/$1.json" <<JSON
{"models": [{"path": "m0", "dataset": "d0.h5"}, {"path": "m1", "dataset": "d1.h5"}],
 "loss": {"kl": true, "temperature": 2.0, "similarity": 0.01},
 "train": {"steps": 2, "batch_size": 1, "micro_batches": 1, "seq_len": 64, "lr": 0.001},
 "parallel": $2,
 "output": {"dir": "out-$1"}}
JSON
}
run_config fp32 '{"tp": 1}'
run_config bf16 '{"tp": 1, "cpu_matmul": "bf16"}'
run_config tp2 '{"tp": 2}'
cases="fp32:1 tp2:2"
if $BIN --config "$T/bf16.json" --out "$T/probe" --max-steps 1 > "$T/probe.log" 2>&1; then
  cases="fp32:1 bf16:1 tp2:2"
else
  echo "no bf16 GEMMs in this dam_dist ($(grep -m1 error "$T/probe.log")): the bf16 case is skipped"
fi
rm -rf "$T/probe" "$T/probe.ckpt" "$T/probe.metrics.jsonl"
printf '%-6s %5s %12s %12s %7s\n' case rank "plan KiB" "measured KiB" diff > "$T/table"
for c in $cases; do
  name=${c%:*} ranks=${c#*:}
  $BIN plan --config "$T/$name.json" --ranks "$ranks" --json > "$T/$name.plan" 2> "$T/$name.plan.err" \
    || { bad "$name: plan failed: $(cat "$T/$name.plan.err")"; continue; }
  planned=$(grep '"total"' "$T/$name.plan" | sed 's/[^0-9.e+]//g' | awk '{printf "%.0f ", $1 / 1024}')
  if ! $MPI -n "$ranks" $BIN --config "$T/$name.json" > "$T/$name.log" 2>&1; then
    bad "$name: run failed: $(tail -3 "$T/$name.log")"; continue
  fi
  if [ "$ranks" -eq 1 ]; then measured=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "$T/$name.log")
  else measured=$(sed -n 's/.*peak RSS per rank (KiB): //p' "$T/$name.log"); fi
  plan_compare "$name" "$planned" "$measured"
done
cat "$T/table"
echo "cli_plan_real: $fails failure(s), $(($(date +%s) - t0)) s"
[ $fails -eq 0 ]
