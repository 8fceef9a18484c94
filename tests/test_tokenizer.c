/* test_tokenizer.c — the C tokenizer against what the `tokenizers` library produced
 * (tests/fixtures/tokenizers/<name>/expected.json, made by make_tokenizer_fixtures.py):
 * token-for-token equality on every corpus line, with and without the post-processor's special
 * tokens, decode equality, NFC normalization of decomposed text, and refusals (unsupported model,
 * invalid UTF-8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"

#include "json_util.h"
#include "tokenizer.h"
#include "util.h"

static int print_ids(char *buf, size_t room, const int32_t *ids, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n && (size_t)k + 12 < room; i++)
        k += snprintf(buf + k, room - (size_t)k, "%d ", ids[i]);
    return k;
}

/* Compare the C tokenizer with an expected file (expected.json, or expected_nfd.json: decomposed
 * text through an NFC normalizer) of one fixture; prints every mismatch. Decoded text is compared as
 * C strings (JSON cannot carry the NUL that <0x00> decodes to). */
static void check_fixture_file(const char *name, const char *file) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/%s", name);
    char *dir = test_fixture(rel);
    char *exp_path = dam_path_join(dir, file);
    cJSON *exp = json_parse_file(exp_path);
    Tokenizer t;
    tokenizer_load(&t, dir);
    assert_int_equal(t.vocab_size, json_get_int(exp, "vocab_size", exp_path, ""));

    int failures = 0, n_cases = 0;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(exp, "cases");
    for (const cJSON *c = cases->child; c; c = c->next, n_cases++) {
        const char *text = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "ids");
        const cJSON *want_special = cJSON_GetObjectItemCaseSensitive(c, "ids_special");
        const char *want_text = cJSON_GetObjectItemCaseSensitive(c, "decoded")->valuestring;
        TokIds got = {0};
        const char *err = tokenizer_encode(&t, text, strlen(text), &got);
        if (err) {
            printf("%s case %d: encode refused: %s\n", name, n_cases, err);
            failures++;
            tokids_free(&got);
            continue;
        }
        int same = (int)got.n == cJSON_GetArraySize(want);
        for (size_t i = 0; same && i < got.n; i++)
            same = got.ids[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
        if (!same) {
            char buf[4096];
            print_ids(buf, sizeof buf, got.ids, got.n);
            char *w = cJSON_PrintUnformatted(want);
            printf("%s case %d %s\n  got  %s\n  want %s\n", name, n_cases, text, buf, w);
            free(w);
            failures++;
        }
        /* with the post-processor's prefix/suffix (what `prepare` adds by default) */
        int ns = cJSON_GetArraySize(want_special);
        int same_special = ns == t.n_prefix + (int)got.n + t.n_suffix;
        for (int i = 0; same_special && i < ns; i++) {
            int32_t id = i < t.n_prefix                ? t.prefix[i]
                         : i < t.n_prefix + (int)got.n ? got.ids[i - t.n_prefix]
                                                       : t.suffix[i - t.n_prefix - (int)got.n];
            same_special = id == cJSON_GetArrayItem(want_special, i)->valueint;
        }
        if (!same_special) {
            printf("%s case %d: special tokens differ (prefix %d, suffix %d)\n", name, n_cases, t.n_prefix,
                   t.n_suffix);
            failures++;
        }
        size_t len;
        char *text_back = tokenizer_decode(&t, got.ids, got.n, &len);
        if (strcmp(text_back, want_text) != 0) {
            printf("%s case %d decode\n  got  [%s]\n  want [%s]\n", name, n_cases, text_back, want_text);
            failures++;
        }
        free(text_back);
        tokids_free(&got);
    }
    const cJSON *decodes = cJSON_GetObjectItemCaseSensitive(exp, "decode_cases");
    int n_decodes = 0;
    for (const cJSON *c = decodes->child; c; c = c->next, n_decodes++) {
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(c, "ids");
        const char *want_text = cJSON_GetObjectItemCaseSensitive(c, "decoded")->valuestring;
        int32_t buf[64];
        int n = 0;
        for (const cJSON *i = ids->child; i && n < 64; i = i->next) buf[n++] = i->valueint;
        size_t len;
        char *got = tokenizer_decode(&t, buf, (size_t)n, &len);
        if (strcmp(got, want_text) != 0) {
            printf("%s decode case %d\n  got  [%s]\n  want [%s]\n", name, n_decodes, got, want_text);
            failures++;
        }
        free(got);
    }
    printf("%-22s %-18s %d corpus lines, %d decode cases: %s\n", name, file, n_cases, n_decodes,
           failures ? "NOT OK" : "OK");
    tokenizer_free(&t);
    cJSON_Delete(exp);
    free(exp_path);
    free(dir);
    assert_int_equal(failures, 0);
}
static void check_fixture(const char *name) { check_fixture_file(name, "expected.json"); }

static void test_bytelevel_llama3(void **state) {
    (void)state;
    check_fixture("bytelevel_llama3");
}
static void test_bytelevel_qwen2(void **state) {
    (void)state;
    check_fixture("bytelevel_qwen2");
}
/* NFC (Qwen2-family tokenizers): decomposed text is normalized as `tokenizers` does, not refused.
 * The Qwen2 fixture on decomposed lines (jamo, kana + voicing marks, A + ring, singletons, marks out
 * of order, composition exclusions, a mark cut off by a special token) and the NFD of its corpus;
 * NFC inside a Sequence before Prepend/Replace; a normalized added token with decomposed content. */
static void test_nfc_qwen2_decomposed(void **state) {
    (void)state;
    check_fixture_file("bytelevel_qwen2", "expected_nfd.json");
}
static void test_nfc_in_sequence(void **state) {
    (void)state;
    check_fixture("spm_nfc");
}
static void test_nfc_added_token(void **state) {
    (void)state;
    check_fixture("bytelevel_nfc_added");
}
/* White_Space from utf8proc's categories (what lstrip/rstrip of added tokens skip). */
static void test_whitespace_classes(void **state) {
    (void)state;
    const uint32_t yes[] = {0x09,   0x0A,   0x0D,   0x20,   0x85,   0xA0,   0x1680,
                            0x2000, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
    const uint32_t no[] = {0x00, 0x1F, 'a', 0x200B, 0x180E, 0xFEFF, 0x2060, 0x3001, 0x1F600};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) assert_true(tok_is_whitespace(yes[i]));
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) assert_false(tok_is_whitespace(no[i]));
    /* the NFC quick check lets ASCII, Latin-1, CJK ideographs and Hangul syllables through */
    const char *stable = "abc \xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xED\x95\x9C";
    assert_int_equal(tok_nfc_quick_check(stable, strlen(stable)), strlen(stable));
    const char *mark = "ae\xCC\x81"; /* e + U+0301 */
    assert_int_equal(tok_nfc_quick_check(mark, strlen(mark)), 2);
    TokBuf b = {0};
    assert_int_equal(tok_nfc_append(&b, mark, strlen(mark)), 0);
    assert_string_equal(b.data, "a\xC3\xA9");
    free(b.data);
}
static void test_bytelevel_gpt2(void **state) {
    (void)state;
    check_fixture("bytelevel_gpt2");
}
static void test_spm_legacy(void **state) {
    (void)state;
    check_fixture("spm_legacy");
}
static void test_spm_metaspace(void **state) {
    (void)state;
    check_fixture("spm_metaspace");
}
static void test_spm_metaspace_split(void **state) {
    (void)state;
    check_fixture("spm_metaspace_split");
}

/* Settings read from tokenizer_config.json and the post-processor. */
static void test_special_settings(void **state) {
    (void)state;
    char *dir = test_fixture("tokenizers/spm_legacy");
    Tokenizer t;
    tokenizer_load(&t, dir);
    assert_int_equal(t.bos_id, 1);
    assert_int_equal(t.eos_id, 2);
    assert_int_equal(t.pad_id, 2); /* no pad_token: eos */
    assert_int_equal(t.n_prefix, 1);
    assert_int_equal(t.n_suffix, 0);
    assert_int_equal(tokenizer_token_id(&t, "<0x41>"), 3 + 0x41);
    tokenizer_free(&t);
    free(dir);

    dir = test_fixture("tokenizers/bytelevel_qwen2");
    tokenizer_load(&t, dir);
    assert_int_equal(t.n_prefix, 0);
    assert_int_equal(t.eos_id, tokenizer_token_id(&t, "<|im_end|>"));
    assert_int_equal(t.pad_id, tokenizer_token_id(&t, "<|endoftext|>"));
    tokenizer_free(&t);
    free(dir);
}

/* The same text twice gives the same ids (the word cache must not change results). */
static void test_cache_consistency(void **state) {
    (void)state;
    char *dir = test_fixture("tokenizers/bytelevel_llama3");
    Tokenizer t;
    tokenizer_load(&t, dir);
    const char *text = "Hello world, hello world! 12345 日本語";
    TokIds a = {0}, b = {0};
    assert_null(tokenizer_encode(&t, text, strlen(text), &a));
    assert_null(tokenizer_encode(&t, text, strlen(text), &b));
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    tokids_free(&a);
    tokids_free(&b);
    tokenizer_free(&t);
    free(dir);
}

static void test_invalid_utf8(void **state) {
    (void)state;
    char *dir = test_fixture("tokenizers/bytelevel_llama3");
    Tokenizer t;
    tokenizer_load(&t, dir);
    TokIds ids = {0};
    const char *bad = "abc\xC3(def";
    const char *err = tokenizer_encode(&t, bad, strlen(bad), &ids);
    assert_non_null(err);
    assert_non_null(strstr(err, "invalid UTF-8 at byte 3"));
    tokids_free(&ids);
    tokenizer_free(&t);
    free(dir);
}

/* An unsupported model is refused through the CLI: exit 1, one line naming the type and file. */
static void test_wordpiece_refused(void **state) {
    (void)state;
    char *dir = test_fixture("tokenizers/wordpiece");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "echo hello | %s tokenize --tokenizer %s", test_dam_bin(), dir);
    TestRun *r = malloc(sizeof *r);
    test_run(r, cmd);
    printf("stderr: %s", r->err);
    assert_true(r->exited);
    assert_int_equal(r->status, 1);
    assert_int_equal(test_count_lines(r->err), 1);
    assert_non_null(strstr(r->err, "unsupported tokenizer model WordPiece"));
    assert_non_null(strstr(r->err, "wordpiece/tokenizer.json"));
    free(r);
    free(dir);
}

/* tokenize and --decode through the CLI agree with the library. */
static void test_cli_roundtrip(void **state) {
    (void)state;
    char *dir = test_fixture("tokenizers/spm_legacy");
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "printf 'Hello world' | %s tokenize --tokenizer %s | %s tokenize --decode --tokenizer %s",
             test_dam_bin(), dir, test_dam_bin(), dir);
    TestRun *r = malloc(sizeof *r);
    test_run(r, cmd);
    assert_int_equal(r->status, 0);
    assert_string_equal(r->out, "Hello world");
    free(r);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytelevel_llama3),   cmocka_unit_test(test_bytelevel_qwen2),
        cmocka_unit_test(test_bytelevel_gpt2),     cmocka_unit_test(test_spm_legacy),
        cmocka_unit_test(test_spm_metaspace),      cmocka_unit_test(test_spm_metaspace_split),
        cmocka_unit_test(test_special_settings),   cmocka_unit_test(test_cache_consistency),
        cmocka_unit_test(test_invalid_utf8),       cmocka_unit_test(test_wordpiece_refused),
        cmocka_unit_test(test_cli_roundtrip),      cmocka_unit_test(test_nfc_qwen2_decomposed),
        cmocka_unit_test(test_nfc_in_sequence),    cmocka_unit_test(test_nfc_added_token),
        cmocka_unit_test(test_whitespace_classes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
