#!/usr/bin/env bash
# Every file in configs/ passes `dam_dist plan` on the layout it is written for, with its /path/to/
# placeholders resolved to a scratch folder whose model directories hold only config.json copies
# from tests/fixtures/configs (the published configs of each family; plan reads no weights), and the
# toy's to a toy made by `dam_dist toy`. A configs/ file that this test does not know fails it, so a
# new config comes with its check. Also the jobs/ scripts: bash syntax, the #SBATCH lines operators
# rely on, one launch/stop/requeue block shared by all three, and a config with placeholders left
# is refused before anything starts.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DAM_BIN:-./dam_dist}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_configs.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
t0=$(date +%s)

# config name -> the fixture config.json of its family, and the layouts it must fit:
# "RANKS:DEVICE:LIMIT_GiB:DP:PP:TP" (LIMIT is --gpu-mem for cuda, --mem-per-rank for cpu)
declare -A family layouts
family[llama3-70b-3x]=llama-3-70b;       layouts[llama3-70b-3x]="8:cuda:80:1:1:8 16:cuda:80:1:2:8"
family[llama3.1-8b-3x]=llama-3.1-8b;     layouts[llama3.1-8b-3x]="8:cuda:80:8:1:1"
family[qwen3-8b-3x]=qwen3-8b;             layouts[qwen3-8b-3x]="8:cuda:80:8:1:1"
family[mistral7b-ja-math]=mistral-7b-v0.1; layouts[mistral7b-ja-math]="8:cuda:80:4:1:2"
family[mistral7b-ja-math-arcee]=mistral-7b-v0.1; layouts[mistral7b-ja-math-arcee]="8:cuda:80:1:8:1"
family[toy]=toy;                          layouts[toy]="1:cpu:2:1:1:1 2:cpu:1:1:2:1 4:cpu:1:1:4:1"

# a top-level key of plan's --json output (one tab of indent), and the layout's dp/pp/tp
json_top() { sed -n "s/^\t\"$2\":\t\\(.*[^,]\\),*\$/\\1/p" "$1"; }
json_layout() { tr -d '\n\t ' < "$1" | sed -n 's/.*"layout":{"dp":\([0-9]*\),"pp":\([0-9]*\),"tp":\([0-9]*\).*/\1:\2:\3/p'; }

n=0
for cfg in "$ROOT"/configs/*.json; do
  name=$(basename "$cfg" .json)
  n=$((n + 1))
  fam=${family[$name]:-}
  if [ -z "$fam" ]; then bad "configs/$name.json: unknown to tests/cli_configs.sh (add its family and layouts)"; continue; fi
  W="$T/$name"
  mkdir -p "$W"
  grep -q '/path/to/' "$cfg" || bad "configs/$name.json: no /path/to/ placeholders (paths the operator fills)"
  sed "s#/path/to/#$W/#g" "$cfg" > "$W/config.json"
  if [ "$fam" = toy ]; then
    $BIN toy --out "$W/toy" --models 3 --size small --seed 1 > "$W/toy.log" 2>&1 || { bad "toy: $(tail -1 "$W/toy.log")"; continue; }
  else
    fix="$ROOT/tests/fixtures/configs/$fam.json"
    [ -f "$fix" ] || { bad "$name: no fixture $fix"; continue; }
    for d in $(grep -o '"\(path\|base_model\)": *"[^"]*"' "$W/config.json" | sed 's/.*: *"\(.*\)"/\1/'); do
      mkdir -p "$d" && cp "$fix" "$d/config.json"
    done
  fi
  for l in ${layouts[$name]}; do
    IFS=: read -r ranks dev lim dp pp tp <<< "$l"
    if [ "$dev" = cuda ]; then limit=(--gpu-mem "$lim"); else limit=(--mem-per-rank "$lim"); fi
    if ! $BIN plan --config "$W/config.json" --ranks "$ranks" --device "$dev" "${limit[@]}" --json \
         > "$W/plan.json" 2> "$W/plan.err"; then
      bad "configs/$name.json, $ranks ranks ($dev): plan failed: $(cat "$W/plan.err")"
      continue
    fi
    got=$(json_layout "$W/plan.json") fits=$(json_top "$W/plan.json" fits)
    if [ "$got" = "$dp:$pp:$tp" ] && [ "$fits" = true ]; then
      ok "configs/$name.json: plan --ranks $ranks --device $dev ($lim GiB): dp:pp:tp $got, fits, $(json_top "$W/plan.json" suggestion)"
    else
      bad "configs/$name.json, $ranks ranks ($dev $lim GiB): layout $got (want $dp:$pp:$tp), fits=$fits"
    fi
  done
done
# The shipped configs as they are, placeholders and all, the way the README's step 5 says: plan takes
# the device from parallel.device and the sources' shape from model_config (configs/models/, the
# family's published config.json), so no --device and no models are needed; the same config without
# model_config names the placeholder in one line; a layout that does not fit exits 3 (jobs stop).
for cfg in "$ROOT"/configs/*.json; do
  name=$(basename "$cfg" .json)
  [ "$name" = toy ] && continue
  out=$(cd "$ROOT" && $BIN plan --config "configs/$name.json" --ranks 8 --gpu-mem 80 2>&1); rc=$?
  if [ $rc -eq 0 ] && echo "$out" | grep -q '^fits: every rank' && echo "$out" | grep -q "^note: planned with configs/models/"; then
    ok "plan --config configs/$name.json --ranks 8 --gpu-mem 80 (as shipped): fits, $(echo "$out" | grep -m1 '^layout')"
  else
    bad "plan --config configs/$name.json --ranks 8 --gpu-mem 80 (as shipped): rc=$rc $(echo "$out" | tail -2)"
  fi
done
grep -v '"model_config"' "$ROOT/configs/llama3-70b-3x.json" > "$T/no-model-config.json"
out=$($BIN plan --config "$T/no-model-config.json" --ranks 8 --gpu-mem 80 2>&1); rc=$?
if [ $rc -eq 1 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -q "is a placeholder: .*--model-config FILE"; then
  ok "placeholders without model_config: $out"
else
  bad "placeholders without model_config: rc=$rc $out"
fi
out=$($BIN plan --config "$T/no-model-config.json" --ranks 8 --gpu-mem 80 --model-config "$ROOT/configs/models/llama-3-70b.json" 2>&1) \
  && ok "the same with --model-config configs/models/llama-3-70b.json: fits" || bad "--model-config: $out"
$BIN plan --config "$ROOT/configs/llama3-70b-3x.json" --ranks 8 --gpu-mem 40 > "$T/nofit.out" 2>&1; rc=$?
if [ $rc -eq 3 ] && grep -q '^fits: NO' "$T/nofit.out"; then
  ok "a layout that does not fit (8 x 40 GiB): exit 3, $(grep '^fits' "$T/nofit.out")"
else
  bad "8 x 40 GiB: rc=$rc (want 3) $(tail -2 "$T/nofit.out")"
fi
out=$($BIN plan --config "$ROOT/configs/llama3-70b-3x.json" --ranks 8 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "device cuda (parallel.device of .*) needs --gpu-mem" \
  && ok "no --gpu-mem for the config's cuda: $out" || bad "no --gpu-mem: rc=$rc $out"
[ "$n" -ge 4 ] && ok "$n configs checked" || bad "only $n configs in configs/ (want the 70B, 8B, Mistral and toy ones)"

# --- jobs/
for j in "$ROOT"/jobs/merge_*.sh; do
  b=jobs/$(basename "$j")
  bash -n "$j" || { bad "$b: bash syntax"; continue; }
  miss=""
  for want in '--signal=B:USR1@' '--requeue' '--output=' '--time=' '--open-mode=append'; do
    grep -q "^#SBATCH $want" "$j" || miss="$miss $want"
  done
  [ -z "$miss" ] && ok "$b: syntax, #SBATCH --signal=B:USR1@T --requeue --output --time --open-mode" || bad "$b: missing$miss"
done
bash -n "$ROOT/jobs/dam_job.sh" && grep -q 'scontrol requeue "$SLURM_JOB_ID"' "$ROOT/jobs/dam_job.sh" \
  && grep -q -- '--resume auto' "$ROOT/jobs/dam_job.sh" && grep -q 'kill -USR1 "$pid"' "$ROOT/jobs/dam_job.sh" \
  && ok "jobs/dam_job.sh: syntax, --resume auto, SIGUSR1 passed on, self-requeue" || bad "jobs/dam_job.sh: protocol incomplete"
# the launch/stop/requeue protocol lives once, in jobs/dam_job.sh, which every job sources
for j in merge_toy merge_llama70b merge_llama8b; do
  if grep -q '^\. "$DAM_HOME/jobs/dam_job.sh"$' "$ROOT/jobs/$j.sh" && grep -qE '^dam_job_(launch |gpu_merge$)' "$ROOT/jobs/$j.sh" \
     && ! grep -v '^#' "$ROOT/jobs/$j.sh" | grep -q 'kill -USR1'; then ok "jobs/$j.sh: launches through jobs/dam_job.sh"
  else bad "jobs/$j.sh: does not launch through jobs/dam_job.sh (or keeps its own signal handling)"; fi
done
for j in merge_llama70b merge_llama8b; do
  out=$(DAM_DIST="$BIN" bash "$ROOT/jobs/$j.sh" 2>&1); rc=$?
  if [ $rc -eq 1 ] && echo "$out" | grep -q 'still has /path/to/ placeholders'; then
    ok "jobs/$j.sh with the unfilled config: exit 1, '$(echo "$out" | grep -o 'error:.*' | head -1)'"
  else
    bad "jobs/$j.sh with the unfilled config: rc=$rc: $out"
  fi
done
# a failed run: the job points to dam_dist's error line, not to its last line (Open MPI's note under mpirun)
( DAM_HOME=$ROOT DAM_DIST=$BIN LAUNCHER=mpirun RANKS=2 MAX_REQUEUES=0 MPIRUN_ARGS="" EXTRA_ARGS="" OUT=""
  # shellcheck source=/dev/null
  . "$ROOT/jobs/dam_job.sh"; dam_job_launch "$T/no_such_config.json" ) > "$T/fail.log" 2>&1; rc=$?
if [ $rc -ne 0 ] && grep -q "^dam_dist\(\[rank 0\]\)\?: error: .*no_such_config.json" "$T/fail.log" \
   && grep -q "job: .*error: dam_dist exited with status $rc: the reason is its first 'error:' line above" "$T/fail.log" \
   && ! grep -q "last line says why" "$T/fail.log"; then
  ok "a failed job under mpirun points to dam_dist's error line: '$(grep -o 'error: dam_dist exited.*' "$T/fail.log")'"
else
  bad "a failed job under mpirun (rc $rc): $(tail -3 "$T/fail.log")"
fi
if command -v shellcheck > /dev/null; then
  if shellcheck -x -S warning "$ROOT"/jobs/*.sh "$ROOT"/slurm/local.sh > "$T/sc" 2>&1; then ok "shellcheck -S warning jobs/*.sh slurm/local.sh"
  else bad "shellcheck: $(head -20 "$T/sc")"; fi
fi

echo "cli_configs: $fails failure(s), $(($(date +%s) - t0)) s"
[ $fails -eq 0 ]
