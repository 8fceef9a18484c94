#!/usr/bin/env bash
# `make deps X` in one invocation (README: `make deps demo`, `make deps test`) builds X with every
# library that deps installed. Without installing anything: in a copy of the sources whose
# tools/install-deps.sh is a stand-in that "installs oneDNN" by creating its header under a
# temporary DNNL_INC (as apt would create /usr/include/oneapi/dnnl/dnnl.h):
#  - `make deps BUILD/src/util/util.o` compiles util.o with -DDAM_WITH_DNNL (the Makefile used to decide
#    DNNL when it was read, before deps ran, so the first build of a fresh machine lacked oneDNN and
#    the next make rebuilt everything), and `make -q` then finds it up to date;
#  - a failing install-deps stops `make deps X` before X; `make -n deps X` runs no install-deps;
#  - tools/install-deps.sh installs no Slurm daemons (slurmctld, slurmd, munge: harmful on a node
#    that runs Slurm) unless asked (--slurm, `make deps-slurm`, which .ci/run calls).
# A few seconds (one object compiled).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_deps.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
t0=$(date +%s)
MK=(env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u OPT -u CFLAGS -u CFLAGS_EXTRA -u DAM_BIN make)

mkdir -p "$T/src"
if git -C "$ROOT" rev-parse --git-dir > /dev/null 2>&1; then
  git -C "$ROOT" ls-files -z -co --exclude-standard | tar -C "$ROOT" --null --ignore-failed-read -T - -cf - 2> /dev/null | tar -xf - -C "$T/src"
else
  tar -C "$ROOT" --exclude=./build --exclude=./build-asan --exclude=./dam_dist -cf - . | tar -xf - -C "$T/src"
fi
[ -f "$T/src/Makefile" ] || { bad "copy of the sources"; exit 1; }
cp "$T/src/tools/install-deps.sh" "$T/install-deps.real.sh"
# the stand-in: "installs" oneDNN's header, counts its runs; FAKE_DEPS_FAIL=1 fails like a refused apt
cat > "$T/src/tools/install-deps.sh" <<EOF
#!/usr/bin/env bash
echo run >> "$T/deps.runs"
[ -n "\${FAKE_DEPS_FAIL:-}" ] && { echo "install-deps: missing packages: libdnnl-dev (stand-in)" >&2; exit 1; }
mkdir -p "$T/dnnl/oneapi/dnnl" && touch "$T/dnnl/oneapi/dnnl/dnnl.h"
EOF
M=("${MK[@]}" -C "$T/src" BUILD=b DNNL_INC="$T/dnnl")
runs() { cat "$T/deps.runs" 2> /dev/null | wc -l; }

# --- make -n deps X: prints, installs nothing
"${M[@]}" -n deps b/src/util/util.o > "$T/dry.log" 2>&1
if [ "$(runs)" = 0 ] && [ ! -e "$T/dnnl" ] && grep -q 'install-deps' "$T/dry.log"; then
  ok "make -n deps b/src/util/util.o: names install-deps, runs nothing"
else
  bad "make -n deps b/src/util/util.o ran install-deps $(runs) time(s): $(tail -3 "$T/dry.log")"
fi
rm -rf "$T/src/b" "$T/deps.runs"

# --- a failing install-deps stops the build
FAKE_DEPS_FAIL=1 "${M[@]}" deps b/src/util/util.o > "$T/fail.log" 2>&1; rc=$?
if [ $rc -ne 0 ] && [ ! -e "$T/src/b/src/util/util.o" ] && grep -q 'missing packages' "$T/fail.log"; then
  ok "make deps X with a failing install-deps: exit $rc, X not built, '$(grep -m1 'missing packages' "$T/fail.log")'"
else
  bad "make deps X with a failing install-deps: rc=$rc, util.o $([ -e "$T/src/b/src/util/util.o" ] && echo built || echo absent): $(tail -3 "$T/fail.log")"
fi
rm -rf "$T/src/b" "$T/deps.runs"

# --- make deps X: X sees what deps installed
"${M[@]}" deps b/src/util/util.o > "$T/deps.log" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q -- '-DDAM_WITH_DNNL.*src/util/util.c' "$T/deps.log" && [ -e "$T/dnnl/oneapi/dnnl/dnnl.h" ]; then
  ok "make deps b/src/util/util.o: compiled with -DDAM_WITH_DNNL -I\$DNNL_INC, installed by deps in the same make (install-deps ran $(runs) time(s))"
else
  bad "make deps b/src/util/util.o: rc=$rc, the compile line lacks what deps installed: $(grep 'util.c' "$T/deps.log" | head -1 | cut -c1-300) $(tail -2 "$T/deps.log")"
fi
[ "$(runs)" = 1 ] && ok "install-deps ran once" || bad "install-deps ran $(runs) times (want 1)"
if "${M[@]}" -q b/src/util/util.o > /dev/null 2>&1; then
  ok "the next make finds b/src/util/util.o up to date (no rebuild of everything)"
else
  bad "the next make would rebuild b/src/util/util.o: its flags changed after deps"
fi
"${M[@]}" info > "$T/info.log" 2>&1
grep -q '^  DNNL        = 1' "$T/info.log" && ok "make info: $(grep -o 'DNNL        = 1 ([^:]*: [a-z]*' "$T/info.log")" \
  || bad "make info: $(grep 'DNNL ' "$T/info.log")"

# --- the package lists: no Slurm daemons unless asked for
def=$(bash "$T/install-deps.real.sh" --list 2>&1); rc1=$?
sl=$(bash "$T/install-deps.real.sh" --slurm --list 2>&1); rc2=$?
if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && echo "$def" | grep -qx 'libdnnl-dev' && echo "$def" | grep -qx 'libcmocka-dev' \
   && ! echo "$def" | grep -qx 'slurm-wlm\|slurmctld\|slurmd\|munge' && echo "$sl" | grep -qx 'slurm-wlm' && echo "$sl" | grep -qx 'munge'; then
  ok "install-deps.sh --list: $(echo "$def" | wc -l) packages, no Slurm daemons; --slurm --list: $(echo "$sl" | tr '\n' ' ')"
else
  bad "install-deps.sh --list (rc $rc1): $(echo "$def" | tr '\n' ' '); --slurm --list (rc $rc2): $(echo "$sl" | tr '\n' ' ')"
fi
grep -q '^make deps deps-slurm$' "$ROOT/.ci/run" && grep -q '^deps-slurm:' "$ROOT/Makefile" \
  && ok ".ci/run installs the Slurm daemons for the tests (make deps deps-slurm)" || bad ".ci/run: no 'make deps deps-slurm'"

echo "cli_deps: $fails failure(s), $(($(date +%s) - t0)) s"
[ $fails -eq 0 ]
