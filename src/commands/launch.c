/* launch.c — `dam_dist launch LAUNCHER [ARGS...]`: run an MPI launcher (mpirun, srun) or dam_dist
 * itself so that Ctrl-C at the terminal ends in a checkpoint.
 *
 * The terminal sends SIGINT to its foreground process group. mpirun takes a SIGINT as "abort":
 * SIGTERM to the ranks, SIGKILL 1 s later (Open MPI 4.1; it refuses to forward SIGINT,
 * ess_base_forward_signals); srun forwards nothing on one SIGINT and kills the step on two. Both
 * forward SIGUSR1 to every rank, which dam_dist takes as "checkpoint at the next step boundary".
 * So the launcher runs in a process group of its own (the terminal's interrupt reaches only this
 * process), and this process passes SIGINT, SIGTERM and SIGHUP on as SIGUSR1, and SIGUSR1/SIGUSR2 as
 * they are. A SIGINT at least 1 s after the first stop signal aborts: SIGTERM to a launcher (mpirun
 * and srun then end the ranks at once), SIGINT to a dam_dist child (its own second-Ctrl-C rule);
 * exit status 130. Sooner, it is the same interrupt delivered twice and changes nothing. Otherwise
 * the exit status is the launcher's (128 + n when signal n killed it). If this process is killed,
 * the launcher gets SIGUSR1 (PR_SET_PDEATHSIG): the job still checkpoints. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"

#define SECOND_MIN_MS 1000

static pid_t g_child = 0;
static int g_abort_sig = SIGTERM;
static _Atomic int g_first = 0;
static _Atomic long long g_first_ms = 0;
static _Atomic int g_aborted = 0;

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *s) {
    ssize_t rc = write(STDERR_FILENO, s, strlen(s));
    (void)rc;
}

/* async-signal-safe: atomics, clock_gettime, kill, write */
static void on_signal(int sig) {
    int saved_errno = errno;
    long long now = mono_ms();
    int expected = 0;
    int first = atomic_compare_exchange_strong(&g_first, &expected, sig);
    if (first) g_first_ms = now;
    if (sig == SIGUSR1 || sig == SIGUSR2) {
        if (g_child > 0) kill(g_child, sig);
    } else if (first) {
        if (g_child > 0) kill(g_child, SIGUSR1);
        say(sig == SIGINT ? "dam_dist launch: SIGINT: passed on as SIGUSR1: every rank stops after its step "
                            "with a checkpoint; a second Ctrl-C aborts without one\n"
            : sig == SIGTERM
                ? "dam_dist launch: SIGTERM: passed on as SIGUSR1: every rank stops after its step "
                  "with a checkpoint\n"
                : "dam_dist launch: SIGHUP: passed on as SIGUSR1: every rank stops after its step "
                  "with a checkpoint\n");
    } else if (sig == SIGINT) {
        long long t = g_first_ms;
        if (t > 0 && now - t >= SECOND_MIN_MS && !g_aborted) {
            g_aborted = 1;
            if (g_child > 0) kill(g_child, g_abort_sig);
            say("dam_dist launch: second SIGINT: ending the job now, without a checkpoint\n");
        } else if (!g_aborted)
            say("dam_dist launch: SIGINT again within 1 s of the first: still stopping with a checkpoint "
                "(press Ctrl-C again to abort)\n");
    }
    errno = saved_errno;
}

static const char launch_help[] =
    "dam_dist launch LAUNCHER [ARGS...]: run LAUNCHER (mpirun, srun, or dam_dist itself) so that Ctrl-C\n"
    "ends in a checkpoint:\n"
    "  dam_dist launch mpirun -n 8 dam_dist --config my.json\n"
    "  dam_dist launch srun -n 8 --mpi=pmix dam_dist --config my.json\n"
    "The launcher runs in a process group of its own (its stdin is /dev/null when this one's is a\n"
    "terminal). SIGINT (Ctrl-C), SIGTERM and SIGHUP to this process reach every rank as SIGUSR1 (stop\n"
    "after the step, checkpoint, exit 75); SIGUSR1 and SIGUSR2 pass as they are. A second Ctrl-C at\n"
    "least 1 s after the first ends the job without a checkpoint (exit 130); one sooner is taken as\n"
    "the same interrupt. The exit status is otherwise the launcher's. The resume line that dam_dist\n"
    "prints starts with `dam_dist launch` too.\n";

int cmd_launch(const char *self, int argc, char **argv) {
    int first_arg = 1;
    if (argc > 1 && !strcmp(argv[1], "--")) first_arg = 2;
    if (argc <= first_arg || (first_arg == 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))) {
        fputs(launch_help, argc <= first_arg ? stderr : stdout);
        return argc <= first_arg ? 1 : 0;
    }
    char **cmd = argv + first_arg;
    const char *base = strrchr(cmd[0], '/') ? strrchr(cmd[0], '/') + 1 : cmd[0];
    g_abort_sig = !strncmp(base, "dam_dist", 8) ? SIGINT : SIGTERM;
    /* the resume line names this wrapper: dam_dist reads DAM_LAUNCH (mpirun's local ranks and srun's
     * tasks inherit it) */
    setenv("DAM_LAUNCH", self, 1);

    const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};
    sigset_t block, old;
    sigemptyset(&block);
    for (int i = 0; i < 5; i++) sigaddset(&block, sigs[i]);
    sigprocmask(SIG_BLOCK, &block, &old); /* none lost between fork and the handlers */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_mask = block;
    sa.sa_flags = 0; /* waitpid returns EINTR and is called again */
    for (int i = 0; i < 5; i++) sigaction(sigs[i], &sa, NULL);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("dam_dist launch: fork");
        return 1;
    }
    if (pid == 0) {
        setpgid(0, 0); /* out of the terminal's foreground group: its Ctrl-C reaches only the wrapper */
        prctl(PR_SET_PDEATHSIG, SIGUSR1);
        if (getppid() != parent) raise(SIGUSR1);
        if (isatty(STDIN_FILENO)) { /* a background group reading the terminal would be stopped */
            int fd = open("/dev/null", O_RDONLY);
            if (fd >= 0) dup2(fd, STDIN_FILENO), close(fd);
        }
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int i = 0; i < 5; i++) sigaction(sigs[i], &dfl, NULL);
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvp(cmd[0], cmd);
        fprintf(stderr, "dam_dist launch: cannot run %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so that no signal finds the child still in our group */
    g_child = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            perror("dam_dist launch: waitpid");
            return 1;
        }
    if (g_aborted) return 128 + SIGINT;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 1;
}
