/* util.c — see util.h. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* _exit, not exit: library exit handlers (HDF5 closing a file whose writes just failed on a full
 * disk) must not run after an error; they crashed there. Our own output is flushed first. */
static void default_abort_hook(int status) {
    fflush(NULL);
    _exit(status);
}

static dam_abort_hook g_abort_hook = default_abort_hook;
static int g_log_rank = -1;
static char g_last_error[1024];
static char g_error_note[512];

/* After an error the process is ending: a stop signal now is most likely mpirun's SIGTERM to the
 * ranks still alive once the first has exited, and the run's handler would answer it with a
 * "stopping ... then a checkpoint" line that is not true. It ends the process silently instead, with
 * the error's status (a Ctrl-C on a shutdown that hangs still ends it). */
static void exit_on_signal_quietly(int sig) {
    (void)sig;
    _exit(1);
}

void dam_signals_exit_quietly(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = exit_on_signal_quietly;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (int i = 0; i < 4; i++) sigaction(sigs[i], &sa, NULL);
}

void dam_set_abort_hook(dam_abort_hook hook) { g_abort_hook = hook ? hook : default_abort_hook; }

void dam_set_log_rank(int rank, int world) { g_log_rank = world > 1 ? rank : -1; }
int dam_log_root(void) { return g_log_rank <= 0; }

const char *dam_last_error(void) { return g_last_error; }

void dam_set_error_note(const char *note) {
    snprintf(g_error_note, sizeof g_error_note, "%s", note ? note : "");
}

static void print_line(const char *kind, const char *fmt, va_list ap) {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const char *note = kind[0] == 'e' && g_error_note[0] ? g_error_note : "";
    if (kind[0] == 'e') snprintf(g_last_error, sizeof g_last_error, "%s", msg);
    if (g_log_rank >= 0)
        fprintf(stderr, "dam_dist[rank %d]: %s: %s%s%s\n", g_log_rank, kind, msg, *note ? "; " : "", note);
    else
        fprintf(stderr, "dam_dist: %s: %s%s%s\n", kind, msg, *note ? "; " : "", note);
    fflush(stderr);
}

void dam_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_line("error", fmt, ap);
    va_end(ap);
    dam_signals_exit_quietly();
    g_abort_hook(1);
    abort(); /* a hook must not return */
}

void dam_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_line("warning", fmt, ap);
    va_end(ap);
}

void *dam_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) dam_fail("out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *dam_calloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) dam_fail("out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

void *dam_realloc(void *p, size_t bytes, const char *what) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) dam_fail("out of memory growing %s to %zu bytes", what, bytes);
    return q;
}

char *dam_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = dam_malloc(n, "string");
    memcpy(d, s, n);
    return d;
}

char *dam_asprintf(const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = dam_malloc((size_t)n + 1, "string");
    vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

size_t dam_dtype_size(dam_dtype t) {
    switch (t) {
    case DAM_F32:
    case DAM_I32: return 4;
    case DAM_BF16:
    case DAM_F16: return 2;
    case DAM_I64:
    case DAM_F64: return 8;
    case DAM_I8:
    case DAM_U8: return 1;
    }
    return 0;
}

static const char *const dtype_names[] = {"F32", "BF16", "F16", "I32", "I64", "I8", "U8", "F64"};

const char *dam_dtype_name(dam_dtype t) {
    return (unsigned)t < sizeof dtype_names / sizeof *dtype_names ? dtype_names[t] : "?";
}

int dam_dtype_parse(const char *name, dam_dtype *out) {
    for (unsigned i = 0; i < sizeof dtype_names / sizeof *dtype_names; i++)
        if (strcmp(name, dtype_names[i]) == 0) {
            *out = (dam_dtype)i;
            return 0;
        }
    return -1;
}

float dam_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    union {
        uint32_t u;
        float f;
    } v;
    if (exp == 0) {
        float f = ldexpf((float)mant, -24); /* zero or subnormal */
        return sign ? -f : f;
    }
    if (exp == 31)
        v.u = sign | 0x7f800000u | (mant << 13);
    else
        v.u = sign | ((exp + 112u) << 23) | (mant << 13);
    return v.f;
}

uint16_t dam_f32_to_f16(float f) {
    union {
        uint32_t u;
        float f;
    } v;
    v.f = f;
    uint32_t sign = (v.u >> 16) & 0x8000u;
    float a = fabsf(f);
    if (isnan(f)) return (uint16_t)(sign | 0x7e00u);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
    if (a < 6.103515625e-05f) { /* subnormal: round to multiple of 2^-24 */
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));
    }
    uint32_t u = v.u & 0x7fffffffu;
    uint32_t rounding = 0xfffu + ((u >> 13) & 1u);
    u += rounding;
    return (uint16_t)(sign | (((u >> 23) - 112u) << 10) | ((u >> 13) & 0x3ffu));
}

void dam_to_f32(float *dst, const void *src, dam_dtype t, size_t n) {
    if (t == DAM_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (t == DAM_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = dam_bf16_to_f32(s[i]);
    } else if (t == DAM_F16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = dam_f16_to_f32(s[i]);
    } else {
        dam_fail("cannot convert dtype %s to float32", dam_dtype_name(t));
    }
}

double dam_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dam_write_file_atomic(const char *path, const void *data, size_t n) {
    char *tmp = dam_asprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) dam_fail("%s: cannot create (%s)", tmp, strerror(errno));
    if (n && fwrite(data, 1, n, f) != n) {
        fclose(f);
        unlink(tmp);
        dam_fail("%s: write failed (%s)", tmp, strerror(errno));
    }
    if (fclose(f) != 0) {
        unlink(tmp);
        dam_fail("%s: close failed (%s)", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) dam_fail("%s: cannot rename into place (%s)", path, strerror(errno));
    free(tmp);
}

char *dam_read_file(const char *path, size_t *n_out) {
    FILE *f = fopen(path, "rb");
    if (!f) dam_fail("%s: cannot open (%s)", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = dam_malloc(cap + 1, path);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = dam_realloc(buf, cap + 1, path);
        }
    }
    int err = ferror(f);
    fclose(f);
    if (err) dam_fail("%s: read failed", path);
    buf[n] = 0;
    if (n_out) *n_out = n;
    return buf;
}

int dam_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int dam_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

void dam_mkdir_p(const char *path) {
    char *p = dam_strdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            dam_fail("%s: cannot create directory (%s)", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        dam_fail("%s: cannot create directory (%s)", p, strerror(errno));
    free(p);
}

int dam_rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *sub = dam_path_join(path, e->d_name);
        rc |= dam_rm_rf(sub);
        free(sub);
    }
    closedir(d);
    return rc | rmdir(path);
}

char *dam_path_join(const char *a, const char *b) {
    size_t n = strlen(a);
    if (n && a[n - 1] == '/') return dam_asprintf("%s%s", a, b);
    return dam_asprintf("%s/%s", a, b);
}

/* Fold "." and ".." of an absolute path in place. */
static void fold_dots(char *p) {
    char *out = p, *in = p;
    while (*in) {
        while (*in == '/') in++;
        char *seg = in;
        while (*in && *in != '/') in++;
        size_t n = (size_t)(in - seg);
        if (n == 0 || (n == 1 && seg[0] == '.')) continue;
        if (n == 2 && seg[0] == '.' && seg[1] == '.') {
            while (out > p && *--out != '/') {
            }
            continue;
        }
        *out++ = '/';
        memmove(out, seg, n);
        out += n;
    }
    if (out == p) *out++ = '/';
    *out = 0;
}

char *dam_realpath_lenient(const char *path) {
    char *real = realpath(path, NULL);
    if (real) return real;
    char *abs;
    if (path[0] == '/') {
        abs = dam_strdup(path);
    } else {
        char *cwd = getcwd(NULL, 0);
        if (!cwd) dam_fail("cannot read the current directory (%s)", strerror(errno));
        abs = dam_path_join(cwd, path);
        free(cwd);
    }
    fold_dots(abs);
    char *slash = strrchr(abs, '/');
    if (slash == abs) return abs; /* "/x" that does not exist */
    *slash = 0;
    char *head = dam_realpath_lenient(abs);
    char *out = dam_path_join(head, slash + 1);
    free(head), free(abs);
    return out;
}

int dam_path_within(const char *inner, const char *outer) {
    size_t n = strlen(outer);
    if (n == 1 && outer[0] == '/') return 1;
    return !strncmp(inner, outer, n) && (inner[n] == 0 || inner[n] == '/');
}

long long dam_parse_int(const char *s, long long lo, long long hi, const char *what) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        dam_fail("%s: expected a whole number from %lld to %lld, got '%s'", what, lo, hi, s);
    return v;
}

double dam_parse_positive(const char *s, const char *what) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end || !(v > 0) || !isfinite(v))
        dam_fail("%s: expected a positive number, got '%s'", what, s);
    return v;
}

void dam_rng_seed(dam_rng *r, uint64_t seed) {
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (!r->s) r->s = 1;
    for (int i = 0; i < 4; i++) dam_rng_u64(r);
}

uint64_t dam_rng_u64(dam_rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

float dam_rng_uniform(dam_rng *r) { return (float)(dam_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

float dam_rng_normal(dam_rng *r) {
    float u1 = dam_rng_uniform(r), u2 = dam_rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

uint64_t dam_hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
