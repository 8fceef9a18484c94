#!/bin/bash
# jobs/dam_job.sh — what the three jobs share (sourced by jobs/merge_*.sh, not submitted itself):
# finding the binary, and the launch with its stop/requeue protocol:
#   - Slurm sends SIGUSR1 to the batch shell (--signal=B:USR1@T); the shell passes it to the launcher,
#     every rank checkpoints at the next step boundary and dam_dist exits 75 ("stopped after a
#     checkpoint, resume me"); the job then requeues itself (scontrol requeue) and the requeued job
#     resumes from the checkpoint (--resume auto).
#   - scancel, the time limit and `scontrol requeue` send SIGTERM: the ranks get it from Slurm and
#     checkpoint too (if that ends within KillWait); the script does not requeue then.
#   - exit status: 0 finished (or requeued), 75 stopped with a checkpoint and not requeued, anything
#     else an error (dam_dist's first "error:" line above it says which).
# The caller sets DAM_HOME, and RANKS, MPIRUN_ARGS and OUT (may be empty) before dam_job_launch
# (dam_job_gpu_merge sets the GPU jobs' defaults for them); the variables below take their defaults
# when this file is sourced, unless the job or the environment set them first.

say() { echo "job: $(date '+%F %T') $*"; }

# ---------------------------------------------------------------- defaults every job shares
# (a job sets any of these before sourcing this file; the environment too: `EXTRA_ARGS="--max-steps 20"
# sbatch jobs/merge_toy.sh`)
: "${DAM_DIST:=}"                         # the binary; empty: $DAM_HOME/dam_dist, PREFIX/bin/dam_dist or PATH
: "${LAUNCHER:=auto}"                     # auto (srun under Slurm, else mpirun when RANKS > 1), srun, mpirun, none
: "${MAX_REQUEUES:=10}"                   # requeue at most this often (a job stopped at every start must end)
: "${EXTRA_ARGS:=}"                       # more dam_dist flags, e.g. "--eval-rows 64" or "--max-steps 20"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}} # BLAS threads per rank
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1} # srun does not inherit --cpus-per-task (Slurm >= 22.05)

# DAM_DIST, else $DAM_HOME/dam_dist (a build tree), PREFIX/bin/dam_dist (an install), PATH
dam_job_find_binary() {
  if [ -z "$DAM_DIST" ]; then
    for b in "$DAM_HOME/dam_dist" "$DAM_HOME/../../bin/dam_dist" "$(command -v dam_dist)"; do
      [ -n "$b" ] && [ -x "$b" ] && { DAM_DIST=$b; break; }
    done
  fi
  [ -n "$DAM_DIST" ] && [ -x "$DAM_DIST" ] || { say "error: no dam_dist binary (set DAM_DIST)"; exit 1; }
}

# dam_job_launch CONFIG [dam_dist flags...]: run the merge under the launcher, pass SIGUSR1 on, and
# end the script with the stop/requeue protocol above (never returns)
dam_job_launch() {
  local RUN_CONFIG=$1
  shift
  local out_args=("$@")
  if [ "$LAUNCHER" = auto ]; then
    if [ -n "${SLURM_JOB_ID:-}" ]; then LAUNCHER=srun; elif [ "$RANKS" -gt 1 ]; then LAUNCHER=mpirun; else LAUNCHER=none; fi
  fi
  case "$LAUNCHER" in
    srun)   launch=(srun --mpi=pmix) ;;                        # srun forwards SIGUSR1 to every task
    mpirun) launch=(mpirun); [ -n "${SLURM_JOB_ID:-}" ] || launch+=(-n "$RANKS")  # under Slurm: the allocation
            # shellcheck disable=SC2206
            launch+=($MPIRUN_ARGS) ;;                          # mpirun forwards SIGUSR1 to every rank
    none)   launch=() ;;
    *)      say "error: LAUNCHER is '$LAUNCHER': expected auto, srun, mpirun or none"; exit 1 ;;
  esac
  pid='' stop=0 term=0
  # Slurm's B: signal reaches only this shell: pass SIGUSR1 on to the launcher, which passes it to
  # every rank. SIGTERM is not passed on: Slurm sends it to the ranks itself, and srun given SIGTERM
  # kills its tasks at once, without a checkpoint.
  on_usr1() { stop=1; say "SIGUSR1: asking dam_dist to checkpoint and stop"; [ -n "$pid" ] && kill -USR1 "$pid" 2>/dev/null; }
  on_term() { term=1; say "SIGTERM (scancel, the time limit or scontrol requeue): the ranks checkpoint if they can"; }
  trap on_usr1 USR1
  trap on_term TERM
  rc=75
  if [ "$stop" = 0 ]; then
    # shellcheck disable=SC2086
    "${launch[@]}" "$DAM_DIST" --config "$RUN_CONFIG" "${out_args[@]}" --resume auto $EXTRA_ARGS &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done  # a trapped signal ends `wait` early: wait again
    wait "$pid"; rc=$?
  fi
  case "$rc" in
    0) say "finished: the merged model is in ${OUT:-output.dir of the config}"; exit 0 ;;
    75)
      if [ "$term" = 1 ]; then
        say "stopped by Slurm with a checkpoint (exit 75); not requeued by this script: a 'scontrol requeue' resumes by itself, after scancel submit this script again"
      elif [ -n "${SLURM_JOB_ID:-}" ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then
        say "stopped with a checkpoint (exit 75): requeueing job $SLURM_JOB_ID, it resumes with --resume auto"
        scontrol requeue "$SLURM_JOB_ID" && exit 0
        say "scontrol requeue failed: submit this script again to resume"
      else
        say "stopped with a checkpoint (exit 75): run this script again to resume"
      fi
      exit 75 ;;
    *)
      # the reason is dam_dist's own error line; under mpirun Open MPI's note on the exit follows it
      if [ "$rc" -gt 128 ]; then
        say "error: dam_dist exited with status $rc: killed by SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128))) (out of memory, a crash or a signal: no dam_dist error line)"
      else
        say "error: dam_dist exited with status $rc: the reason is its first 'error:' line above ('dam_dist: error:', or 'dam_dist[rank R]: error:' under MPI; Open MPI's notes on the exit come after it)"
      fi
      exit "$rc" ;;
  esac
}

# dam_job_gpu_merge: all of the GPU jobs (merge_llama70b.sh, merge_llama8b.sh) after their CONFIG:
# their defaults (nodes of 8 GPUs, one rank per GPU), the binary, refuse a config with placeholders,
# print `dam_dist plan` for RANKS ranks of GPU_MEM_GIB (a layout that cannot work ends the job
# here), then launch (never returns)
dam_job_gpu_merge() {
  : "${OUT:=}"                            # the merged model; empty: the config's output.dir (checkpoints: checkpoint.dir)
  : "${GPU_MEM_GIB:=80}"                  # memory per GPU, for the plan printed at the start
  : "${TASKS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-8}}" # ranks per node (mpirun's --map-by)
  : "${RANKS:=${SLURM_NTASKS:-8}}"        # ranks outside Slurm (under Slurm: the allocation's tasks)
  : "${MPIRUN_ARGS:=--map-by ppr:$TASKS_PER_NODE:node:PE=${SLURM_CPUS_PER_TASK:-1} --bind-to core -x OPENBLAS_NUM_THREADS}"
                                          # mpirun's own options (LAUNCHER=mpirun)
  dam_job_find_binary
  [ -f "$CONFIG" ] || { say "error: no config $CONFIG (set CONFIG or DAM_HOME)"; exit 1; }
  if grep -q '/path/to/' "$CONFIG"; then
    say "error: $CONFIG still has /path/to/ placeholders: write your model, dataset and output paths into it"; exit 1
  fi
  say "job ${SLURM_JOB_ID:-(no Slurm)} on ${SLURM_JOB_NODELIST:-$(hostname)}, start $((${SLURM_RESTART_COUNT:-0} + 1)), $DAM_DIST"
  local rc=0
  "$DAM_DIST" plan --config "$CONFIG" --ranks "$RANKS" --device cuda --gpu-mem "$GPU_MEM_GIB" || rc=$?
  [ $rc -eq 3 ] && { say "error: dam_dist plan: the layout does not fit $RANKS GPUs of $GPU_MEM_GIB GiB (its table says which rank, and the smallest layout that would)"; exit 1; }
  [ $rc -ne 0 ] && { say "error: dam_dist plan refused the config for $RANKS ranks"; exit 1; }
  local out_args=()
  [ -n "$OUT" ] && out_args=(--out "$OUT")
  dam_job_launch "$CONFIG" "${out_args[@]}"
}
