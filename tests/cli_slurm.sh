#!/usr/bin/env bash
# dam_dist under a real one-node Slurm on localhost (slurm/local.sh, its own directory and ports):
#  a. srun -n 2 --mpi=pmix, pp=2: SIGUSR1 to srun (srun forwards it to the ranks) stops the run at a
#     step boundary with exit status 75, a checkpoint named by `latest` and a "resume with:" line;
#     --resume under srun then ends with the coefficients of an uninterrupted 1-process run (1e-5).
#  b. sbatch of the batch script operators use (trap USR1 in the batch shell, forward it to the
#     backgrounded srun, wait again): with --signal=B:USR1@T the signal Slurm sends near the time
#     limit stops the job (75, checkpoint, the batch script's echo of srun's status); resubmitted,
#     --resume auto picks the checkpoint up and `scancel --batch --signal=USR1` stops it again.
# Every wait is bounded; the local Slurm (own directory and ports) is stopped on exit. Not skipped
# when Slurm is missing: slurm/local.sh installs it (root), and a Slurm that cannot start fails.
#  c. jobs/merge_toy.sh under sbatch, interrupted by scontrol requeue and by the B: signal, requeued,
#     resumed, and equal to an uninterrupted run (below).
# About 100 s (the B: signal comes 10 to 40 s into the job).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DAM_BIN:-./dam_dist}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
BUILD=${BUILD:-build}
CMP="$BUILD/tests/tool_compare_coefs"
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
. "$ROOT/tests/slurm_test_env.sh"
slurm_test_env dam_cli_slurm 6840
t_start=$(date +%s)

# wait_bounded PID SECONDS: wait for a child of this shell; SIGKILL it after SECONDS (status 124)
wait_bounded() {
  local n=$(($2 * 10))
  while kill -0 "$1" 2>/dev/null && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
  if kill -0 "$1" 2>/dev/null; then kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; return 124; fi
  wait "$1"
}
# wait_for FILE REGEX SECONDS [PID]: until FILE has a line matching REGEX (fails early if PID ends)
wait_for() {
  local n=$(($3 * 10))
  while [ $n -gt 0 ]; do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null && { grep -q -- "$2" "$1" 2>/dev/null; return; }
    sleep 0.1; n=$((n - 1))
  done
  return 1
}
# job_gone JOB SECONDS: until the job has left the queue
job_gone() {
  local n=$(($2 * 5))
  while [ $n -gt 0 ]; do
    [ -z "$(timeout 10 squeue -h -j "$1" -o %A 2>/dev/null)" ] && return 0
    sleep 0.2; n=$((n - 1))
  done
  return 1
}
latest_ok() { # DIR: `latest` names an existing step_*.h5
  [ -f "$1/latest" ] && grep -qx 'step_[0-9]\{8\}\.h5' "$1/latest" && [ -f "$1/$(cat "$1/latest")" ]
}

# --- the local Slurm
if ! out=$(timeout 600 bash "$SL" start 2>&1); then
  echo "NOT OK  the local Slurm could not be installed or started (slurm/local.sh start):"
  echo "$out" | tail -8 | sed 's/^/        /'
  exit 1
fi
eval "$(bash "$SL" env)"
ok "local Slurm up in $(($(date +%s) - t_start)) s: $(timeout 10 sinfo -h -N -o '%N %t %c CPUs' | head -1)"

# --- the toy: pp=2 for srun; a long variant for the batch jobs (stopped long before its end)
$BIN toy --out "$T/toy" --size small --models 2 --seed 5 >/dev/null || { bad "toy"; exit 1; }
sed "s/\"seed\": 1}/\"seed\": 1}, \"parallel\": {\"dp\": 1, \"pp\": 2, \"tp\": 1}/" "$T/toy/config.json" > "$T/toy/pp2.json"
sed 's/"steps": [0-9]*/"steps": 5000/' "$T/toy/pp2.json" > "$T/toy/long.json"
grep -q '"pp": 2' "$T/toy/pp2.json" && grep -q '"steps": 5000' "$T/toy/long.json" || { bad "toy config variants"; exit 1; }
STEPS=40
$BIN --config "$T/toy/config.json" --out "$T/ref" --max-steps $STEPS > "$T/ref.log" 2>&1 \
  || bad "1-process reference run: $(tail -2 "$T/ref.log")"

# --- a. srun, SIGUSR1 to srun, resume under srun
SRUN=(srun -n 2 --mpi=pmix)
"${SRUN[@]}" "$BIN" --config "$T/toy/pp2.json" --out "$T/a" --max-steps $STEPS < /dev/null > "$T/a1.log" 2>&1 &
sp=$!
if wait_for "$T/a1.log" '^step    2/' 60 $sp; then
  kill -USR1 $sp                                 # srun forwards SIGUSR1 to every task
  wait_bounded $sp 60; rc=$?
  ckstep=$(sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p' "$T/a.ckpt/latest" 2>/dev/null)
  if [ $rc -eq 75 ] && grep -q "stopped by" "$T/a1.log" && grep -q "resume with:" "$T/a1.log" \
     && latest_ok "$T/a.ckpt" && [ "${ckstep:-0}" -ge 2 ] && [ "$ckstep" -lt $STEPS ]; then
    ok "srun -n 2 --mpi=pmix, kill -USR1 <srun>: exit 75 at step $ckstep/$STEPS, latest=$(cat "$T/a.ckpt/latest"), '$(grep -o 'resume with:.*' "$T/a1.log" | head -1)'"
    "${SRUN[@]}" "$BIN" --config "$T/toy/pp2.json" --out "$T/a" --max-steps $STEPS --resume < /dev/null > "$T/a2.log" 2>&1 &
    wait_bounded $! 90; rc=$?
    if [ $rc -eq 0 ] && grep -q "resumed from" "$T/a2.log" \
       && "$CMP" "$T/a/dam_coefficients.safetensors" "$T/ref/dam_coefficients.safetensors" 1e-5 > /dev/null; then
      ok "srun --resume: coefficients equal the uninterrupted 1-process run ($("$CMP" "$T/a/dam_coefficients.safetensors" "$T/ref/dam_coefficients.safetensors" 1e-5 | sed 's/.*, max/max/'))"
    else
      bad "srun --resume: rc=$rc $(grep -m1 'resumed from' "$T/a2.log") $(tail -2 "$T/a2.log")"
    fi
  else
    bad "srun + SIGUSR1: rc=$rc (want 75), latest=$(cat "$T/a.ckpt/latest" 2>/dev/null), log: $(grep -v '^step' "$T/a1.log" | tail -4)"
  fi
else
  kill -KILL $sp 2>/dev/null; wait $sp 2>/dev/null
  bad "srun run did not reach step 2: $(tail -4 "$T/a1.log")"
fi

# --- b. sbatch: the operators' batch script
cat > "$T/job.sh" <<'EOF'
#!/bin/bash
#SBATCH --job-name=dam
#SBATCH --ntasks=2
# usage: sbatch [--signal=B:USR1@300] job.sh DAM_DIST CONFIG OUT [dam_dist args]
# Slurm's B: signal (and scancel --batch) reaches only this shell; it forwards SIGUSR1 to srun, which
# forwards it to every rank: they checkpoint at the next step boundary and exit 75 ("resume me").
# SIGTERM (scancel, the time limit) reaches the ranks from Slurm directly: do not forward it; srun
# given SIGTERM kills its tasks at once, without a checkpoint.
bin=$1 config=$2 out=$3; shift 3
srun_pid= stop=0
on_usr1() {
  stop=1
  echo "batch: SIGUSR1 after ${SECONDS}s, forwarding to srun ${srun_pid:-(not started)}"
  [ -n "$srun_pid" ] && kill -USR1 "$srun_pid" 2>/dev/null
}
trap on_usr1 USR1
trap 'echo "batch: SIGTERM after ${SECONDS}s (the ranks get it from Slurm)"' TERM
[ "$stop" = 1 ] && { echo "batch: stopped before start"; exit 75; }
srun --mpi=pmix "$bin" --config "$config" --out "$out" --resume auto "$@" &
srun_pid=$!
# wait returns early (>128) whenever a trapped signal arrives: wait again until srun has ended
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"; rc=$?
echo "batch: srun exit status $rc"
exit $rc
EOF
chmod +x "$T/job.sh"

# b1. --signal=B:USR1@20 with --time=1: slurmctld checks time limits every 30 s and sends the
# signal at the first check within T+30 s of the end (measured; sbatch(1): "up to 60 seconds
# earlier"), i.e. 10 to 40 s after the start here: during training (the run needs minutes), after
# startup, and well before the time limit.
t0=$(date +%s)
j=$(timeout 20 sbatch --parsable --time=1 --signal=B:USR1@20 -o "$T/b1.out" "$T/job.sh" "$BIN" "$T/toy/long.json" "$T/b")
if [ -z "$j" ]; then
  bad "sbatch refused the job"
elif ! job_gone "$j" 90; then
  bad "sbatch --signal=B:USR1@20: job $j still there after 90 s: $(tail -3 "$T/b1.out")"; timeout 10 scancel "$j"
else
  steps_before=$(sed -n '/^batch: SIGUSR1/q; /^step /p' "$T/b1.out" | wc -l)
  if grep -q "^batch: srun exit status 75$" "$T/b1.out" && grep -q "stopped by" "$T/b1.out" \
     && grep -q "resume with:" "$T/b1.out" && [ "$steps_before" -ge 1 ] && latest_ok "$T/b.ckpt"; then
    ok "sbatch --time=1 --signal=B:USR1@20: $(grep -o 'SIGUSR1 after [0-9][0-9]*s' "$T/b1.out" | head -1), forwarded by the batch shell, srun exit status 75 after step $(sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p' "$T/b.ckpt/latest"), job gone $(($(date +%s) - t0)) s after sbatch"
  else
    bad "sbatch --signal=B:USR1@20: steps before the signal=$steps_before, latest=$(cat "$T/b.ckpt/latest" 2>/dev/null), output: $(grep -v '^step' "$T/b1.out" | tail -6)"
  fi
fi

# b2. the same script again: --resume auto continues from that checkpoint; scancel --batch
# --signal=USR1 (only the batch shell, as with B:) stops it through the same trap
k1=$(sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p' "$T/b.ckpt/latest" 2>/dev/null)
j=$(timeout 20 sbatch --parsable --time=2 -o "$T/b2.out" "$T/job.sh" "$BIN" "$T/toy/long.json" "$T/b")
if [ -n "$j" ] && wait_for "$T/b2.out" "^step *$(( ${k1:-0} + 2 ))/" 60; then
  timeout 10 scancel --batch --signal=USR1 "$j"
  if job_gone "$j" 60; then
    k2=$(sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p' "$T/b.ckpt/latest" 2>/dev/null)
    if grep -q "resumed from .*step ${k1:-x}/" "$T/b2.out" && grep -q "^batch: srun exit status 75$" "$T/b2.out" \
       && grep -q "^batch: SIGUSR1" "$T/b2.out" && [ "${k2:-0}" -gt "${k1:-0}" ]; then
      ok "resubmitted with --resume auto: resumed at step $k1; scancel --batch --signal=USR1: srun exit status 75, checkpoint at step $k2"
    else
      bad "resume auto + scancel --batch: k1=$k1 k2=$k2 $(grep -v '^step' "$T/b2.out" | tail -6)"
    fi
  else
    bad "scancel --batch --signal=USR1: job $j still there after 60 s"; timeout 10 scancel "$j"
  fi
else
  bad "resubmitted job did not reach step $(( ${k1:-0} + 2 )): $(tail -4 "$T/b2.out" 2>/dev/null)"; [ -n "$j" ] && timeout 10 scancel "$j"
fi

# --- c. the operators' job script, jobs/merge_toy.sh, submitted as is: a real merge that
# `scontrol requeue` interrupts at step 4 (Slurm sends SIGTERM: the ranks checkpoint, exit 75, the script
# leaves the requeue to Slurm), and one that Slurm's B:USR1 (here scancel --batch --signal=USR1)
# interrupts (the script passes SIGUSR1 on, dam_dist checkpoints and exits 75, the script requeues
# its own job). Each requeued job resumes with --resume auto and must end with the coefficients of
# an uninterrupted run of the same script outside Slurm (mpirun -n 2, same layout: bit for bit).
# Slurm holds a requeued job for about 2 minutes (EligibleTime = requeue + 121 s, measured);
# `scontrol update StartTime=now`, 2 s after the requeue, lets it start at once.
JOB="$ROOT/jobs/merge_toy.sh"
CSTEPS=16
export DAM_DIST="$BIN" EXTRA_ARGS="--max-steps $CSTEPS"
WORK="$T/c-ref" LAUNCHER=mpirun RANKS=2 timeout 120 bash "$JOB" > "$T/c-ref.log" 2>&1 \
  || bad "jobs/merge_toy.sh outside Slurm (mpirun -n 2): $(tail -3 "$T/c-ref.log")"
# job_state JOB: COMPLETED, PENDING, ... (MinJobAge=300 keeps finished jobs listed)
job_state() { timeout 10 scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
# requeue_case NAME HOW: submit, interrupt at step 4 by HOW, let the requeued job start, check it
requeue_case() {
  local name=$1 how=$2 j st n t1
  t1=$(date +%s)
  mkdir -p "$T/$name"
  j=$(cd "$ROOT" && WORK="$T/$name" timeout 20 sbatch --parsable -o "$T/$name/job.out" "$JOB")
  [ -n "$j" ] || { bad "$name: sbatch jobs/merge_toy.sh refused"; return; }
  if ! wait_for "$T/$name/job.out" '^step    6/' 60; then
    bad "$name: job $j did not reach step 4: $(tail -4 "$T/$name/job.out" 2>/dev/null)"; timeout 10 scancel "$j"; return
  fi
  if [ "$how" = requeue ]; then timeout 10 scontrol requeue "$j"; else timeout 10 scancel --batch --signal=USR1 "$j"; fi
  n=300
  while [ $n -gt 0 ]; do st=$(job_state "$j"); [ "$st" = PENDING ] && break; sleep 0.2; n=$((n - 1)); done
  if [ "$st" != PENDING ]; then
    bad "$name: job $j not requeued (state ${st:-gone}): $(grep -v '^step' "$T/$name/job.out" | tail -6)"; timeout 10 scancel "$j"; return
  fi
  # not at once: slurmd refuses a credential issued in the same second as the old one's revocation
  # ("Killing non-startable batch JobId: Job credential revoked", seen once in 3 tries with no wait)
  sleep 2
  timeout 10 scontrol update JobId="$j" StartTime=now
  n=600
  while [ $n -gt 0 ]; do st=$(job_state "$j"); case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|"") break ;; esac; sleep 0.2; n=$((n - 1)); done
  local restarts ck
  restarts=$(timeout 10 scontrol show job "$j" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
  ck=$(grep -o 'resumed from .*step_0*[0-9]*\.h5 at step [0-9]*' "$T/$name/job.out" | sed 's/.*at step //')
  if [ "$st" = COMPLETED ] && [ "${restarts:-0}" = 1 ] && [ -n "$ck" ] && [ "$ck" -ge 4 ] && [ "$ck" -lt $CSTEPS ] \
     && grep -q 'exited with exit code 75\|Exited with exit code 75' "$T/$name/job.out" \
     && grep -q '^job: .* finished' "$T/$name/job.out" \
     && "$CMP" "$T/$name/merged/dam_coefficients.safetensors" "$T/c-ref/merged/dam_coefficients.safetensors" 0 > /dev/null; then
    ok "sbatch jobs/merge_toy.sh, $3 at step 4: exit 75, requeued (Restarts=1), resumed at step $ck, COMPLETED, coefficients equal to the uninterrupted run (bit for bit), $(($(date +%s) - t1)) s"
  else
    bad "$name: state=$st restarts=$restarts resumed-at=${ck:-none} $("$CMP" "$T/$name/merged/dam_coefficients.safetensors" "$T/c-ref/merged/dam_coefficients.safetensors" 0 2>&1 | tail -1); $(grep -v '^step' "$T/$name/job.out" | tail -8)"
    timeout 10 scancel "$j"
  fi
}
requeue_case c1 requeue "scontrol requeue"
requeue_case c2 usr1 "scancel --batch --signal=USR1 (as --signal=B:USR1@T; the script requeues itself)"

echo "cli_slurm: $fails failure(s), $(($(date +%s) - t_start)) s"
[ $fails -eq 0 ]
