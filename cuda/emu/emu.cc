/* emu.cc — the CUDA emulation's runtime: device memory, streams, events and the execution of kernels
 * on fibers (cuda/emu/README.md says what it checks and how).
 *
 *  - Device memory is one reserved arena, inaccessible (PROT_NONE) while host code runs and opened
 *    only while stream work executes: a host touch of device memory faults and is named. Every
 *    allocation is filled with NaN bytes and followed by a redzone that AddressSanitizer reports.
 *  - Stream work is deferred: a launch, copy or memset is queued and runs when the host waits
 *    (cudaStreamSynchronize, cudaEventSynchronize, a query, cudaFree ...). A pending copy into
 *    pinned host memory poisons its destination, and a pending copy out of it its source, so the
 *    host reading results (or refilling a buffer) without a synchronisation fails under ASan.
 *  - A block's threads are fibers; __syncthreads and warp operations are rendezvous of the threads
 *    they name, checked: a barrier some threads skip, a shuffle naming a lane that has exited or
 *    waits elsewhere, a deadlock — each ends the run with one line naming the kernel and block.
 *  - DAM_EMU_ORDER=forward|reverse|shuffle orders threads and blocks; DAM_EMU_ORDER_CHECK=1 runs
 *    every kernel twice, the second time in the opposite order, and requires the same bits from a
 *    kernel without float atomics. */
#include <errno.h>
#include <execinfo.h>
#include <mpi.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct EmuStream {
    std::deque<emu::Op *> q;
    int id;
};
struct EmuEvent {
    unsigned long long recorded = 0, completed = 0; /* sequence numbers of records */
    double t = 0;
    int pending = 0; /* queued ops naming it: a destroyed event lives until they have run */
    bool destroyed = false;
};

namespace emu {

/* ---------------------------------------------------------------- settings and failure */

enum Order { FORWARD, REVERSE, SHUFFLE };
static struct {
    bool ready;
    Order order;
    bool order_check;
    double timeout_s;
    uint64_t seed;
} cfg;

static const char *current_kernel; /* while a kernel runs: for messages */
static uint3 current_block;

int world_rank() {
    int init = 0, fin = 0, r = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

void fatal(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuda-emu[rank %d]: error: %s\n", world_rank(), msg);
    fflush(stderr);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 3);
    _exit(3);
}

double now_s() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void init_settings() {
    if (cfg.ready) return;
    cfg.ready = true;
    const char *o = getenv("DAM_EMU_ORDER");
    cfg.order = !o || !strcmp(o, "forward") ? FORWARD
                : !strcmp(o, "reverse")     ? REVERSE
                : !strcmp(o, "shuffle")
                    ? SHUFFLE
                    : (fatal("DAM_EMU_ORDER=%s: expected forward, reverse or shuffle", o), FORWARD);
    const char *c = getenv("DAM_EMU_ORDER_CHECK");
    cfg.order_check = c && !strcmp(c, "1");
    const char *t = getenv("DAM_EMU_TIMEOUT_S");
    cfg.timeout_s = t ? atof(t) : 300;
    const char *s = getenv("DAM_EMU_SEED");
    cfg.seed = s ? strtoull(s, NULL, 10) : 1;
}

static thread_local cudaError_t last_error = cudaSuccess;
void set_error(cudaError_t e) { last_error = e; }

/* ---------------------------------------------------------------- device memory */

struct Alloc {
    size_t bytes, span; /* span: bytes + redzone, 256-aligned */
    bool freed;
    bool stream_ordered; /* from cudaMallocAsync: the only memory cudaFreeAsync takes */
};
static char *arena;
static const size_t ARENA_CAP = (size_t)1 << 38, REDZONE = 256, QUARANTINE = (size_t)256 << 20;
static size_t arena_top = REDZONE, quarantined;
static std::map<uintptr_t, Alloc> allocs; /* by start address */
static std::deque<uintptr_t> quarantine;  /* freed, not yet reusable (use after free is caught) */
static std::multimap<size_t, uintptr_t> free_spans;
static int arena_open_depth;
static std::map<uintptr_t, size_t> pinned;
static struct sigaction previous_segv;

static bool in_arena(const void *p) {
    return arena && (const char *)p >= arena && (const char *)p < arena + ARENA_CAP;
}

static void protect(bool open) {
    if (arena_top && mprotect(arena, arena_top, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
        fatal("mprotect of the device arena: %s", strerror(errno));
}
static void arena_open() {
    if (arena_open_depth++ == 0) protect(true);
}
static void arena_close() {
    if (--arena_open_depth == 0) protect(false);
}

/* A fault in the arena: host code touched device memory (or a kernel went past every allocation).
 * Name it, then let the previous handler (AddressSanitizer's) report the access with its stack. */
static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    if (in_arena(si->si_addr)) {
        char msg[512];
        int n;
        if (arena_open_depth == 0)
            n = snprintf(msg, sizeof msg,
                         "cuda-emu[rank %d]: error: host code touched device memory at %p (device memory is "
                         "read and written by kernels and copies only; download it)\n",
                         world_rank(), si->si_addr);
        else
            n = snprintf(
                msg, sizeof msg,
                "cuda-emu[rank %d]: error: %s%s touched device memory at %p outside every allocation\n",
                world_rank(), current_kernel ? "kernel " : "device work",
                current_kernel ? current_kernel : "", si->si_addr);
        ssize_t w = write(STDERR_FILENO, msg, (size_t)n);
        (void)w;
    }
    sigaction(sig, &previous_segv, NULL); /* the access repeats under the previous handler */
}

static void memory_init() {
    if (arena) return;
    init_settings();
    void *p = mmap(NULL, ARENA_CAP, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fatal("cannot reserve the emulated device memory: %s", strerror(errno));
    arena = (char *)p;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, &previous_segv);
}

static const Alloc *find_alloc(const void *p, uintptr_t *start) {
    uintptr_t a = (uintptr_t)p;
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return NULL;
    --it;
    if (a >= it->first + it->second.span) return NULL;
    *start = it->first;
    return &it->second;
}

MemKind classify(const void *p, size_t *left) {
    uintptr_t a = (uintptr_t)p;
    if (in_arena(p)) {
        uintptr_t st;
        const Alloc *al = find_alloc(p, &st);
        *left = al && !al->freed && a < st + al->bytes ? st + al->bytes - a : 0;
        return MEM_DEVICE;
    }
    auto it = pinned.upper_bound(a);
    if (it != pinned.begin()) {
        --it;
        if (a < it->first + it->second) {
            *left = it->first + it->second - a;
            return MEM_PINNED;
        }
    }
    *left = 0;
    return MEM_HOST;
}

void need_device_range(const void *p, size_t bytes, const char *what) {
    size_t left;
    if (classify(p, &left) != MEM_DEVICE) fatal("%s: %p is not device memory", what, p);
    if (left < bytes)
        fatal("%s: %zu bytes at %p run past the end of their device allocation (%zu bytes left)", what, bytes,
              p, left);
}

static void *device_alloc(size_t bytes) {
    memory_init();
    size_t span = ((bytes + 255) & ~(size_t)255) + REDZONE;
    uintptr_t at = 0;
    auto fit = free_spans.lower_bound(span);
    if (fit != free_spans.end() && fit->first < 2 * span + ((size_t)1 << 20)) {
        at = fit->second;
        span = fit->first;
        free_spans.erase(fit);
        allocs.erase(at);
    } else {
        if (arena_top + span > ARENA_CAP) return NULL;
        at = (uintptr_t)arena + arena_top;
        arena_top += span;
    }
    allocs[at] = Alloc{bytes, span, false, false};
    arena_open();
    UNPOISON((void *)at, bytes);
    memset((void *)at, 0xff, bytes); /* NaN floats, -1 ints: nothing reads as a plausible zero */
    POISON((char *)at + bytes, span - bytes);
    arena_close();
    return (void *)at;
}

static void device_release(void *p, const char *call) {
    uintptr_t st;
    const Alloc *al = find_alloc(p, &st);
    if (!al || st != (uintptr_t)p || al->freed)
        fatal("%s(%p): not the start of a live device allocation", call, p);
    Alloc &a = allocs[st];
    a.freed = true;
    POISON(p, a.span);
    quarantine.push_back(st);
    quarantined += a.span;
    while (quarantined > QUARANTINE) { /* the oldest freed memory may be handed out again */
        uintptr_t q = quarantine.front();
        quarantine.pop_front();
        quarantined -= allocs[q].span;
        free_spans.insert({allocs[q].span, q});
    }
}

/* ---------------------------------------------------------------- streams and events */

static std::vector<EmuStream *> streams;
static EmuStream *legacy_stream;

static EmuStream *stream_of(cudaStream_t s) {
    if (s) return s;
    if (!legacy_stream) {
        legacy_stream = new EmuStream();
        legacy_stream->id = 0;
        streams.push_back(legacy_stream);
    }
    return legacy_stream;
}

void enqueue(cudaStream_t s, Op *op) { stream_of(s)->q.push_back(op); }

/* 1: the op finished; 2: it started and is pending; 0: it cannot start yet. */
static int try_run(Op *op) {
    if (op->event.ev) {
        EmuEvent *e = op->event.ev;
        if (op->event.wait && e->completed < op->event.seq) return 0;
        if (!op->event.wait && op->event.seq > e->completed) e->completed = op->event.seq, e->t = now_s();
        if (--e->pending == 0 && e->destroyed) delete e;
        return 1;
    }
    if (op->run) {
        op->run();
        return 1;
    }
    if (!op->started) {
        op->start();
        op->started = true;
    }
    return op->test() ? 1 : 2;
}

static bool progress_once() {
    bool any = false;
    for (EmuStream *s : streams) {
        while (!s->q.empty()) {
            Op *op = s->q.front();
            bool was_started = op->started;
            int r = try_run(op);
            if (r == 1) {
                s->q.pop_front();
                delete op;
                any = true;
                continue;
            }
            if (r == 2 && !was_started) any = true;
            if (r == 2 && op->group) /* the rest of its NCCL group is issued with it */
                for (size_t i = 1; i < s->q.size() && s->q[i]->group == op->group; i++)
                    if (!s->q[i]->started && s->q[i]->start)
                        s->q[i]->start(), s->q[i]->started = true, any = true;
            break;
        }
    }
    return any;
}

static std::string blocked_work() {
    std::string d;
    for (EmuStream *s : streams)
        if (!s->q.empty()) {
            char b[64];
            snprintf(b, sizeof b, "%sstream %d waits in ", d.empty() ? "" : "; ", s->id);
            d += b + s->q.front()->what;
        }
    return d.empty() ? "nothing is queued" : d;
}

static bool any_async_pending() {
    for (EmuStream *s : streams)
        if (!s->q.empty() && s->q.front()->started) return true;
    return false;
}

void progress_now() {
    arena_open();
    while (progress_once()) {
    }
    arena_close();
}

void wait_until(const char *why, const std::function<bool()> &done) {
    memory_init();
    arena_open();
    double last = now_s();
    while (!done()) {
        if (progress_once()) {
            last = now_s();
            continue;
        }
        if (done()) break;
        if (!any_async_pending())
            fatal("%s can never return: %s (an event recorded nowhere, or a wait on work queued later)", why,
                  blocked_work().c_str());
        if (now_s() - last > cfg.timeout_s)
            fatal("%s has waited %.0f s with no progress (DAM_EMU_TIMEOUT_S): %s", why, now_s() - last,
                  blocked_work().c_str());
        arena_close(); /* MPI may progress other requests while we sleep: keep the arena closed */
        usleep(50);
        arena_open();
    }
    arena_close();
}

static bool stream_idle(EmuStream *s) { return s->q.empty(); }
static bool device_idle() {
    for (EmuStream *s : streams)
        if (!s->q.empty()) return false;
    return true;
}

/* ---------------------------------------------------------------- fibers */

#if defined(__x86_64__)
/* Switch stacks: save the callee-saved registers, MXCSR and the x87 control word on the current
 * stack, store its pointer in *from, load `to` and restore the same from there. */
extern "C" void emu_switch(void **from, void *to);
asm(".text\n"
    ".globl emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size emu_switch,.-emu_switch\n"
    ".globl emu_fiber_start\n"
    ".type emu_fiber_start,@function\n"
    "emu_fiber_start:\n"
    "  movq %r12, %rdi\n  callq *%r13\n  ud2\n"
    ".size emu_fiber_start,.-emu_fiber_start\n");
extern "C" void emu_fiber_start(void);
#else
#error "the CUDA emulation's fibers are written for x86-64"
#endif

enum TState { T_RUN, T_BARRIER, T_WARP, T_DONE };

struct Thread {
    void *sp;
    char *stack;
    TState st;
    uint3 idx;
    int lane, warp;
    /* the pending warp operation */
    unsigned mask;
    int kind, src;
    uint64_t value, result;
    void *fake_stack;
};

static const size_t STACK = 256 << 10;
static std::vector<Thread> threads;
static void *sched_sp;
static Thread *running;
static const void *sched_stack_bottom;
static size_t sched_stack_size;
static BlockBody cur_body;
static void *cur_closure;
static unsigned char *dyn_smem;
static size_t dyn_smem_bytes;
static bool kernel_float_atomics;

thread_local uint3 cur_thread_idx, cur_block_idx;
thread_local dim3 cur_block_dim, cur_grid_dim;

static void to_scheduler(Thread *t, bool exiting) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? NULL : &t->fake_stack, sched_stack_bottom, sched_stack_size);
#else
    (void)exiting;
#endif
    emu_switch(&t->sp, sched_sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(t->fake_stack, NULL, NULL);
#endif
}

static void thread_main(Thread *t) {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &sched_stack_bottom, &sched_stack_size);
#endif
    cur_body(cur_closure);
    t->st = T_DONE;
    to_scheduler(t, true);
    __builtin_unreachable();
}

static void fiber_prepare(Thread *t) {
    if (!t->stack) {
        void *p =
            mmap(NULL, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fatal("no memory for a fiber stack");
        t->stack = (char *)p;
    }
    UNPOISON(t->stack, STACK);
    /* the frame emu_switch pops: control words, r15, r14, r13 (entry), r12 (thread), rbx, rbp, and
     * the return address emu_fiber_start, placed so that its call is 16-byte aligned */
    uint64_t *top = (uint64_t *)(t->stack + STACK - 64);
    uint64_t *sp = top - 8;
    uint32_t mx;
    uint16_t cw;
    asm volatile("stmxcsr %0" : "=m"(mx));
    asm volatile("fnstcw %0" : "=m"(cw));
    sp[0] = (uint64_t)mx | ((uint64_t)cw << 32);
    sp[1] = 0, sp[2] = 0;                     /* r15, r14 */
    sp[3] = (uint64_t)(uintptr_t)thread_main; /* r13 */
    sp[4] = (uint64_t)(uintptr_t)t;           /* r12 */
    sp[5] = 0, sp[6] = 0;                     /* rbx, rbp */
    sp[7] = (uint64_t)(uintptr_t)emu_fiber_start;
    t->sp = sp;
    t->st = T_RUN;
}

static void resume(Thread *t) {
    running = t;
    cur_thread_idx = t->idx;
#ifdef EMU_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, t->stack, STACK);
#endif
    emu_switch(&sched_sp, t->sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    running = NULL;
}

static Thread *self(const char *what) {
    if (!running) fatal("%s called outside a kernel", what);
    return running;
}

void sync_block() {
    Thread *t = self("__syncthreads");
    t->st = T_BARRIER;
    to_scheduler(t, false);
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src, int kind) {
    Thread *t = self("a warp operation");
    if (!(mask >> t->lane & 1))
        fatal("kernel %s, block (%u,%u,%u), thread %u: a warp operation with mask 0x%08x that leaves out the "
              "calling lane %d",
              current_kernel, current_block.x, current_block.y, current_block.z, t->idx.x, mask, t->lane);
    t->mask = mask, t->value = value, t->src = src, t->kind = kind;
    t->st = T_WARP;
    to_scheduler(t, false);
    return t->result;
}

void note_float_atomic() { kernel_float_atomics = true; }

void *dynamic_smem() {
    self("dynamic shared memory");
    return dyn_smem;
}

/* ---------------------------------------------------------------- running a block */

[[noreturn]] static void block_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void block_fail(const char *fmt, ...) {
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fatal("kernel %s, block (%u,%u,%u): %s", current_kernel, current_block.x, current_block.y,
          current_block.z, msg);
}

/* Complete the warp operations whose lanes have all arrived; true when any did. */
static bool resolve_warps(int n) {
    bool any = false;
    for (int w0 = 0; w0 < n; w0 += 32) {
        int w1 = w0 + 32 < n ? w0 + 32 : n;
        for (int i = w0; i < w1; i++) {
            Thread *t = &threads[i];
            if (t->st != T_WARP) continue;
            bool ready = true;
            for (int l = 0; l < 32 && ready; l++) {
                if (!(t->mask >> l & 1)) continue;
                if (w0 + l >= n)
                    block_fail(
                        "thread %d: warp operation mask 0x%08x names lane %d, which this %d-thread block "
                        "does not have",
                        i, t->mask, l, n);
                Thread *u = &threads[w0 + l];
                if (u->st == T_DONE)
                    block_fail("thread %d: warp operation mask 0x%08x names lane %d, which has exited", i,
                               t->mask, l);
                if (u->st != T_WARP)
                    ready = false;
                else if (u->mask != t->mask || u->kind != t->kind)
                    block_fail(
                        "threads %d and %d meet in different warp operations (masks 0x%08x and 0x%08x)", i,
                        w0 + l, t->mask, u->mask);
            }
            if (!ready) continue;
            uint64_t ballot = 0;
            for (int l = 0; l < 32; l++)
                if (t->mask >> l & 1) ballot |= (threads[w0 + l].value & 1) << l;
            unsigned mask = t->mask;
            for (int l = 0; l < 32; l++) {
                if (!(mask >> l & 1)) continue;
                Thread *u = &threads[w0 + l];
                if (u->kind == 1)
                    u->result = ballot;
                else if (!(mask >> (u->src & 31) & 1))
                    block_fail("thread %d shuffles from lane %d, outside the mask 0x%08x (undefined in CUDA)",
                               w0 + l, u->src, mask);
                else
                    u->result = threads[w0 + (u->src & 31)].value;
            }
            for (int l = 0; l < 32; l++)
                if (mask >> l & 1) threads[w0 + l].st = T_RUN;
            any = true;
        }
    }
    return any;
}

static void run_block(int n, const std::vector<int> &order) {
    for (int i = 0; i < n; i++) fiber_prepare(&threads[i]);
    if (dyn_smem_bytes) memset(dyn_smem, 0xff, dyn_smem_bytes);
    for (;;) {
        for (int k : order)
            if (threads[k].st == T_RUN) resume(&threads[k]);
        if (resolve_warps(n)) continue;
        int done = 0, barrier = 0, warp = 0;
        for (int i = 0; i < n; i++) {
            done += threads[i].st == T_DONE;
            barrier += threads[i].st == T_BARRIER;
            warp += threads[i].st == T_WARP;
        }
        if (done == n) return;
        if (barrier && !warp) {
            if (done)
                block_fail(
                    "__syncthreads reached by %d threads while %d have exited (a barrier every thread of "
                    "the block must reach)",
                    barrier, done);
            for (int i = 0; i < n; i++) threads[i].st = T_RUN;
            continue;
        }
        block_fail("deadlock: %d threads wait at __syncthreads, %d in warp operations whose lanes never all "
                   "arrive, %d have exited",
                   barrier, warp, done);
    }
}

static std::vector<int> ordering(int n, Order o, std::mt19937_64 &rng) {
    std::vector<int> v((size_t)n);
    for (int i = 0; i < n; i++) v[(size_t)i] = o == REVERSE ? n - 1 - i : i;
    if (o == SHUFFLE) std::shuffle(v.begin(), v.end(), rng);
    return v;
}

struct Kernel {
    const char *name;
    dim3 grid, block;
    size_t smem;
    BlockBody body;
    void *closure;
    void (*destroy)(void *);
};

static void run_grid(const Kernel &k, Order o, uint64_t seed) {
    int n = (int)(k.block.x * k.block.y * k.block.z);
    if (threads.size() < (size_t)n) threads.resize((size_t)n, Thread{});
    for (int i = 0; i < n; i++) {
        Thread *t = &threads[i];
        t->idx = uint3{(unsigned)i % k.block.x, (unsigned)i / k.block.x % k.block.y,
                       (unsigned)i / (k.block.x * k.block.y)};
        t->lane = i & 31, t->warp = i >> 5;
    }
    std::mt19937_64 rng(seed);
    size_t nb = (size_t)k.grid.x * k.grid.y * k.grid.z;
    if (nb > ((size_t)1 << 31)) fatal("kernel %s: %zu blocks", k.name, nb);
    std::vector<int> blocks = ordering((int)nb, o, rng);
    current_kernel = k.name;
    cur_body = k.body, cur_closure = k.closure;
    cur_block_dim = k.block, cur_grid_dim = k.grid;
    free(dyn_smem);
    dyn_smem_bytes = k.smem;
    dyn_smem = (unsigned char *)malloc(k.smem ? k.smem : 1);
    for (int b : blocks) {
        unsigned ub = (unsigned)b;
        current_block = cur_block_idx =
            uint3{ub % k.grid.x, ub / k.grid.x % k.grid.y, ub / (k.grid.x * k.grid.y)};
        run_block(n, ordering(n, o, rng));
    }
    current_kernel = NULL;
}

/* The bytes of every live device allocation (the order check's snapshot). */
static std::vector<unsigned char> snapshot() {
    std::vector<unsigned char> s;
    for (auto &a : allocs)
        if (!a.second.freed)
            s.insert(s.end(), (unsigned char *)a.first, (unsigned char *)a.first + a.second.bytes);
    return s;
}
static void restore(const std::vector<unsigned char> &s) {
    size_t at = 0;
    for (auto &a : allocs)
        if (!a.second.freed) memcpy((void *)a.first, s.data() + at, a.second.bytes), at += a.second.bytes;
}
static std::string first_difference(const std::vector<unsigned char> &x,
                                    const std::vector<unsigned char> &y) {
    size_t at = 0;
    for (auto &a : allocs) {
        if (a.second.freed) continue;
        for (size_t i = 0; i < a.second.bytes; i++)
            if (x[at + i] != y[at + i]) {
                char b[96];
                snprintf(b, sizeof b, "byte %zu of the %zu-byte allocation at %p", i, a.second.bytes,
                         (void *)a.first);
                return b;
            }
        at += a.second.bytes;
    }
    return "?";
}

static unsigned long long launches;

static void execute_kernel(const Kernel &k) {
    uint64_t seed = cfg.seed * 0x9e3779b97f4a7c15ull + ++launches;
    kernel_float_atomics = false;
    if (!cfg.order_check) {
        run_grid(k, cfg.order, seed);
        return;
    }
    std::vector<unsigned char> before = snapshot();
    run_grid(k, cfg.order, seed);
    std::vector<unsigned char> first = snapshot();
    restore(before);
    Order other = cfg.order == FORWARD ? REVERSE : cfg.order == REVERSE ? FORWARD : SHUFFLE;
    run_grid(k, other, seed + 0x5851f42d4c957f2dull);
    if (!kernel_float_atomics && snapshot() != first)
        fatal("kernel %s (grid %u x %u x %u, block %u x %u x %u) gives other bits when its threads and "
              "blocks run "
              "in another order (%s differs): it depends on an order CUDA does not promise (a missing "
              "__syncthreads, a race on shared or global memory)",
              k.name, k.grid.x, k.grid.y, k.grid.z, k.block.x, k.block.y, k.block.z,
              first_difference(first, snapshot()).c_str());
}

static std::map<const void *, int> max_dynamic_smem;
static const int SMEM_DEFAULT = 48 << 10, SMEM_OPTIN = 227 << 10;

void launch_kernel(const char *name, const void *func, dim3 g, dim3 b, size_t smem, cudaStream_t s,
                   BlockBody body, void *closure, void (*destroy)(void *)) {
    memory_init();
    size_t threads_per_block = (size_t)b.x * b.y * b.z;
    auto lim = max_dynamic_smem.find(func);
    size_t smem_max = lim == max_dynamic_smem.end() ? SMEM_DEFAULT : (size_t)lim->second;
    if (!threads_per_block || threads_per_block > 1024 || b.z > 64 || !g.x || !g.y || !g.z || g.y > 65535 ||
        g.z > 65535 || g.x > 0x7fffffffu || smem > smem_max) {
        set_error(cudaErrorInvalidConfiguration);
        destroy(closure);
        return;
    }
    Kernel *k = new Kernel{name, g, b, smem, body, closure, destroy};
    Op *op = new Op();
    char what[160];
    snprintf(what, sizeof what, "kernel %s", name);
    op->what = what;
    op->run = [k]() {
        execute_kernel(*k);
        k->destroy(k->closure);
        delete k;
    };
    enqueue(s, op);
}

} // namespace emu

/* ---------------------------------------------------------------- the runtime API */

using namespace emu;

extern "C" {

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    default: return "unspecified launch failure";
    }
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

static int n_devices() {
    const char *e = getenv("DAM_EMU_DEVICES");
    return e ? atoi(e) : 1;
}
static int current_device;

cudaError_t cudaGetDeviceCount(int *n) {
    *n = n_devices();
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
    if (d < 0 || d >= n_devices()) return set_error(cudaErrorInvalidDevice), cudaErrorInvalidDevice;
    current_device = d;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
    *d = current_device;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d) {
    (void)d;
    *v = a == cudaDevAttrMultiProcessorCount            ? 132
         : a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? SMEM_OPTIN
                                                        : SMEM_DEFAULT;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    wait_until("cudaDeviceSynchronize", device_idle);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot) {
    size_t total = (size_t)80 << 30, used = arena_top;
    *tot = total, *fr = used < total ? total - used : 0;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = device_alloc(bytes ? bytes : 1);
    if (!*p) return set_error(cudaErrorMemoryAllocation), cudaErrorMemoryAllocation;
    return cudaSuccess;
}
/* cudaFree waits for the whole device first (CUDA's implicit synchronisation). */
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    wait_until("cudaFree (it synchronises the device)", device_idle);
    device_release(p, "cudaFree");
    return cudaSuccess;
}
/* Stream-ordered: usable by work queued on s from now on; freed when s reaches the free. */
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t s) {
    (void)s;
    cudaError_t rc = cudaMalloc(p, bytes);
    if (rc == cudaSuccess) allocs[(uintptr_t)*p].stream_ordered = true;
    return rc;
}
cudaError_t cudaFreeAsync(void *p, cudaStream_t s) {
    if (!p) return cudaSuccess;
    uintptr_t st;
    const Alloc *a = find_alloc(p, &st);
    if (a && st == (uintptr_t)p && !a->freed && !a->stream_ordered)
        fatal("cudaFreeAsync(%p): memory from cudaMalloc (stream-ordered frees take cudaMallocAsync's)", p);
    Op *op = new Op();
    op->what = "cudaFreeAsync";
    op->run = [p]() { device_release(p, "cudaFreeAsync"); };
    enqueue(s, op);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    memory_init();
    wait_until("cudaMallocHost (it synchronises the device)", device_idle);
    *p = malloc(bytes ? bytes : 1);
    if (!*p) return set_error(cudaErrorMemoryAllocation), cudaErrorMemoryAllocation;
    pinned[(uintptr_t)*p] = bytes ? bytes : 1;
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    wait_until("cudaFreeHost (it synchronises the device)", device_idle);
    if (!pinned.erase((uintptr_t)p)) fatal("cudaFreeHost(%p): not memory from cudaMallocHost", p);
    free(p);
    return cudaSuccess;
}

/* Copies. Device ranges must lie in one live allocation; CUDA leaves overlapping ranges undefined,
 * so they are refused. Pinned host memory is read or written when the copy runs (its range poisoned
 * until then); pageable memory is staged at the call (host to device) or copied synchronously
 * (device to host), as CUDA does. */
static void check_copy(void *dst, const void *src, size_t bytes, const char *call) {
    size_t l;
    MemKind dk = classify(dst, &l), sk = classify(src, &l);
    char what[64];
    snprintf(what, sizeof what, "%s destination", call);
    if (dk == MEM_DEVICE) need_device_range(dst, bytes, what);
    snprintf(what, sizeof what, "%s source", call);
    if (sk == MEM_DEVICE) need_device_range(src, bytes, what);
    if ((dk != MEM_HOST || sk != MEM_HOST) && (const char *)dst < (const char *)src + bytes &&
        (const char *)src < (const char *)dst + bytes)
        fatal("%s: the %zu-byte ranges at %p and %p overlap (undefined in CUDA)", call, bytes, dst, src);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    (void)kind;
    memory_init();
    if (!bytes) return cudaSuccess;
    check_copy(dst, src, bytes, "cudaMemcpyAsync");
    size_t l;
    MemKind dk = classify(dst, &l), sk = classify(src, &l);
    Op *op = new Op();
    op->what = "cudaMemcpyAsync";
    if (sk == MEM_HOST && dk == MEM_DEVICE) { /* pageable source: staged now */
        std::shared_ptr<std::vector<char>> copy =
            std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        op->run = [dst, copy]() { memcpy(dst, copy->data(), copy->size()); };
        enqueue(s, op);
        return cudaSuccess;
    }
    bool poisoned_dst = dk == MEM_PINNED, poisoned_src = sk == MEM_PINNED && dk == MEM_DEVICE;
    if (poisoned_dst) POISON(dst, bytes);
    if (poisoned_src) POISON((void *)src, bytes);
    /* a pageable destination: the call returns once the copy is done */
    std::shared_ptr<bool> done = std::make_shared<bool>(false);
    op->run = [=]() {
        if (poisoned_dst) UNPOISON(dst, bytes);
        if (poisoned_src) UNPOISON((void *)src, bytes);
        memcpy(dst, src, bytes);
        *done = true;
    };
    enqueue(s, op);
    if (dk == MEM_HOST) wait_until("cudaMemcpyAsync into pageable memory", [done]() { return *done; });
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    cudaError_t rc = cudaMemcpyAsync(dst, src, bytes, kind, NULL);
    if (rc == cudaSuccess) wait_until("cudaMemcpy", device_idle);
    return rc;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    memory_init();
    if (!bytes) return cudaSuccess;
    need_device_range(p, bytes, "cudaMemsetAsync");
    Op *op = new Op();
    op->what = "cudaMemsetAsync";
    op->run = [=]() { memset(p, value, bytes); };
    enqueue(s, op);
    return cudaSuccess;
}

static int next_stream_id = 1;
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    EmuStream *st = new EmuStream();
    st->id = next_stream_id++;
    streams.push_back(st);
    *s = st;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    wait_until("cudaStreamDestroy", [s]() { return stream_idle(s); });
    streams.erase(std::find(streams.begin(), streams.end(), s));
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    EmuStream *st = stream_of(s);
    wait_until("cudaStreamSynchronize", [st]() { return stream_idle(st); });
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
    progress_now();
    return stream_idle(stream_of(s)) ? cudaSuccess : (set_error(cudaErrorNotReady), cudaErrorNotReady);
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
    (void)flags;
    if (e->completed >= e->recorded) return cudaSuccess; /* nothing pending to wait for */
    Op *op = new Op();
    op->what = "cudaStreamWaitEvent";
    op->event.ev = e, op->event.seq = e->recorded, op->event.wait = true;
    e->pending++;
    enqueue(s, op);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new EmuEvent();
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    (void)flags;
    return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return cudaSuccess;
    e->destroyed = true; /* CUDA lets a pending event be destroyed: its queued record still runs */
    if (!e->pending) delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    Op *op = new Op();
    op->what = "cudaEventRecord";
    op->event.ev = e, op->event.seq = ++e->recorded;
    e->pending++;
    enqueue(s, op);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    wait_until("cudaEventSynchronize", [e]() { return e->completed >= e->recorded; });
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
    progress_now();
    return e->completed >= e->recorded ? cudaSuccess : (set_error(cudaErrorNotReady), cudaErrorNotReady);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a->completed || !b->completed) return set_error(cudaErrorNotReady), cudaErrorNotReady;
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > SMEM_OPTIN)
        return set_error(cudaErrorInvalidValue), cudaErrorInvalidValue;
    max_dynamic_smem[func] = value;
    return cudaSuccess;
}

int emu_is_device_pointer(const void *p) { return in_arena(p); }

} // extern "C"
