#!/bin/bash
# jobs/merge_toy.sh — the toy DAM merge (a base and 3 specialists of 2.4M parameters) on CPUs.
# Runs anywhere: `sbatch jobs/merge_toy.sh` on a cluster or on the local one-node Slurm
# (slurm/local.sh), or `bash jobs/merge_toy.sh` without Slurm (mpirun -n $RANKS, or one process).
# It makes the toy once, fills configs/toy.json's placeholders, and runs the merge with
# `--resume auto`, so that the same script starts a merge or continues one.
#
# Stops and requeues (jobs/dam_job.sh, shared by the three jobs): Slurm's SIGUSR1 (--signal=B:USR1@T)
# makes every rank checkpoint and dam_dist exit 75; the job then requeues itself and resumes with
# --resume auto. Outside Slurm, `kill -USR1 <pid of this script>` stops the run with a checkpoint;
# run the script again to resume.
#SBATCH --job-name=dam-toy
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:15:00
#SBATCH --output=dam-toy-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue

# ---------------------------------------------------------------- where dam_dist is
# DAM_HOME: the folder holding jobs/dam_job.sh and configs/ (the repository, or PREFIX/share/dam_dist).
# sbatch runs a copy of this file from its spool, so unless DAM_HOME is set it is the first of: this
# file's folder's parent (bash jobs/NAME.sh), the folder `make install` writes into installed_home,
# the parent of the script Slurm recorded for the job (scontrol show job: Command=), the submit dir.
installed_home=''                         # make install: PREFIX/share/dam_dist
if [ -z "${DAM_HOME:-}" ]; then
  submitted=$([ -n "${SLURM_JOB_ID:-}" ] && timeout 10 scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=//p')
  for d in "$(dirname "$0")/.." "$installed_home" "${submitted:+$(dirname "$submitted")/..}" "${SLURM_SUBMIT_DIR:-$PWD}"; do
    [ -n "$d" ] && [ -f "$d/jobs/dam_job.sh" ] && { DAM_HOME=$(cd "$d" && pwd); break; }
  done
  [ -n "${DAM_HOME:-}" ] || { echo "job: error: cannot find jobs/dam_job.sh beside this job, in ${installed_home:-an install} or in ${SLURM_SUBMIT_DIR:-$PWD}: set DAM_HOME to the repository or PREFIX/share/dam_dist"; exit 1; }
fi

# ---------------------------------------------------------------- what an operator adapts
# (each may also be given in the environment: `WORK=/scratch/me/toy sbatch jobs/merge_toy.sh`;
# DAM_DIST, LAUNCHER, MAX_REQUEUES and EXTRA_ARGS take the defaults of jobs/dam_job.sh unless set
# here or there)
: "${CONFIG:=$DAM_HOME/configs/toy.json}" # its /path/to/ placeholders are filled below
: "${WORK:=${SLURM_SUBMIT_DIR:-$PWD}/dam-toy}" # the toy, the filled config, the merged model, checkpoints
: "${OUT:=$WORK/merged}"                  # the merged model (checkpoints in $OUT.ckpt)
: "${TOY_ARGS:=--models 3 --size small --seed 1}" # what `dam_dist toy` makes (configs/toy.json names 3 models)
: "${RANKS:=2}"                           # ranks outside Slurm (under Slurm: the allocation's tasks)
: "${MPIRUN_ARGS:=}"                      # mpirun's own options (LAUNCHER=mpirun)

# ---------------------------------------------------------------- the toy and its config
[ -f "$DAM_HOME/jobs/dam_job.sh" ] || { echo "job: error: DAM_HOME=$DAM_HOME has no jobs/dam_job.sh"; exit 1; }
# shellcheck source=jobs/dam_job.sh
. "$DAM_HOME/jobs/dam_job.sh"
dam_job_find_binary
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

# ---------------------------------------------------------------- launch, stop, requeue (jobs/dam_job.sh)
dam_job_launch "$RUN_CONFIG" "${out_args[@]}"
