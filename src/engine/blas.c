/* blas.c — see blas.h. */
#include "blas.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cblas.h>

/* OpenBLAS's kernel names (driver/others/dynamic.c) for CPUs without AVX2 and FMA, and the names of
 * builds for no particular CPU. A kernel named here on a CPU that has AVX2 and FMA means OpenBLAS
 * did not recognise the CPU. Excavator is absent: that CPU has AVX2, so it was recognised. */
static const char *const generic_cores[] = {
    "Unknown", "Generic",   "Katmai",        "Coppermine",  "Northwood",  "Prescott",
    "Banias",  "Atom",      "Core2",         "Penryn",      "Dunnington", "Nehalem",
    "Athlon",  "Opteron",   "Opteron(SSE3)", "Barcelona",   "Nano",       "Sandybridge",
    "Bobcat",  "Bulldozer", "Piledriver",    "Steamroller",
};

int blas_core_is_generic(const char *corename) {
    if (!corename) return 0;
    for (size_t i = 0; i < sizeof generic_cores / sizeof *generic_cores; i++)
        if (!strcasecmp(corename, generic_cores[i])) return 1;
    return 0;
}

const char *blas_reexec_coretype(const char *corename, const char *config, int cpu_avx2_fma,
                                 const char *user_coretype, const char *marker) {
    if (marker && *marker) return NULL;               /* already re-executed once */
    if (user_coretype && *user_coretype) return NULL; /* the user's choice */
    if (!corename || !cpu_avx2_fma || !blas_core_is_generic(corename)) return NULL;
    if (!config || !strstr(config, "DYNAMIC_ARCH")) return NULL; /* one kernel built in: can't switch */
    return BLAS_GOOD_CORETYPE;
}

static int cpu_has_avx2_fma(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

typedef char *(*str_fn)(void);
typedef int (*int_fn)(void);

static const char *openblas_str(const char *sym) {
    str_fn f = (str_fn)dlsym(RTLD_DEFAULT, sym);
    return f ? f() : NULL;
}

/* The idle-thread variables the user left unset, set now; 1 when any was (once: the marker). */
static int set_thread_env(void) {
    static const char *const env[][2] = {{BLAS_THREAD_TIMEOUT_ENV, BLAS_THREAD_TIMEOUT}};
    const char *marker = getenv(BLAS_ENV_MARKER);
    if (marker && *marker) return 0;
    int set = 0;
    for (size_t i = 0; i < sizeof env / sizeof *env; i++)
        if (!getenv(env[i][0]) && setenv(env[i][0], env[i][1], 1) == 0) set = 1;
    return set && setenv(BLAS_ENV_MARKER, "1", 1) == 0;
}

void blas_fix_kernel(char **argv) {
    if (!argv || !argv[0]) return;
    const char *want =
        blas_reexec_coretype(openblas_str("openblas_get_corename"), openblas_str("openblas_get_config"),
                             cpu_has_avx2_fma(), getenv("OPENBLAS_CORETYPE"), getenv(BLAS_REEXEC_ENV));
    const char *was = openblas_str("openblas_get_corename");
    if (want && (setenv(BLAS_REEXEC_ENV, was, 1) != 0 || setenv("OPENBLAS_CORETYPE", want, 1) != 0))
        want = NULL;
    int env_set = set_thread_env();
    if (!want && !env_set) return;
    fflush(NULL);
    execv("/proc/self/exe", argv); /* returns only on failure */
    int err = errno;
    if (!want) return;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(BLAS_REEXEC_ENV);
    fprintf(stderr,
            "dam_dist: note: OpenBLAS runs its generic %s kernel on this AVX2+FMA CPU and re-executing with "
            "OPENBLAS_CORETYPE=%s failed (%s); set OPENBLAS_CORETYPE=%s yourself for 2-3x faster GEMMs\n",
            was, want, strerror(err), want);
}

const char *blas_describe(void) {
    static char line[512];
    const char *core = openblas_str("openblas_get_corename");
    if (!core) {
        Dl_info info;
        const char *lib = dladdr((void *)cblas_sgemm, &info) && info.dli_fname ? info.dli_fname : "unknown";
        const char *base = strrchr(lib, '/');
        snprintf(line, sizeof line, "BLAS: %s (not OpenBLAS: kernel not reported)", base ? base + 1 : lib);
        return line;
    }
    const char *config = openblas_str("openblas_get_config");
    char name[64] = "OpenBLAS";
    if (config) { /* "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...": the first two words */
        const char *sp = strchr(config, ' ');
        size_t n = sp ? strcspn(sp + 1, " ") + (size_t)(sp + 1 - config) : strlen(config);
        snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), config);
    }
    int_fn nt = (int_fn)dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
    int threads = nt ? nt() : 0;
    char note[256] = "";
    const char *was = getenv(BLAS_REEXEC_ENV), *user = getenv("OPENBLAS_CORETYPE");
    if (was && *was)
        snprintf(note, sizeof note,
                 " (OpenBLAS chose %s on this AVX2+FMA CPU: re-executed with OPENBLAS_CORETYPE=%s)", was,
                 user ? user : "?");
    else if (user && *user)
        snprintf(note, sizeof note, " (OPENBLAS_CORETYPE=%s, the user's)", user);
    else if (blas_core_is_generic(core) && cpu_has_avx2_fma())
        snprintf(note, sizeof note, " (a generic kernel on this AVX2+FMA CPU: slow%s)",
                 config && strstr(config, "DYNAMIC_ARCH") ? ""
                                                          : "; this OpenBLAS has no other kernel built in");
    const char *timeout = getenv(BLAS_THREAD_TIMEOUT_ENV), *ours = getenv(BLAS_ENV_MARKER);
    if (threads > 1 && timeout) {
        size_t used = strlen(note);
        snprintf(note + used, sizeof note - used, " (idle threads: %s=%s, %s)", BLAS_THREAD_TIMEOUT_ENV,
                 timeout,
                 ours && *ours && !strcmp(timeout, BLAS_THREAD_TIMEOUT) ? "set by dam_dist" : "the user's");
    }
    if (threads > 0)
        snprintf(line, sizeof line, "BLAS: %s, kernel %s, %d thread%s%s", name, core, threads,
                 threads == 1 ? "" : "s", note);
    else
        snprintf(line, sizeof line, "BLAS: %s, kernel %s%s", name, core, note);
    return line;
}
