# slurm_test_env.sh — sourced by the tests that run under a one-node Slurm of their own
# (tests/cli_slurm.sh, tests/cli_slurm_install.sh): `slurm_test_env NAME BASE_PORT` makes the work
# folder T (/tmp/NAME.XXXXXX), picks two free ports from a random start at or above BASE_PORT (each
# test its own range, so that they, a developer's slurm/local.sh on 6817 or a second run do not
# collide), exports slurm/local.sh's DAM_SLURM_DIR and DAM_SLURM_PORT, sets SL (that script), stops
# the Slurm and removes T on exit (DAM_TEST_KEEP=1 keeps T: logs, job outputs, the Slurm's own
# logs), and defines ok / bad counting into `fails`. ROOT must be the repository.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

slurm_test_env() {
  T=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$T" # munged runs as the munge user
  local port=${DAM_SLURM_TEST_PORT:-} p
  if [ -z "$port" ]; then
    for _ in $(seq 1 50); do
      p=$(($2 + 2 * (RANDOM % 500)))
      port_busy $p || port_busy $((p + 1)) || { port=$p; break; }
    done
  fi
  export DAM_SLURM_DIR="$T/slurm" DAM_SLURM_PORT=${port:-$(($2 - 3))}
  SL="$ROOT/slurm/local.sh"
  trap 'timeout 60 bash "$SL" stop >/dev/null 2>&1; [ -n "${DAM_TEST_KEEP:-}" ] && echo "kept $T" || rm -rf "$T"' EXIT
  fails=0
}
ok() { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
