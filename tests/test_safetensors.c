/* test_safetensors.c — the safetensors reader and writer:
 *   - the sharded writer (several shards + index.json) read back by st_model_open, data exact;
 *   - one shard is written as model.safetensors with no index; a tensor larger than shard_bytes
 *     gets a shard of its own; stale files of the other layout are removed;
 *   - st_write_file headers are padded to 8 bytes and carry __metadata__ {"format": "pt"}; st_write_file_meta
 *     adds entries that st_metadata reads back;
 *   - bf16 / f16 conversions exact on known values (round to nearest even, subnormals, inf, NaN);
 *   - every header check, in process: each bad header fails naming the file and the tensor.
 * Failures are checked in a forked child whose abort hook reports dam_last_error() through a pipe
 * and _exits, so no half-built state leaks into this process (LeakSanitizer stays quiet). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <cJSON.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>

#include "safetensors.h"
#include "test_util.h"
#include "util.h"

static void assert_fails_with(void (*fn)(const void *), const void *arg, const char *want1,
                              const char *want2) {
    char msg[1024];
    int failed = test_fails_in_child(fn, arg, msg, sizeof msg);
    printf("  refused: %s\n", msg);
    assert_true(failed);
    assert_non_null(strstr(msg, want1));
    if (want2) assert_non_null(strstr(msg, want2));
}

/* ---------------------------------------------------------------- helpers */

/* A safetensors file from a literal header and `data_bytes` bytes of data. */
static void write_raw(const char *path, const char *header, size_t data_bytes) {
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(n >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_bytes; i++) fputc((int)(i & 0xff), f);
    fclose(f);
}

static void open_and_close(const void *path) {
    StFile f;
    st_open(&f, path);
    st_close(&f);
}

static void model_open_and_close(const void *dir) {
    StModel m;
    st_model_open(&m, dir);
    st_model_close(&m);
}

/* Deterministic fp32 values that bf16 represents exactly (8 significant bits). */
static void fill_bf16_exact(float *x, size_t n, int seed) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)((i * 37 + (size_t)seed * 11) % 255) - 127) / 64.0f;
}

/* ---------------------------------------------------------------- writer round trips */

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[3];
} Spec;

static const Spec round_trip_specs[] = {
    {"model.embed_tokens.weight", 2, {64, 32}},
    {"model.layers.0.input_layernorm.weight", 1, {32}},
    {"model.layers.0.self_attn.q_proj.weight", 2, {32, 32}},
    {"model.layers.0.self_attn.q_proj.bias", 1, {32}},
    {"model.layers.0.mlp.down_proj.weight", 2, {32, 48}},
    {"scalar.like", 0, {0}},
    {"a.three_d", 3, {2, 3, 4}},
    {"model.norm.weight", 1, {32}},
    {"lm_head.weight", 2, {64, 32}},
};
#define N_RT ((int)(sizeof round_trip_specs / sizeof *round_trip_specs))

static size_t spec_numel(const Spec *s) {
    size_t n = 1;
    for (int d = 0; d < s->ndim; d++) n *= (size_t)s->shape[d];
    return n;
}

/* Write the specs with st_writer (BF16 through add_f32, every third one F32 through add), read
 * them back with st_model_open, and compare everything. Returns the number of shard files. */
static int round_trip(const char *dir, size_t shard_bytes) {
    StWriter *w = st_writer_new(dir, shard_bytes);
    float buf[4096];
    for (int i = 0; i < N_RT; i++) {
        const Spec *s = &round_trip_specs[i];
        fill_bf16_exact(buf, spec_numel(s), i);
        if (i % 3 == 2)
            st_writer_add(w, s->name, DAM_F32, s->ndim, s->shape, buf);
        else
            st_writer_add_f32(w, s->name, DAM_BF16, s->ndim, s->shape, buf);
    }
    st_writer_finish(w, "pt");

    StModel m;
    st_model_open(&m, dir);
    assert_int_equal(m.n_tensors, N_RT);
    float want[4096], got[4096];
    for (int i = 0; i < N_RT; i++) {
        const Spec *s = &round_trip_specs[i];
        const StTensor *t = st_model_get(&m, s->name, s->ndim, s->shape);
        assert_int_equal(t->dtype, i % 3 == 2 ? DAM_F32 : DAM_BF16);
        assert_int_equal(t->numel, spec_numel(s));
        fill_bf16_exact(want, t->numel, i);
        dam_to_f32(got, t->data, t->dtype, t->numel);
        assert_memory_equal(got, want, t->numel * sizeof(float));
        st_tensor_release(t);
        /* released pages of a read-only file mapping fault back in with the same bytes */
        dam_to_f32(got, t->data, t->dtype, t->numel);
        assert_memory_equal(got, want, t->numel * sizeof(float));
    }
    assert_null(st_model_find(&m, "model.layers.1.input_layernorm.weight"));
    int n_files = m.n_files;
    st_model_close(&m);
    return n_files;
}

static void test_sharded_round_trip(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    /* 64*32*2 = 4096-byte embeddings: shards of at most 5000 bytes force several */
    int n = round_trip(dir, 5000);
    printf("  %d shards\n", n);
    assert_true(n >= 3);
    char *index = dam_path_join(dir, "model.safetensors.index.json");
    size_t len;
    char *text = dam_read_file(index, &len);
    cJSON *root = cJSON_Parse(text);
    const cJSON *map = cJSON_GetObjectItem(root, "weight_map");
    assert_int_equal(cJSON_GetArraySize(map), N_RT);
    size_t total = 0;
    for (int i = 0; i < N_RT; i++) total += spec_numel(&round_trip_specs[i]) * (i % 3 == 2 ? 4 : 2);
    assert_int_equal(
        (size_t)cJSON_GetObjectItem(cJSON_GetObjectItem(root, "metadata"), "total_size")->valuedouble, total);
    char first[64];
    snprintf(first, sizeof first, "model-00001-of-%05d.safetensors", n);
    assert_string_equal(cJSON_GetObjectItem(map, "model.embed_tokens.weight")->valuestring, first);
    cJSON_Delete(root);
    free(text);
    char *single = dam_path_join(dir, "model.safetensors");
    assert_false(dam_file_exists(single));
    free(single);
    free(index);
    dam_rm_rf(dir);
    free(dir);
}

static void test_single_shard_has_no_index(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    assert_true(round_trip(dir, 5000) > 1);                /* leaves an index behind ... */
    assert_int_equal(round_trip(dir, (size_t)1 << 30), 1); /* ... which a single-file write removes */
    char *index = dam_path_join(dir, "model.safetensors.index.json");
    char *single = dam_path_join(dir, "model.safetensors");
    assert_false(dam_file_exists(index));
    assert_true(dam_file_exists(single));
    free(index);
    free(single);
    dam_rm_rf(dir);
    free(dir);
}

static void test_large_tensor_gets_own_shard(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    StWriter *w = st_writer_new(dir, 100);
    float x[64] = {0};
    int64_t small = 4, big = 64;
    st_writer_add(w, "a", DAM_F32, 1, &small, x); /* 16 bytes */
    st_writer_add(w, "b", DAM_F32, 1, &big, x);   /* 256 bytes > 100: alone */
    st_writer_add(w, "c", DAM_F32, 1, &small, x);
    st_writer_add(w, "d", DAM_F32, 1, &small, x);
    st_writer_finish(w, "pt");
    StModel m;
    st_model_open(&m, dir);
    assert_int_equal(m.n_files, 3);
    assert_non_null(strstr(st_model_find(&m, "a")->file, "model-00001-of-00003"));
    assert_non_null(strstr(st_model_find(&m, "b")->file, "model-00002-of-00003"));
    assert_non_null(strstr(st_model_find(&m, "c")->file, "model-00003-of-00003"));
    assert_non_null(strstr(st_model_find(&m, "d")->file, "model-00003-of-00003"));
    st_model_close(&m);
    dam_rm_rf(dir);
    free(dir);
}

static void test_write_file_header_layout(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char *path = dam_path_join(dir, "one.safetensors");
    const char *names[] = {"zeta", "alpha", "mid"};
    dam_dtype dt[] = {DAM_F16, DAM_I64, DAM_U8};
    int nd[] = {1, 2, 1};
    int64_t s0[] = {3}, s1[] = {2, 2}, s2[] = {5};
    const int64_t *shapes[] = {s0, s1, s2};
    uint16_t h[3] = {0x3c00, 0xc000, 0x7bff};
    int64_t i64[4] = {-1, 2, INT64_MAX, INT64_MIN};
    uint8_t u8[5] = {1, 2, 3, 4, 255};
    const void *datas[] = {h, i64, u8};
    st_write_file(path, 3, names, dt, nd, shapes, datas);

    size_t n;
    char *raw = dam_read_file(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)raw[i];
    assert_int_equal((8 + hlen) % 8, 0);
    assert_int_equal(n, 8 + hlen + 6 + 32 + 5);
    cJSON *hdr = cJSON_ParseWithLength(raw + 8, hlen);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(hdr, "__metadata__"), "format")->valuestring,
                        "pt");
    cJSON_Delete(hdr);
    free(raw);

    StFile f;
    st_open(&f, path);
    assert_int_equal(f.n_tensors, 3);
    assert_string_equal(f.tensors[0].name, "alpha"); /* sorted by name */
    assert_string_equal(f.tensors[2].name, "zeta");
    assert_memory_equal(st_find(&f, "alpha")->data, i64, sizeof i64);
    assert_memory_equal(st_find(&f, "mid")->data, u8, sizeof u8);
    float hf[3];
    dam_to_f32(hf, st_find(&f, "zeta")->data, DAM_F16, 3);
    assert_true(hf[0] == 1.0f && hf[1] == -2.0f && hf[2] == 65504.0f);
    assert_null(st_find(&f, "beta"));
    assert_null(st_find(&f, ""));
    st_close(&f);
    free(path);
    dam_rm_rf(dir);
    free(dir);
}

/* st_write_file_meta's entries come back from st_metadata beside "format"; an absent key is NULL. */
static void test_write_file_metadata(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char *path = dam_path_join(dir, "coef.safetensors");
    const char *names[] = {"w"};
    dam_dtype dt[] = {DAM_F32};
    int nd[] = {2};
    int64_t s0[] = {2, 1};
    const int64_t *shapes[] = {s0};
    float v[2] = {0.25f, 0.75f};
    const void *datas[] = {v};
    const char *meta[] = {ST_COEF_ROWS_KEY, "[\"math\",\"code\"]"};
    st_write_file_meta(path, 1, names, dt, nd, shapes, datas, 1, meta);
    StFile f;
    st_open(&f, path);
    char *rows = st_metadata(&f, ST_COEF_ROWS_KEY), *format = st_metadata(&f, "format");
    assert_string_equal(rows, "[\"math\",\"code\"]");
    assert_string_equal(format, "pt");
    assert_null(st_metadata(&f, "absent"));
    assert_memory_equal(st_find(&f, "w")->data, v, sizeof v);
    free(rows), free(format);
    st_close(&f);
    st_write_file(path, 1, names, dt, nd, shapes, datas); /* none: NULL */
    st_open(&f, path);
    assert_null(st_metadata(&f, ST_COEF_ROWS_KEY));
    st_close(&f);
    free(path);
    dam_rm_rf(dir);
    free(dir);
}

/* ---------------------------------------------------------------- conversions */

static float f32_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_bf16_conversions_exact(void **state) {
    (void)state;
    assert_int_equal(dam_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(dam_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(dam_f32_to_bf16(0.0f), 0x0000);
    assert_int_equal(dam_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(dam_f32_to_bf16(f32_of(0x3f808000u)), 0x3f80);        /* tie: to even (down) */
    assert_int_equal(dam_f32_to_bf16(f32_of(0x3f818000u)), 0x3f82);        /* tie: to even (up) */
    assert_int_equal(dam_f32_to_bf16(f32_of(0x3f808001u)), 0x3f81);        /* above the tie */
    assert_int_equal(dam_f32_to_bf16(f32_of(0x7f800000u)), 0x7f80);        /* +inf */
    assert_int_equal(dam_f32_to_bf16(f32_of(0x7f7fffffu)), 0x7f80);        /* max float rounds to inf */
    assert_true((dam_f32_to_bf16(f32_of(0x7fc00001u)) & 0x7fff) > 0x7f80); /* NaN stays NaN */
    assert_true((dam_f32_to_bf16(f32_of(0x7f800001u)) & 0x7fff) > 0x7f80); /* signalling NaN too */
    assert_true(dam_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(dam_bf16_to_f32(0x4049) == 3.140625f);
    assert_true(dam_bf16_to_f32(0x0001) == f32_of(0x00010000u)); /* subnormal kept */
    /* every bf16 value survives bf16 -> f32 -> bf16 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7fff) > 0x7f80) continue;
        assert_int_equal(dam_f32_to_bf16(dam_bf16_to_f32((uint16_t)h)), h);
    }
}

static void test_f16_conversions_exact(void **state) {
    (void)state;
    assert_int_equal(dam_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(dam_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(dam_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(dam_f32_to_f16(65520.0f), 0x7c00); /* rounds up to inf */
    assert_int_equal(dam_f32_to_f16(0.1f), 0x2e66);
    assert_int_equal(dam_f32_to_f16(5.9604644775390625e-8f), 0x0001);  /* 2^-24: smallest subnormal */
    assert_int_equal(dam_f32_to_f16(2.98023223876953125e-8f), 0x0000); /* 2^-25: tie to even (0) */
    assert_int_equal(dam_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(dam_f32_to_f16(f32_of(0x7f800000u)), 0x7c00);
    assert_true((dam_f32_to_f16(f32_of(0x7fc00000u)) & 0x7fff) > 0x7c00);
    assert_true(dam_f16_to_f32(0x3555) == 0.333251953125f);
    assert_true(dam_f16_to_f32(0x0001) == 5.9604644775390625e-8f);
    assert_true(dam_f16_to_f32(0x03ff) == 6.0975551605224609375e-5f); /* largest subnormal */
    assert_true(dam_f16_to_f32(0xfc00) == -INFINITY);
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7fff) > 0x7c00) continue;
        assert_int_equal(dam_f32_to_f16(dam_f16_to_f32((uint16_t)h)), h);
    }
}

/* ---------------------------------------------------------------- header validation */

typedef struct {
    const char *header;
    size_t data_bytes;
    const char *want1, *want2;
} BadHeader;

static const BadHeader bad_headers[] = {
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "not well-formed JSON", NULL},
    {"[1,2]", 0, "not a JSON object", NULL},
    {"{\"w\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "tensor 'w'",
     "unknown dtype 'C64'"},
    {"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor 'w'",
     "unknown dtype"},
    {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w'", "'dtype'"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "tensor 'w'", "shape[0]"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "tensor 'w'", "shape[0]"},
    {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'w'", "'shape'"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'w'", "data_offsets"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, "tensor 'w'", "data_offsets"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "tensor 'w'", "need 8"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "tensor 'w'", "end before begin"},
    {"{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[50],\"data_offsets\":[100,300]}}", 200,
     "tensor 'model.norm.weight': data_offsets [100, 300] end past the data section (200 bytes)", NULL},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, "tensor 'b'", "overlap tensor 'a'"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, "tensor 'w'", "twice"},
    {"{\"__metadata__\":5}", 0, "__metadata__", NULL},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
     "tensor 'w'", "too large"},
    {"{\"w\":[1,2]}", 0, "tensor 'w'", "not a JSON object"},
};

static void test_bad_headers_refused(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char *path = dam_path_join(dir, "bad.safetensors");
    for (size_t i = 0; i < sizeof bad_headers / sizeof *bad_headers; i++) {
        write_raw(path, bad_headers[i].header, bad_headers[i].data_bytes);
        assert_fails_with(open_and_close, path, bad_headers[i].want1, bad_headers[i].want2);
        assert_fails_with(open_and_close, path, path, NULL); /* every message names the file */
    }
    free(path);
    dam_rm_rf(dir);
    free(dir);
}

static void test_bad_lengths_refused(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char *path = dam_path_join(dir, "bad.safetensors");
    FILE *f = fopen(path, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    assert_fails_with(open_and_close, path, "is 3 bytes", path);
    uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    f = fopen(path, "wb");
    fwrite(huge, 1, sizeof huge, f);
    fclose(f);
    assert_fails_with(open_and_close, path, "past the end of the file (16 bytes)", path);
    write_raw(path, "", 0);
    assert_fails_with(open_and_close, path, "header length 0", path);
    assert_fails_with(open_and_close, "/nonexistent/x.safetensors", "/nonexistent/x.safetensors",
                      "cannot open");
    free(path);
    dam_rm_rf(dir);
    free(dir);
}

static void test_edge_headers_accepted(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char *path = dam_path_join(dir, "ok.safetensors");
    /* empty tensors, a zero-length tensor between others, metadata, trailing padding, scalars */
    write_raw(path,
              "{\"__metadata__\":{\"format\":\"pt\"},\"e\":{\"dtype\":\"BF16\",\"shape\":[0,3],\"data_"
              "offsets\":[4,4]},"
              "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]},"
              "\"t\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[4,6]}}    ",
              8);
    StFile f;
    st_open(&f, path);
    assert_int_equal(f.n_tensors, 3);
    assert_int_equal(st_find(&f, "e")->numel, 0);
    assert_int_equal(st_find(&f, "s")->ndim, 0);
    assert_int_equal(st_find(&f, "s")->numel, 1);
    assert_ptr_equal(st_find(&f, "t")->data, (const char *)st_find(&f, "s")->data + 4);
    st_close(&f);
    free(path);
    dam_rm_rf(dir);
    free(dir);
}

/* ---------------------------------------------------------------- directories */

static void test_directory_errors(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    assert_fails_with(model_open_and_close, dir, dir, "empty directory");
    char *index = dam_path_join(dir, "model.safetensors.index.json");
    char *shard = dam_path_join(dir, "s1.safetensors");
    write_raw(shard, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    const char *idx = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\"}}";
    dam_write_file_atomic(index, idx, strlen(idx));
    assert_fails_with(model_open_and_close, dir, "tensor 'b' is mapped to", "which lacks it");
    idx = "{\"weight_map\":{\"a\":\"s2.safetensors\"}}";
    dam_write_file_atomic(index, idx, strlen(idx));
    assert_fails_with(model_open_and_close, dir, "s2.safetensors", "does not exist");
    idx = "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}";
    dam_write_file_atomic(index, idx, strlen(idx));
    assert_fails_with(model_open_and_close, dir, "../s1.safetensors", "inside the model directory");
    idx = "{\"weight_map\":[]}";
    dam_write_file_atomic(index, idx, strlen(idx));
    assert_fails_with(model_open_and_close, dir, "weight_map", index);
    /* a tensor stored in two shards is ambiguous */
    char *shard2 = dam_path_join(dir, "s2.safetensors");
    write_raw(shard2, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    idx = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"x\":\"s2.safetensors\"}}";
    dam_write_file_atomic(index, idx, strlen(idx));
    assert_fails_with(model_open_and_close, dir, "tensor 'x' is mapped to", "lacks it");
    idx = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"a2\":\"s2.safetensors\"}}";
    write_raw(shard2,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"a2\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
              8);
    dam_write_file_atomic(index, idx, strlen(idx));
    assert_fails_with(model_open_and_close, dir, "tensor 'a' is stored in both", "s2.safetensors");
    unlink(index);
    unlink(shard);
    unlink(shard2);
    char *bin = dam_path_join(dir, "pytorch_model.bin");
    dam_write_file_atomic(bin, "PK", 2);
    assert_fails_with(model_open_and_close, dir, "only pickle checkpoints (pytorch_model.bin)",
                      "safetensors only");
    unlink(bin);
    char *other = dam_path_join(dir, "README.md");
    dam_write_file_atomic(other, "hi", 2);
    assert_fails_with(model_open_and_close, dir, dir, "no model weights");
    assert_fails_with(model_open_and_close, other, other, "not a directory");
    assert_fails_with(model_open_and_close, "/nonexistent/model", "/nonexistent/model", "does not exist");
    free(other);
    free(bin);
    free(shard2);
    free(shard);
    free(index);
    dam_rm_rf(dir);
    free(dir);
}

static void get_wrong_shape(const void *dir) {
    StModel m;
    st_model_open(&m, dir);
    int64_t shape[2] = {8, 5};
    st_model_get(&m, "w", 2, shape);
}

static void get_missing(const void *dir) {
    StModel m;
    st_model_open(&m, dir);
    int64_t shape[1] = {8};
    st_model_get(&m, "nope", 1, shape);
}

static void test_model_get_checks_shape(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char *path = dam_path_join(dir, "model.safetensors");
    write_raw(path, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[8,4],\"data_offsets\":[0,64]}}", 64);
    assert_fails_with(get_wrong_shape, dir, "tensor 'w' has shape [8, 4]", "[8, 5]");
    assert_fails_with(get_missing, dir, "tensor 'nope' is missing", dir);
    StModel m;
    st_model_open(&m, dir);
    int64_t shape[2] = {8, 4};
    assert_non_null(st_model_get(&m, "w", 2, shape));
    assert_int_equal(st_model_bytes(&m), 64);
    st_model_close(&m);
    free(path);
    dam_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sharded_round_trip),
        cmocka_unit_test(test_single_shard_has_no_index),
        cmocka_unit_test(test_large_tensor_gets_own_shard),
        cmocka_unit_test(test_write_file_header_layout),
        cmocka_unit_test(test_write_file_metadata),
        cmocka_unit_test(test_bf16_conversions_exact),
        cmocka_unit_test(test_f16_conversions_exact),
        cmocka_unit_test(test_bad_headers_refused),
        cmocka_unit_test(test_bad_lengths_refused),
        cmocka_unit_test(test_edge_headers_accepted),
        cmocka_unit_test(test_directory_errors),
        cmocka_unit_test(test_model_get_checks_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
