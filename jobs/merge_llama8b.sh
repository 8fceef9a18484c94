#!/bin/bash
# jobs/merge_llama8b.sh — DAM merge of three Llama-3.1-8B fine-tunes (configs/llama3.1-8b-3x.json)
# on one node of 8 GPUs: one rank per GPU, 8 data-parallel replicas (the config's parallel
# section). Fill the config's /path/to/ placeholders first, check it with
# `dam_dist plan --config CONFIG --ranks 8 --device cuda --gpu-mem 80`, then
# `sbatch jobs/merge_llama8b.sh`. The same script runs configs/mistral7b-ja-math.json:
# `CONFIG=configs/mistral7b-ja-math.json sbatch jobs/merge_llama8b.sh`, and three Qwen3-8B
# fine-tunes: `CONFIG=configs/qwen3-8b-3x.json sbatch jobs/merge_llama8b.sh`.
# The config selects the CUDA backend ("device": "cuda"; dam_dist built with `make CUDA=1`), one GPU
# per rank. That backend is compiled in CI but has not yet run on a GPU (README "Status"); with
# "device": "cpu" the ranks compute on the CPUs of their node.
#
# Stops and requeues: as in jobs/merge_llama70b.sh (the protocol is jobs/dam_job.sh's, described at
# its top): Slurm's SIGUSR1 makes every rank checkpoint, the job requeues itself and resumes; exit
# status 0 finished (or requeued), 75 stopped with a checkpoint, anything else an error.
# docs/operators.md has the rest: modules, reading progress, what each error means.
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
# CONFIG below; DAM_DIST, OUT, GPU_MEM_GIB, RANKS, TASKS_PER_NODE, LAUNCHER, MPIRUN_ARGS, MAX_REQUEUES
# and EXTRA_ARGS take the defaults of jobs/dam_job.sh (each explained there) unless set here, before
# it is sourced, or in the environment: `CONFIG=/my/merge.json GPU_MEM_GIB=141 sbatch jobs/merge_llama8b.sh`
: "${CONFIG:=$DAM_HOME/configs/llama3.1-8b-3x.json}" # with every /path/to/ replaced by yours
# modules or environments your site needs, e.g.:  module load openmpi hdf5 openblas cuda

# ---------------------------------------------------------------- plan, launch, stop, requeue (jobs/dam_job.sh)
[ -f "$DAM_HOME/jobs/dam_job.sh" ] || { echo "job: error: DAM_HOME=$DAM_HOME has no jobs/dam_job.sh"; exit 1; }
# shellcheck source=jobs/dam_job.sh
. "$DAM_HOME/jobs/dam_job.sh"
dam_job_gpu_merge
