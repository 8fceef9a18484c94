/* tok_hash.c — the canonical fingerprint of a tokenizer.json (tokenizer_canonical_hash, see
 * tokenizer.h), so that a dataset's tokenizer can be matched with a model's even when one of the
 * files was re-saved (other whitespace, key order, number spelling, merges as "a b" or [a, b]).
 *
 * Canonical form v1: the parts that decide the ids of a text (model, added_tokens, normalizer,
 * pre_tokenizer, in that order, each after its name) written as tagged, length-prefixed values,
 * so that no two different documents serialise to the same bytes:
 *   null 'n', false 'f', true 't';
 *   number 'd' len text   (integers below 2^53 as %lld, others as %.17g: 1 and 1.0 agree);
 *   string 's' len bytes  (the decoded bytes, so "\u2581" and a literal "▁" agree);
 *   array  'a' count values...;
 *   object 'o' count ('k' len key, value)... with keys in byte order; null members are left
 *   out (a null and a missing field read the same), and so are the model's fuse_unk,
 *   byte_fallback and ignore_merges when false (their default, which newer `tokenizers`
 *   versions write out where older ones omitted them).
 * len and count are 8 bytes little-endian. model.merges entries "a b" become ["a", "b"] (split at
 * the first space, as tokenizer.c reads them). The bytes are hashed with dam_hash64.
 * post_processor, decoder, truncation, padding and version are not part of it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "json_util.h"
#include "tokenizer.h"
#include "util.h"

enum { CTX_PLAIN, CTX_MODEL, CTX_MERGES }; /* where a value sits: what normalisation applies */

static void put_u64(TokBuf *b, uint64_t v) {
    char le[8];
    for (int i = 0; i < 8; i++) le[i] = (char)(v >> (8 * i));
    tokbuf_append(b, le, 8);
}

static void put_bytes(TokBuf *b, char tag, const char *s, size_t n) {
    tokbuf_append(b, &tag, 1);
    put_u64(b, n);
    tokbuf_append(b, s, n);
}

/* cJSON holds every number as a double; print it one way only. */
static void put_number(TokBuf *b, double v) {
    char text[40];
    int n = v == floor(v) && fabs(v) < 9007199254740992.0 ? snprintf(text, sizeof text, "%lld", (long long)v)
                                                          : snprintf(text, sizeof text, "%.17g", v);
    put_bytes(b, 'd', text, (size_t)n);
}

static void put_value(TokBuf *b, const cJSON *v, int ctx);

/* A legacy "a b" merge is written as the pair it stands for. */
static void put_merge(TokBuf *b, const cJSON *m) {
    const char *sp = cJSON_IsString(m) ? strchr(m->valuestring, ' ') : NULL;
    if (!sp) {
        put_value(b, m, CTX_PLAIN);
        return;
    }
    tokbuf_append(b, "a", 1);
    put_u64(b, 2);
    put_bytes(b, 's', m->valuestring, (size_t)(sp - m->valuestring));
    put_bytes(b, 's', sp + 1, strlen(sp + 1));
}

static void put_array(TokBuf *b, const cJSON *arr, int ctx) {
    uint64_t n = 0;
    for (const cJSON *e = arr->child; e; e = e->next) n++;
    tokbuf_append(b, "a", 1);
    put_u64(b, n);
    for (const cJSON *e = arr->child; e; e = e->next) {
        if (ctx == CTX_MERGES)
            put_merge(b, e);
        else
            put_value(b, e, CTX_PLAIN);
    }
}

/* Members that read the same as a missing one (see the top of the file). */
static int omitted(const cJSON *m, int ctx) {
    if (cJSON_IsNull(m)) return 1;
    if (ctx != CTX_MODEL || !cJSON_IsFalse(m)) return 0;
    return !strcmp(m->string, "fuse_unk") || !strcmp(m->string, "byte_fallback") ||
           !strcmp(m->string, "ignore_merges");
}

typedef struct {
    const cJSON *item;
    size_t index; /* position in the file: orders duplicate keys deterministically */
} Member;

static int member_cmp(const void *pa, const void *pb) {
    const Member *a = pa, *b = pb;
    int c = strcmp(a->item->string, b->item->string); /* compares as unsigned char: byte order */
    return c ? c : (a->index > b->index) - (a->index < b->index);
}

/* Keys sorted with qsort (a 128K-entry vocab must not be sorted in O(n^2)). */
static void put_object(TokBuf *b, const cJSON *obj, int ctx) {
    size_t n = 0, k = 0;
    for (const cJSON *m = obj->child; m; m = m->next) n++;
    Member *ms = dam_malloc((n ? n : 1) * sizeof *ms, "tokenizer.json object keys");
    n = 0;
    for (const cJSON *m = obj->child; m; m = m->next, n++)
        if (!omitted(m, ctx)) ms[k++] = (Member){m, n};
    qsort(ms, k, sizeof *ms, member_cmp);
    tokbuf_append(b, "o", 1);
    put_u64(b, k);
    for (size_t i = 0; i < k; i++) {
        const char *key = ms[i].item->string;
        put_bytes(b, 'k', key, strlen(key));
        put_value(b, ms[i].item, ctx == CTX_MODEL && !strcmp(key, "merges") ? CTX_MERGES : CTX_PLAIN);
    }
    free(ms);
}

/* v may be NULL (a missing part): it is written as null. */
static void put_value(TokBuf *b, const cJSON *v, int ctx) {
    if (cJSON_IsObject(v))
        put_object(b, v, ctx);
    else if (cJSON_IsArray(v))
        put_array(b, v, ctx);
    else if (cJSON_IsString(v))
        put_bytes(b, 's', v->valuestring, strlen(v->valuestring));
    else if (cJSON_IsNumber(v))
        put_number(b, v->valuedouble);
    else
        tokbuf_append(b, cJSON_IsTrue(v) ? "t" : cJSON_IsFalse(v) ? "f" : "n", 1);
}

uint64_t tok_canonical_hash_json(const cJSON *root) {
    static const char *const parts[] = {"model", "added_tokens", "normalizer", "pre_tokenizer"};
    TokBuf b = {0};
    put_bytes(&b, 'v', TOKENIZER_HASH_KIND, strlen(TOKENIZER_HASH_KIND));
    for (int i = 0; i < 4; i++) {
        put_bytes(&b, 'k', parts[i], strlen(parts[i]));
        put_value(&b, cJSON_GetObjectItemCaseSensitive(root, parts[i]), i == 0 ? CTX_MODEL : CTX_PLAIN);
    }
    uint64_t h = dam_hash64(b.data, b.n, 0);
    free(b.data);
    return h;
}

int tokenizer_canonical_hash(const char *path, uint64_t *out) {
    char *file = dam_is_dir(path) ? dam_path_join(path, "tokenizer.json") : dam_strdup(path);
    if (!dam_file_exists(file)) {
        free(file);
        return -1;
    }
    cJSON *root = json_parse_file(file);
    if (!cJSON_IsObject(root)) dam_fail("%s: malformed tokenizer.json (not a JSON object)", file);
    *out = tok_canonical_hash_json(root);
    cJSON_Delete(root);
    free(file);
    return 0;
}
