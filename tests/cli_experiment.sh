#!/usr/bin/env bash
# make experiment at its CI size (tools/experiment.sh, SIZE=ci): base -> specialists -> DAM, linear,
# task arithmetic, TIES, DARE-TIES and evolve -> eval. Checks what issue 12 claims, on what the run
# measured: DAM's mean KL to the sources below linear's and TIES's, every method's exact match
# reported beside each specialist's own, the specialists better on their own task than the base,
# the DAM-against-evolve sentence present, and the plots written as PNG files.
set -uo pipefail
export DAM_BIN=${DAM_BIN:-./dam_dist}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
fails=0
ok() { echo "OK      $*"; }
bad() { echo "NOT OK  $*"; fails=$((fails + 1)); }
if ! SIZE=ci bash tools/experiment.sh "$W/exp" >"$W/log" 2>&1; then
    tail -n 30 "$W/log"; echo "NOT OK  tools/experiment.sh failed"; exit 1
fi
E="$W/exp/eval.json"
kl() { jq -r --arg m "$W/exp/$1" '[.models[$m][] | .kl] | add / length' "$E"; }
acc() { jq -r --arg m "$W/exp/$1" --arg d "$2" '.models[$m][$d].exact_match' "$E"; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
dam=$(kl merged_dam)
for m in linear ties; do
    x=$(kl "merged_$m")
    if lt "$dam" "$x"; then ok "DAM's mean KL $dam < $m's $x"; else bad "DAM's mean KL $dam not below $m's $x"; fi
done
for task in add rev sort; do
    own=$(acc "$task" "$task") base=$(acc base "$task")
    if lt "$base" "$own"; then ok "specialist $task: $own on its task, base $base"; else bad "specialist $task ($own) not above the base ($base)"; fi
    for m in dam linear task_arithmetic ties dare_ties evolve; do
        a=$(acc "merged_$m" "$task")
        grep -q "^| $m |" "$W/exp/results.md" && [[ $a =~ ^[0-9.e-]+$ ]] || bad "$m: no exact match on $task in the table ($a)"
    done
done
grep -Eq "^DAM (reached|did NOT reach) evolve's best KL" "$W/exp/results.md" && grep -q "^On the held-out rows DAM's mean KL" "$W/exp/results.md" &&
    ok "the DAM-against-evolve sentences: $(grep -E "^(On the held-out|DAM (reached|did NOT))" "$W/exp/results.md" | tr '\n' ' ')" ||
    bad "no DAM-against-evolve sentence in results.md"
for p in dam_loss kl_vs_compute coefficients; do
    if [ "$(head -c 8 "$W/exp/$p.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then ok "$p.png is a PNG"
    else bad "$p.png missing or not a PNG"; fi
done
cat "$W/exp/results.md"
grep -E 'wall|done in' "$W/log" | tail -n 3
echo "cli_experiment: $fails failure(s)"
[ $fails -eq 0 ]
