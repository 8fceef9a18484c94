/* util.h — errors, allocation, dtype conversion and timing shared by every module.
 *
 * Error policy: library code reports a failure with dam_fail(), which formats one line
 * "dam_dist: error: <what>" on stderr (prefixed with the MPI rank when the world has more than one
 * rank) and then calls the installed abort hook. The default hook exits with status 1; the MPI
 * driver installs a hook that calls MPI_Abort so that every rank stops (no hang). Tests may install
 * a hook that longjmps back, to check that bad input is refused. */
#ifndef DAM_UTIL_H
#define DAM_UTIL_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define DAM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define DAM_NORETURN __attribute__((noreturn))
#else
#define DAM_PRINTF(a, b)
#define DAM_NORETURN
#endif

/* One line on stderr, then the abort hook (never returns). */
DAM_NORETURN void dam_fail(const char *fmt, ...) DAM_PRINTF(1, 2);
/* A warning line on stderr; execution continues. */
void dam_warn(const char *fmt, ...) DAM_PRINTF(1, 2);

/* From here on a stop signal ends the process at once, silently, with status 1 (dam_fail calls it;
 * so do the ranks leaving on an error that rank 0 reports). */
void dam_signals_exit_quietly(void);

/* The hook called by dam_fail after the message was printed; it must not return. */
typedef void (*dam_abort_hook)(int status);
void dam_set_abort_hook(dam_abort_hook hook);
/* Rank prefix for messages (set by the MPI layer; -1 or a world of 1 prints no prefix). */
void dam_set_log_rank(int rank, int world);
/* 1 on the rank that prints notes once for all (rank 0, or a process outside MPI). */
int dam_log_root(void);
/* Last message passed to dam_fail, for tests that check the wording. */
const char *dam_last_error(void);
/* A note appended to any error line until cleared (NULL): what a failure leaves intact, e.g. "the
 * previous checkpoint ... is intact". The string is copied. */
void dam_set_error_note(const char *note);

/* Allocation that never returns NULL (fails with the size and the purpose). */
void *dam_malloc(size_t bytes, const char *what);
void *dam_calloc(size_t n, size_t size, const char *what);
void *dam_realloc(void *p, size_t bytes, const char *what);
char *dam_strdup(const char *s);
/* printf into a fresh heap string. */
char *dam_asprintf(const char *fmt, ...) DAM_PRINTF(1, 2);

/* Element types of stored tensors. */
typedef enum {
    DAM_F32 = 0,
    DAM_BF16 = 1,
    DAM_F16 = 2,
    DAM_I32 = 3,
    DAM_I64 = 4,
    DAM_I8 = 5,
    DAM_U8 = 6,
    DAM_F64 = 7
} dam_dtype;
size_t dam_dtype_size(dam_dtype t);
const char *dam_dtype_name(dam_dtype t);               /* safetensors spelling: "F32", "BF16", ... */
int dam_dtype_parse(const char *name, dam_dtype *out); /* 0 on success, -1 when unknown */

static inline float dam_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
/* Round to nearest even; NaN stays NaN. */
static inline uint16_t dam_f32_to_bf16(float f) {
    union {
        uint32_t u;
        float f;
    } v;
    v.f = f;
    /* a select, not an early return: loops over arrays vectorize */
    uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16, quiet_nan = (v.u >> 16) | 0x40u;
    return (uint16_t)((v.u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
float dam_f16_to_f32(uint16_t h);
uint16_t dam_f32_to_f16(float f);
/* Convert n elements of a stored tensor (F32, BF16 or F16) to fp32. */
void dam_to_f32(float *dst, const void *src, dam_dtype t, size_t n);

/* Wall clock in seconds (monotonic). */
double dam_now(void);

/* Files: write a whole buffer to path via path.tmp + rename (atomic); read a whole file. */
void dam_write_file_atomic(const char *path, const void *data, size_t n);
char *dam_read_file(const char *path, size_t *n_out); /* NUL-terminated; fails naming the path */
int dam_file_exists(const char *path);
int dam_is_dir(const char *path);
void dam_mkdir_p(const char *path);
/* Remove a directory tree (used for temporary output directories). Returns 0 on success. */
int dam_rm_rf(const char *path);
/* Join two path parts with one '/' (fresh heap string). */
char *dam_path_join(const char *a, const char *b);
/* Absolute, symlink-free form of a path that may not exist yet: the real path of its longest
 * existing prefix, then the rest with "." and ".." folded (fresh heap string). */
char *dam_realpath_lenient(const char *path);
/* 1 when real path `inner` is `outer` or lies below it (both from dam_realpath_lenient). */
int dam_path_within(const char *inner, const char *outer);
/* Parse a whole decimal integer in [lo, hi]; fails naming `what` otherwise. */
long long dam_parse_int(const char *s, long long lo, long long hi, const char *what);
/* Parse a whole finite number > 0; fails with "<what>: expected a positive number, got '<s>'". */
double dam_parse_positive(const char *s, const char *what);

/* Deterministic RNG (xorshift64*), state kept by the caller: no hidden globals. */
typedef struct {
    uint64_t s;
} dam_rng;
void dam_rng_seed(dam_rng *r, uint64_t seed);
uint64_t dam_rng_u64(dam_rng *r);
float dam_rng_uniform(dam_rng *r); /* [0,1) */
float dam_rng_normal(dam_rng *r);  /* standard normal */

/* FNV-1a 64-bit hash, for config and tokenizer fingerprints. */
uint64_t dam_hash64(const void *data, size_t n, uint64_t seed);

#endif
