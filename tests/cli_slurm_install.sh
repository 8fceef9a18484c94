#!/usr/bin/env bash
# The jobs as operators submit them, under a real one-node Slurm (slurm/local.sh, its own directory
# and ports): sbatch runs a copy of the script from its spool directory, so a job cannot find
# jobs/dam_job.sh and configs/ from its own path. With no DAM_HOME, DAM_DIST or CONFIG set and a
# PATH without dam_dist, each of these merges the toy (4 steps) and ends with "finished":
#  a. `make install PREFIX=<temporary>`, then, from another directory, `sbatch
#     PREFIX/share/dam_dist/jobs/merge_toy.sh` (the prefix that make install wrote into the job);
#  b. a copy of that installed job in the work directory, edited as operators do, submitted there;
#  c. the repository's jobs/merge_toy.sh submitted from another directory (the script Slurm records
#     for the job, scontrol show job's Command=).
# About 60 s (three toy jobs of 2 ranks; a make install that finds dam_dist built).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
. "$ROOT/tests/slurm_test_env.sh"
slurm_test_env dam_cli_slurm_install 7900
t_start=$(date +%s)

# make as an operator runs it: nothing inherited from a `make test` around this script
MK=(env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u OPT -u CFLAGS -u CFLAGS_EXTRA -u DAM_BIN make)
P="$T/prefix"
if ! (cd "$ROOT" && "${MK[@]}" -s install PREFIX="$P") > "$T/install.log" 2>&1; then
  bad "make install PREFIX=$P: $(tail -5 "$T/install.log")"; exit 1
fi

if ! out=$(timeout 600 bash "$SL" start 2>&1); then
  echo "NOT OK  the local Slurm could not be installed or started (slurm/local.sh start):"
  echo "$out" | tail -8 | sed 's/^/        /'
  exit 1
fi
eval "$(bash "$SL" env)"
ok "local Slurm up in $(($(date +%s) - t_start)) s"

# submit NAME SCRIPT: sbatch SCRIPT from $T/NAME with a bare environment (no DAM_* variable, no
# dam_dist on PATH; EXTRA_ARGS only shortens the merge), wait for the job, check its output
submit() {
  local name=$1 script=$2 t1 rc
  t1=$(date +%s)
  mkdir -p "$T/$name"
  (cd "$T/$name" && env -i PATH=/usr/bin:/bin HOME="$T/$name" SLURM_CONF="$SLURM_CONF" \
     OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 EXTRA_ARGS="--max-steps 4" \
     timeout 240 sbatch --wait --quiet -o "$T/$name/job.out" "$script") > "$T/$name/sbatch.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q '^job: .* finished' "$T/$name/job.out" \
     && [ -f "$T/$name/dam-toy/merged/dam_coefficients.safetensors" ] \
     && grep -q "^job: .* $3" "$T/$name/job.out"; then
    ok "$4: finished, merged into $name/dam-toy/merged, $(grep -o "$3" "$T/$name/job.out" | head -1), $(($(date +%s) - t1)) s"
  else
    bad "$4: sbatch rc=$rc: $(cat "$T/$name/sbatch.log") $(grep -v '^step' "$T/$name/job.out" 2>/dev/null | tail -5)"
  fi
}

# a. the installed job, submitted from another directory
submit a "$P/share/dam_dist/jobs/merge_toy.sh" "$P/share/dam_dist/../../bin/dam_dist" \
  "sbatch PREFIX/share/dam_dist/jobs/merge_toy.sh from another directory, no variable set"
# b. a copy of the installed job with its #SBATCH lines changed, submitted beside the copy
mkdir -p "$T/b"
sed 's/^#SBATCH --job-name=.*/#SBATCH --job-name=my-toy/' "$P/share/dam_dist/jobs/merge_toy.sh" > "$T/b/my_toy.sh"
submit b "$T/b/my_toy.sh" "$P/share/dam_dist/../../bin/dam_dist" \
  "an operator's copy of the installed job (edited #SBATCH lines), submitted from its own directory"
# c. the repository's job, submitted from another directory
submit c "$ROOT/jobs/merge_toy.sh" "$ROOT/dam_dist" \
  "sbatch <repository>/jobs/merge_toy.sh from another directory, no variable set"

# the block that finds DAM_HOME is the same in every job (it cannot live in jobs/dam_job.sh, which
# it finds), and make install wrote the prefix into each installed job
blk() { sed -n '/^# -* where dam_dist is$/,/^fi$/p' "$1"; }
same=1 recorded=1
for j in "$ROOT"/jobs/merge_*.sh; do
  [ -n "$(blk "$j")" ] && [ "$(blk "$j")" = "$(blk "$ROOT/jobs/merge_toy.sh")" ] || same=0
  grep -qx "installed_home='$P/share/dam_dist' *# make install: PREFIX/share/dam_dist" "$P/share/dam_dist/jobs/$(basename "$j")" || recorded=0
done
[ $same = 1 ] && ok "jobs/merge_*.sh: one DAM_HOME search, the same in each" || bad "jobs/merge_*.sh: their DAM_HOME searches differ"
[ $recorded = 1 ] && ok "make install wrote installed_home='PREFIX/share/dam_dist' into each installed job" \
  || bad "installed jobs: installed_home not written: $(grep -h '^installed_home=' "$P"/share/dam_dist/jobs/*.sh)"

echo "cli_slurm_install: $fails failure(s), $(($(date +%s) - t_start)) s"
[ $fails -eq 0 ]
