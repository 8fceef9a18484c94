/* prepare.c — `dam_dist prepare` (text -> HDF5 token file) and `dam_dist tokenize` (stdin text ->
 * ids, or ids -> text with --decode). See docs/data.md.
 *
 * prepare reads the whole input, turns every record into one example text (a JSON field, a
 * template over JSON fields, or a block of plain text), checks all of it before writing anything
 * (so bad input never leaves an output file), tokenizes the selected examples and writes rows:
 *   --no-pack (default): one example per row, right-padded with pad id, mask 0 on padding;
 *   --pack: examples concatenated (each followed by EOS), cut into full rows, tail dropped. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "commands.h"
#include "comm.h"
#include "dataset.h"
#include "json_util.h"
#include "tokenizer.h"
#include "util.h"

/* ---------------------------------------------------------------- templates */

/* "{prompt}\n\n{response}": literal parts and field names, in order. */
typedef struct {
    int n_parts;
    char **text; /* literal text, or the field name */
    int *is_field;
} Template;

static void template_compile(Template *tp, const char *src) {
    memset(tp, 0, sizeof *tp);
    size_t n = strlen(src);
    TokBuf lit = {0};
    tokbuf_append(&lit, "", 0);
#define PUSH(STR, FIELD)                                                                                     \
    do {                                                                                                     \
        tp->text = dam_realloc(tp->text, (size_t)(tp->n_parts + 1) * sizeof *tp->text, "template");          \
        tp->is_field = dam_realloc(tp->is_field, (size_t)(tp->n_parts + 1) * sizeof(int), "template");       \
        tp->text[tp->n_parts] = dam_strdup(STR);                                                             \
        tp->is_field[tp->n_parts++] = (FIELD);                                                               \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < n && strchr("nt\\", src[i + 1])) { /* shell-friendly escapes */
            char e = src[++i];
            tokbuf_append(&lit, e == 'n' ? "\n" : e == 't' ? "\t" : "\\", 1);
        } else if ((c == '{' || c == '}') && i + 1 < n && src[i + 1] == c) {
            tokbuf_append(&lit, &c, 1);
            i++;
        } else if (c == '{') {
            const char *close = strchr(src + i + 1, '}');
            if (!close) dam_fail("--template: unterminated '{' at character %zu of \"%s\"", i, src);
            size_t len = (size_t)(close - (src + i + 1));
            if (len == 0) dam_fail("--template: empty field name {} in \"%s\"", src);
            if (lit.n) PUSH(lit.data, 0);
            lit.n = 0;
            lit.data[0] = 0;
            char *name = dam_asprintf("%.*s", (int)len, src + i + 1);
            PUSH(name, 1);
            free(name);
            i += len + 1;
        } else if (c == '}')
            dam_fail("--template: single '}' at character %zu of \"%s\" (write }} for a literal brace)", i,
                     src);
        else
            tokbuf_append(&lit, &c, 1);
    }
    if (lit.n) PUSH(lit.data, 0);
#undef PUSH
    free(lit.data);
}

static void template_free(Template *tp) {
    for (int i = 0; i < tp->n_parts; i++) free(tp->text[i]);
    free(tp->text);
    free(tp->is_field);
}

/* Append the value of one JSON field (strings as they are; numbers and booleans as JSON). */
static void append_field(TokBuf *out, const cJSON *obj, const char *name, const char *file, int line) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v || cJSON_IsNull(v)) dam_fail("%s:%d: missing field \"%s\"", file, line, name);
    if (cJSON_IsString(v))
        tokbuf_append(out, v->valuestring, strlen(v->valuestring));
    else if (cJSON_IsNumber(v) || cJSON_IsBool(v)) {
        char *s = cJSON_PrintUnformatted(v);
        tokbuf_append(out, s, strlen(s));
        free(s);
    } else
        dam_fail("%s:%d: field \"%s\" is not a string", file, line, name);
}

/* ---------------------------------------------------------------- options */

typedef enum { FORMAT_JSONL, FORMAT_TEXT_BLOCKS, FORMAT_TEXT_WHOLE } InputFormat;

typedef struct {
    const char *tokenizer, *input, *out;
    const char *field, *template_src;
    InputFormat format;
    int64_t seq_len;
    int pack;
    int skip_long;        /* 0: truncate over-long examples (default); 1: drop them */
    int bos, eos;         /* -1: the tokenizer's default; 0/1: forced */
    int64_t max_examples; /* -1: all */
    int has_seed;
    uint64_t seed;
    const char *text_hint; /* "" or, for a .txt input read as JSON lines by default, the --format to use */
} PrepareOptions;

static int64_t parse_int(const char *opt, const char *s, int64_t lo) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo)
        dam_fail("%s: expected an integer >= %lld, got \"%s\"", opt, (long long)lo, s);
    return v;
}

static void parse_options(PrepareOptions *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->bos = o->eos = -1;
    o->max_examples = -1;
    const char *format = NULL; /* jsonl unless given */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "--tokenizer") && v)
            o->tokenizer = v;
        else if (!strcmp(a, "--input") && v)
            o->input = v;
        else if (!strcmp(a, "--out") && v)
            o->out = v;
        else if (!strcmp(a, "--field") && v)
            o->field = v;
        else if (!strcmp(a, "--template") && v)
            o->template_src = v;
        else if (!strcmp(a, "--format") && v)
            format = v;
        else if (!strcmp(a, "--seq-len") && v)
            o->seq_len = parse_int(a, v, 1);
        else if (!strcmp(a, "--max-examples") && v)
            o->max_examples = parse_int(a, v, 1);
        else if (!strcmp(a, "--seed") && v) {
            o->seed = (uint64_t)parse_int(a, v, 0);
            o->has_seed = 1;
        } else {
            takes = 0;
            if (!strcmp(a, "--pack"))
                o->pack = 1;
            else if (!strcmp(a, "--no-pack"))
                o->pack = 0;
            else if (!strcmp(a, "--truncate"))
                o->skip_long = 0;
            else if (!strcmp(a, "--skip-long"))
                o->skip_long = 1;
            else if (!strcmp(a, "--bos"))
                o->bos = 1;
            else if (!strcmp(a, "--no-bos"))
                o->bos = 0;
            else if (!strcmp(a, "--eos"))
                o->eos = 1;
            else if (!strcmp(a, "--no-eos"))
                o->eos = 0;
            else
                cli_bad_option(
                    "prepare", a,
                    "--tokenizer --input --out --field --template --format --seq-len --max-examples --seed");
        }
        i += takes;
    }
    if (!o->tokenizer || !o->input || !o->out || o->seq_len <= 0)
        dam_fail("prepare: needs --tokenizer DIR --input FILE --out FILE.h5 --seq-len L");
    size_t in_len = strlen(o->input);
    o->text_hint =
        !format && in_len >= 4 && !strcasecmp(o->input + in_len - 4, ".txt")
            ? "; a .txt input is read as JSON lines unless --format says otherwise: for plain text pass "
              "--format text (blank lines separate documents) or --format text-whole"
            : "";
    if (!format) format = "jsonl";
    if (!strcmp(format, "jsonl"))
        o->format = FORMAT_JSONL;
    else if (!strcmp(format, "text"))
        o->format = FORMAT_TEXT_BLOCKS;
    else if (!strcmp(format, "text-whole"))
        o->format = FORMAT_TEXT_WHOLE;
    else
        dam_fail("prepare: --format must be jsonl, text or text-whole (got %s)", format);
    if (o->format == FORMAT_JSONL && !!o->field == !!o->template_src)
        dam_fail("prepare: JSON lines input needs exactly one of --field NAME or --template STRING%s",
                 o->text_hint);
    if (o->format != FORMAT_JSONL && (o->field || o->template_src))
        dam_fail("prepare: --field and --template apply to --format jsonl only");
}

/* ---------------------------------------------------------------- reading examples */

/* All example texts, concatenated, with where each starts and the input line it came from. */
typedef struct {
    TokBuf text;
    size_t *off, *len;
    int *line;
    int64_t n, cap;
} Examples;

static void examples_add(Examples *e, const char *s, size_t n, int line) {
    if (e->n == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 1024;
        e->off = dam_realloc(e->off, (size_t)e->cap * sizeof *e->off, "examples");
        e->len = dam_realloc(e->len, (size_t)e->cap * sizeof *e->len, "examples");
        e->line = dam_realloc(e->line, (size_t)e->cap * sizeof *e->line, "examples");
    }
    e->off[e->n] = e->text.n;
    e->len[e->n] = n;
    e->line[e->n++] = line;
    tokbuf_append(&e->text, s, n);
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r", s[i])) return 0;
    return 1;
}

static void check_utf8(const char *s, size_t n, const char *file, int line) {
    size_t ok = tok_utf8_valid_prefix(s, n);
    if (ok < n) dam_fail("%s:%d: invalid UTF-8 at byte %zu of the line", file, line, ok + 1);
}

static void read_jsonl(Examples *e, const char *data, size_t size, const PrepareOptions *o,
                       const Template *tp) {
    int line = 0;
    TokBuf text = {0};
    for (size_t pos = 0; pos < size;) {
        const char *nl = memchr(data + pos, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - (data + pos)) : size - pos;
        const char *s = data + pos;
        pos += len + 1;
        line++;
        if (is_blank(s, len)) continue;
        check_utf8(s, len, o->input, line);
        const char *end = NULL;
        cJSON *obj = cJSON_ParseWithLengthOpts(s, len, &end, 0);
        if (!obj || !cJSON_IsObject(obj) || !is_blank(end, len - (size_t)(end - s))) {
            cJSON_Delete(obj);
            dam_fail("%s:%d: malformed JSON line (expected one JSON object per line)%s", o->input, line,
                     o->text_hint);
        }
        text.n = 0;
        tokbuf_append(&text, "", 0);
        if (o->field)
            append_field(&text, obj, o->field, o->input, line);
        else
            for (int i = 0; i < tp->n_parts; i++) {
                if (tp->is_field[i])
                    append_field(&text, obj, tp->text[i], o->input, line);
                else
                    tokbuf_append(&text, tp->text[i], strlen(tp->text[i]));
            }
        cJSON_Delete(obj);
        /* \u escapes can spell invalid text (lone surrogates) */
        check_utf8(text.data, text.n, o->input, line);
        examples_add(e, text.data, text.n, line);
    }
    free(text.data);
}

/* Plain text: documents separated by one or more blank lines (or the whole file as one). */
static void read_text(Examples *e, const char *data, size_t size, const PrepareOptions *o) {
    int line = 0, start_line = 0;
    size_t doc_start = 0, doc_end = 0;
    int in_doc = 0;
    for (size_t pos = 0; pos <= size;) {
        const char *nl = pos < size ? memchr(data + pos, '\n', size - pos) : NULL;
        size_t len = nl ? (size_t)(nl - (data + pos)) : size - pos;
        line++;
        check_utf8(data + pos, len, o->input, line);
        int blank = is_blank(data + pos, len);
        if (o->format == FORMAT_TEXT_WHOLE) blank = 0;
        if (!blank && !in_doc) {
            in_doc = 1;
            doc_start = pos;
            start_line = line;
        }
        if (!blank) doc_end = pos + len;
        if ((blank || pos + len >= size) && in_doc) {
            examples_add(e, data + doc_start, doc_end - doc_start, start_line);
            in_doc = 0;
        }
        pos += len + 1;
    }
    if (o->format == FORMAT_TEXT_WHOLE && e->n == 1 && is_blank(e->text.data, e->text.n)) e->n = 0;
}

/* ---------------------------------------------------------------- building rows */

typedef struct {
    int32_t *ids;
    int8_t *mask;
    int64_t n_rows, cap_rows, L;
    int64_t n_tokens, n_truncated, n_skipped, n_tail_dropped;
} Rows;

static void rows_grow(Rows *r, int64_t need) {
    if (need <= r->cap_rows) return;
    int64_t cap = r->cap_rows ? 2 * r->cap_rows : 256;
    while (cap < need) cap *= 2;
    r->ids = dam_realloc(r->ids, (size_t)(cap * r->L) * sizeof *r->ids, "token rows");
    r->mask = dam_realloc(r->mask, (size_t)(cap * r->L), "attention mask");
    r->cap_rows = cap;
}

/* The order examples are taken in: file order, or shuffled by --seed; at most --max-examples. */
static int64_t *select_examples(int64_t n, const PrepareOptions *o, int64_t *n_sel) {
    int64_t *order = dam_malloc((size_t)n * sizeof *order, "example order");
    for (int64_t i = 0; i < n; i++) order[i] = i;
    if (o->has_seed) {
        dam_rng rng;
        dam_rng_seed(&rng, o->seed);
        for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)(dam_rng_u64(&rng) % (uint64_t)(i + 1));
            int64_t tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
    }
    *n_sel = o->max_examples >= 0 && o->max_examples < n ? o->max_examples : n;
    return order;
}

/* What goes around each example's tokens, and what fills a row after them. */
typedef struct {
    int32_t prefix[8], suffix[9], pad;
    int n_prefix, n_suffix;
} Framing;

/* The tokenizer's own prefix (BOS) and suffix (EOS), as --bos/--no-bos and --eos/--no-eos change
 * them; packing separates documents with EOS by default. */
static Framing framing_for(const Tokenizer *tok, const PrepareOptions *o) {
    Framing f = {
        .n_prefix = tok->n_prefix, .n_suffix = tok->n_suffix, .pad = tok->pad_id >= 0 ? tok->pad_id : 0};
    memcpy(f.prefix, tok->prefix, sizeof tok->prefix);
    memcpy(f.suffix, tok->suffix, sizeof tok->suffix);
    if (o->bos == 0) f.n_prefix = 0;
    if (o->bos == 1) {
        if (tok->bos_id < 0) dam_fail("%s: --bos given but the tokenizer defines no bos_token", tok->path);
        f.prefix[0] = tok->bos_id;
        f.n_prefix = 1;
    }
    int want_eos = o->eos >= 0 ? o->eos : o->pack;
    if (o->eos == 0) f.n_suffix = 0;
    if (want_eos && !(f.n_suffix > 0 && f.suffix[f.n_suffix - 1] == tok->eos_id)) {
        if (tok->eos_id < 0)
            dam_fail("%s: EOS needed but the tokenizer defines no eos_token (use --no-eos)", tok->path);
        if (o->eos == 1) f.n_suffix = 0;
        f.suffix[f.n_suffix++] = tok->eos_id;
    }
    return f;
}

/* The selected examples (order[0..n_sel)) tokenized and framed into rows of r->L tokens: packed
 * across documents with --pack, else one per row, over-long ones truncated or (--skip-long) dropped. */
static void build_rows(Rows *r, Tokenizer *t, const Examples *e, const int64_t *order, int64_t n_sel,
                       const Framing *fr, const PrepareOptions *o) {
    const int32_t *prefix = fr->prefix, *suffix = fr->suffix, pad = fr->pad;
    int n_prefix = fr->n_prefix, n_suffix = fr->n_suffix, pack = o->pack, skip_long = o->skip_long;
    const char *file = o->input;
    TokIds doc = {0};
    int64_t L = r->L, fill = 0; /* pack: tokens already in the current row */
    for (int64_t k = 0; k < n_sel; k++) {
        int64_t i = order[k];
        doc.n = 0;
        for (int j = 0; j < n_prefix; j++) tokids_push(&doc, prefix[j]);
        const char *err = tokenizer_encode(t, e->text.data + e->off[i], e->len[i], &doc);
        if (err) dam_fail("%s:%d: %s", file, e->line[i], err);
        for (int j = 0; j < n_suffix; j++) tokids_push(&doc, suffix[j]);
        if (pack) {
            for (size_t j = 0; j < doc.n; j++) {
                if (fill == 0) rows_grow(r, r->n_rows + 1);
                r->ids[r->n_rows * L + fill] = doc.ids[j];
                r->mask[r->n_rows * L + fill] = 1;
                if (++fill == L) {
                    r->n_rows++;
                    fill = 0;
                    r->n_tokens += L;
                }
            }
            continue;
        }
        if ((int64_t)doc.n > L) {
            if (skip_long) {
                r->n_skipped++;
                continue;
            }
            r->n_truncated++;
            doc.n = (size_t)L;
        }
        rows_grow(r, r->n_rows + 1);
        int32_t *row = r->ids + r->n_rows * L;
        int8_t *m = r->mask + r->n_rows * L;
        for (int64_t j = 0; j < L; j++) {
            int real = j < (int64_t)doc.n;
            row[j] = real ? doc.ids[j] : pad;
            m[j] = (int8_t)real;
        }
        r->n_tokens += (int64_t)doc.n;
        r->n_rows++;
    }
    r->n_tail_dropped = fill;
    tokids_free(&doc);
}

/* ---------------------------------------------------------------- the commands */

/* --out's directory must exist before any work (tokenizing a large input first, then failing in
 * an HDF5 call, wastes the time and names the wrong thing). */
static void check_out_dir(const char *out) {
    const char *slash = strrchr(out, '/');
    if (!slash) return; /* the current directory */
    char *dir = dam_strdup(out);
    dir[slash == out ? 1 : slash - out] = 0;
    if (!dam_is_dir(dir)) {
        if (dam_file_exists(dir)) dam_fail("prepare: --out %s: %s is not a directory", out, dir);
        dam_fail("prepare: --out %s: the directory %s does not exist (create it first, e.g. mkdir -p %s)",
                 out, dir, dir);
    }
    free(dir);
}

int cmd_prepare(int argc, char **argv) {
    PrepareOptions o;
    parse_options(&o, argc, argv);
    if (comm_world_size() > 1 && comm_world_rank() != 0) return 0; /* a serial command: rank 0 works */
    check_out_dir(o.out);
    double t0 = dam_now();
    Template tp = {0};
    if (o.template_src) template_compile(&tp, o.template_src);
    Tokenizer tok;
    tokenizer_load(&tok, o.tokenizer);

    if (!dam_file_exists(o.input)) dam_fail("%s: input file not found", o.input);
    size_t size;
    char *data = dam_read_file(o.input, &size);
    Examples ex = {0};
    if (o.format == FORMAT_JSONL)
        read_jsonl(&ex, data, size, &o, &tp);
    else
        read_text(&ex, data, size, &o);
    free(data);
    if (ex.n == 0) dam_fail("%s: no examples (the input is empty)", o.input);

    Framing framing = framing_for(&tok, &o);

    int64_t n_sel;
    int64_t *order = select_examples(ex.n, &o, &n_sel);
    Rows rows = {0};
    rows.L = o.seq_len;
    build_rows(&rows, &tok, &ex, order, n_sel, &framing, &o);
    if (rows.n_rows == 0)
        dam_fail("%s: no rows to write (%lld examples give fewer than %lld tokens%s)", o.input,
                 (long long)n_sel, (long long)o.seq_len, o.pack ? " with --pack" : "");

    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)tok.hash);
    DatasetAttr attrs[] = {
        {"tokenizer_hash", hash, 0}, /* canonical (tokenizer_canonical_hash), not of the file bytes */
        {"tokenizer_hash_kind", TOKENIZER_HASH_KIND, 0},
        {"vocab_size", NULL, tok.vocab_size},
        {"source_file", o.input, 0},
        {"n_examples", NULL, n_sel - rows.n_skipped},
        {"n_rows", NULL, rows.n_rows},
        {"n_tokens", NULL, rows.n_tokens},
        {"n_truncated", NULL, rows.n_truncated},
        {"n_skipped", NULL, rows.n_skipped},
        {"seq_len", NULL, o.seq_len},
        {"packing", o.pack ? "packed" : "padded", 0},
    };
    dataset_write(o.out, rows.n_rows, o.seq_len, rows.ids, rows.mask, (int)(sizeof attrs / sizeof attrs[0]),
                  attrs);
    printf("prepare: %s: %lld examples -> %lld rows x %lld (%s), %lld tokens, %lld truncated, %lld skipped, "
           "%lld tail tokens dropped, vocab %lld, tokenizer %s, %.2f s\n",
           o.out, (long long)(n_sel - rows.n_skipped), (long long)rows.n_rows, (long long)o.seq_len,
           o.pack ? "packed" : "padded", (long long)rows.n_tokens, (long long)rows.n_truncated,
           (long long)rows.n_skipped, (long long)rows.n_tail_dropped, (long long)tok.vocab_size, hash,
           dam_now() - t0);

    free(rows.ids);
    free(rows.mask);
    free(order);
    free(ex.text.data);
    free(ex.off);
    free(ex.len);
    free(ex.line);
    template_free(&tp);
    tokenizer_free(&tok);
    return 0;
}

static char *read_stdin(size_t *n) {
    TokBuf b = {0};
    char chunk[65536];
    size_t k;
    tokbuf_append(&b, "", 0);
    while ((k = fread(chunk, 1, sizeof chunk, stdin)) > 0) tokbuf_append(&b, chunk, k);
    *n = b.n;
    return b.data;
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    int decode = 0, special = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--decode"))
            decode = 1;
        else if (!strcmp(argv[i], "--special"))
            special = 1;
        else
            cli_bad_option("tokenize", argv[i], "--tokenizer");
    }
    if (!dir) dam_fail("tokenize: needs --tokenizer DIR");
    Tokenizer t;
    tokenizer_load(&t, dir);
    size_t n;
    char *in = read_stdin(&n);
    TokIds ids = {0};
    if (decode) {
        char *p = in, *end;
        for (;;) {
            while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',') p++;
            if (!*p) break;
            long v = strtol(p, &end, 10);
            if (end == p) dam_fail("<stdin>: expected token ids, found \"%.20s\"", p);
            tokids_push(&ids, (int32_t)v);
            p = end;
        }
        size_t len;
        char *text = tokenizer_decode(&t, ids.ids, ids.n, &len);
        fwrite(text, 1, len, stdout);
        free(text);
    } else {
        if (special)
            for (int j = 0; j < t.n_prefix; j++) tokids_push(&ids, t.prefix[j]);
        const char *err = tokenizer_encode(&t, in, n, &ids);
        if (err)
            dam_fail(
                "<stdin>: %s%s", err,
                n && in[n - 1] == '\n' && strstr(err, "U+000A")
                    ? " (the trailing newline of stdin is part of the text: printf '%s' TEXT leaves it out)"
                    : "");
        if (special)
            for (int j = 0; j < t.n_suffix; j++) tokids_push(&ids, t.suffix[j]);
        for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
        printf("\n");
    }
    fflush(stdout);
    tokids_free(&ids);
    free(in);
    tokenizer_free(&t);
    return 0;
}
