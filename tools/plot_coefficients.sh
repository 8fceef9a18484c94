#!/usr/bin/env bash
# tools/plot_coefficients.sh COEFFICIENTS PNG ["NAME1 NAME2 ..."] — the heat map of a DAM run's
# learned coefficients (the experiment's docs/experiment/coefficients.png): one row per merged tensor
# in the model's order (embeddings, then each layer's norms and projections, the final norm, lm_head),
# one column per source, each cell the tensor's mean coefficient for that source (`dam_dist inspect
# --coefficients`), its value written in it. The colour is centred on 1/N, the plain average: red
# above it (the merge leans on that source for the tensor), blue below. The sources are named as the
# file records them (dam_dist writes their names); the optional third argument names them for older
# files, which record none.
# Environment: DAM_BIN (./dam_dist). Needs gnuplot.
set -euo pipefail
COEF=${1:?usage: tools/plot_coefficients.sh COEFFICIENTS PNG [NAMES]} PNG=${2:?usage: tools/plot_coefficients.sh COEFFICIENTS PNG [NAMES]}
NAMES=${3:-}
DAM=$(realpath "${DAM_BIN:-./dam_dist}")
W=$(mktemp -d "${TMPDIR:-/tmp}/dam_plot.XXXXXX")
trap 'rm -rf "$W"' EXIT

"$DAM" inspect --coefficients "$COEF" >"$W/inspect.txt"
read -r -a names <<<"$(sed -n 's/^# layer kind //p' "$W/inspect.txt")"
n_src=${#names[@]}
if [ -n "$NAMES" ] && [ "${names[0]}" = source0 ]; then
    read -r -a given <<<"$NAMES"
    [ "${#given[@]}" -eq "$n_src" ] || { echo "plot_coefficients: $COEF has $n_src sources, '$NAMES' names ${#given[@]}" >&2; exit 1; }
    names=("${given[@]}")
fi

# rows in the model's order: key, label, then the sources' means
grep -v '^#' "$W/inspect.txt" | awk '
    BEGIN { n = split("input_layernorm q_proj k_proj v_proj o_proj post_attention_layernorm gate_proj up_proj down_proj", k, " ")
            for (i = 1; i <= n; i++) rank[k[i]] = i }
    {   if ($1 < 0) { key = ($2 == "embed_tokens" ? -1 : ($2 == "norm" ? 1e7 : 1e7 + 1)); label = $2 }
        else { key = $1 * 1000 + ($2 in rank ? rank[$2] : 100); label = "layer " $1 "  " $2 }
        printf "%d\t%s", key, label; for (i = 3; i <= NF; i++) printf "\t%s", $i; printf "\n" }' |
    sort -t"$(printf '\t')" -k1,1n >"$W/rows.tsv"
n_rows=$(wc -l <"$W/rows.tsv")
# x y value: one line per cell (x: source, y: row from the top)
awk -F'\t' '{ for (s = 3; s <= NF; s++) print s - 3, NR - 1, $s }' "$W/rows.tsv" >"$W/cells.dat"
ytics=$(awk -F'\t' '{ printf "%s\"%s\" %d", (NR > 1 ? ", " : ""), $2, NR - 1 }' "$W/rows.tsv")
xtics=$(for i in "${!names[@]}"; do printf '%s"%s" %d' "$([ "$i" -gt 0 ] && echo ', ')" "${names[$i]}" "$i"; done)
# lines between the layers (and around the embeddings and the output tensors)
seps=$(awk -F'\t' 'NR > 1 { l = ($1 < 0 ? -1 : int($1 / 1000)); if (l != prev) printf "%s ", NR - 1.5 } { prev = ($1 < 0 ? -1 : int($1 / 1000)) }' "$W/rows.tsv")
# the colour range: centred on 1/N, as wide as the farthest mean from it
read -r mid half <<<"$(awk -v n="$n_src" 'BEGIN { m = 1 / n; d = 0 } { if ($3 - m > d) d = $3 - m; if (m - $3 > d) d = m - $3 }
    END { if (d < 0.01) d = 0.01; printf "%.6f %.6f\n", m, d }' "$W/cells.dat")"
height=$((170 + 34 * n_rows))
width=$((380 + 150 * n_src))

gnuplot <<EOF
set terminal pngcairo size $width,$height noenhanced font "sans,12"
set output "$PNG"
set title "Mean learned coefficient per tensor and source\n(white: 1/$n_src, the plain average; red: leans on that source)" font "sans,13"
set lmargin 30; set rmargin 16; set tmargin 5; set bmargin 4
set xrange [-0.5:$n_src - 0.5]; set yrange [$n_rows - 0.5:-0.5]
set xtics ($xtics) scale 0 font "sans,12"
set ytics ($ytics) scale 0 font "sans,11"
set xlabel "source"
unset key
set palette defined (0 "#2166ac", 0.25 "#92c5de", 0.5 "#f7f7f7", 0.75 "#f4a582", 1 "#b2182b")
set cbrange [$mid - $half:$mid + $half]
set cbtics format "%.2f" font "sans,11"
set cblabel "mean coefficient" font "sans,12"
set colorbox user origin graph 1.04, 0 size character 2.5, graph 1
do for [y in "$seps"] { set arrow from -0.5, y+0 to $n_src - 0.5, y+0 nohead front lw 3 lc rgb "white" }
plot "$W/cells.dat" using 1:2:3 with image, \
     "" using 1:2:(sprintf("%.3f", \$3)):(abs(\$3 - $mid) > 0.6 * $half ? 0xffffff : 0x000000) with labels tc rgb variable font "sans,11"
EOF
echo "plot_coefficients: wrote $PNG ($n_rows tensors x $n_src sources)"
