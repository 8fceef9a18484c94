/* emu_internal.h — what the parts of the CUDA emulation share (emu.cc: memory, streams, events,
 * fibers and kernels; emu_libs.cc: cuBLAS, CUB and NCCL). */
#pragma once

#include <functional>
#include <string>

#include "cuda_runtime.h"

namespace emu {

/* One unit of stream work. Synchronous work has `run`; asynchronous work (NCCL) has `start`, called
 * once when the op reaches the head of its stream, then `test` until it returns true. */
struct Op {
    std::string what;
    std::function<void()> run;
    std::function<void()> start;
    std::function<bool()> test;
    bool started = false;
    int group = 0; /* ncclGroupStart/End: the ops of one group may all be started together */
    struct EmuEventRef {
        cudaEvent_t ev = nullptr;
        unsigned long long seq = 0;
        bool wait = false; /* a cudaStreamWaitEvent, else a record */
    } event;
};

void enqueue(cudaStream_t s, Op *op);
/* Run stream work until done() (every stream progresses, as on a device); fails with one line when
 * nothing can progress any more, or nothing has for DAM_EMU_TIMEOUT_S seconds. */
void wait_until(const char *why, const std::function<bool()> &done);
/* Run whatever can run now, without waiting. */
void progress_now();

enum MemKind { MEM_HOST = 0, MEM_DEVICE = 1, MEM_PINNED = 2 };
/* What p is, and (device or pinned) the bytes from p to its allocation's end. */
MemKind classify(const void *p, size_t *bytes_left);
/* Fail unless [p, p + bytes) lies inside one live device allocation (what names the use). */
void need_device_range(const void *p, size_t bytes, const char *what);

[[noreturn]] void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double now_s();
int world_rank();
void set_error(cudaError_t e);

} // namespace emu
