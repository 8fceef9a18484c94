#!/usr/bin/env bash
# The command line, as an operator meets it:
#  - `dam_dist --help`, `help`, and `dam_dist CMD --help` / `-h` for every command: exit 0, the text on
#    stdout starting with "usage: dam_dist CMD"; `--version` / `version`: exit 0;
#  - every option a help text names is in the README too (so `--resume` and every flag are in both);
#  - the other way: every option README.md and docs/ give a dam_dist command is in its --help, and every
#    relative link of README.md and docs/ resolves;
#  - a bad command: exit 1, one line naming it and listing the commands;
#  - an unknown option, on every command: exit 1 and the same one line everywhere,
#      dam_dist: error: CMD: unknown option '--no-such-option' (dam_dist CMD --help lists the options)
#    (the merge itself: "error: unknown option '--no-such-option' (dam_dist --help lists the options)").
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DAM_BIN:-./dam_dist}
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
T=$(mktemp -d "${TMPDIR:-/tmp}/dam_cli_help.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok()  { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
CMDS="toy prepare tokenize precompute inspect plan merge eval evolve finetune"

# --- help
for c in "" $CMDS; do
  for h in --help -h; do
    timeout 30 $BIN $c $h > "$T/out" 2> "$T/err" < /dev/null; rc=$?
    want="usage: dam_dist${c:+ $c}"
    if [ $rc -eq 0 ] && head -1 "$T/out" | grep -q "^$want" && [ ! -s "$T/err" ]; then
      ok "dam_dist${c:+ $c} $h: exit 0, $(wc -l < "$T/out") lines on stdout"
    else
      bad "dam_dist${c:+ $c} $h: rc=$rc, first line '$(head -1 "$T/out")' (want '$want...'), stderr '$(head -2 "$T/err")'"
    fi
  done
  # every option the help names is documented in the README
  [ -s "$T/out" ] || continue
  miss=""
  for o in $(grep -o -- '--[a-z][a-z-]*' "$T/out" | sort -u); do
    grep -q -- "$o" "$ROOT/README.md" || miss="$miss $o"
  done
  [ -z "$miss" ] && ok "dam_dist${c:+ $c}: every option of its help is in README.md" \
    || bad "dam_dist${c:+ $c}: options in --help but not in README.md:$miss"
done
# --help after other options answers too (the merge's, with a config that does not exist)
timeout 30 $BIN --config /nonexistent.json --help > "$T/out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q -- '--resume auto' "$T/out" && ok "dam_dist --config F --help: exit 0, names --resume auto" \
  || bad "dam_dist --config F --help: rc=$rc $(head -2 "$T/out")"
for v in help version --version; do
  timeout 30 $BIN $v > "$T/out" 2>&1; rc=$?
  [ $rc -eq 0 ] && [ -s "$T/out" ] && ok "dam_dist $v: exit 0, '$(head -1 "$T/out")'" || bad "dam_dist $v: rc=$rc"
done

# --- a bad command
timeout 30 $BIN frobnicate > "$T/out" 2> "$T/err"; rc=$?
if [ $rc -eq 1 ] && [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q "unknown command 'frobnicate'" "$T/err" \
   && (for c in $CMDS; do grep -q "[ ,]$c," "$T/err" || exit 1; done); then
  ok "dam_dist frobnicate: exit 1, '$(cat "$T/err")'"
else
  bad "dam_dist frobnicate: rc=$rc, stderr: $(cat "$T/err")"
fi

# --- unknown options: one wording everywhere
for c in "" $CMDS; do
  timeout 30 $BIN $c --no-such-option > "$T/out" 2> "$T/err" < /dev/null; rc=$?
  if [ -n "$c" ]; then
    want="dam_dist: error: $c: unknown option '--no-such-option' (dam_dist $c --help lists the options)"
  else
    want="dam_dist: error: unknown option '--no-such-option' (dam_dist --help lists the options)"
  fi
  if [ $rc -eq 1 ] && [ "$(grep -c . "$T/err")" -eq 1 ] && [ "$(cat "$T/err")" = "$want" ]; then
    ok "dam_dist${c:+ $c} --no-such-option: exit 1, the shared one-line form"
  else
    bad "dam_dist${c:+ $c} --no-such-option: rc=$rc, stderr '$(head -3 "$T/err")' (want '$want'; notes/issue9-requests.md)"
  fi
done

# --- the documentation against the tool: every option that README.md and docs/ give a dam_dist
# command (tests/doc_options.awk finds them: after `dam_dist [CMD]` in code, in a paragraph that
# starts with "`CMD`:", in a table of a command's options; not mpirun's, sbatch's or make's) is in
# that command's --help (the merge's own: `dam_dist --config F --help`; `dam_dist --help` only for
# --help and --version)
DOCS=("$ROOT/README.md" "$ROOT"/docs/*.md "$ROOT"/docs/experiment/*.md)
$BIN --config /nonexistent.json --help > "$T/help_" 2>&1
$BIN --help > "$T/help_main" 2>&1
for c in $CMDS; do $BIN $c --help > "$T/help_$c" 2>&1; done
awk -v CMDS="$CMDS" -f "$ROOT/tests/doc_options.awk" "${DOCS[@]}" > "$T/doc_options"
n=0 missing=0
while IFS='|' read -r where cmd opt; do
  n=$((n + 1))
  h="$T/help_$cmd"; [ -z "$cmd" ] && { [ "$opt" = --help ] || [ "$opt" = --version ]; } && h="$T/help_main"
  grep -qE -- "(^|[^a-z-])$opt([^a-z-]|$)" "$h" \
    || { bad "${where#"$ROOT"/}: '$opt' given to 'dam_dist${cmd:+ $cmd}', which its --help does not name"; missing=$((missing + 1)); }
done < "$T/doc_options"
[ "$n" -gt 100 ] && [ $missing -eq 0 ] && ok "the $n options README.md and docs/ give dam_dist commands are each in that command's --help" \
  || { [ "$n" -gt 100 ] || bad "only $n options found in README.md and docs/ (the extraction broke?)"; }

# --- every relative link of README.md and docs/ resolves (a file or directory of the tree)
n=0 broken=0
for f in "${DOCS[@]}"; do
  while IFS=: read -r line target; do
    target=${target#](}; target=${target%)}; target=${target%%#*}
    case $target in http://*|https://*|mailto:*|"") continue ;; esac
    n=$((n + 1))
    [ -e "$(dirname "$f")/$target" ] || { bad "${f#"$ROOT"/}:$line: the link '$target' leads nowhere"; broken=$((broken + 1)); }
  done < <(grep -no '](\([^)]*\))' "$f")
done
[ "$n" -gt 10 ] && [ $broken -eq 0 ] && ok "the $n relative links of README.md and docs/ resolve" \
  || { [ "$n" -gt 10 ] || bad "only $n links found in README.md and docs/ (the extraction broke?)"; }
# and every .md file they name in the text (docs/x.md, DESIGN.md) whose folder is in the tree (not a
# command's output such as experiment/results.md): beside the naming file or from the root
n=0 broken=0
for f in "${DOCS[@]}"; do
  while IFS=: read -r line name; do
    dir=$(dirname "$name")
    [ "$dir" = . ] || [ -d "$ROOT/$dir" ] || [ -d "$(dirname "$f")/$dir" ] || continue
    n=$((n + 1))
    [ -e "$(dirname "$f")/$name" ] || [ -e "$ROOT/$name" ] \
      || { bad "${f#"$ROOT"/}:$line: names $name, which is not in the tree"; broken=$((broken + 1)); }
  done < <(grep -no '[A-Za-z0-9_./-]*\.md\b' "$f")
done
[ $broken -eq 0 ] && ok "the $n mentions of .md files in README.md and docs/ name files of the tree"

echo "cli_help: $fails failure(s)"
[ $fails -eq 0 ]
