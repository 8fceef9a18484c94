/* test_checkpoint.c — HDF5 checkpoints (src/store/checkpoint.c) on the llama3src fixture:
 *   - ckpt_save then ckpt_load restores coefficients, Adam moments and the meta bit for bit;
 *   - listing orders steps by number whatever the directory order, skipping other names;
 *   - keep: 6 saves with keep 2 leave exactly steps 5 and 6, and <dir>/latest names step 6; pruning
 *     never removes the file `latest` names and clears .tmp files of saves that never completed;
 *   - a checkpoint made for other sources is refused with a message naming both lists;
 *   - checksums (format 3): XXH64 against the reference's values; a flipped bit in a coefficient,
 *     an Adam moment or the step attribute fails ckpt_verify; ckpt_find_resumable falls back to the
 *     newest earlier checkpoint that verifies; pruning keeps that one whatever `keep` says. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "checkpoint.h"
#include "xxh64.h"
#include <hdf5.h>
#include "config.h"
#include "test_util.h"
#include "test_dam.h"

/* Fill coefficients and moments with distinct values derived from (tensor, index, salt). */
static void fill_state(DamModel *m, float salt) {
    float *c = test_coef_get(m, DAM_COEF_C), *am = test_coef_get(m, DAM_COEF_ADAM_M),
          *av = test_coef_get(m, DAM_COEF_ADAM_V);
    for (int t = 0; t < m->n_tensors; t++) {
        DamTensor *x = &m->tensors[t];
        size_t n = (size_t)m->n_coef_rows * x->dim, o = x->coef_at;
        for (size_t j = 0; j < n; j++) {
            c[o + j] = salt + 0.001f * (float)t + 1e-6f * (float)j;
            am[o + j] = -salt * 1e-3f * (float)(j % 97);
            av[o + j] = salt * 1e-5f * (float)(t + 1);
        }
    }
    test_coef_put(m, DAM_COEF_C, c), test_coef_put(m, DAM_COEF_ADAM_M, am),
        test_coef_put(m, DAM_COEF_ADAM_V, av);
    free(c), free(am), free(av);
    dam_model_refresh(m);
}

static void sample_meta(const DamModel *m, CkptMeta *meta, int64_t step) {
    memset(meta, 0, sizeof *meta);
    meta->step = step, meta->total_steps = 40, meta->tokens_seen = 1234567;
    meta->n_datasets = 2, meta->cursor[0] = 17, meta->cursor[1] = 5;
    meta->config_hash = 0xfeedfacecafebeefull;
    meta->config = "{\"train\":{\"lr\":0.001}}";
    for (int i = 0; i < m->n_coef_rows; i++) {
        if (i) strcat(meta->sources, ";");
        strcat(meta->sources, m->row_names[i]);
    }
}

static int same_floats(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void test_round_trip(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    DamModel *m = &dc.m;
    char *dir = test_tmpdir();
    CkptMeta meta, got;
    fill_state(m, 0.25f);
    sample_meta(m, &meta, 7);
    char *path = ckpt_save(dir, m, &meta, 2);
    /* keep copies of what was saved, then scribble over the model and load */
    const DamCoefBlock blocks[3] = {DAM_COEF_C, DAM_COEF_ADAM_M, DAM_COEF_ADAM_V};
    float *saved[3];
    for (int k = 0; k < 3; k++) saved[k] = test_coef_get(m, blocks[k]);
    fill_state(m, 9.0f);
    CkptFile *f = ckpt_open_read(path, &got);
    assert_int_equal(got.format_version, CKPT_FORMAT_VERSION);
    assert_string_equal(got.config, meta.config);
    ckpt_read_model(f, m);
    ckpt_close(f);
    for (int k = 0; k < 3; k++) {
        float *now = test_coef_get(m, blocks[k]);
        assert_true(same_floats(now, saved[k], m->coef.n));
        free(now), free(saved[k]);
    }
    assert_int_equal(got.step, 7);
    assert_int_equal(got.total_steps, 40);
    assert_int_equal(got.tokens_seen, 1234567);
    assert_int_equal(got.n_datasets, 2);
    assert_int_equal(got.cursor[0], 17);
    assert_int_equal(got.cursor[1], 5);
    assert_true(got.config_hash == meta.config_hash);
    assert_string_equal(got.sources, meta.sources);
    char *latest = ckpt_latest(dir);
    assert_non_null(latest);
    assert_string_equal(latest, path);
    free(latest), free(path);
    dam_case_close(&dc);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static int count_files(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += !strncmp(e->d_name, prefix, strlen(prefix));
    if (d) closedir(d);
    return n;
}

static void touch(const char *dir, const char *name) {
    char *p = dam_path_join(dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    free(p);
}

static void rm_tree(char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

/* Created out of order, with names that are not complete checkpoints mixed in. */
static void test_list_orders_by_step(void **s) {
    (void)s;
    char *dir = test_tmpdir();
    const char *names[] = {"step_00000010.h5",  "step_00000002.h5",     "step_123456789.h5", "latest",
                           "step_00000001.h5",  "step_00000007.h5.tmp", "step_ab.h5",        "step_.h5",
                           "step_00000003.h5x", "step_00000009.h5",     "xstep_00000004.h5"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) touch(dir, names[i]);
    int64_t *steps;
    int n = ckpt_list_steps(dir, &steps);
    const int64_t want[] = {1, 2, 9, 10, 123456789};
    assert_int_equal(n, 5);
    for (int i = 0; i < n; i++) assert_int_equal(steps[i], want[i]);
    free(steps);
    char *empty = test_tmpdir();
    assert_int_equal(ckpt_list_steps(empty, &steps), 0);
    assert_null(steps);
    assert_int_equal(ckpt_list_steps("/nonexistent/dam_dist", &steps), 0);
    rm_tree(empty), rm_tree(dir);
}

static int file_in(const char *dir, const char *name) {
    char *p = dam_path_join(dir, name);
    int ok = dam_file_exists(p);
    free(p);
    return ok;
}

static void test_keep_newest(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    char *dir = test_tmpdir();
    touch(dir, "step_00000003.h5.tmp"); /* a save that never completed */
    CkptMeta meta;
    for (int step = 1; step <= 6; step++) {
        fill_state(&dc.m, (float)step);
        sample_meta(&dc.m, &meta, step);
        free(ckpt_save(dir, &dc.m, &meta, 2));
    }
    int64_t *steps;
    assert_int_equal(ckpt_list_steps(dir, &steps), 2);
    assert_int_equal(steps[0], 5);
    assert_int_equal(steps[1], 6);
    free(steps);
    assert_int_equal(count_files(dir, "step_"), 2); /* the stale .tmp is gone too */
    char *latest = ckpt_latest(dir);
    assert_non_null(strstr(latest, "step_00000006.h5"));
    free(latest);
    /* latest pointing at an older file (a user's rollback): pruning keeps it */
    char *lp = dam_path_join(dir, "latest");
    dam_write_file_atomic(lp, "step_00000005.h5\n", 17);
    free(lp);
    ckpt_prune(dir, 1);
    assert_true(file_in(dir, "step_00000005.h5") && file_in(dir, "step_00000006.h5"));
    dam_case_close(&dc);
    rm_tree(dir);
}

/* A checkpoint whose sources list differs from the model's: loaded in a child, which must fail. */
static void load_into_fixture(const void *arg) {
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    CkptMeta meta;
    ckpt_load((const char *)arg, &dc.m, &meta);
}

static void test_wrong_sources_refused(void **s) {
    (void)s;
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    char *dir = test_tmpdir();
    CkptMeta meta;
    fill_state(&dc.m, 0.5f);
    sample_meta(&dc.m, &meta, 3);
    snprintf(meta.sources, sizeof meta.sources, "other_a;other_b");
    char *path = ckpt_save(dir, &dc.m, &meta, 1);
    dam_case_close(&dc);
    char msg[2048];
    assert_true(test_fails_in_child(load_into_fixture, path, msg, sizeof msg));
    printf("refusal: %s\n", msg);
    assert_non_null(strstr(msg, "other_a;other_b"));
    assert_non_null(strstr(msg, "sources"));
    free(path);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

/* A checkpoint recorded before a setting existed resumes as unchanged when this run has the value
 * that reproduces the old behaviour, and as changed when it has another; real changes still count. */
/* config_diff finds a change between two recorded settings, and its message names it. */
static void expect_changed(const char *old, const char *now, const char *named) {
    char out[1024];
    assert_int_equal(config_diff(old, now, out, sizeof out), 1);
    assert_non_null(strstr(out, named));
}

static void test_config_diff_across_versions(void **s) {
    (void)s;
    char out[1024];
    const char *old = "{\"merge\":{\"nonlinearity\":\"none\"},\"train\":{\"lr\":0.001}}";
    const char *same =
        "{\"merge\":{\"nonlinearity\":\"none\",\"bias_init\":\"init\",\"coef_dtype\":\"float32\"},"
        "\"train\":{\"lr\":0.001,"
        "\"mofo_scope\":\"tensor\",\"mofo_k\":\"ceil\",\"mofo_decay\":\"selected\","
        "\"warmup_under_constant\":true,\"shuffle\":false,\"warmup_ratio\":0,"
        "\"schedule_args\":{\"num_cycles\":0.5}},\"loss\":{\"kl_reduction\":\"token\","
        "\"weighted_overlap\":0,\"reg_biases\":true}}";
    assert_int_equal(config_diff(old, same, out, sizeof out), 0);
    const char *wov = "{\"merge\":{\"nonlinearity\":\"none\"},\"train\":{\"lr\":0.001},"
                      "\"loss\":{\"weighted_overlap\":0.01}}";
    expect_changed(old, wov, "loss.weighted_overlap (absent -> 0.01)");
    const char *other = "{\"merge\":{\"nonlinearity\":\"none\"},\"train\":{\"lr\":0.001,\"shuffle\":true}}";
    expect_changed(old, other, "train.shuffle (absent -> true)");
    const char *bf16 =
        "{\"merge\":{\"nonlinearity\":\"none\",\"coef_dtype\":\"bfloat16\"},\"train\":{\"lr\":0.001}}";
    expect_changed(old, bf16, "merge.coef_dtype (absent -> \"bfloat16\")");
    const char *lr = "{\"merge\":{\"nonlinearity\":\"none\"},\"train\":{\"lr\":0.002}}";
    expect_changed(old, lr, "train.lr (0.001 -> 0.002)");
    const char *preset =
        "{\"preset\":\"arcee\",\"merge\":{\"nonlinearity\":\"none\"},\"train\":{\"lr\":0.001}}";
    assert_int_equal(config_diff(old, preset, out, sizeof out), 1);
}

static void test_xxh64_vectors(void **s) {
    (void)s;
    assert_true(dam_xxh64("", 0, 0) == 0xef46db3751d8e999ull);
    assert_true(dam_xxh64("abc", 3, 0) == 0x44bc2cf5ad770999ull);
    assert_true(dam_xxh64("Nobody inspects the spammish repetition", 39, 0) == 0xfbcea83c8a378bf1ull);
    char b[1000];
    for (int i = 0; i < 1000; i++) b[i] = (char)(i * 7);
    DamXxh64 h; /* streaming in odd pieces equals one call */
    dam_xxh64_init(&h, 5);
    for (int i = 0; i < 1000; i += 13) dam_xxh64_update(&h, b + i, i + 13 <= 1000 ? 13 : (size_t)(1000 - i));
    assert_true(dam_xxh64_digest(&h) == dam_xxh64(b, 1000, 5));
}

/* xor 0x10 into byte `at` of dataset `name`'s raw data, or of attribute `name` of the root. */
static void flip_in(const char *path, const char *name, long at) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (name[0] == '/') {
        hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
        haddr_t off = H5Dget_offset(d);
        H5Dclose(d), H5Fclose(f);
        assert_true(off != HADDR_UNDEF);
        FILE *fp = fopen(path, "r+b");
        fseek(fp, (long)off + at, SEEK_SET);
        int c = fgetc(fp);
        fseek(fp, (long)off + at, SEEK_SET);
        fputc(c ^ 0x10, fp);
        fclose(fp);
    } else { /* an attribute, rewritten in place with one bit changed */
        hid_t a = H5Aopen(f, name, H5P_DEFAULT);
        int64_t v;
        H5Aread(a, H5T_NATIVE_INT64, &v);
        v ^= 0x10;
        H5Awrite(a, H5T_NATIVE_INT64, &v);
        H5Aclose(a), H5Fclose(f);
    }
}

static char *step_file(const char *dir, int step) { return dam_asprintf("%s/step_%08d.h5", dir, step); }

static void test_checksums_fallback_and_prune(void **s) {
    (void)s;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    DamCase dc;
    dam_case_open(&dc, "llama3src", "kl");
    char *dir = test_tmpdir(), why[512];
    CkptMeta meta;
    for (int step = 1; step <= 4; step++) {
        fill_state(&dc.m, (float)step);
        sample_meta(&dc.m, &meta, step);
        free(ckpt_save(dir, &dc.m, &meta, 0));
    }
    char *p[5];
    for (int i = 1; i <= 4; i++) {
        p[i] = step_file(dir, i);
        assert_int_equal(ckpt_verify(p[i], why, sizeof why), 1);
    }
    const char *t = dc.m.tensors[dc.m.n_tensors - 1].name;
    char *coef = dam_asprintf("/coefficients/%s", t), *adam = dam_asprintf("/adam_v/%s", t);
    flip_in(p[4], coef, 4);
    assert_int_equal(ckpt_verify(p[4], why, sizeof why), -1);
    assert_non_null(strstr(why, "does not match its checksum"));
    assert_non_null(strstr(why, coef));
    flip_in(p[3], adam, 0);
    assert_int_equal(ckpt_verify(p[3], why, sizeof why), -1);
    int n;
    char *got = ckpt_find_resumable(dir, &n); /* latest (4) and 3 refused: 2 */
    assert_non_null(got);
    assert_string_equal(got, p[2]);
    assert_int_equal(n, 3);
    free(got);
    flip_in(p[2], "step", 0); /* the attributes are covered too */
    assert_int_equal(ckpt_verify(p[2], why, sizeof why), -1);
    assert_non_null(strstr(why, "attributes"));
    got = ckpt_find_resumable(dir, &n);
    assert_string_equal(got, p[1]);
    free(got);
    /* keep 1: 4 stays (latest), 1 stays (the newest that verifies), 2 and 3 go */
    ckpt_prune(dir, 1);
    assert_true(file_in(dir, "step_00000004.h5") && file_in(dir, "step_00000001.h5"));
    assert_false(file_in(dir, "step_00000002.h5") || file_in(dir, "step_00000003.h5"));
    /* a truncated file fails verification without failing the process */
    assert_int_equal(truncate(p[1], 2000), 0);
    assert_int_equal(ckpt_verify(p[1], why, sizeof why), -1);
    got = ckpt_find_resumable(dir, &n);
    assert_null(got);
    assert_int_equal(n, 2);
    for (int i = 1; i <= 4; i++) free(p[i]);
    free(coef), free(adam);
    dam_case_close(&dc);
    rm_tree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_list_orders_by_step),
        cmocka_unit_test(test_keep_newest),
        cmocka_unit_test(test_wrong_sources_refused),
        cmocka_unit_test(test_config_diff_across_versions),
        cmocka_unit_test(test_xxh64_vectors),
        cmocka_unit_test(test_checksums_fallback_and_prune),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
