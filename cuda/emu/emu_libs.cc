/* emu_libs.cc — the libraries the CUDA backend calls, emulated on the CPU with their own rules:
 *  - cuBLAS: cublasGemmEx on the CPU BLAS. Operands are read as cuBLAS reads them (column-major, the
 *    given transposes and leading dimensions; bf16 widened exactly, fp32 accumulation, the output
 *    rounded to its dtype), and cuBLAS's argument checks apply: a wrong transpose or leading
 *    dimension gives a wrong result or a refusal, never a corrected one. Each operand's extent must
 *    lie in its device allocation.
 *  - CUB: DeviceRadixSort::SortKeysDescending with its two-phase temporary-storage protocol (the
 *    temporary storage is written, so a short one is caught) and its order of float keys.
 *  - NCCL over MPI: a communicator is an MPI communicator of its members (ncclCommInitRank blocks
 *    until all have joined); sends are synchronous-mode (MPI_Issend: a send completes only once its
 *    receive has been matched, as NCCL's do), receives must match the sent size, all-reduces are
 *    MPI_Iallreduce (bf16 summed in fp32, rounded once); every operation is queued on its CUDA stream
 *    and starts when the stream reaches it, through host bounce buffers (MPI never sees device
 *    memory); the calls between ncclGroupStart and ncclGroupEnd are issued together. */
#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cub/device/device_radix_sort.cuh"
#include "cublas_v2.h"
#include "emu_internal.h"
#include "nccl.h"

using namespace emu;

/* bf16 as bits, through the device header's conversions (emu_device.h) */
static float bf16_to_f32(uint16_t h) { return __bfloat162float(__nv_bfloat16{h}); }
static uint16_t f32_to_bf16(float f) { return __float2bfloat16_rn(f).bits; }

/* ---------------------------------------------------------------- cuBLAS */

struct EmuCublas {
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
};

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new EmuCublas{NULL, NULL, 0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    if (bytes) need_device_range(ws, bytes, "cublasSetWorkspace");
    h->workspace = ws, h->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

} // extern "C"

/* A column-major operand: `rows` x `cols` as stored, leading dimension ld. */
struct Operand {
    const void *p;
    cudaDataType_t t;
    int rows, cols, ld;
    size_t extent() const { return rows && cols ? (size_t)ld * (size_t)(cols - 1) + (size_t)rows : 0; }
    size_t esize() const { return t == CUDA_R_16BF ? 2 : 4; }
};

static std::vector<float> widen(const Operand &o) {
    std::vector<float> f(o.extent() ? o.extent() : 1, 0.0f);
    for (size_t i = 0; i < o.extent(); i++)
        f[i] = o.t == CUDA_R_16BF ? bf16_to_f32(((const uint16_t *)o.p)[i]) : ((const float *)o.p)[i];
    return f;
}

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                       int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                                       int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                                       void *C, cudaDataType_t ct, int ldc, cublasComputeType_t compute,
                                       cublasGemmAlgo_t algo) {
    (void)algo;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (ta > CUBLAS_OP_T || tb > CUBLAS_OP_T || m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    Operand a = {A, at, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda};
    Operand b = {B, bt, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb};
    Operand c = {C, ct, m, n, ldc};
    if (lda < std::max(1, a.rows) || ldb < std::max(1, b.rows) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool bf16_in = at == CUDA_R_16BF && bt == CUDA_R_16BF && (ct == CUDA_R_16BF || ct == CUDA_R_32F);
    bool f32 = at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F;
    if (!(bf16_in || f32) || compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    need_device_range(C, c.extent() * c.esize(), "cublasGemmEx C (m, n, ldc)");
    if (k > 0) {
        need_device_range(A, a.extent() * a.esize(), "cublasGemmEx A (transa, m, k, lda)");
        need_device_range(B, b.extent() * b.esize(), "cublasGemmEx B (transb, k, n, ldb)");
    }
    float al = *(const float *)alpha, be = *(const float *)beta;
    Op *op = new Op();
    char what[160];
    snprintf(what, sizeof what, "cublasGemmEx %s%s m=%d n=%d k=%d", ta == CUBLAS_OP_N ? "N" : "T",
             tb == CUBLAS_OP_N ? "N" : "T", m, n, k);
    op->what = what;
    op->run = [=]() {
        std::vector<float> fc = be != 0.0f ? widen(c) : std::vector<float>(c.extent(), 0.0f);
        if (k > 0) {
            std::vector<float> fa = widen(a), fb = widen(b);
            cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                        tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, al, fa.data(), lda, fb.data(),
                        ldb, be, fc.data(), ldc);
        } else {
            for (float &x : fc) x *= be;
        }
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                size_t e = (size_t)j * ldc + i;
                if (ct == CUDA_R_16BF)
                    ((uint16_t *)C)[e] = f32_to_bf16(fc[e]);
                else
                    ((float *)C)[e] = fc[e];
            }
    };
    enqueue(h->stream, op);
    return CUBLAS_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- CUB */

/* CUB's radix order of a float: its bits with the sign bit set for positives, all bits flipped for
 * negatives, compared as unsigned. */
static uint32_t radix_key(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

cudaError_t emu::radix_sort_desc_f32(void *temp, size_t &temp_bytes, const float *in, float *out, int n,
                                     int begin_bit, int end_bit, cudaStream_t s) {
    size_t need = (size_t)(n > 0 ? n : 0) * sizeof(float) + 512;
    if (!temp) {
        temp_bytes = need;
        return cudaSuccess;
    }
    if (temp_bytes < need || n < 0 || begin_bit < 0 || end_bit > 32 || begin_bit >= end_bit)
        return set_error(cudaErrorInvalidValue), cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    need_device_range(temp, need, "cub::DeviceRadixSort temporary storage");
    need_device_range(in, (size_t)n * 4, "cub::DeviceRadixSort keys in");
    need_device_range(out, (size_t)n * 4, "cub::DeviceRadixSort keys out");
    Op *op = new Op();
    op->what = "cub::DeviceRadixSort::SortKeysDescending";
    op->run = [=]() {
        memset(temp, 0xab, need); /* the temporary storage is CUB's to write */
        std::vector<float> k(in, in + n);
        uint32_t mask = (end_bit == 32 ? 0xffffffffu : (1u << end_bit) - 1) & ~((1u << begin_bit) - 1);
        std::stable_sort(k.begin(), k.end(),
                         [mask](float x, float y) { return (radix_key(x) & mask) > (radix_key(y) & mask); });
        memcpy(out, k.data(), (size_t)n * 4);
    };
    enqueue(s, op);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- NCCL over MPI */

struct EmuNcclComm {
    MPI_Comm comm;
    int rank, nranks;
    bool aborted;
};

static const char ID_MAGIC[8] = "DAMEMU1";
static unsigned id_serial;
static int group_depth;
static std::vector<std::pair<cudaStream_t, Op *>> group_ops;
static int group_counter = 1;

static void mpi_ok(int rc, const char *call) {
    if (rc != MPI_SUCCESS) fatal("%s failed in the NCCL emulation (%d)", call, rc);
}

extern "C" {

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "internal error";
    }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    memcpy(id->internal, ID_MAGIC, 8);
    int wr = world_rank();
    unsigned serial = ++id_serial;
    memcpy(id->internal + 8, &wr, 4);
    memcpy(id->internal + 12, &serial, 4);
    return ncclSuccess;
}

/* Members tell the id's creator their world ranks; it answers with the table; the members then make
 * an MPI communicator of their own (collective over them alone). */
ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
    if (memcmp(id.internal, ID_MAGIC, 8) || nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    int creator, me = world_rank();
    unsigned serial;
    memcpy(&creator, id.internal + 8, 4);
    memcpy(&serial, id.internal + 12, 4);
    int tag = 20000 + (int)(serial % 5000) * 2;
    std::vector<int> table((size_t)nranks, -1);
    if (me == creator) {
        table[(size_t)rank] = me;
        for (int i = 1; i < nranks; i++) {
            int msg[2];
            mpi_ok(MPI_Recv(msg, 2, MPI_INT, MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                   "MPI_Recv");
            if (msg[0] < 0 || msg[0] >= nranks || table[(size_t)msg[0]] >= 0)
                fatal("ncclCommInitRank: two members claim rank %d of %d", msg[0], nranks);
            table[(size_t)msg[0]] = msg[1];
        }
        for (int i = 0; i < nranks; i++)
            if (table[(size_t)i] != me)
                mpi_ok(MPI_Send(table.data(), nranks, MPI_INT, table[(size_t)i], tag + 1, MPI_COMM_WORLD),
                       "MPI_Send");
    } else {
        int msg[2] = {rank, me};
        mpi_ok(MPI_Send(msg, 2, MPI_INT, creator, tag, MPI_COMM_WORLD), "MPI_Send");
        mpi_ok(MPI_Recv(table.data(), nranks, MPI_INT, creator, tag + 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
               "MPI_Recv");
    }
    MPI_Group world, members;
    mpi_ok(MPI_Comm_group(MPI_COMM_WORLD, &world), "MPI_Comm_group");
    mpi_ok(MPI_Group_incl(world, nranks, table.data(), &members), "MPI_Group_incl");
    EmuNcclComm *c = new EmuNcclComm{MPI_COMM_NULL, rank, nranks, false};
    mpi_ok(MPI_Comm_create_group(MPI_COMM_WORLD, members, tag, &c->comm), "MPI_Comm_create_group");
    MPI_Group_free(&members);
    MPI_Group_free(&world);
    *out = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t c) {
    if (!c) return ncclSuccess;
    MPI_Comm_free(&c->comm);
    delete c;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t c) {
    if (c) c->aborted = true; /* queued and pending operations end without completing */
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *err) {
    progress_now();
    *err = c && c->aborted ? ncclRemoteError : ncclSuccess;
    return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) {
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
    if (group_depth == 0) return ncclInvalidUsage;
    if (--group_depth == 0) {
        for (auto &so : group_ops) enqueue(so.first, so.second);
        group_ops.clear();
        group_counter++;
    }
    return ncclSuccess;
}

} // extern "C"

static size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclFloat32: return 4;
    case ncclFloat64: return 8;
    }
    return 0;
}

static void issue(cudaStream_t s, Op *op) {
    if (group_depth) {
        op->group = group_counter;
        group_ops.push_back({s, op});
    } else {
        enqueue(s, op);
    }
}

static ncclResult_t p2p(bool send, const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c,
                        cudaStream_t s) {
    size_t bytes = count * type_size(t);
    if (!c || !type_size(t) || peer < 0 || peer >= c->nranks) return ncclInvalidArgument;
    if (bytes > (size_t)INT32_MAX)
        fatal("%s of %zu bytes: over the emulation's 2 GiB per message", send ? "ncclSend" : "ncclRecv",
              bytes);
    if (!bytes) return ncclSuccess;
    need_device_range(buf, bytes, send ? "ncclSend buffer" : "ncclRecv buffer");
    struct State {
        std::vector<char> bounce;
        MPI_Request req = MPI_REQUEST_NULL;
    };
    std::shared_ptr<State> st = std::make_shared<State>();
    Op *op = new Op();
    char what[160];
    snprintf(what, sizeof what, "%s of %zu bytes %s rank %d of an NCCL communicator of %d (as its rank %d)",
             send ? "ncclSend" : "ncclRecv", bytes, send ? "to" : "from", peer, c->nranks, c->rank);
    op->what = what;
    op->start = [=]() {
        st->bounce.resize(bytes);
        if (c->aborted) return;
        if (send) {
            memcpy(st->bounce.data(), buf, bytes);
            mpi_ok(MPI_Issend(st->bounce.data(), (int)bytes, MPI_BYTE, peer, 0, c->comm, &st->req),
                   "MPI_Issend");
        } else {
            mpi_ok(MPI_Irecv(st->bounce.data(), (int)bytes, MPI_BYTE, peer, 0, c->comm, &st->req),
                   "MPI_Irecv");
        }
    };
    op->test = [=]() {
        if (c->aborted) return true;
        int flag = 0;
        MPI_Status status;
        mpi_ok(MPI_Test(&st->req, &flag, &status), "MPI_Test");
        if (!flag) return false;
        if (!send) {
            int got = 0;
            MPI_Get_count(&status, MPI_BYTE, &got);
            if ((size_t)got != bytes)
                fatal(
                    "ncclRecv of %zu bytes from rank %d matched a send of %d bytes (NCCL needs equal sizes)",
                    bytes, peer, got);
            memcpy((void *)buf, st->bounce.data(), bytes);
        }
        return true;
    };
    issue(s, op);
    return ncclSuccess;
}

extern "C" ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c,
                                 cudaStream_t s) {
    return p2p(true, buf, count, t, peer, c, s);
}

extern "C" ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c,
                                 cudaStream_t s) {
    return p2p(false, buf, count, t, peer, c, s);
}

extern "C" ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t,
                                      ncclRedOp_t rop, ncclComm_t c, cudaStream_t s) {
    if (!c || (t != ncclFloat32 && t != ncclBfloat16) || rop > ncclMin) return ncclInvalidArgument;
    if (count > (size_t)INT32_MAX) fatal("ncclAllReduce of %zu elements: over the emulation's limit", count);
    if (!count) return ncclSuccess;
    size_t es = type_size(t);
    need_device_range(send, count * es, "ncclAllReduce send buffer");
    need_device_range(recv, count * es, "ncclAllReduce receive buffer");
    struct State {
        std::vector<float> f;
        MPI_Request req = MPI_REQUEST_NULL;
    };
    std::shared_ptr<State> st = std::make_shared<State>();
    MPI_Op mop = rop == ncclSum ? MPI_SUM : rop == ncclProd ? MPI_PROD : rop == ncclMax ? MPI_MAX : MPI_MIN;
    Op *op = new Op();
    char what[128];
    snprintf(what, sizeof what, "ncclAllReduce of %zu elements over an NCCL communicator of %d", count,
             c->nranks);
    op->what = what;
    op->start = [=]() {
        st->f.resize(count);
        for (size_t i = 0; i < count; i++)
            st->f[i] =
                t == ncclBfloat16 ? bf16_to_f32(((const uint16_t *)send)[i]) : ((const float *)send)[i];
        if (c->aborted) return;
        mpi_ok(MPI_Iallreduce(MPI_IN_PLACE, st->f.data(), (int)count, MPI_FLOAT, mop, c->comm, &st->req),
               "MPI_Iallreduce");
    };
    op->test = [=]() {
        if (c->aborted) return true;
        int flag = 0;
        mpi_ok(MPI_Test(&st->req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
        if (!flag) return false;
        for (size_t i = 0; i < count; i++)
            if (t == ncclBfloat16)
                ((uint16_t *)recv)[i] = f32_to_bf16(st->f[i]);
            else
                ((float *)recv)[i] = st->f[i];
        return true;
    };
    issue(s, op);
    return ncclSuccess;
}
