/* test_dataset.c — HDF5 token files: write/open/read round trips, the teacher cache (float32 and
 * float16), attributes, atomic writes, and refusals. dam_fail exits the process, so refusals run in
 * a forked child whose exit status and stderr line are checked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"

#include <fcntl.h>
#include <hdf5.h>

#include "dataset.h"
#include "util.h"

static char g_dir[64];

static char *tmp_path(const char *name) { return dam_asprintf("%s/%s", g_dir, name); }

/* A refusal ends the child with _exit: no exit handlers, so LeakSanitizer does not count the
 * buffers a process legitimately abandons when it stops on an error. */
static void child_abort_hook(int status) { _exit(status); }

/* Run fn(arg) in a child; returns its exit status and puts its stderr in err. */
static int run_child(void (*fn)(const char *), const char *arg, char *err, size_t room) {
    char errp[] = "/tmp/dam_ds_errXXXXXX";
    int fd = mkstemp(errp);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 2);
        dam_set_abort_hook(child_abort_hook);
        fn(arg);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    lseek(fd, 0, SEEK_SET);
    ssize_t k = read(fd, err, room - 1);
    err[k > 0 ? k : 0] = 0;
    close(fd);
    unlink(errp);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void write_small(const char *path, int with_mask, int32_t bad_id) {
    int32_t ids[3 * 5];
    int8_t mask[3 * 5];
    for (int i = 0; i < 15; i++) {
        ids[i] = i * 3;
        mask[i] = (int8_t)(i % 5 < 4);
    }
    if (bad_id) ids[2 * 5 + 3] = bad_id;
    DatasetAttr attrs[] = {{"tokenizer_hash", "00112233aabbccdd", 0},
                           {"vocab_size", NULL, 100},
                           {"source_file", "corpus.jsonl", 0},
                           {"n_examples", NULL, 3}};
    dataset_write(path, 3, 5, ids, with_mask ? mask : NULL, 4, attrs);
}

static void test_roundtrip(void **state) {
    (void)state;
    char *path = tmp_path("rt.h5");
    write_small(path, 1, 0);
    char *tmp = dam_asprintf("%s.tmp", path);
    assert_false(dam_file_exists(tmp)); /* written atomically: no temporary left */
    DamDataset d;
    dataset_open(&d, path);
    assert_int_equal(d.n_rows, 3);
    assert_int_equal(d.seq_len, 5);
    assert_int_equal(d.has_mask, 1);
    assert_int_equal(d.topk, 0);
    assert_int_equal(d.vocab_size, 100);
    int32_t ids[10];
    int8_t mask[10];
    dataset_read_rows(&d, 1, 2, ids, mask);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(ids[i], (5 + i) * 3);
        assert_int_equal(mask[i], (5 + i) % 5 < 4);
    }
    dataset_check_ids(&d, 100);
    /* attributes are on the root group */
    hid_t f = (hid_t)d.hid;
    const char *keys[] = {"tokenizer_hash", "vocab_size", "source_file", "n_examples"};
    for (int i = 0; i < 4; i++) assert_true(H5Aexists(f, keys[i]) > 0);
    hid_t a = H5Aopen(f, "tokenizer_hash", H5P_DEFAULT);
    hid_t t = H5Aget_type(a);
    char buf[64] = {0};
    assert_true(H5Aread(a, t, buf) >= 0);
    assert_string_equal(buf, "00112233aabbccdd");
    H5Tclose(t);
    H5Aclose(a);
    dataset_close(&d);
    free(tmp);
    free(path);
}

static void test_no_mask_reads_ones(void **state) {
    (void)state;
    char *path = tmp_path("nomask.h5");
    write_small(path, 0, 0);
    DamDataset d;
    dataset_open(&d, path);
    assert_int_equal(d.has_mask, 0);
    int32_t ids[15];
    int8_t mask[15];
    dataset_read_rows(&d, 0, 3, ids, mask);
    for (int i = 0; i < 15; i++) assert_int_equal(mask[i], 1);
    dataset_close(&d);
    free(path);
}

static void test_write_topk(void **state) {
    (void)state;
    char *path = tmp_path("topk.h5");
    write_small(path, 1, 0);
    int k = 2, n = 3 * 5 * 2;
    int32_t idx[30];
    float logits[30];
    for (int i = 0; i < n; i++) {
        idx[i] = i % 7;
        logits[i] = -0.5f * (float)i;
    }
    dataset_write_topk(path, k, idx, logits);
    dataset_write_topk(path, k, idx, logits); /* replacing an existing cache works too */
    DamDataset d;
    dataset_open(&d, path);
    assert_int_equal(d.topk, 2);
    assert_int_equal(d.topk_f16, 0);
    int32_t ri[20];
    float rl[20];
    dataset_read_topk(&d, 1, 2, ri, rl);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(ri[i], idx[10 + i]);
        assert_true(rl[i] == logits[10 + i]);
    }
    int32_t ids[15];
    dataset_read_rows(&d, 0, 3, ids, NULL); /* the ids survived the copy */
    assert_int_equal(ids[14], 42);
    dataset_close(&d);
    free(path);
}

/* A teacher cache stored as float16 (what a Python writer may produce) reads back as fp32. */
static void test_topk_f16(void **state) {
    (void)state;
    char *path = tmp_path("f16.h5");
    write_small(path, 0, 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t dims[3] = {3, 5, 1};
    hid_t sp = H5Screate_simple(3, dims, NULL);
    int32_t idx[15];
    float val[15];
    for (int i = 0; i < 15; i++) {
        idx[i] = i;
        val[i] = 0.25f * (float)i - 1.0f;
    }
    hid_t di = H5Dcreate2(f, "topk_indices", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(di, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, idx);
    hid_t f16 = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(f16, 15, 10, 5, 0, 10);
    H5Tset_size(f16, 2);
    H5Tset_ebias(f16, 15);
    hid_t dv = H5Dcreate2(f, "topk_logits", f16, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(dv, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, val);
    H5Dclose(di);
    H5Dclose(dv);
    H5Tclose(f16);
    H5Sclose(sp);
    H5Fclose(f);
    DamDataset d;
    dataset_open(&d, path);
    assert_int_equal(d.topk, 1);
    assert_int_equal(d.topk_f16, 1);
    int32_t ri[15];
    float rl[15];
    dataset_read_topk(&d, 0, 3, ri, rl);
    for (int i = 0; i < 15; i++) assert_true(rl[i] == val[i]); /* exact in fp16 */
    dataset_close(&d);
    free(path);
}

/* ---------------------------------------------------------------- refusals (in a child) */

static void child_write_empty(const char *path) { dataset_write(path, 0, 5, NULL, NULL, 0, NULL); }

static void child_open(const char *path) {
    DamDataset d;
    dataset_open(&d, path);
}

static void child_check_ids(const char *path) {
    DamDataset d;
    dataset_open(&d, path);
    dataset_check_ids(&d, 100);
}

static void expect_refusal(void (*fn)(const char *), const char *path, const char *words) {
    char err[4096];
    int st = run_child(fn, path, err, sizeof err);
    printf("refused: %s", err);
    assert_int_equal(st, 1);
    assert_int_equal(test_count_lines(err), 1);
    assert_non_null(strstr(err, "dam_dist: error: "));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, words));
}

static void test_empty_refused(void **state) {
    (void)state;
    char *path = tmp_path("empty.h5");
    expect_refusal(child_write_empty, path, "empty dataset");
    assert_false(dam_file_exists(path));
    /* a file whose /input_ids has no rows, written behind dataset_write's back */
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {0, 5};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(f, "input_ids", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    expect_refusal(child_open, path, "empty dataset");
    free(path);
}

static void test_bad_id_refused(void **state) {
    (void)state;
    char *path = tmp_path("badid.h5");
    write_small(path, 1, 150);
    expect_refusal(child_check_ids, path, "token id 150 at row 2, column 3");
    free(path);
}

/* xor `mask` into byte `at` of dataset `name`'s raw data (contiguous: H5Dget_offset). */
static void flip_byte(const char *path, const char *name, long at, int mask) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    haddr_t off = H5Dget_offset(ds);
    H5Dclose(ds), H5Fclose(f);
    assert_true(off != HADDR_UNDEF);
    FILE *fp = fopen(path, "r+b");
    fseek(fp, (long)off + at, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, (long)off + at, SEEK_SET);
    fputc(c ^ mask, fp);
    fclose(fp);
}

/* Issue 24: a flipped bit in the ids or the mask is refused when the file is opened (naming the
 * dataset); DAM_SKIP_DATA_CHECKSUMS=1 skips the check; a file without checksums (written before
 * them) is read. */
static void test_checksums(void **state) {
    (void)state;
    char *path = tmp_path("sum.h5");
    write_small(path, 1, 0);
    DamDataset d;
    dataset_open(&d, path); /* intact: verifies */
    dataset_close(&d);
    flip_byte(path, "input_ids", 9, 0x01);
    expect_refusal(child_open, path, "/input_ids does not match its checksum");
    setenv("DAM_SKIP_DATA_CHECKSUMS", "1", 1);
    dataset_open(&d, path);
    dataset_close(&d);
    unsetenv("DAM_SKIP_DATA_CHECKSUMS");
    write_small(path, 1, 0);
    flip_byte(path, "attention_mask", 14, 0x80);
    expect_refusal(child_open, path, "/attention_mask does not match its checksum");
    /* written before checksums: plain datasets, no attributes */
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {2, 3};
    int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(f, "input_ids", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    H5Dclose(ds), H5Sclose(sp), H5Fclose(f);
    dataset_open(&d, path);
    assert_int_equal(d.n_rows, 2);
    dataset_close(&d);
    free(path);
}

static void test_bad_files_refused(void **state) {
    (void)state;
    char *path = tmp_path("wrongtype.h5");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {2, 3};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(f, "input_ids", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    expect_refusal(child_open, path, "/input_ids has the wrong element type");
    free(path);

    path = tmp_path("badmask.h5");
    write_small(path, 0, 0);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t md[2] = {3, 4};
    sp = H5Screate_simple(2, md, NULL);
    ds = H5Dcreate2(f, "attention_mask", H5T_STD_I8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    expect_refusal(child_open, path, "/attention_mask is [3, 4]");
    free(path);

    path = tmp_path("missing.h5");
    expect_refusal(child_open, path, "not found");
    free(path);

    path = tmp_path("noids.h5");
    f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    expect_refusal(child_open, path, "no /input_ids");
    free(path);
}

int main(void) {
    char *d = test_tmpdir();
    snprintf(g_dir, sizeof g_dir, "%s", d);
    free(d);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),         cmocka_unit_test(test_no_mask_reads_ones),
        cmocka_unit_test(test_write_topk),        cmocka_unit_test(test_topk_f16),
        cmocka_unit_test(test_empty_refused),     cmocka_unit_test(test_bad_id_refused),
        cmocka_unit_test(test_bad_files_refused), cmocka_unit_test(test_checksums),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) rc = rc ? rc : 1;
    return rc;
}
