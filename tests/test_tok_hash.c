/* test_tok_hash.c — tokenizer_canonical_hash: every fixture tokenizer.json is rewritten (with cJSON,
 * no Python) into variants that a re-save could produce, which must hash like the original
 * (whitespace, key order, merges as "a b" or [a, b], null vs missing, parts outside the fingerprint),
 * and into variants that change which ids a text gets, which must hash differently (each of those
 * is checked to really change the file text first, so none can pass by luck). Also: the directory
 * and file forms, a missing tokenizer.json, malformed JSON, tokenizer_load's hash, small hand-written
 * documents for the encoding rules, and the time for a 128K-vocabulary file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"

#include "json_util.h"
#include "tokenizer.h"
#include "util.h"

static const char *const k_fixtures[] = {"bytelevel_gpt2", "bytelevel_llama3", "bytelevel_qwen2",
                                         "spm_legacy",     "spm_metaspace",    "spm_metaspace_split",
                                         "wordpiece"};
#define N_FIXTURES ((int)(sizeof k_fixtures / sizeof k_fixtures[0]))

/* tests/fixtures/tokenizers/<name> (heap string). */
static char *fixture_dir(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/%s", name);
    return test_fixture(rel);
}

static uint64_t hash_of(const char *path) {
    uint64_t h = 0;
    assert_int_equal(tokenizer_canonical_hash(path, &h), 0);
    return h;
}

/* Write text as dir/tokenizer.json and hash the directory. */
static uint64_t hash_text(const char *dir, const char *text) {
    char *file = dam_path_join(dir, "tokenizer.json");
    dam_write_file_atomic(file, text, strlen(text));
    free(file);
    return hash_of(dir);
}

/* ---------------------------------------------------------------- tree edits */

static cJSON *get(const cJSON *obj, const char *key) { return cJSON_GetObjectItemCaseSensitive(obj, key); }

/* Re-link the members of obj in the order of items[0..n) (cJSON: the first child's prev is the last). */
static void relink(cJSON *obj, cJSON **items, int n) {
    obj->child = n ? items[0] : NULL;
    for (int i = 0; i < n; i++) {
        items[i]->prev = items[i ? i - 1 : n - 1];
        items[i]->next = i + 1 < n ? items[i + 1] : NULL;
    }
}

/* Reverse (rng NULL) or shuffle the keys of every object in v, recursively; arrays keep their order. */
static void reorder_keys(cJSON *v, dam_rng *rng) {
    int n = 0;
    for (cJSON *c = v->child; c; c = c->next) reorder_keys(c, rng), n++;
    if (!cJSON_IsObject(v) || n < 2) return;
    cJSON **items = malloc((size_t)n * sizeof *items);
    int i = 0;
    for (cJSON *c = v->child; c; c = c->next) items[i++] = c;
    for (i = 0; i < n / 2 && !rng; i++) {
        cJSON *t = items[i];
        items[i] = items[n - 1 - i], items[n - 1 - i] = t;
    }
    for (i = n - 1; i > 0 && rng; i--) {
        int j = (int)(dam_rng_u64(rng) % (uint64_t)(i + 1));
        cJSON *t = items[i];
        items[i] = items[j], items[j] = t;
    }
    relink(v, items, n);
    free(items);
}

static cJSON *merges_of(const cJSON *root) {
    cJSON *m = get(get(root, "model"), "merges");
    return cJSON_GetArraySize(m) > 8 ? m : NULL;
}

/* Replace pair merges [a, b] by legacy "a b" strings (every `step`-th one). */
static int merges_to_strings(cJSON *root, int step) {
    cJSON *m = merges_of(root);
    if (!m) return 0;
    int i = 0, changed = 0;
    for (cJSON *e = m->child, *next; e; e = next, i++) {
        next = e->next;
        if (i % step || cJSON_GetArraySize(e) != 2) continue;
        const char *a = cJSON_GetArrayItem(e, 0)->valuestring, *b = cJSON_GetArrayItem(e, 1)->valuestring;
        assert_null(strchr(a, ' ')); /* "a b" would split elsewhere: not a faithful legacy form */
        char *s = dam_asprintf("%s %s", a, b);
        cJSON_ReplaceItemViaPointer(m, e, cJSON_CreateString(s));
        free(s);
        changed++;
    }
    return changed > 0;
}

/* ---------------------------------------------------------------- variants that hash EQUAL */

static int v_reverse_keys(cJSON *root) {
    reorder_keys(root, NULL);
    return 1;
}
static int v_shuffle_keys(cJSON *root) {
    dam_rng rng;
    dam_rng_seed(&rng, 12345);
    reorder_keys(root, &rng);
    return 1;
}
static int v_merges_strings(cJSON *root) { return merges_to_strings(root, 1); }
static int v_merges_mixed(cJSON *root) { return merges_to_strings(root, 2); }
static int v_outside_parts(cJSON *root) {
    cJSON_ReplaceItemInObjectCaseSensitive(root, "post_processor",
                                           cJSON_Parse("{\"type\":\"ByteLevel\",\"trim_offsets\":false}"));
    cJSON_DeleteItemFromObjectCaseSensitive(root, "decoder");
    cJSON_ReplaceItemInObjectCaseSensitive(
        root, "truncation",
        cJSON_Parse("{\"direction\":\"Right\",\"max_length\":512,\"strategy\":\"LongestFirst\"}"));
    cJSON_ReplaceItemInObjectCaseSensitive(root, "version", cJSON_CreateString("9.9"));
    return 1;
}
/* Null members and the model's false flags deleted: a file written by an older `tokenizers`. */
static int v_defaults_dropped(cJSON *root) {
    static const char *const flags[] = {"fuse_unk", "byte_fallback", "ignore_merges"};
    int n = 0;
    cJSON *model = get(root, "model");
    for (cJSON *c = model->child, *next; c; c = next) {
        next = c->next;
        if (cJSON_IsNull(c)) cJSON_Delete(cJSON_DetachItemViaPointer(model, c)), n++;
    }
    for (int i = 0; i < 3; i++)
        if (cJSON_IsFalse(get(model, flags[i])))
            cJSON_DeleteItemFromObjectCaseSensitive(model, flags[i]), n++;
    static const char *const parts[] = {"normalizer", "pre_tokenizer", "added_tokens"};
    for (int i = 0; i < 3; i++)
        if (cJSON_IsNull(get(root, parts[i]))) cJSON_DeleteItemFromObjectCaseSensitive(root, parts[i]), n++;
    return n > 0;
}

/* ---------------------------------------------------------------- variants that hash DIFFERENT */

static int v_vocab_id(cJSON *root) {
    cJSON *e = cJSON_GetArrayItem(get(get(root, "model"), "vocab"), 4);
    if (!e) return 0;
    cJSON_SetNumberHelper(e, e->valuedouble + 100000);
    return 1;
}
static int v_merges_swapped(cJSON *root) {
    cJSON *m = merges_of(root);
    if (!m) return 0;
    /* swap the contents of entries 3 and 4 in place (cJSON 1.7.15's InsertItemInArray after a
     * Detach drops the item, which would make this a removal) */
    int n = cJSON_GetArraySize(m);
    cJSON *a = cJSON_GetArrayItem(m, 3), *b = cJSON_GetArrayItem(m, 4);
    char *sa = cJSON_PrintUnformatted(a), *sb = cJSON_PrintUnformatted(b);
    assert_string_not_equal(sa, sb);
    cJSON *child = a->child;
    char *str = a->valuestring;
    int type = a->type;
    a->child = b->child, a->valuestring = b->valuestring, a->type = b->type;
    b->child = child, b->valuestring = str, b->type = type;
    assert_int_equal(cJSON_GetArraySize(m), n);
    char *sa2 = cJSON_PrintUnformatted(cJSON_GetArrayItem(m, 3));
    assert_string_equal(sa2, sb);
    free(sa2);
    free(sb);
    free(sa);
    return 1;
}
static int v_merge_removed(cJSON *root) {
    cJSON *m = merges_of(root);
    if (!m) return 0;
    int n = cJSON_GetArraySize(m);
    cJSON_DeleteItemFromArray(m, 5);
    assert_int_equal(cJSON_GetArraySize(m), n - 1);
    return 1;
}
static int v_special_flipped(cJSON *root) {
    cJSON *tok = cJSON_GetArrayItem(get(root, "added_tokens"), 0);
    const cJSON *special = get(tok, "special");
    if (!cJSON_IsBool(special)) return 0;
    int was = cJSON_IsTrue(special);
    cJSON_ReplaceItemInObjectCaseSensitive(tok, "special", cJSON_CreateBool(!was));
    assert_true(cJSON_IsBool(get(tok, "special")) && cJSON_IsTrue(get(tok, "special")) == !was);
    return 1;
}
static int v_added_token(cJSON *root) {
    cJSON *added = get(root, "added_tokens");
    if (!cJSON_IsArray(added)) return 0;
    cJSON_AddItemToArray(added,
                         cJSON_Parse("{\"id\":100000,\"content\":\"<|dam_test|>\",\"single_word\":false,"
                                     "\"lstrip\":false,\"rstrip\":false,\"normalized\":false,"
                                     "\"special\":true}"));
    return 1;
}
/* Add `step` to the normalizer: into its Sequence, as the only one, or (NFC alone) remove it. */
static int change_normalizer(cJSON *root, const char *step) {
    cJSON *norm = get(root, "normalizer");
    const char *type = cJSON_GetStringValue(get(norm, "type"));
    if (type && !strcmp(type, "Sequence"))
        cJSON_AddItemToArray(get(norm, "normalizers"), cJSON_Parse(step));
    else if (type && !strcmp(type, "NFC") && strstr(step, "NFC"))
        cJSON_ReplaceItemInObjectCaseSensitive(root, "normalizer", cJSON_CreateNull());
    else if (!type)
        cJSON_ReplaceItemInObjectCaseSensitive(root, "normalizer", cJSON_Parse(step));
    else
        return 0;
    return 1;
}
static int v_normalizer_nfc(cJSON *root) { return change_normalizer(root, "{\"type\":\"NFC\"}"); }
static int v_normalizer_replace(cJSON *root) {
    return change_normalizer(root,
                             "{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\t\"},\"content\":\" \"}");
}
/* The Split regex of the pre-tokenizer (itself or inside its Sequence). */
static int v_pre_regex(cJSON *root) {
    cJSON *pre = get(root, "pre_tokenizer");
    cJSON *list = get(pre, "pretokenizers");
    for (cJSON *p = list ? list->child : pre; p; p = list ? p->next : NULL) {
        cJSON *re = get(get(p, "pattern"), "Regex");
        if (!cJSON_IsString(re)) continue;
        char *s = dam_asprintf("%s|\\d", re->valuestring);
        cJSON_SetValuestring(re, s);
        free(s);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the runner */

typedef int (*Variant)(cJSON *root); /* edits root; 0 when it does not apply to this fixture */

/* Apply v to every fixture, write the result, compare its hash with the original's. The written
 * text must differ from the original re-serialised, so that each case tests something. Returns
 * the number of fixtures the variant applied to. */
static int run_variant(const char *what, Variant v, int want_equal) {
    int applied = 0, failures = 0;
    for (int i = 0; i < N_FIXTURES; i++) {
        char *dir = fixture_dir(k_fixtures[i]);
        char *file = dam_path_join(dir, "tokenizer.json");
        uint64_t h0 = hash_of(dir);
        cJSON *root = json_parse_file(file);
        char *before = cJSON_PrintUnformatted(root);
        if (v(root)) {
            char *after = cJSON_PrintUnformatted(root), *tmp = test_tmpdir();
            assert_string_not_equal(before, after);
            uint64_t h1 = hash_text(tmp, after);
            if ((h1 == h0) != want_equal) {
                printf("%s on %s: hash %016llx, original %016llx, want %s\n", what, k_fixtures[i],
                       (unsigned long long)h1, (unsigned long long)h0, want_equal ? "equal" : "different");
                failures++;
            }
            applied++;
            dam_rm_rf(tmp);
            free(tmp);
            free(after);
        }
        free(before);
        cJSON_Delete(root);
        free(file);
        free(dir);
    }
    printf("%-40s %d fixtures, hash %s: %s\n", what, applied, want_equal ? "equal" : "different",
           failures ? "NOT OK" : "OK");
    assert_int_equal(failures, 0);
    return applied;
}

static void test_equal_reformatted(void **state) {
    (void)state;
    for (int i = 0; i < N_FIXTURES; i++) {
        char *dir = fixture_dir(k_fixtures[i]), *file = dam_path_join(dir, "tokenizer.json");
        char *orig = dam_read_file(file, &(size_t){0});
        cJSON *root = json_parse_file(file);
        char *min = cJSON_PrintUnformatted(root), *tabs = cJSON_Print(root), *tmp = test_tmpdir();
        assert_string_not_equal(tabs, orig); /* (bytelevel_gpt2 is stored minified already) */
        uint64_t h0 = hash_of(file);
        assert_true(hash_text(tmp, min) == h0);
        assert_true(hash_text(tmp, tabs) == h0);
        dam_rm_rf(tmp);
        free(tmp);
        free(tabs);
        free(min);
        cJSON_Delete(root);
        free(orig);
        free(file);
        free(dir);
    }
}

static void test_equal_keys_reversed(void **state) {
    (void)state;
    assert_int_equal(run_variant("object keys reversed (vocab too)", v_reverse_keys, 1), N_FIXTURES);
}
static void test_equal_keys_shuffled(void **state) {
    (void)state;
    assert_int_equal(run_variant("object keys shuffled (vocab too)", v_shuffle_keys, 1), N_FIXTURES);
}
static void test_equal_merges_strings(void **state) {
    (void)state;
    assert_int_equal(run_variant("merges as \"a b\" strings", v_merges_strings, 1), N_FIXTURES - 1);
    assert_int_equal(run_variant("merges half strings, half pairs", v_merges_mixed, 1), N_FIXTURES - 1);
}
static void test_equal_outside_parts(void **state) {
    (void)state;
    assert_int_equal(run_variant("post_processor/decoder/truncation changed", v_outside_parts, 1),
                     N_FIXTURES);
}
static void test_equal_defaults_dropped(void **state) {
    (void)state;
    assert_true(run_variant("null members and false flags dropped", v_defaults_dropped, 1) >= N_FIXTURES - 1);
}

static void test_diff_vocab_id(void **state) {
    (void)state;
    assert_int_equal(run_variant("one vocab id changed", v_vocab_id, 0), N_FIXTURES);
}
static void test_diff_merges_swapped(void **state) {
    (void)state;
    assert_int_equal(run_variant("two merges swapped", v_merges_swapped, 0), N_FIXTURES - 1);
}
static void test_diff_merge_removed(void **state) {
    (void)state;
    assert_int_equal(run_variant("one merge removed", v_merge_removed, 0), N_FIXTURES - 1);
}
static void test_diff_special_flipped(void **state) {
    (void)state;
    assert_true(run_variant("added token 'special' flipped", v_special_flipped, 0) >= N_FIXTURES - 1);
}
static void test_diff_added_token(void **state) {
    (void)state;
    assert_int_equal(run_variant("added token added", v_added_token, 0), N_FIXTURES);
}
static void test_diff_normalizer(void **state) {
    (void)state;
    assert_int_equal(run_variant("NFC normalizer added or removed", v_normalizer_nfc, 0), N_FIXTURES);
    assert_true(run_variant("Replace normalizer added", v_normalizer_replace, 0) >= N_FIXTURES - 1);
}
static void test_diff_pre_tokenizer_regex(void **state) {
    (void)state;
    assert_int_equal(run_variant("pre_tokenizer regex changed", v_pre_regex, 0), 2); /* llama3, qwen2 */
}

/* Every fixture hashes differently from every other. */
static void test_fixtures_distinct(void **state) {
    (void)state;
    uint64_t h[N_FIXTURES];
    for (int i = 0; i < N_FIXTURES; i++) {
        char *dir = fixture_dir(k_fixtures[i]);
        h[i] = hash_of(dir);
        free(dir);
        for (int j = 0; j < i; j++)
            if (h[i] == h[j]) printf("%s and %s hash alike\n", k_fixtures[i], k_fixtures[j]);
        for (int j = 0; j < i; j++) assert_true(h[i] != h[j]);
    }
}

/* The directory and its tokenizer.json give one hash, tokenizer_load's too; no file gives -1. */
static void test_paths(void **state) {
    (void)state;
    for (int i = 0; i < N_FIXTURES; i++) {
        char *dir = fixture_dir(k_fixtures[i]), *file = dam_path_join(dir, "tokenizer.json");
        uint64_t hd = hash_of(dir);
        assert_true(hash_of(file) == hd);
        if (strcmp(k_fixtures[i], "wordpiece") != 0) { /* tokenizer_load refuses WordPiece */
            Tokenizer t;
            tokenizer_load(&t, dir);
            assert_true(t.hash == hd);
            tokenizer_free(&t);
        }
        free(file);
        free(dir);
    }
    char *tmp = test_tmpdir(), *missing = dam_path_join(tmp, "tokenizer.json");
    uint64_t h = 42;
    assert_int_equal(tokenizer_canonical_hash(tmp, &h), -1);
    assert_int_equal(tokenizer_canonical_hash(missing, &h), -1);
    assert_true(h == 42); /* untouched */
    dam_rm_rf(tmp);
    free(missing);
    free(tmp);
}

static void hash_path(const void *arg) {
    uint64_t h;
    tokenizer_canonical_hash(arg, &h);
}

static void test_malformed(void **state) {
    (void)state;
    char *tmp = test_tmpdir(), *file = dam_path_join(tmp, "tokenizer.json");
    static const char *const bad[] = {"{\"model\": {\"vocab\": {\"a\": 1,}", "[1, 2]", ""};
    for (int i = 0; i < 3; i++) {
        dam_write_file_atomic(file, bad[i], strlen(bad[i]));
        char msg[1024];
        assert_true(test_fails_in_child(hash_path, tmp, msg, sizeof msg));
        assert_non_null(strstr(msg, file));
        assert_non_null(strstr(msg, "malformed"));
    }
    dam_rm_rf(tmp);
    free(file);
    free(tmp);
}

/* Small documents for the rules themselves: numbers, escapes, null, merges split, no collisions. */
static void test_encoding_rules(void **state) {
    (void)state;
    static const struct {
        const char *a, *b;
        int equal;
    } cases[] = {
        {"{\"model\":{\"vocab\":{\"a\":1,\"b\":2}}}", "{\"model\":{\"vocab\":{\"b\":2.0,\"a\":1e0}}}", 1},
        {"{\"model\":{\"vocab\":{\"a\":1}}}", "{\"model\":{\"vocab\":{\"a\":1.5}}}", 0},
        {"{\"model\":{\"x\":0.1}}", "{\"model\":{\"x\":1e-1}}", 1},
        {"{\"model\":{\"x\":0}}", "{\"model\":{\"x\":-0.0}}", 1},
        {"{\"model\":{\"x\":1}}", "{\"model\":{\"x\":\"1\"}}", 0},
        {"{\"normalizer\":{\"content\":\"\\u2581\"}}", "{\"normalizer\":{\"content\":\"\xE2\x96\x81\"}}", 1},
        {"{\"normalizer\":null,\"model\":{\"dropout\":null}}", "{\"model\":{}}", 1},
        {"{\"model\":{\"fuse_unk\":false,\"ignore_merges\":false}}", "{\"model\":{}}", 1},
        {"{\"model\":{\"fuse_unk\":true}}", "{\"model\":{}}", 0},
        {"{\"normalizer\":{\"lowercase\":false}}", "{\"normalizer\":{}}", 0}, /* only the model's flags */
        {"{\"model\":{\"merges\":[\"a b c\"]}}", "{\"model\":{\"merges\":[[\"a\",\"b c\"]]}}", 1},
        {"{\"model\":{\"merges\":[\"a b c\"]}}", "{\"model\":{\"merges\":[[\"a b\",\"c\"]]}}", 0},
        {"{\"normalizer\":{\"merges\":[\"a b\"]}}", "{\"normalizer\":{\"merges\":[[\"a\",\"b\"]]}}", 0},
        {"{\"model\":{\"merges\":[\"ab\"]}}", "{\"model\":{\"merges\":[[\"ab\"]]}}", 0},
        {"{\"model\":{\"x\":[1,2]}}", "{\"model\":{\"x\":[2,1]}}", 0},
        {"{\"model\":{\"x\":[null]}}", "{\"model\":{\"x\":[]}}", 0},
        {"{\"model\":{\"a\":\"bc\"}}", "{\"model\":{\"ab\":\"c\"}}", 0},
        {"{\"model\":{\"a\":\"sbc\"}}", "{\"model\":{\"as\":\"bc\"}}", 0}, /* needs the lengths */
        {"{\"model\":{\"x\":[\"a\",\"b\"]}}", "{\"model\":{\"x\":[\"ab\"]}}", 0},
        {"{\"model\":{\"x\":{\"a\":{}}}}", "{\"model\":{\"x\":{\"a\":[]}}}", 0},
        {"{\"model\":{\"B\":1,\"a\":2}}", "{\"model\":{\"a\":2,\"B\":1}}", 1},
        {"{\"pre_tokenizer\":{\"type\":\"Whitespace\"}}", "{\"normalizer\":{\"type\":\"Whitespace\"}}", 0},
        {"{\"decoder\":{\"type\":\"Fuse\"},\"version\":\"1.0\"}", "{}", 1},
    };
    char *tmp = test_tmpdir();
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t ha = hash_text(tmp, cases[i].a), hb = hash_text(tmp, cases[i].b);
        if ((ha == hb) != cases[i].equal) {
            printf("rule case %zu: %s vs %s should hash %s\n", i, cases[i].a, cases[i].b,
                   cases[i].equal ? "equal" : "differently");
            failures++;
        }
    }
    dam_rm_rf(tmp);
    free(tmp);
    assert_int_equal(failures, 0);
}

/* A 128K-vocabulary tokenizer.json (~10 MB, like Llama 3's): it must hash in well under a second
 * (release build; the bound here is loose for sanitizer builds), and its vocab written in reverse
 * order must hash alike (the qsort of a large object). */
static void append(TokBuf *b, const char *s) { tokbuf_append(b, s, strlen(s)); }

static char *big_tokenizer(int n, int reversed) {
    TokBuf b = {0};
    char line[160];
    append(&b, "{\"added_tokens\":[],\"model\":{\"type\":\"BPE\",\"vocab\":{\n");
    for (int k = 0; k < n; k++) {
        int i = reversed ? n - 1 - k : k;
        int len = snprintf(line, sizeof line, "    \"\xC4\xA0token_piece_%06d\": %d%s\n", i, i,
                           k + 1 < n ? "," : "");
        tokbuf_append(&b, line, (size_t)len);
    }
    append(&b, "},\"merges\":[\n");
    for (int i = 0; i < n; i++) {
        int len = snprintf(line, sizeof line,
                           "      [\n        \"\xC4\xA0token_%06d\",\n        \"piece_%06d\"\n      ]%s\n", i,
                           i, i + 1 < n ? "," : "");
        tokbuf_append(&b, line, (size_t)len);
    }
    append(&b, "]}}");
    return b.data;
}

static void test_large_vocab_time(void **state) {
    (void)state;
    char *tmp = test_tmpdir();
    char *text = big_tokenizer(128000, 0);
    char *file = dam_path_join(tmp, "tokenizer.json");
    dam_write_file_atomic(file, text, strlen(text));
    double t0 = dam_now();
    uint64_t h = hash_of(tmp);
    double dt = dam_now() - t0;
    printf("128000-entry vocab + 128000 merges, %.1f MB: hashed in %.3f s\n", (double)strlen(text) / 1e6, dt);
    assert_true(dt < 10.0);
    free(text);
    text = big_tokenizer(128000, 1);
    assert_true(hash_text(tmp, text) == h);

    char *largest = NULL;
    size_t largest_n = 0;
    for (int i = 0; i < N_FIXTURES; i++) {
        char *dir = fixture_dir(k_fixtures[i]), *f = dam_path_join(dir, "tokenizer.json");
        size_t n;
        free(dam_read_file(f, &n));
        if (n > largest_n)
            free(largest), largest = f, largest_n = n;
        else
            free(f);
        free(dir);
    }
    t0 = dam_now();
    for (int r = 0; r < 10; r++) hash_of(largest);
    printf("largest fixture %s (%zu bytes): %.2f ms per hash\n", largest, largest_n, (dam_now() - t0) * 100);
    free(largest);
    free(text);
    free(file);
    dam_rm_rf(tmp);
    free(tmp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_reformatted),
        cmocka_unit_test(test_equal_keys_reversed),
        cmocka_unit_test(test_equal_keys_shuffled),
        cmocka_unit_test(test_equal_merges_strings),
        cmocka_unit_test(test_equal_outside_parts),
        cmocka_unit_test(test_equal_defaults_dropped),
        cmocka_unit_test(test_diff_vocab_id),
        cmocka_unit_test(test_diff_merges_swapped),
        cmocka_unit_test(test_diff_merge_removed),
        cmocka_unit_test(test_diff_special_flipped),
        cmocka_unit_test(test_diff_added_token),
        cmocka_unit_test(test_diff_normalizer),
        cmocka_unit_test(test_diff_pre_tokenizer_regex),
        cmocka_unit_test(test_fixtures_distinct),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_encoding_rules),
        cmocka_unit_test(test_large_vocab_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
