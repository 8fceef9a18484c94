# plan_compare.sh — sourced by tests/cli_plan.sh and tests/cli_plan_real.sh:
# `plan_compare NAME "PLANNED..." "MEASURED..."` compares plan's KiB per rank with the measured peak
# RSS per rank, rank by rank: OK within 15 %, else NOT OK (ok / bad of the caller), and appends a
# row per rank to $T/table.
plan_compare() {
  local name=$1 planned=$2 p m diff r=0
  set -- $3
  for p in $planned; do
    m=${1:-0}
    [ $# -gt 0 ] && shift
    diff=$(awk -v p="$p" -v m="$m" 'BEGIN {printf "%+.1f%%", (m > 0 ? 100 * (p - m) / m : 999)}')
    printf '%-8s %5d %12d %12d %7s\n' "$name" "$r" "$p" "$m" "$diff" >> "$T/table"
    if awk -v p="$p" -v m="$m" 'BEGIN {exit !(m > 0 && p >= 0.85 * m && p <= 1.15 * m)}'; then
      ok "$name rank $r: plan $p KiB, measured $m KiB ($diff)"
    else
      bad "$name rank $r: plan $p KiB, measured $m KiB ($diff): outside 15 %"
    fi
    r=$((r + 1))
  done
}
