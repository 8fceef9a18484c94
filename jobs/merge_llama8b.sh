#!/bin/bash
# jobs/merge_llama8b.sh — DAM merge of three Llama-3.1-8B fine-tunes (configs/llama3.1-8b-3x.json)
# on one node of 8 GPUs: one rank per GPU, 8 data-parallel replicas (the config's parallel
# section). Fill the config's /path/to/ placeholders first, check it with
# `dam_dist plan --config CONFIG --ranks 8 --device cuda --gpu-mem 80`, then
# `sbatch jobs/merge_llama8b.sh`. The same script runs configs/mistral7b-ja-math.json:
# `CONFIG=configs/mistral7b-ja-math.json sbatch jobs/merge_llama8b.sh`.
# The config selects the CUDA backend ("device": "cuda"; dam_dist built with `make CUDA=1`), one GPU
# per rank. That backend is compiled in CI but has not yet run on a GPU (README "Status"); with
# "device": "cpu" the ranks compute on the CPUs of their node.
#
# Stops and requeues (jobs/dam_job.sh, shared by every script of jobs/):
#   - Slurm sends SIGUSR1 to this shell T s before the time limit (--signal=B:USR1@T; `dam_dist
#     plan` suggests T); the shell passes it to the launcher, every rank checkpoints at the next
#     step boundary and dam_dist exits 75 ("stopped after a checkpoint, resume me"); the script then
#     requeues its own job (scontrol requeue) and the requeued job resumes from the checkpoint.
#   - scancel, the time limit itself and `scontrol requeue` send SIGTERM: the ranks get it from
#     Slurm and checkpoint too (if that ends within KillWait); the script does not requeue then
#     (a scontrol requeue goes on by itself; after scancel, sbatch the script again to resume).
#   - exit status of the script: 0 finished (or requeued), 75 stopped with a checkpoint and not
#     requeued, anything else an error (the line before it says which).
#   - docs/operators.md has the rest: modules, reading progress, what each error means.
#
# The mpirun variant: LAUNCHER=mpirun (see jobs/merge_llama70b.sh).
#SBATCH --job-name=dam-llama8b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=08:00:00
#SBATCH --output=dam-llama8b-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
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
# (each may also be given in the environment: `CONFIG=/my/merge.json sbatch jobs/merge_llama8b.sh`)
: "${DAM_DIST:=}"                         # the binary; empty: $DAM_HOME/dam_dist, PREFIX/bin/dam_dist or PATH
: "${CONFIG:=$DAM_HOME/configs/llama3.1-8b-3x.json}" # with every /path/to/ replaced by yours
: "${OUT:=}"                              # the merged model; empty: the config's output.dir (checkpoints: checkpoint.dir)
: "${GPU_MEM_GIB:=80}"                    # memory per GPU, for the plan printed at the start
: "${TASKS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-8}}" # ranks per node (mpirun's --map-by)
: "${LAUNCHER:=auto}"                     # auto (srun under Slurm, else mpirun when RANKS > 1), srun, mpirun, none
: "${RANKS:=${SLURM_NTASKS:-8}}"          # ranks outside Slurm (under Slurm: the allocation's tasks)
: "${MAX_REQUEUES:=10}"                   # requeue at most this often (a job stopped at every start must end)
: "${MPIRUN_ARGS:=--map-by ppr:$TASKS_PER_NODE:node:PE=${SLURM_CPUS_PER_TASK:-1} --bind-to core -x OPENBLAS_NUM_THREADS}"
                                          # mpirun's own options (LAUNCHER=mpirun)
: "${EXTRA_ARGS:=}"                       # more dam_dist flags, e.g. "--eval-rows 64"
# modules or environments your site needs, e.g.:  module load openmpi hdf5 openblas cuda
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}} # BLAS threads per rank
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1} # srun does not inherit --cpus-per-task (Slurm >= 22.05)

# ---------------------------------------------------------------- checks before the launch
[ -f "$DAM_HOME/jobs/dam_job.sh" ] || { echo "job: error: DAM_HOME=$DAM_HOME has no jobs/dam_job.sh"; exit 1; }
# shellcheck source=jobs/dam_job.sh
. "$DAM_HOME/jobs/dam_job.sh"
dam_job_find_binary
# ---------------------------------------------------------------- plan, launch, stop, requeue (jobs/dam_job.sh)
dam_job_gpu_merge
