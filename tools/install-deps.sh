#!/usr/bin/env bash
# Installs the Debian packages dam_dist builds and tests with. Idempotent; does nothing when all
# are present. Run as root on a fresh Debian/Ubuntu machine: `make deps` (and .ci/run) call it; a
# plain `make` never does. Elsewhere (a cluster), load modules instead and point the Makefile's
# variables at them (make info; docs/operators.md).
#   install-deps.sh           the build's and the tests' packages; no Slurm daemons
#   install-deps.sh --slurm   only slurm-wlm and munge (slurmctld, slurmd, munged) for the one-node
#                             Slurm of slurm/local.sh (tests/cli_slurm*.sh): `make deps-slurm`, which
#                             .ci/run calls. Not on a node that runs Slurm: Debian's packages would
#                             sit next to the site's Slurm and start their own daemons and munge key
#   --list                    print the packages (one a line) and install nothing
set -euo pipefail
slurm=0 list=0
for a in "$@"; do
  case "$a" in
    --slurm) slurm=1 ;;
    --list) list=1 ;;
    *) echo "install-deps: unknown option '$a' (--slurm, --list)" >&2; exit 2 ;;
  esac
done
if [ $slurm = 1 ]; then
  pkgs=(slurm-wlm munge)
else
  pkgs=(build-essential pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
        libcjson-dev libopenblas-dev libpcre2-dev libutf8proc-dev libcmocka-dev
        libdnnl-dev        # optional (oneDNN): bf16 GEMMs on AVX512-BF16 CPUs, parallel.cpu_matmul "bf16"
        gnuplot-nox jq)    # make experiment: its plots and its table from eval's JSON
fi
if [ $list = 1 ]; then printf '%s\n' "${pkgs[@]}"; exit 0; fi
if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: not a Debian system (no dpkg-query): install MPI, parallel HDF5, cJSON, a CBLAS," \
       "PCRE2, utf8proc and cmocka yourself and set the Makefile's variables (make info; docs/operators.md)" >&2
  exit 1
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]} (run make deps as root, or install them yourself)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
