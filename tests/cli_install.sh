#!/usr/bin/env bash
# The build where operators build:
#  - `make install PREFIX=<temporary>` puts bin/dam_dist and share/dam_dist/{configs,jobs,docs}; the
#    installed binary answers --version with the commit of this tree; the installed toy job, run
#    from anywhere, finds its config beside it and the binary in ../../bin and merges;
#  - a copy of the sources (no .git: the commit reads "unknown") builds from scratch as a user
#    who is not root (nobody, through runuser or setpriv), and neither that build nor
#    `make -n` of a fresh build runs tools/install-deps.sh, apt or dpkg; `make deps` as that user,
#    with every package present, says nothing is missing and needs no root.
# About 30 s (the build from scratch).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_install.XXXXXX")
chmod 755 "$T"
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
t0=$(date +%s)
cd "$ROOT" || exit 1
# make as an operator runs it: nothing inherited from a `make test` around this script (MAKEFLAGS
# with its jobserver and command-line variables, BUILD=build-asan, sanitizer flags)
MK=(env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u OPT -u CFLAGS -u CFLAGS_EXTRA -u DAM_BIN make)

# --- make install
if "${MK[@]}" -s install PREFIX="$T/prefix" > "$T/install.log" 2>&1; then
  P="$T/prefix"
  missing=""
  for f in bin/dam_dist share/dam_dist/README.md share/dam_dist/configs/toy.json \
           share/dam_dist/configs/llama3-70b-3x.json share/dam_dist/jobs/merge_llama70b.sh \
           share/dam_dist/jobs/merge_toy.sh share/dam_dist/docs/config.md share/dam_dist/docs/operators.md; do
    [ -e "$P/$f" ] || missing="$missing $f"
  done
  [ -z "$missing" ] && ok "make install PREFIX=...: bin/dam_dist, share/dam_dist/{README.md,configs,jobs,docs}" \
    || bad "make install: missing$missing"
  want=$(./dam_dist --version 2>&1 | head -1)
  if (cd / && "$P/bin/dam_dist" --version) > "$T/version.txt" 2>&1 && [ "$(head -1 "$T/version.txt")" = "$want" ] \
     && grep -q '^MPI: ' "$T/version.txt" && grep -q '^HDF5: ' "$T/version.txt" && grep -q '^BLAS: ' "$T/version.txt" \
     && grep -q '^CUDA: ' "$T/version.txt"; then
    ok "installed dam_dist --version: $(head -1 "$T/version.txt"); $(grep -c . "$T/version.txt") lines (MPI, HDF5, BLAS, CUDA)"
  else
    bad "installed dam_dist --version: $(cat "$T/version.txt") (want first line '$want')"
  fi
  git -C "$ROOT" rev-parse --short=12 HEAD > /dev/null 2>&1 && {
    c=$(git -C "$ROOT" rev-parse --short=12 HEAD)
    grep -q "$c" "$T/version.txt" && ok "--version names this tree's commit $c" || bad "--version does not name commit $c: $(head -1 "$T/version.txt")"
  }
  mkdir -p "$T/elsewhere"
  if (cd "$T/elsewhere" && env -u DAM_DIST -u DAM_HOME -u CONFIG WORK="$T/elsewhere/w" LAUNCHER=none \
        EXTRA_ARGS="--max-steps 2" PATH=/usr/bin:/bin timeout 120 bash "$P/share/dam_dist/jobs/merge_toy.sh") > "$T/job.log" 2>&1 \
     && grep -q "$P/share/dam_dist/../../bin/dam_dist" "$T/job.log" && [ -f "$T/elsewhere/w/merged/dam_coefficients.safetensors" ]; then
    ok "installed jobs/merge_toy.sh run from another directory: finds configs/ beside it and bin/dam_dist, merges"
  else
    bad "installed jobs/merge_toy.sh: $(grep -v '^step' "$T/job.log" | tail -4)"
  fi
else
  bad "make install PREFIX=$T/prefix: $(tail -5 "$T/install.log")"
fi

# --- a build from scratch as a user who is not root, in a copy without .git
mkdir -p "$T/src"
if git -C "$ROOT" rev-parse --git-dir > /dev/null 2>&1; then
  git -C "$ROOT" ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2> /dev/null | tar -xf - -C "$T/src"
else
  tar --exclude=./build --exclude=./build-asan --exclude=./dam_dist -cf - . | tar -xf - -C "$T/src"
fi
as_user=()
if [ "$(id -u)" -eq 0 ]; then
  if command -v runuser > /dev/null && runuser -u nobody -- true 2> /dev/null; then as_user=(runuser -u nobody --)
  elif command -v setpriv > /dev/null && setpriv --reuid=nobody --regid=nogroup --init-groups true 2> /dev/null; then
    as_user=(setpriv --reuid=nobody --regid=nogroup --init-groups)
  fi
  if [ ${#as_user[@]} -gt 0 ]; then chown -R nobody "$T/src"; else echo "note: no way to run as nobody here; building as root"; fi
fi
who=$("${as_user[@]}" id -un 2>&1)
if "${as_user[@]}" "${MK[@]}" -C "$T/src" -n dam_dist > "$T/dry.log" 2>&1 && ! grep -E 'install-deps|apt-get|dpkg' "$T/dry.log" > /dev/null; then
  ok "make -n dam_dist (fresh tree, as $who): $(grep -c '^mpicc\|^cc\|^gcc' "$T/dry.log") compiler calls, no install-deps/apt/dpkg"
else
  bad "make -n dam_dist (as $who): $(grep -E 'install-deps|apt-get|dpkg|rror' "$T/dry.log" | head -3) $(tail -3 "$T/dry.log")"
fi
tb=$(date +%s)
if "${as_user[@]}" "${MK[@]}" -C "$T/src" -j2 dam_dist > "$T/build.log" 2>&1 && [ -x "$T/src/dam_dist" ] \
   && ! grep -E 'install-deps|apt-get|dpkg' "$T/build.log" > /dev/null; then
  owner=$(stat -c %U "$T/src/dam_dist")
  v=$("$T/src/dam_dist" --version 2>&1 | head -1)
  if [ "$owner" = "$who" ] && echo "$v" | grep -q '(commit unknown)'; then
    ok "make -j2 dam_dist from scratch as $who (binary owned by $owner) in $(($(date +%s) - tb)) s, no dpkg/apt; outside git: '$v'"
  else
    bad "build as $who: owner $owner, version '$v' (want commit unknown)"
  fi
else
  bad "make dam_dist as $who: $(grep -E 'rror|install-deps|apt|dpkg' "$T/build.log" | head -5)"
fi
if [ -x /usr/bin/dpkg-query ]; then
  out=$("${as_user[@]}" "${MK[@]}" -C "$T/src" -s deps 2>&1); rc=$?
  [ $rc -eq 0 ] && ok "make deps as $who with every package present: exit 0${out:+ ($out)}" \
    || bad "make deps as $who: rc=$rc $out"
fi

echo "cli_install: $fails failure(s), $(($(date +%s) - t0)) s"
[ $fails -eq 0 ]
