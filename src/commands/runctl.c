/* runctl.c — see runctl.h. */
#include "cli.h"
#include "runctl.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "util.h"

const char train_usage[] =
    "dam_dist --config FILE [--out DIR] [--device cpu|cuda] [--max-steps N] [--eval-rows N] "
    "[--resume | --resume auto] [--force] [--allow-config-change] "
    "[--allow-tokenizer-mismatch]";

/* ---------------------------------------------------------------- command line */

static void usage_fail(const char *msg) { dam_fail("%s (usage: %s)", msg, train_usage); }

void train_args_parse(TrainArgs *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->max_steps = -1, a->argc = argc, a->argv = argv;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "--config") && next)
            a->config = argv[++i];
        else if (!strcmp(s, "--out") && next)
            a->out = argv[++i];
        else if (!strcmp(s, "--device") && next) {
            a->device = argv[++i];
            if (strcmp(a->device, "cpu") && strcmp(a->device, "cuda"))
                dam_fail("--device %s: unknown device (allowed: cpu, cuda)", a->device);
        } else if (!strcmp(s, "--max-steps") && next)
            a->max_steps = (int)dam_parse_int(argv[++i], 0, 1000000000, "--max-steps");
        else if (!strcmp(s, "--eval-rows") && next)
            a->eval_rows = (int)dam_parse_int(argv[++i], 1, 1000000000, "--eval-rows");
        else if (!strcmp(s, "--resume"))
            a->resume = next && !strcmp(next, "auto") ? (i++, RESUME_AUTO) : RESUME_REQUIRED;
        else if (!strcmp(s, "--force"))
            a->force = 1;
        else if (!strcmp(s, "--allow-config-change"))
            a->allow_config_change = 1;
        else if (!strcmp(s, "--allow-tokenizer-mismatch"))
            a->allow_tokenizer_mismatch = 1;
        else
            cli_bad_option(NULL, s, "--config --out --max-steps --eval-rows");
    }
    if (!a->config) usage_fail("--config is required");
}

/* ---------------------------------------------------------------- signals */

/* Everything the handler touches is a lock-free atomic (async-signal-safe), and it calls only
 * clock_gettime, write, kill and _exit. Any thread of the process (BLAS, OpenMP, MPI progress) may
 * run it, and two threads may run it at once for one interrupt delivered twice (timeout(1) signals
 * the process and then its group): the first signal is claimed by a compare-and-swap, and a SIGINT
 * counts as a second Ctrl-C only STOP_SECOND_MIN_MS after the first was acknowledged. */
#define STOP_SECOND_MIN_MS 1000

static _Atomic int g_stop_signal = 0;    /* the first stop signal, 0 when none */
static _Atomic long long g_ack_ms = 0;   /* when it was acknowledged (monotonic ms), 0 not yet */
static _Atomic int g_is_root = 1;        /* rank 0 writes the acknowledgement */
static _Atomic int g_cur_step = 0;       /* the step in progress (1-based), 0 when none */
static _Atomic long long g_step_t0 = 0;  /* its start (monotonic ms) */
static _Atomic long long g_step_ms = -1; /* the last step's duration, -1 not measured yet */

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* async-signal-safe text building */
typedef struct {
    char b[256];
    size_t n;
} SigBuf;
static void sb_str(SigBuf *b, const char *s) {
    while (*s && b->n < sizeof b->b) b->b[b->n++] = *s++;
}
static void sb_int(SigBuf *b, long long v) {
    char d[24];
    int n = 0;
    if (v < 0) sb_str(b, "-"), v = -v;
    do d[n++] = (char)('0' + v % 10), v /= 10;
    while (v && n < 24);
    while (n && b->n < sizeof b->b) b->b[b->n++] = d[--n];
}
static void sb_write(const SigBuf *b) {
    ssize_t rc = write(STDERR_FILENO, b->b, b->n);
    (void)rc;
}
static const char *sig_name(int sig) {
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return "a signal";
    }
}

/* "dam_dist: SIGINT: stopping after step 5, about 2.3 s; a second Ctrl-C aborts without a
 * checkpoint": the step in progress and what is left of it, from the last step's time */
static void acknowledge(int sig, long long now) {
    SigBuf b = {.n = 0};
    sb_str(&b, "dam_dist: "), sb_str(&b, sig_name(sig)), sb_str(&b, ": ");
    int step = g_cur_step;
    long long t0 = g_step_t0, dur = g_step_ms;
    if (step <= 0)
        sb_str(&b, "stopping at the next step boundary, then a checkpoint");
    else {
        sb_str(&b, "stopping after step "), sb_int(&b, step);
        if (dur < 0)
            sb_str(&b, " (its duration not measured yet)");
        else {
            long long left = dur - (now - t0);
            if (left < 0) left = 0;
            long long tenths = (left + 50) / 100;
            sb_str(&b, ", about "), sb_int(&b, tenths / 10), sb_str(&b, "."), sb_int(&b, tenths % 10);
            sb_str(&b, " s");
        }
        sb_str(&b, ", then a checkpoint");
    }
    sb_str(&b, "; a second Ctrl-C aborts without a checkpoint\n");
    sb_write(&b);
}

static void on_stop_signal(int sig) {
    int saved_errno = errno;
    long long now = mono_ms();
    int expected = 0;
    if (atomic_compare_exchange_strong(&g_stop_signal, &expected, sig)) { /* the first */
        g_ack_ms = now;
        if (g_is_root) acknowledge(sig, now);
    } else if (sig == SIGINT) {
        long long ack = g_ack_ms;
        if (ack > 0 && now - ack >= STOP_SECOND_MIN_MS) {
            static const char msg[] = "dam_dist: second SIGINT: ending now, without a checkpoint\n";
            ssize_t rc = write(STDERR_FILENO, msg, sizeof msg - 1);
            (void)rc;
            _exit(128 + SIGINT);
        }
        /* the same interrupt delivered twice, or a double press: the stop goes on */
        if (g_is_root) {
            static const char msg[] = "dam_dist: SIGINT again within 1 s of the first: still stopping with a "
                                      "checkpoint (press Ctrl-C again to abort)\n";
            ssize_t rc = write(STDERR_FILENO, msg, sizeof msg - 1);
            (void)rc;
        }
    }
    errno = saved_errno;
}

void stop_signals_install(void) {
    g_is_root = comm_world_rank() == 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    /* no nesting of our handlers on one thread (other threads may still run it concurrently) */
    for (int i = 0; i < 4; i++) sigaddset(&sa.sa_mask, sigs[i]);
    sa.sa_flags = SA_RESTART; /* a signal must not turn a file or MPI call into an error */
    for (int i = 0; i < 4; i++) sigaction(sigs[i], &sa, NULL);
}

int stop_signal_pending(void) { return g_stop_signal; }

void stop_progress(int step, double last_step_s) {
    g_step_ms = last_step_s >= 0 ? (long long)(last_step_s * 1000.0 + 0.5) : -1;
    g_step_t0 = mono_ms();
    g_cur_step = step;
}

/* ---------------------------------------------------------------- the resume line */

/* s quoted for a POSIX shell when it needs it. */
static char *shell_quote(const char *s) {
    if (*s &&
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == strlen(s))
        return dam_strdup(s);
    size_t n = 3;
    for (const char *p = s; *p; p++) n += *p == '\'' ? 4 : 1;
    char *q = dam_malloc(n, "quoted argument"), *o = q;
    *o++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'')
            memcpy(o, "'\\''", 4), o += 4;
        else
            *o++ = *p;
    }
    *o++ = '\'', *o = 0;
    return q;
}

static void append(char **line, const char *word, int quote) {
    char *w = quote ? shell_quote(word) : dam_strdup(word);
    char *next = *line ? dam_asprintf("%s %s", *line, w) : dam_strdup(w);
    free(*line), free(w);
    *line = next;
}

/* "mpirun -n 4" and the like, from the launcher's environment; NULL for a single process. srun
 * passes its --mpi plugin to the tasks as SLURM_MPI_TYPE: without it srun would start singletons. */
static char *launcher(int world_size) {
    if (world_size <= 1) return NULL;
    if (getenv("OMPI_COMM_WORLD_SIZE")) /* set by mpirun's daemons, also inside a Slurm job */
        return dam_asprintf("mpirun -n %d", world_size);
    if (getenv("SLURM_STEP_ID")) {
        const char *mpi = getenv("SLURM_MPI_TYPE");
        return mpi && *mpi && strcmp(mpi, "none") ? dam_asprintf("srun -n %d --mpi=%s", world_size, mpi)
                                                  : dam_asprintf("srun -n %d", world_size);
    }
    return dam_asprintf("mpiexec -n %d", world_size);
}

char *resume_command(const TrainArgs *a, int world_size) {
    char *line = NULL, *cwd = getcwd(NULL, 0), *l = launcher(world_size);
    append(&line, "cd", 0);
    append(&line, cwd ? cwd : ".", 1);
    append(&line, "&&", 0);
    const char *wrapper = getenv("DAM_LAUNCH"); /* started by `dam_dist launch` */
    if (wrapper && *wrapper) append(&line, wrapper, 1), append(&line, "launch", 0);
    if (l) append(&line, l, 0);
    int has_resume = 0;
    for (int i = 0; i < a->argc; i++) {
        has_resume |= !strcmp(a->argv[i], "--resume");
        append(&line, a->argv[i], 1);
    }
    if (!has_resume) append(&line, "--resume", 0);
    free(cwd), free(l);
    return line;
}

/* ---------------------------------------------------------------- metrics */

/* The "step" of a metrics line, -1 when it has none. */
static long line_step(const char *line) {
    const char *p = strstr(line, "\"step\":");
    return p ? strtol(p + 7, NULL, 10) : -1;
}

/* Keep the lines of steps <= step (a resumed run writes the later ones again). */
static void metrics_truncate(const char *path, int64_t step) {
    if (!dam_file_exists(path)) return;
    size_t n;
    char *text = dam_read_file(path, &n), *out = dam_malloc(n + 1, "metrics"), *o = out;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) + 1 : strlen(line);
        long s = line_step(line);
        if (s >= 0 && s <= step) memcpy(o, line, len), o += len;
        line += len;
    }
    dam_write_file_atomic(path, out, (size_t)(o - out));
    free(text), free(out);
}

FILE *metrics_open(const char *path, int resumed, int64_t step) {
    char *dir = dam_strdup(path), *slash = strrchr(dir, '/');
    if (slash && slash != dir) *slash = 0, dam_mkdir_p(dir);
    free(dir);
    if (resumed) metrics_truncate(path, step);
    FILE *f = fopen(path, resumed ? "a" : "w");
    if (!f) dam_warn("%s: cannot write metrics; continuing without", path);
    return f;
}
