#!/bin/bash
# jobs/merge_toy.sh — the toy DAM merge (a base and 3 specialists of 2.4M parameters) on CPUs.
# Runs anywhere: `sbatch jobs/merge_toy.sh` on a cluster or on the local one-node Slurm
# (slurm/local.sh), or `bash jobs/merge_toy.sh` without Slurm (mpirun -n $RANKS, or one process).
# It makes the toy once, fills configs/toy.json's placeholders, and runs the merge with
# `--resume auto`, so that the same script starts a merge or continues one.
#
# Stops and requeues (the same in jobs/merge_llama70b.sh and jobs/merge_llama8b.sh):
#   - Slurm sends SIGUSR1 to this shell $SIGNAL_LEAD s before the time limit (--signal=B:USR1@T);
#     the shell passes it to the launcher, every rank checkpoints at the next step boundary and
#     dam_dist exits 75 ("stopped after a checkpoint, resume me"); the script then requeues its own
#     job (scontrol requeue) and the requeued job resumes from the checkpoint.
#   - scancel, the time limit itself and `scontrol requeue` send SIGTERM: the ranks get it from
#     Slurm and checkpoint too (if that ends within KillWait); the script does not requeue then
#     (a scontrol requeue goes on by itself; after scancel, sbatch the script again to resume).
#   - exit status of the script: 0 finished (or requeued), 75 stopped with a checkpoint and not
#     requeued, anything else an error (the line before it says which).
#   - outside Slurm: `kill -USR1 <pid of this script>` stops the run with a checkpoint; run the
#     script again to resume.
#SBATCH --job-name=dam-toy
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:15:00
#SBATCH --output=dam-toy-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue

# ---------------------------------------------------------------- what an operator adapts
# (each may also be given in the environment: `WORK=/scratch/me/toy sbatch jobs/merge_toy.sh`)
here=$(cd "$(dirname "$0")/.." 2>/dev/null && pwd)
[ -f "$here/configs/toy.json" ] || here=${SLURM_SUBMIT_DIR:-$PWD}   # sbatch runs a copy of this file
: "${DAM_HOME:=$here}"                    # the folder holding configs/ (the repository or PREFIX/share/dam_dist)
: "${DAM_DIST:=}"                         # the binary; empty: $DAM_HOME/dam_dist, PREFIX/bin/dam_dist or PATH
: "${CONFIG:=$DAM_HOME/configs/toy.json}" # its /path/to/ placeholders are filled below
: "${WORK:=${SLURM_SUBMIT_DIR:-$PWD}/dam-toy}" # the toy, the filled config, the merged model, checkpoints
: "${OUT:=$WORK/merged}"                  # the merged model (checkpoints in $OUT.ckpt)
: "${TOY_ARGS:=--models 3 --size small --seed 1}" # what `dam_dist toy` makes (configs/toy.json names 3 models)
: "${LAUNCHER:=auto}"                     # auto (srun under Slurm, else mpirun when RANKS > 1), srun, mpirun, none
: "${RANKS:=2}"                           # ranks outside Slurm (under Slurm: the allocation's tasks)
: "${MAX_REQUEUES:=10}"                   # requeue at most this often (a job stopped at every start must end)
: "${MPIRUN_ARGS:=}"                      # mpirun's own options (LAUNCHER=mpirun)
: "${EXTRA_ARGS:=}"                       # more dam_dist flags, e.g. "--eval-rows 16" or "--max-steps 20"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}} # BLAS threads per rank
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1} # srun does not inherit --cpus-per-task (Slurm >= 22.05)

# ---------------------------------------------------------------- the toy and its config
say() { echo "job: $(date '+%F %T') $*"; }
if [ -z "$DAM_DIST" ]; then
  for b in "$DAM_HOME/dam_dist" "$DAM_HOME/../../bin/dam_dist" "$(command -v dam_dist)"; do
    [ -n "$b" ] && [ -x "$b" ] && { DAM_DIST=$b; break; }
  done
fi
[ -n "$DAM_DIST" ] && [ -x "$DAM_DIST" ] || { say "error: no dam_dist binary (set DAM_DIST)"; exit 1; }
[ -f "$CONFIG" ] || { say "error: no config $CONFIG (set CONFIG or DAM_HOME)"; exit 1; }
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || { say "error: cannot create $WORK"; exit 1; }
say "job ${SLURM_JOB_ID:-(no Slurm)} on $(hostname), start $((${SLURM_RESTART_COUNT:-0} + 1)), $DAM_DIST"
if [ ! -f "$WORK/toy/dam_toy.json" ]; then
  # shellcheck disable=SC2086
  "$DAM_DIST" toy --out "$WORK/toy" $TOY_ARGS || { say "error: dam_dist toy failed"; exit 1; }
fi
sed "s#/path/to/toy-merged#$OUT#; s#/path/to/toy#$WORK/toy#g" "$CONFIG" > "$WORK/toy.json"
RUN_CONFIG=$WORK/toy.json
out_args=(--out "$OUT")

# ---------------------------------------------------------------- launch, stop, requeue
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
  *) say "error: dam_dist exited with status $rc (its last line says why)"; exit "$rc" ;;
esac
