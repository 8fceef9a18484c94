/* test_util.h — small helpers shared by the cmocka tests (header-only, static functions).
 * Include after <stdarg.h>, <stddef.h>, <setjmp.h> and <cmocka.h>. */
#ifndef DAM_TEST_UTIL_H
#define DAM_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include "util.h"

/* The dam_dist binary under test ($DAM_BIN, default ./dam_dist). */
static inline const char *test_dam_bin(void) {
    const char *b = getenv("DAM_BIN");
    return b && *b ? b : "./dam_dist";
}

/* A fresh temporary directory (heap string). */
static inline char *test_tmpdir(void) {
    char *t = strdup("/tmp/dam_test_XXXXXX");
    if (!mkdtemp(t)) {
        perror("mkdtemp");
        abort();
    }
    return t;
}

typedef struct {
    int exited; /* 1 when the process exited normally (no signal) */
    int status; /* exit status when exited, else the signal number */
    char out[65536];
    char err[65536];
} TestRun;

/* Run a shell command line, capturing stdout and stderr (each truncated to 64 KiB). */
static inline void test_run(TestRun *r, const char *cmdline) {
    char outp[] = "/tmp/dam_test_outXXXXXX", errp[] = "/tmp/dam_test_errXXXXXX";
    int fo = mkstemp(outp), fe = mkstemp(errp);
    close(fo);
    close(fe);
    size_t n = strlen(cmdline) + 2 * sizeof outp + 32;
    char *full = malloc(n);
    snprintf(full, n, "(%s) >%s 2>%s", cmdline, outp, errp);
    int st = system(full);
    free(full);
    /* system() runs /bin/sh -c; a signal in the child shows up as 128+sig from the shell */
    r->exited = WIFEXITED(st) && WEXITSTATUS(st) < 128;
    r->status =
        WIFEXITED(st) ? (WEXITSTATUS(st) < 128 ? WEXITSTATUS(st) : WEXITSTATUS(st) - 128) : WTERMSIG(st);
    FILE *f = fopen(outp, "rb");
    size_t k = f ? fread(r->out, 1, sizeof r->out - 1, f) : 0;
    r->out[k] = 0;
    if (f) fclose(f);
    f = fopen(errp, "rb");
    k = f ? fread(r->err, 1, sizeof r->err - 1, f) : 0;
    r->err[k] = 0;
    if (f) fclose(f);
    unlink(outp);
    unlink(errp);
}

/* Number of lines in s (a last line without newline counts). */
static inline int test_count_lines(const char *s) {
    int n = 0;
    for (const char *p = s; *p; p++) n += *p == '\n';
    if (*s && s[strlen(s) - 1] != '\n') n++;
    return n;
}

/* Max |a-b| / max(max|b|, floor): relative to the reference's scale, as llm.c's checks do. */
static inline double test_max_rel_diff(const float *a, const float *b, size_t n, double floor_) {
    double md = 0, mb = floor_;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
    }
    return md / mb;
}

/* Print "OK"/"NOT OK" with the max relative difference, llm.c style; returns 1 when OK. */
static inline int test_report(const char *what, double rel, double tol) {
    int ok = rel <= tol;
    printf("%-48s %s (max rel diff %.3e, tol %.1e)\n", what, ok ? "OK" : "NOT OK", rel, tol);
    return ok;
}

/* Path of a fixture under tests/fixtures ($DAM_FIXTURES overrides). Heap string. */
static inline char *test_fixture(const char *rel) {
    const char *d = getenv("DAM_FIXTURES");
    if (!d || !*d) d = "tests/fixtures";
    size_t n = strlen(d) + strlen(rel) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", d, rel);
    return p;
}

/* Failing in a child: run fn(arg) in a forked child whose abort hook writes the dam_fail message to
 * a pipe and _exits (no exit handlers, so LeakSanitizer does not count what an error abandons). */
static int g_test_err_fd = -1; /* the child's pipe to its parent */

static inline void test_report_and_exit(int status) {
    const char *m = dam_last_error();
    ssize_t ignored = write(g_test_err_fd, m, strlen(m));
    (void)ignored;
    _exit(status ? status : 1);
}

/* Run fn(arg) in a child; returns 1 when it failed through dam_fail (message in msg). */
static inline int test_fails_in_child(void (*fn)(const void *), const void *arg, char *msg, size_t cap) {
    int p[2];
    if (pipe(p) != 0) abort();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        g_test_err_fd = p[1];
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        dam_set_abort_hook(test_report_and_exit);
        fn(arg);
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t got;
    while (n + 1 < cap && (got = read(p[0], msg + n, cap - 1 - n)) > 0) n += (size_t)got;
    msg[n] = 0;
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 1;
}

#endif
