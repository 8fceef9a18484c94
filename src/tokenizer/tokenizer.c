/* tokenizer.c — loading tokenizer.json, the encode pipeline (added tokens, normalizers,
 * pre-tokenizers, BPE) and the decoders. See tokenizer.h for what is supported. */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "util.h"

/* The pattern ByteLevel(use_regex=true) splits with (GPT-2). */
static const char *GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---------------------------------------------------------------- containers */

void tokids_push(TokIds *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 256;
        v->ids = dam_realloc(v->ids, v->cap * sizeof *v->ids, "token ids");
    }
    v->ids[v->n++] = id;
}

void tokids_free(TokIds *v) {
    free(v->ids);
    memset(v, 0, sizeof *v);
}

void tokbuf_append(TokBuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > b->cap) b->cap *= 2;
        b->data = dam_realloc(b->data, b->cap, "text buffer");
    }
    if (n) memcpy(b->data + b->n, s, n);
    b->n += n;
    b->data[b->n] = 0;
}

static void pieces_reset(TokPieces *p) {
    p->text.n = 0;
    p->n = 0;
}

/* Append a piece made of s[0..n) (copied). */
static void pieces_add(TokPieces *p, const char *s, size_t n) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->spans = dam_realloc(p->spans, p->cap * sizeof *p->spans, "pieces");
    }
    p->spans[p->n++] = (TokSpan){p->text.n, n};
    tokbuf_append(&p->text, s, n);
}

/* Grow the last piece by s[0..n). */
static void pieces_extend_last(TokPieces *p, const char *s, size_t n) {
    tokbuf_append(&p->text, s, n);
    p->spans[p->n - 1].len += n;
}

static void pieces_free(TokPieces *p) {
    free(p->text.data);
    free(p->spans);
    memset(p, 0, sizeof *p);
}

/* ---------------------------------------------------------------- loading helpers */

/* A token named in tokenizer_config.json: a string, {"content": ...}, or null. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

static const char *type_of(const cJSON *obj) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(ty) ? ty->valuestring : "(no type)";
}

/* The string of {"String": s} or {"Regex": s}; *is_regex says which. */
static const char *pattern_of(const cJSON *obj, const char *file, const char *what, int *is_regex) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "pattern");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
    if (cJSON_IsString(s)) {
        *is_regex = 0;
        return s->valuestring;
    }
    if (cJSON_IsString(r)) {
        *is_regex = 1;
        return r->valuestring;
    }
    dam_fail("%s: %s has no pattern", file, what);
}

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + k. */
static void build_byte_alphabet(Tokenizer *t) {
    int k = 0;
    memset(t->char_to_byte, 0xff, sizeof t->char_to_byte);
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        t->byte_to_char[b] = (uint16_t)(printable ? b : 256 + k++);
        t->char_to_byte[t->byte_to_char[b]] = (int16_t)b;
    }
}

static void compile_regex(TokPreTokenizer *p, const char *pattern, int literal, const char *file) {
    int code;
    PCRE2_SIZE where;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    p->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &code, &where, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        dam_fail("%s: cannot compile the pre-tokenizer regex at offset %zu: %s", file, (size_t)where,
                 (char *)msg);
    }
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
    p->md = pcre2_match_data_create_from_pattern(p->re, NULL);
}

/* ---------------------------------------------------------------- loading: sections */

static void load_model(Tokenizer *t, const cJSON *model, const char *file) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const char *type = cJSON_GetObjectItemCaseSensitive(model, "type") ? type_of(model)
                       : cJSON_IsArray(vocab)                          ? "Unigram"
                       : merges                                        ? "BPE"
                                                                       : "(unknown)";
    if (strcmp(type, "BPE") != 0)
        dam_fail("%s: unsupported tokenizer model %s (dam_dist supports BPE only)", file, type);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        dam_fail("%s: BPE model without vocab or merges", file);
    const char *prefix = json_opt_string(model, "continuing_subword_prefix", NULL);
    const char *suffix = json_opt_string(model, "end_of_word_suffix", NULL);
    if ((prefix && *prefix) || (suffix && *suffix))
        dam_fail("%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", file);

    int32_t max_id = -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0)
            dam_fail("%s: vocab entry %s has no valid id", file, e->string);
        /* a whole number, and small enough that the id table stays allocatable (the largest real
         * vocabularies have about 2^18 entries); INT_MAX would overflow max_id + 1 */
        if (e->valuedouble >= (double)(1 << 24) || e->valuedouble != (double)e->valueint)
            dam_fail("%s: vocab entry %s has id %g; ids must be whole numbers below %d", file, e->string,
                     e->valuedouble, 1 << 24);
        if (e->valueint > max_id) max_id = e->valueint;
    }
    t->n_ids = max_id + 1;
    t->tokens = dam_calloc((size_t)t->n_ids, sizeof *t->tokens, "vocabulary");
    t->token_len = dam_calloc((size_t)t->n_ids, sizeof *t->token_len, "vocabulary");
    for (const cJSON *e = vocab->child; e; e = e->next) {
        free(t->tokens[e->valueint]); /* an id given twice: the last entry wins, as before */
        t->tokens[e->valueint] = dam_strdup(e->string);
        t->token_len[e->valueint] = (uint32_t)strlen(e->string);
    }
    tok_vocab_build(t);

    tok_merges_init(&t->merges, (size_t)cJSON_GetArraySize(merges));
    int32_t rank = 0;
    char both[1024];
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *a, *b;
        size_t la;
        if (cJSON_IsString(m)) { /* "a b" (older files) */
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp) dam_fail("%s: merge %d (\"%s\") is not two tokens", file, rank, m->valuestring);
            a = m->valuestring;
            la = (size_t)(sp - a);
            b = sp + 1;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring;
            la = strlen(a);
            b = m->child->next->valuestring;
        } else
            dam_fail("%s: merge %d is neither \"a b\" nor [a, b]", file, rank);
        size_t lb = strlen(b);
        if (la + lb >= sizeof both) dam_fail("%s: merge %d is too long", file, rank);
        memcpy(both, a, la);
        memcpy(both + la, b, lb);
        int32_t ia = tok_vocab_find(t, a, la), ib = tok_vocab_find(t, b, lb),
                im = tok_vocab_find(t, both, la + lb);
        if (ia < 0 || ib < 0 || im < 0)
            dam_fail("%s: merge %d refers to a token missing from the vocab", file, rank);
        tok_merges_add(&t->merges, ia, ib, rank, im);
    }

    const char *unk = json_opt_string(model, "unk_token", NULL);
    t->unk_id = unk ? tok_vocab_find(t, unk, strlen(unk)) : -1;
    t->byte_fallback = json_opt_bool(model, "byte_fallback", 0);
    t->fuse_unk = json_opt_bool(model, "fuse_unk", 0);
    t->ignore_merges = json_opt_bool(model, "ignore_merges", 0);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_token[b] = tok_vocab_find(t, name, strlen(name));
    }
}

static void load_added(Tokenizer *t, const cJSON *added, const char *file) {
    int n = cJSON_GetArraySize(added);
    t->added = dam_calloc((size_t)(n ? n : 1), sizeof *t->added, "added tokens");
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        TokAddedToken *tok = &t->added[t->n_added++];
        const char *content = json_get_string(a, "content", file, "added_tokens");
        tok->content = dam_strdup(content);
        tok->len = strlen(content);
        tok->id = (int32_t)json_get_int(a, "id", file, "added_tokens");
        tok->special = json_opt_bool(a, "special", 0);
        tok->lstrip = json_opt_bool(a, "lstrip", 0);
        tok->rstrip = json_opt_bool(a, "rstrip", 0);
        tok->single_word = json_opt_bool(a, "single_word", 0);
        tok->normalized = json_opt_bool(a, "normalized", !tok->special);
        if (tok->len == 0 || tok->id < 0)
            dam_fail("%s: added token %d is empty or has a negative id", file, t->n_added - 1);
        t->has_normalized_added |= tok->normalized;
    }
}

static void load_normalizer(Tokenizer *t, const cJSON *n, const char *file) {
    if (!n || cJSON_IsNull(n)) return;
    const char *type = type_of(n);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next) load_normalizer(t, c, file);
        return;
    }
    t->norm = dam_realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *t->norm, "normalizers");
    TokNormalizer *s = &t->norm[t->n_norm++];
    memset(s, 0, sizeof *s);
    int is_regex;
    if (!strcmp(type, "NFC"))
        s->kind = TOK_NORM_NFC;
    else if (!strcmp(type, "Prepend")) {
        s->kind = TOK_NORM_PREPEND;
        s->a = dam_strdup(json_get_string(n, "prepend", file, "normalizer Prepend"));
    } else if (!strcmp(type, "Replace")) {
        s->kind = TOK_NORM_REPLACE;
        s->a = dam_strdup(pattern_of(n, file, "normalizer Replace", &is_regex));
        s->b = dam_strdup(json_get_string(n, "content", file, "normalizer Replace"));
        if (is_regex || !*s->a)
            dam_fail("%s: normalizer Replace with a regex or empty pattern is not supported", file);
    } else
        dam_fail("%s: unsupported normalizer %s (supported: NFC, Prepend, Replace, Sequence)", file, type);
}

static TokPrependScheme prepend_scheme(const cJSON *o) {
    const char *s = json_opt_string(o, "prepend_scheme", NULL);
    if (s)
        return !strcmp(s, "first")   ? TOK_PREPEND_FIRST
               : !strcmp(s, "never") ? TOK_PREPEND_NEVER
                                     : TOK_PREPEND_ALWAYS;
    return json_opt_bool(o, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER; /* older files */
}

static void load_pre_tokenizer(Tokenizer *t, const cJSON *p, const char *file) {
    if (!p || cJSON_IsNull(p)) return;
    const char *type = type_of(p);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next) load_pre_tokenizer(t, c, file);
        return;
    }
    if (t->byte_level) dam_fail("%s: a pre-tokenizer after ByteLevel is not supported", file);
    t->pre = dam_realloc(t->pre, (size_t)(t->n_pre + 1) * sizeof *t->pre, "pre-tokenizers");
    TokPreTokenizer *s = &t->pre[t->n_pre++];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "Split")) {
        s->kind = TOK_PRE_SPLIT;
        int is_regex;
        const char *pat = pattern_of(p, file, "pre-tokenizer Split", &is_regex);
        const char *behavior = json_get_string(p, "behavior", file, "pre-tokenizer Split");
        if (!strcmp(behavior, "Isolated"))
            s->mode = TOK_SPLIT_ISOLATED;
        else if (!strcmp(behavior, "Removed"))
            s->mode = TOK_SPLIT_REMOVED;
        else if (!strcmp(behavior, "MergedWithPrevious"))
            s->mode = TOK_SPLIT_MERGED_PREV;
        else if (!strcmp(behavior, "MergedWithNext"))
            s->mode = TOK_SPLIT_MERGED_NEXT;
        else
            dam_fail("%s: Split behavior %s is not supported", file, behavior);
        if (json_opt_bool(p, "invert", 0)) dam_fail("%s: Split with invert=true is not supported", file);
        compile_regex(s, pat, !is_regex, file);
    } else if (!strcmp(type, "ByteLevel")) {
        s->kind = TOK_PRE_BYTELEVEL;
        s->add_prefix_space = json_opt_bool(p, "add_prefix_space", 0);
        if (json_opt_bool(p, "use_regex", 1)) compile_regex(s, GPT2_PATTERN, 0, file);
        t->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        s->kind = TOK_PRE_METASPACE;
        const char *r = json_opt_string(p, "replacement", "\xE2\x96\x81");
        if (strlen(r) >= sizeof s->replacement || !*r)
            dam_fail("%s: Metaspace replacement must be one character", file);
        strcpy(s->replacement, r);
        s->prepend = prepend_scheme(p);
        s->split = json_opt_bool(p, "split", 1);
    } else
        dam_fail("%s: unsupported pre-tokenizer %s (supported: Split, ByteLevel, Metaspace, Sequence)", file,
                 type);
}

static void load_decoder(Tokenizer *t, const cJSON *d, const char *file) {
    if (!d || cJSON_IsNull(d)) return;
    const char *type = type_of(d);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next) load_decoder(t, c, file);
        return;
    }
    t->dec = dam_realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *t->dec, "decoders");
    TokDecoder *s = &t->dec[t->n_dec++];
    memset(s, 0, sizeof *s);
    int is_regex;
    if (!strcmp(type, "ByteLevel"))
        s->kind = TOK_DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback"))
        s->kind = TOK_DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse"))
        s->kind = TOK_DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        s->kind = TOK_DEC_REPLACE;
        s->a = dam_strdup(pattern_of(d, file, "decoder Replace", &is_regex));
        s->b = dam_strdup(json_get_string(d, "content", file, "decoder Replace"));
        if (is_regex || !*s->a)
            dam_fail("%s: decoder Replace with a regex or empty pattern is not supported", file);
    } else if (!strcmp(type, "Strip")) {
        s->kind = TOK_DEC_STRIP;
        s->a = dam_strdup(json_get_string(d, "content", file, "decoder Strip"));
        s->start = json_opt_int(d, "start", 0);
        s->stop = json_opt_int(d, "stop", 0);
    } else if (!strcmp(type, "Metaspace")) {
        s->kind = TOK_DEC_METASPACE;
        s->a = dam_strdup(json_opt_string(d, "replacement", "\xE2\x96\x81"));
        s->prepend = prepend_scheme(d) != TOK_PREPEND_NEVER;
    } else
        dam_fail("%s: unsupported decoder %s (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                 "Metaspace, Sequence)",
                 file, type);
}

/* Ids of the special token named `name` in a TemplateProcessing's special_tokens map. */
static int template_ids(const cJSON *specials, const char *name, int32_t *out, int room, const char *file) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(s, "ids");
    if (!cJSON_IsArray(ids)) dam_fail("%s: post_processor names special token %s without ids", file, name);
    int n = 0;
    for (const cJSON *i = ids->child; i; i = i->next) {
        if (n == room) dam_fail("%s: post_processor adds too many special tokens", file);
        out[n++] = (int32_t)i->valuedouble;
    }
    return n;
}

static void load_post_processor(Tokenizer *t, const cJSON *p, const char *file) {
    if (!p || cJSON_IsNull(p)) return;
    const char *type = type_of(p);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        for (const cJSON *c = list ? list->child : NULL; c; c = c->next) load_post_processor(t, c, file);
    } else if (!strcmp(type, "ByteLevel")) {
        /* only adjusts offsets */
    } else if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
        int after = 0;
        t->n_prefix = t->n_suffix = 0;
        for (const cJSON *item = single ? single->child : NULL; item; item = item->next) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(item, "Sequence"))
                after = 1;
            else if (sp) {
                const char *name = json_get_string(sp, "id", file, "post_processor");
                if (after)
                    t->n_suffix +=
                        template_ids(specials, name, t->suffix + t->n_suffix, 8 - t->n_suffix, file);
                else
                    t->n_prefix +=
                        template_ids(specials, name, t->prefix + t->n_prefix, 8 - t->n_prefix, file);
            }
        }
    } else if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(p, "cls"),
                    *sep = cJSON_GetObjectItemCaseSensitive(p, "sep");
        if (cJSON_GetArraySize(cls) != 2 || cJSON_GetArraySize(sep) != 2)
            dam_fail("%s: %s without cls/sep", file, type);
        t->prefix[0] = (int32_t)cJSON_GetArrayItem(cls, 1)->valuedouble;
        t->suffix[0] = (int32_t)cJSON_GetArrayItem(sep, 1)->valuedouble;
        t->n_prefix = t->n_suffix = 1;
    } else
        dam_fail("%s: unsupported post_processor %s", file, type);
}

/* bos/eos/pad and whether they are added, from tokenizer_config.json (which wins over the
 * post_processor, as transformers' fast tokenizers rebuild the template from add_bos_token). */
static void load_config(Tokenizer *t, const char *cfg_path) {
    cJSON *cfg = dam_file_exists(cfg_path) ? json_parse_file(cfg_path) : NULL;
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    const char *pad = config_token(cfg, "pad_token");
    t->bos_id = bos ? tokenizer_token_id(t, bos) : t->n_prefix == 1 ? t->prefix[0] : -1;
    t->eos_id = eos ? tokenizer_token_id(t, eos) : t->n_suffix == 1 ? t->suffix[0] : -1;
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
    for (int i = 0; i < 3 && t->eos_id < 0; i++) t->eos_id = tokenizer_token_id(t, eos_names[i]);
    t->pad_id = pad ? tokenizer_token_id(t, pad) : -1;
    if (t->pad_id < 0) t->pad_id = t->eos_id;
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    if (cJSON_IsBool(ab)) {
        t->n_prefix = cJSON_IsTrue(ab) && t->bos_id >= 0;
        t->prefix[0] = t->bos_id;
    }
    if (cJSON_IsBool(ae)) {
        t->n_suffix = cJSON_IsTrue(ae) && t->eos_id >= 0;
        t->suffix[0] = t->eos_id;
    }
    cJSON_Delete(cfg);
}

void tokenizer_load(Tokenizer *t, const char *path) {
    memset(t, 0, sizeof *t);
    char *dir = dam_is_dir(path) ? dam_strdup(path) : NULL;
    t->path = dir ? dam_path_join(dir, "tokenizer.json") : dam_strdup(path);
    if (!dam_file_exists(t->path)) dam_fail("%s: tokenizer.json not found", t->path);
    size_t n;
    char *bytes = dam_read_file(t->path, &n);
    cJSON *root = json_parse_text(bytes, n, t->path);
    free(bytes);
    const char *prev = json_set_context(t->path);

    load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), t->path);
    load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), t->path);
    load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), t->path);
    load_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), t->path);
    load_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), t->path);
    load_post_processor(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), t->path);
    t->hash = tok_canonical_hash_json(root); /* from this parse: the file is read once */
    cJSON_Delete(root);

    /* ids: the vocabulary and the added tokens together */
    t->vocab_size = t->n_ids;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id >= t->vocab_size) t->vocab_size = t->added[i].id + 1;
    t->added_of_id = dam_malloc((size_t)t->vocab_size * sizeof *t->added_of_id, "added tokens");
    memset(t->added_of_id, 0xff, (size_t)t->vocab_size * sizeof *t->added_of_id);
    for (int i = 0; i < t->n_added; i++) {
        t->added_of_id[t->added[i].id] = i;
        t->added_first[(unsigned char)t->added[i].content[0]] = 1;
    }
    build_byte_alphabet(t);
    for (int b = 0; b < 256; b++) {
        char c[4];
        int len = tok_utf8_encode(t->byte_to_char[b], c);
        t->byte_level_id[b] = tok_vocab_find(t, c, (size_t)len);
    }
    tok_cache_init(&t->cache);

    char *cfg = dir ? dam_path_join(dir, "tokenizer_config.json") : NULL;
    if (!cfg) { /* the file's directory */
        char *slash = strrchr(t->path, '/');
        cfg = slash ? dam_asprintf("%.*s/tokenizer_config.json", (int)(slash - t->path), t->path)
                    : dam_strdup("tokenizer_config.json");
    }
    load_config(t, cfg);
    free(cfg);
    free(dir);

    /* normalized added tokens are matched in normalized text: normalize their content once */
    for (int i = 0; i < t->n_added; i++) {
        TokAddedToken *a = &t->added[i];
        TokBuf nb = {0};
        tokbuf_append(&nb, a->content, a->len);
        if (a->normalized && t->n_norm) {
            for (int k = 0; k < t->n_norm; k++) {
                TokNormalizer *s = &t->norm[k];
                TokBuf out = {0};
                if (s->kind == TOK_NORM_NFC) {
                    if (tok_nfc_append(&out, nb.data, nb.n) < 0)
                        dam_fail("%s: cannot NFC-normalize added token %s", t->path, a->content);
                } else if (s->kind == TOK_NORM_PREPEND) {
                    tokbuf_append(&out, s->a, strlen(s->a));
                    tokbuf_append(&out, nb.data, nb.n);
                } else if (s->kind == TOK_NORM_REPLACE) {
                    size_t la = strlen(s->a);
                    for (size_t j = 0; j < nb.n;) {
                        if (j + la <= nb.n && !memcmp(nb.data + j, s->a, la)) {
                            tokbuf_append(&out, s->b, strlen(s->b));
                            j += la;
                        } else
                            tokbuf_append(&out, nb.data + j++, 1);
                    }
                } else
                    tokbuf_append(&out, nb.data, nb.n);
                free(nb.data);
                nb = out;
            }
        }
        a->norm_content = nb.data;
        a->norm_len = nb.n;
    }
    json_set_context(prev);
}

void tokenizer_free(Tokenizer *t) {
    for (int32_t i = 0; i < t->n_ids; i++) free(t->tokens[i]);
    free(t->tokens);
    free(t->token_len);
    free(t->vocab.slots);
    tok_merges_free(&t->merges);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm_content);
    }
    free(t->added);
    free(t->added_of_id);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++) {
        if (t->pre[i].md) pcre2_match_data_free(t->pre[i].md);
        if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    }
    free(t->pre);
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->dec);
    tok_cache_free(&t->cache);
    free(t->syms);
    free(t->heap.items);
    for (int i = 0; i < 2; i++) {
        free(t->scratch[i].data);
        pieces_free(&t->pieces[i]);
    }
    free(t->path);
    memset(t, 0, sizeof *t);
}

int32_t tokenizer_token_id(const Tokenizer *t, const char *s) {
    size_t n = strlen(s);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, s, n)) return t->added[i].id;
    return t->n_ids ? tok_vocab_find(t, s, n) : -1;
}

/* ---------------------------------------------------------------- encoding */

typedef struct {
    size_t start, end; /* the span the token takes, after lstrip/rstrip */
    size_t raw_end;    /* where the match itself ended (the search resumes there) */
    int32_t id;
    int skip; /* a single_word token inside a word: not split, but consumed */
} AddedMatch;

static size_t back_over_space(const char *s, size_t i, size_t floor) {
    while (i > floor) {
        size_t j = i - 1, len;
        while (j > floor && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
        if (!tok_is_whitespace(tok_utf8_decode(s + j, &len))) break;
        i = j;
    }
    return i;
}

static size_t forward_over_space(const char *s, size_t i, size_t n) {
    size_t len;
    while (i < n && tok_is_whitespace(tok_utf8_decode(s + i, &len))) i += len;
    return i;
}

/* A "word" character for single_word: alphanumeric or underscore (ASCII is what matters in practice). */
static int is_word_byte(unsigned char c) {
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}

/* Leftmost-longest added token (of the given normalized class) in s[from..n); 0 when none. */
static int find_added(const Tokenizer *t, const char *s, size_t n, size_t from, size_t floor, int normalized,
                      AddedMatch *m) {
    for (size_t pos = from; pos < n; pos++) {
        if (!t->added_first[(unsigned char)s[pos]] && !normalized) continue;
        int best = -1;
        size_t best_len = 0;
        for (int i = 0; i < t->n_added; i++) {
            const TokAddedToken *a = &t->added[i];
            if (a->normalized != normalized) continue;
            const char *c = normalized ? a->norm_content : a->content;
            size_t len = normalized ? a->norm_len : a->len;
            if (len > best_len && len <= n - pos && !memcmp(s + pos, c, len)) {
                best = i;
                best_len = len;
            }
        }
        if (best < 0) continue;
        const TokAddedToken *a = &t->added[best];
        m->start = pos;
        m->end = m->raw_end = pos + best_len;
        m->id = a->id;
        m->skip = a->single_word && ((pos > 0 && is_word_byte((unsigned char)s[pos - 1])) ||
                                     (m->end < n && is_word_byte((unsigned char)s[m->end])));
        if (a->lstrip) m->start = back_over_space(s, pos, floor);
        if (a->rstrip) m->end = forward_over_space(s, m->end, n);
        return 1;
    }
    return 0;
}

/* Apply the normalizers to s[0..n); returns the result (s itself, or a scratch buffer). */
static const char *normalize(Tokenizer *t, const char *s, size_t n, size_t *n_out, const char **err) {
    int which = 0;
    for (int k = 0; k < t->n_norm; k++) {
        TokNormalizer *z = &t->norm[k];
        if (z->kind == TOK_NORM_NFC && tok_nfc_quick_check(s, n) == n) continue; /* already NFC */
        TokBuf *out = &t->scratch[which];
        out->n = 0;
        if (z->kind == TOK_NORM_NFC) {
            if (tok_nfc_append(out, s, n) < 0) {
                snprintf(t->err, sizeof t->err, "NFC normalization failed (out of memory)");
                *err = t->err;
                return NULL;
            }
        } else if (z->kind == TOK_NORM_PREPEND) {
            if (n) tokbuf_append(out, z->a, strlen(z->a));
            tokbuf_append(out, s, n);
        } else {
            size_t la = strlen(z->a), lb = strlen(z->b), run = 0;
            for (size_t j = 0; j + la <= n;) {
                if (!memcmp(s + j, z->a, la)) {
                    tokbuf_append(out, s + run, j - run);
                    tokbuf_append(out, z->b, lb);
                    j += la;
                    run = j;
                } else
                    j++;
            }
            tokbuf_append(out, s + run, n - run);
        }
        s = out->data ? out->data : "";
        n = out->n;
        which ^= 1;
    }
    *n_out = n;
    return s;
}

/* One pre-tokenizer step on s[0..n) (at_start: the piece begins the original text), pieces to out. */
static void pre_step(const TokPreTokenizer *p, const char *s, size_t n, int at_start, TokPieces *out) {
    if (p->kind == TOK_PRE_METASPACE) {
        size_t lr = strlen(p->replacement), first = out->n;
        int prepend = p->prepend == TOK_PREPEND_ALWAYS || (p->prepend == TOK_PREPEND_FIRST && at_start);
        int starts_with_space = n > 0 && (s[0] == ' ' || (n >= lr && !memcmp(s, p->replacement, lr)));
        pieces_add(out, "", 0);
        if (prepend && !starts_with_space) pieces_extend_last(out, p->replacement, lr);
        for (size_t i = 0; i < n; i++) {
            int is_space = s[i] == ' ';
            int is_repl = !is_space && i + lr <= n && !memcmp(s + i, p->replacement, lr);
            if (p->split && (is_space || is_repl) && out->spans[out->n - 1].len > 0) pieces_add(out, "", 0);
            if (is_space)
                pieces_extend_last(out, p->replacement, lr);
            else if (is_repl) {
                pieces_extend_last(out, p->replacement, lr);
                i += lr - 1;
            } else
                pieces_extend_last(out, s + i, 1);
        }
        if (out->spans[out->n - 1].len == 0 && out->n > first) out->n--;
        return;
    }
    TokBuf tmp = {0};
    if (p->kind == TOK_PRE_BYTELEVEL && p->add_prefix_space && (n == 0 || s[0] != ' ')) {
        tokbuf_append(&tmp, " ", 1);
        tokbuf_append(&tmp, s, n);
        s = tmp.data;
        n = tmp.n;
    }
    if (!p->re) { /* ByteLevel without regex: the byte mapping happens in the model */
        if (n) pieces_add(out, s, n);
        free(tmp.data);
        return;
    }
    TokSplitMode mode = p->kind == TOK_PRE_SPLIT ? p->mode : TOK_SPLIT_ISOLATED;
    size_t off = 0, prev_end = 0, next_start = 0;
    while (off < n) {
        int rc = p->jit ? pcre2_jit_match(p->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, p->md, NULL)
                        : pcre2_match(p->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, p->md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* an empty match splits nothing: step over one character */
            size_t len;
            tok_utf8_decode(s + ms, &len);
            off = ms + len;
            continue;
        }
        switch (mode) {
        case TOK_SPLIT_ISOLATED:
            if (ms > prev_end) pieces_add(out, s + prev_end, ms - prev_end);
            pieces_add(out, s + ms, me - ms);
            break;
        case TOK_SPLIT_REMOVED:
            if (ms > prev_end) pieces_add(out, s + prev_end, ms - prev_end);
            break;
        case TOK_SPLIT_MERGED_PREV: pieces_add(out, s + prev_end, me - prev_end); break;
        case TOK_SPLIT_MERGED_NEXT:
            if (ms > next_start) pieces_add(out, s + next_start, ms - next_start);
            next_start = ms;
            break;
        }
        prev_end = off = me;
    }
    if (mode == TOK_SPLIT_MERGED_NEXT) {
        if (n > next_start) pieces_add(out, s + next_start, n - next_start);
    } else if (n > prev_end)
        pieces_add(out, s + prev_end, n - prev_end);
    free(tmp.data);
}

/* Pre-tokenize one normalized segment and run the model on each piece. */
static const char *encode_segment(Tokenizer *t, const char *s, size_t n, int at_start, TokIds *out) {
    if (n == 0) return NULL;
    if (t->n_pre == 0) return tok_bpe_word(t, s, n, out);
    TokPieces *cur = &t->pieces[0], *next = &t->pieces[1];
    pieces_reset(cur);
    pre_step(&t->pre[0], s, n, at_start, cur);
    for (int k = 1; k < t->n_pre; k++) {
        pieces_reset(next);
        for (size_t i = 0; i < cur->n; i++)
            pre_step(&t->pre[k], cur->text.data + cur->spans[i].off, cur->spans[i].len, at_start && i == 0,
                     next);
        TokPieces *swap = cur;
        cur = next;
        next = swap;
    }
    for (size_t i = 0; i < cur->n; i++) {
        const char *err = tok_bpe_word(t, cur->text.data + cur->spans[i].off, cur->spans[i].len, out);
        if (err) return err;
    }
    return NULL;
}

/* A piece of raw text between added tokens: normalize, then split on normalized added tokens. */
static const char *encode_raw_segment(Tokenizer *t, const char *s, size_t n, int at_start, TokIds *out) {
    if (n == 0) return NULL;
    const char *err = NULL;
    size_t nn;
    const char *norm = t->n_norm ? normalize(t, s, n, &nn, &err) : (nn = n, s);
    if (err) return err;
    if (norm != s) { /* the pre-tokenizer reuses the scratch buffers: keep our own copy */
        char *copy = dam_malloc(nn + 1, "normalized text");
        memcpy(copy, norm, nn);
        norm = copy;
    }
    size_t pos = 0, from = 0;
    AddedMatch m;
    while (!err && t->has_normalized_added && find_added(t, norm, nn, from, pos, 1, &m)) {
        from = m.raw_end;
        if (m.skip) continue;
        err = encode_segment(t, norm + pos, m.start - pos, at_start && pos == 0, out);
        tokids_push(out, m.id);
        pos = from = m.end;
    }
    if (!err) err = encode_segment(t, norm + pos, nn - pos, at_start && pos == 0, out);
    if (norm != s) free((char *)norm);
    return err;
}

const char *tokenizer_encode(Tokenizer *t, const char *text, size_t n, TokIds *out) {
    size_t valid = tok_utf8_valid_prefix(text, n);
    if (valid < n) {
        snprintf(t->err, sizeof t->err, "invalid UTF-8 at byte %zu", valid);
        return t->err;
    }
    size_t pos = 0, from = 0;
    AddedMatch m;
    const char *err = NULL;
    while (!err && find_added(t, text, n, from, pos, 0, &m)) {
        from = m.raw_end;
        if (m.skip) continue;
        err = encode_raw_segment(t, text + pos, m.start - pos, pos == 0, out);
        tokids_push(out, m.id);
        pos = from = m.end;
    }
    if (!err) err = encode_raw_segment(t, text + pos, n - pos, pos == 0, out);
    return err;
}

/* ---------------------------------------------------------------- decoding */

static void replace_all(TokBuf *out, const char *s, size_t n, const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), run = 0;
    for (size_t j = 0; j + la <= n;) {
        if (!memcmp(s + j, a, la)) {
            tokbuf_append(out, s + run, j - run);
            tokbuf_append(out, b, lb);
            j += la;
            run = j;
        } else
            j++;
    }
    tokbuf_append(out, s + run, n - run);
}

/* "<0xNN>" -> NN, else -1. */
static int byte_token_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static void flush_bytes(TokPieces *out, TokBuf *bytes, size_t count) {
    if (!count) return;
    if (tok_utf8_valid_prefix(bytes->data, bytes->n) == bytes->n)
        pieces_add(out, bytes->data, bytes->n);
    else
        for (size_t i = 0; i < count; i++) pieces_add(out, "\xEF\xBF\xBD", 3);
    bytes->n = 0;
}

/* One decoder step: tokens in `in` -> tokens in `out`. */
static void decode_step(const Tokenizer *t, const TokDecoder *d, const TokPieces *in, TokPieces *out) {
    TokBuf tmp = {0};
    size_t count = 0;
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.data + in->spans[i].off;
        size_t n = in->spans[i].len, len;
        switch (d->kind) {
        case TOK_DEC_BYTELEVEL: { /* map each token back to bytes when it is made of the alphabet */
            size_t mark = tmp.n;
            int all = 1;
            for (size_t j = 0; j < n && all; j += len) {
                uint32_t cp = tok_utf8_decode(s + j, &len);
                int b = cp < 512 ? t->char_to_byte[cp] : -1;
                if (b < 0)
                    all = 0;
                else {
                    char c = (char)b;
                    tokbuf_append(&tmp, &c, 1);
                }
            }
            if (!all) {
                tmp.n = mark;
                tokbuf_append(&tmp, s, n);
            }
            break;
        }
        case TOK_DEC_FUSE: tokbuf_append(&tmp, s, n); break;
        case TOK_DEC_REPLACE:
            pieces_add(out, "", 0);
            tmp.n = 0;
            replace_all(&tmp, s, n, d->a, d->b);
            pieces_extend_last(out, tmp.data ? tmp.data : "", tmp.n);
            break;
        case TOK_DEC_BYTEFALLBACK: {
            int v = byte_token_value(s, n);
            if (v >= 0) {
                char c = (char)v;
                tokbuf_append(&tmp, &c, 1);
                count++;
            } else {
                flush_bytes(out, &tmp, count);
                count = 0;
                pieces_add(out, s, n);
            }
            break;
        }
        case TOK_DEC_STRIP: {
            size_t lc = strlen(d->a), b = 0, e = n;
            for (int k = 0; k < d->start && b + lc <= e && !memcmp(s + b, d->a, lc); k++) b += lc;
            for (int k = 0; k < d->stop && e >= b + lc && !memcmp(s + e - lc, d->a, lc); k++) e -= lc;
            pieces_add(out, s + b, e - b);
            break;
        }
        case TOK_DEC_METASPACE:
            pieces_add(out, "", 0);
            tmp.n = 0;
            replace_all(&tmp, s, n, d->a, i == 0 && d->prepend ? "" : " ");
            pieces_extend_last(out, tmp.data ? tmp.data : "", tmp.n);
            break;
        }
    }
    if (d->kind == TOK_DEC_BYTELEVEL) {
        pieces_add(out, "", 0);
        TokBuf fixed = {0};
        tok_utf8_lossy_append(&fixed, tmp.data ? tmp.data : "", tmp.n);
        pieces_extend_last(out, fixed.data ? fixed.data : "", fixed.n);
        free(fixed.data);
    } else if (d->kind == TOK_DEC_FUSE)
        pieces_add(out, tmp.data ? tmp.data : "", tmp.n);
    else if (d->kind == TOK_DEC_BYTEFALLBACK)
        flush_bytes(out, &tmp, count);
    free(tmp.data);
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, size_t *len_out) {
    TokPieces a = {0}, b = {0};
    for (size_t i = 0; i < n; i++) { /* unknown ids are skipped, as tokenizers does */
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size) continue;
        int k = t->added_of_id[id];
        if (k >= 0) /* a normalized added token decodes from its normalized content, as in tokenizers */
            pieces_add(&a, t->added[k].norm_content ? t->added[k].norm_content : "", t->added[k].norm_len);
        else if (id < t->n_ids && t->tokens[id])
            pieces_add(&a, t->tokens[id], t->token_len[id]);
    }
    TokPieces *cur = &a, *next = &b;
    for (int k = 0; k < t->n_dec; k++) {
        pieces_reset(next);
        decode_step(t, &t->dec[k], cur, next);
        TokPieces *swap = cur;
        cur = next;
        next = swap;
    }
    TokBuf out = {0};
    tokbuf_append(&out, "", 0);
    for (size_t i = 0; i < cur->n; i++) {
        if (t->n_dec == 0 && i > 0) tokbuf_append(&out, " ", 1); /* no decoder: tokens joined by spaces */
        tokbuf_append(&out, cur->text.data + cur->spans[i].off, cur->spans[i].len);
    }
    pieces_free(&a);
    pieces_free(&b);
    if (len_out) *len_out = out.n;
    return out.data;
}
