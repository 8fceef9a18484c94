# tests/doc_options.awk — used by tests/cli_help.sh (awk -v CMDS="..." -f tests/doc_options.awk FILES).
# The options README.md and docs/*.md give dam_dist commands, one "FILE:LINE|CMD|OPTION" a
# line (CMD "" for the merge itself, `dam_dist --config FILE`). Options count where the text ties
# them to a command: after `dam_dist [CMD]` in a code span or code block (up to &&, ;, # or a pipe
# outside [...]; a code block's continuation lines starting with [ or -- included); in a paragraph
# that starts with a command's name in backquotes and ":" or " (" ("`prepare` (docs/data.md):
# `--tokenizer DIR`, ..."; "`precompute`:" after a ". " switches to that command); and in the first column of a table
# right after such a paragraph or after a paragraph or code block naming `dam_dist [CMD]`.
function is_cmd(w) { return (" " CMDS " ") ~ (" " w " ") }
function emit(line, cmd, opt) { printf "%s:%d|%s|%s\n", FILENAME, line, cmd, opt }
# every `dam_dist [CMD] ...` in text: emits its options, returns the last command seen ("-" if none)
function invocations(text, line,    w, n, i, j, k, cmd, depth, last, tok, t) {
    last = "-"
    n = split(text, w, /[ \t]+/)
    for (i = 1; i <= n; i++) {
        if (w[i] !~ /(^|\/)dam_dist$/) continue
        j = i + 1; cmd = ""
        if (j <= n && is_cmd(w[j])) { cmd = w[j]; j++ }
        else if (j <= n && (w[j] ~ /^[A-Z]+$/ || w[j] ~ /^\.\.\.?$/)) continue  # dam_dist COMMAND ...
        last = cmd; depth = 0
        for (k = j; k <= n; k++) {
            tok = w[k]
            if (tok == "&&" || tok == ";" || tok ~ /^#/ || tok ~ /(^|\/)dam_dist$/) break
            if (tok == "|" && depth == 0) break
            t = tok; depth += gsub(/\[/, "", t); t = tok; depth -= gsub(/\]/, "", t)
            if (match(tok, /--[a-z][a-z0-9-]*/)) emit(line, cmd, substr(tok, RSTART, RLENGTH))
        }
    }
    return last
}
# a paragraph (lines joined) ends: its code spans in order
function paragraph(    s, pre, span, ctx, last, r, p, opt) {
    if (para == "") return
    s = para; ctx = "-"; last = "-"
    while (match(s, /`[^`]+`/)) {
        pre = substr(s, 1, RSTART - 1); span = substr(s, RSTART + 1, RLENGTH - 2)
        s = substr(s, RSTART + RLENGTH)
        p = ((pre == "" && !started) || pre ~ /\. $/) && s ~ /^(:| \()/
        started = 1
        if (p && (is_cmd(span) || span == "toy --tasks")) { ctx = span; sub(/ .*/, "", ctx); continue }
        if (span ~ /dam_dist/) { r = invocations(span, para_line); if (r != "-") last = r; continue }
        if (ctx != "-" && match(span, /^--[a-z][a-z0-9-]*/)) emit(para_line, ctx, substr(span, 1, RLENGTH))
    }
    prev_ctx = ctx != "-" ? ctx : last
    para = ""; started = 0
}
BEGIN { if (CMDS == "") CMDS = "toy prepare tokenize precompute inspect plan merge eval evolve finetune" }
FNR == 1 { paragraph(); fence = 0; code_cmd = "-"; prev_ctx = "-"; in_table = 0 }
/^```/ { paragraph(); fence = !fence; prev_ctx = "-"; next }
fence || /^    / {
    paragraph()
    if ($0 ~ /^[ \t]*(\[|--)/ && code_cmd != "-") {  # a usage's continuation line
        line = $0
        while (match(line, /--[a-z][a-z0-9-]*/)) { if (code_cmd != "-") emit(FNR, code_cmd == "merge-main" ? "" : code_cmd, substr(line, RSTART, RLENGTH)); line = substr(line, RSTART + RLENGTH) }
    } else {
        r = invocations($0, FNR); code_cmd = r == "" ? "merge-main" : r
    }
    prev_ctx = code_cmd == "merge-main" ? "" : code_cmd
    next
}
/^\|/ {
    if (!in_table) { paragraph(); table_ctx = prev_ctx; in_table = 1 }
    cell = $0; sub(/^\|/, "", cell); sub(/[^\\]\|.*/, "", cell)
    if (table_ctx != "-")
        while (match(cell, /`--[a-z][a-z0-9-]*/)) { emit(FNR, table_ctx, substr(cell, RSTART + 1, RLENGTH - 1)); cell = substr(cell, RSTART + RLENGTH) }
    next
}
/^[ \t]*$/ { paragraph(); in_table = 0; code_cmd = "-"; next }
{
    in_table = 0; code_cmd = "-"
    if (/^#/) { paragraph(); prev_ctx = "-"; next }
    if (para == "") para_line = FNR
    para = para == "" ? $0 : para " " $0
}
END { paragraph() }
