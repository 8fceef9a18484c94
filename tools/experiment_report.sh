#!/usr/bin/env bash
# tools/experiment_report.sh OUT "METHODS" "TASKS" "method=tokens:wall ..." — the experiment's table
# (OUT/results.md) and plots (OUT/*.png) from what tools/experiment.sh left in OUT: eval.json,
# merged_dam.metrics.jsonl, merged_evolve/evolve_report.json, merged_dam/dam_coefficients.safetensors.
set -euo pipefail
OUT=$1 METHODS=$2 TASKS=$3 COMPUTE=$4
DAM=$(realpath "${DAM_BIN:-./dam_dist}")
EV="$OUT/eval.json"
declare -A TOK WALL
for kv in $COMPUTE; do m=${kv%%=*} v=${kv#*=}; TOK[$m]=${v%%:*} WALL[$m]=${v#*:}; done

metric() { # metric MODEL_DIR DATASET KEY -> the number, or "-" when null
    jq -r --arg m "$1" --arg d "$2" --arg k "$3" '.models[$m][$d][$k] // "-"' "$EV"
}
mean_kl() { jq -r --arg m "$1" '[.models[$m][] | .kl] | add / length' "$EV"; }
fmt() { [ "$1" = "-" ] && printf -- '-' || printf '%.3f' "$1"; }

row() { # row LABEL DIR TOKENS WALL
    printf '| %s |' "$1"
    for task in $TASKS; do printf ' %s |' "$(fmt "$(metric "$2" "$task" exact_match)")"; done
    printf ' %s | %s | %s |\n' "$(printf '%.4f' "$(mean_kl "$2")")" "$3" "$4"
}

{
    echo "# DAM against the baselines (dam_dist experiment)"
    echo
    echo "Exact match: the share of held-out rows whose answer tokens are all the model's argmax under"
    echo "teacher forcing (higher is better). Mean KL: the KL to each task's specialist on that task's"
    echo "held-out rows at the config's temperature, averaged over the tasks (lower is better)."
    echo "Compute: forwarded tokens (4 per token for a DAM step, 2 for an evolve evaluation, 0 for"
    echo "hand-set merges) and wall seconds on this machine."
    echo
    printf '| model |'; for task in $TASKS; do printf ' %s |' "$task"; done; echo ' mean KL | tokens forwarded | wall s |'
    printf '|---|'; for task in $TASKS; do printf -- '---:|'; done; printf -- '---:|---:|---:|\n'
    row base "$OUT/base" - -
    for task in $TASKS; do row "specialist $task" "$OUT/$task" - -; done
    for m in $METHODS; do row "$m" "$OUT/merged_$m" "${TOK[$m]}" "${WALL[$m]}"; done
    echo
} >"$OUT/results.md"

# DAM against evolve: the first DAM step whose KL summed over the tasks, averaged over its last 10
# steps (a step's KL is measured on that step's rows only, so one lucky batch must not count),
# reaches evolve's best fitness (the same sum over all the rows), and the compute each used.
# dam_curve.dat: step, forwarded tokens so far, loss, KL sum (mean of the last 10 steps), KL sum, KL per task
jq -r '"\(.step) - \(.loss) \(.kl | add) \(.kl | map(tostring) | join(" "))"' \
    "$OUT/merged_dam.metrics.jsonl" |
    awk -v ps="$(( ${TOK[dam]} / $(wc -l <"$OUT/merged_dam.metrics.jsonl") ))" '{ cum += ps; $2 = cum; w[NR % 10] = $4; n = NR < 10 ? NR : 10; m = 0
           for (i in w) m += w[i]; $3 = $3 " " m / n; print }' >"$OUT/dam_curve.dat"
jq -r '.per_generation[] | "\(.generation) \(2 * .tokens) \(.best_fitness) \(.evaluations)"' \
    "$OUT/merged_evolve/evolve_report.json" >"$OUT/evolve_curve.dat"
best=$(jq '.best_fitness' "$OUT/merged_evolve/evolve_report.json")
evo_tok=$(awk -v b="$best" '$3 <= b { print $2; exit }' "$OUT/evolve_curve.dat")
# a best that is still the starting point (the plain average) cost evolve its first evaluation only
initial=$(jq '.initial_fitness' "$OUT/merged_evolve/evolve_report.json")
[ "$initial" = "$best" ] && evo_tok=$(jq '2 * .tokens_per_evaluation' "$OUT/merged_evolve/evolve_report.json")
reach=$(awk -v b="$best" '$4 <= b { print $1, $2; exit }' "$OUT/dam_curve.dat")
final=$(tail -n 1 "$OUT/dam_curve.dat" | cut -d' ' -f4)
{
    dam_kl=$(mean_kl "$OUT/merged_dam") evo_kl=$(mean_kl "$OUT/merged_evolve")
    awk -v d="$dam_kl" -v e="$evo_kl" -v td="${TOK[dam]}" -v te="${TOK[evolve]}" 'BEGIN {
        printf "On the held-out rows DAM'"'"'s mean KL is %.4f and evolve'"'"'s %.4f (%s); DAM forwarded %d tokens, evolve %d (%.0fx %s).\n",
            d, e, d < e ? "DAM lower" : "DAM NOT lower", td, te, td < te ? te / td : td / te, td < te ? "less for DAM" : "MORE for DAM" }'
    echo
    echo "DAM against evolve on the training rows (KL summed over the tasks; DAM's averaged over its last 10 steps):"
    if [ -n "$reach" ]; then
        read -r step tok <<<"$reach"
        awk -v s="$step" -v t="$tok" -v e="$evo_tok" -v b="$best" -v i="$initial" 'BEGIN {
            printf "DAM reached evolve'"'"'s best KL (%.4f%s) at step %d after %d forwarded tokens; evolve needed %d: ", b, b == i ? ", still its start, the plain average" : "", s, t, e
            if (t < e) printf "DAM used %.1fx less compute.\n", e / t; else printf "DAM used %.1fx MORE compute.\n", t / e }'
    else
        echo "DAM did NOT reach evolve's best KL ($best) within its $(wc -l <"$OUT/dam_curve.dat") steps (it ended at $final)."
    fi
    echo
    echo "![DAM loss](dam_loss.png) ![KL against compute](kl_vs_compute.png) ![coefficients](coefficients.png)"
} >>"$OUT/results.md"

gnuplot <<EOF
set terminal pngcairo size 900,500 noenhanced
set output "$OUT/dam_loss.png"
set title "DAM: loss and KL to each source per step"
set xlabel "step"; set ylabel "loss (lower is better)"; set key top right
plot "$OUT/dam_curve.dat" using 1:3 with lines lw 2 title "total loss", \
     for [k=1:$(wc -w <<<"$TASKS")] "$OUT/dam_curve.dat" using 1:(column(5 + k)) with lines title sprintf("KL %s", word("$TASKS", k))
set output "$OUT/kl_vs_compute.png"
set title "KL summed over tasks against compute (training rows)"
set xlabel "forwarded tokens"; set ylabel "KL (lower is better)"; set logscale x
plot "$OUT/dam_curve.dat" using 2:5 with lines lw 1 lc rgb "#b0a0d0" title "DAM (step KL)", \
     "$OUT/dam_curve.dat" using 2:4 with lines lw 2 lc rgb "#6020a0" title "DAM (mean of 10 steps)", \
     "$OUT/evolve_curve.dat" using 2:3 with steps lw 2 title "evolve (best so far)"
EOF
# the heat map of DAM's coefficients (the sources named as the file records them, else by task)
DAM_BIN="$DAM" bash "$(dirname "$0")/plot_coefficients.sh" "$OUT/merged_dam/dam_coefficients.safetensors" \
    "$OUT/coefficients.png" "$TASKS" >/dev/null
cat "$OUT/results.md"
