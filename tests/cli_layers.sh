#!/usr/bin/env bash
# The layers of src/ (README "Source layout"): a file may include headers of its own layer and of
# the layers below it, never above, so that the tree says what a change may touch:
#   util < formats, tokenizer < engine, mpi < store < commands < src/main.c
# engine and mpi/ are one level (the step calls the transport, the transport moves device buffers).
# Every violation is one NOT OK line naming the file, the header and both layers.
set -u
cd "$(dirname "$0")/.."
rank() {
  case "$1" in
    src/util) echo 0 ;; src/formats | src/tokenizer) echo 1 ;; src/engine | mpi) echo 2 ;;
    src/store) echo 3 ;; src/commands) echo 4 ;; src) echo 5 ;; *) echo -1 ;;
  esac
}
declare -A where
for h in src/*/*.h src/*.h mpi/*.h; do [ -f "$h" ] && where[$(basename "$h")]=$(dirname "$h"); done
fail=0 checked=0
for f in src/*.c src/*/*.c src/*/*.h mpi/*.c mpi/*.h; do
  [ -f "$f" ] || continue
  me=$(dirname "$f"); rme=$(rank "$me")
  [ "$rme" -ge 0 ] || { echo "NOT OK  $f: in no layer ($me)"; fail=$((fail + 1)); continue; }
  for inc in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f"); do
    d=${where[$(basename "$inc")]:-}
    [ -n "$d" ] || continue # a header outside src/ and mpi/ (cuda/, a library)
    checked=$((checked + 1))
    if [ "$(rank "$d")" -gt "$rme" ]; then
      echo "NOT OK  $f ($me) includes $inc from $d, a layer above it"
      fail=$((fail + 1))
    fi
  done
done
[ "$checked" -gt 100 ] || { echo "NOT OK  only $checked includes checked: the layout has changed"; fail=$((fail + 1)); }
[ "$fail" -eq 0 ] && echo "OK      $checked includes of src/ and mpi/, none from a layer above"
echo "cli_layers: $fail failure(s)"
[ "$fail" -eq 0 ]
