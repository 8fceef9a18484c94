/* plan.c — `dam_dist plan`: the memory each rank of a run needs, known before the job is submitted,
 * from the run config and the sources' config.json alone (no weights are read; a model directory
 * may hold only its config.json). docs/memory.md gives the formula term by term, with the code that
 * allocates each term.
 *
 *   dam_dist plan --config F --ranks N [--device cpu|cuda] [--gpu-mem GiB] [--mem-per-rank GiB]
 *                 [--json] [--read-gbps X] [--write-gbps X] [--tflops X] [--baseline-mib M]
 *                 [--seq-len T]
 *
 * Per rank (stage s, tp rank r): the sources' shards of the stage in their stored dtype, the
 * coefficients with their optimizer state, the workspace and the run states
 * (dam_model_activation_bytes, the allocator's own lists), the trainer's input buffers, the output
 * phase and a measured per-process baseline. The layout is checked as layout.c checks it, without
 * MPI; a layout that does not fit gets the smallest one that does. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arch.h"
#include "cli.h"
#include "commands.h"
#include "config.h"
#include "dataset.h"
#include "hfconfig.h"
#include "json_util.h"
#include "layout.h"
#include "model.h"
#include "pipeline.h"
#include "util.h"

/* Peak RSS of a dam_dist process beyond what the terms below count: the binary and its shared
 * libraries (Open MPI, HDF5, OpenBLAS: about 18 MiB of mapped file pages), Open MPI's buffers,
 * OpenBLAS's GEMM buffer, the C library's heap. Measured on the development machine (Debian 12, Open
 * MPI 4.1.4, OpenBLAS 0.3.21 with OPENBLAS_NUM_THREADS=1) as the peak RSS of `dam_dist toy --size
 * tiny --models 3` trained for 2 steps, less this plan's terms for it: 24.9 MiB for 1 rank; under
 * mpirun -n 2, 25.5 and 25.7 MiB per rank with pp=2, 25.8 and 24.7 MiB with tp=2. The largest,
 * rounded up (docs/memory.md). --baseline-mib overrides it. */
#define PLAN_BASELINE_MIB 26.0
/* parallel.cpu_matmul "bf16" adds oneDNN's own memory (its OpenMP threads, primitive cache and GEMM
 * scratch): measured as the peak RSS beyond plan's terms of a bf16 run less that of the same fp32
 * run, two sources of vocabulary 128256 (tests/cli_plan_real.sh): 57 MiB at d 256, 92 MiB at d 8192
 * (bench/bench_plan_shape.sh). Rounded to 64 (docs/memory.md). */
#define PLAN_DNNL_MIB 64.0
/* --device cuda: what a rank's GPU holds beyond the model's buffers (the "baseline" column; docs/
 * memory.md, "The CUDA overhead"). A model with named constants, for the first GPU run to calibrate
 * (docs/memory.md says how to measure each); none has been measured yet.
 *   context: the CUDA context, with dam_dist's kernels and cuBLAS's loaded lazily (CUDA 12's
 *     CUDA_MODULE_LOADING=LAZY): an estimate for an H100; */
#define PLAN_CUDA_CONTEXT_MIB 600.0
/*   the cuBLAS workspace cuda/backend_cuda.cu sets (CUBLAS_WS, one handle per rank): exact; */
#define PLAN_CUBLAS_WORKSPACE_MIB 32.0
/*   the device buffer the output is materialized through (output.c out_chunk): exact; */
#define PLAN_CUDA_OUTPUT_CHUNK_MIB 64.0
/*   NCCL: every device-collective group of more than one rank (tp, dp, the tied embedding's first
 *   and last stage, pp) opens two communicators (mpi/nccl_comm.c: UP and DOWN), each with a fixed
 *   part (device-side structures, work FIFO, proxy) ... */
#define PLAN_NCCL_COMM_MIB 32.0
/*   ... and, for a collective group of n ranks, ring buffers on one of them: per channel, to each of
 *   its 2 ring neighbours (1 when n = 2), the protocols' buffers (Simple: NCCL_BUFFSIZE 4 MiB,
 *   LL128 about 4.6 MiB, LL 0.25 MiB) over the channels NCCL opens within a node (16: an estimate);
 *   the pipeline's sends go point to point: per neighbour stage, NCCL_NCHANNELS_PER_PEER (2) channels
 *   of Simple buffers; */
#define PLAN_NCCL_RING_CHANNELS 16
#define PLAN_NCCL_CONN_MIB 8.85
#define PLAN_NCCL_P2P_CHANNELS 2
#define PLAN_NCCL_P2P_CONN_MIB 4.0
/*   and the send slots of nccl_comm.c: each pipeline message (the S·T hidden states in bf16) is
 *   copied into a slot until NCCL has sent it, up to SEND_SLOTS per direction; 1F1B keeps at most
 *   the stage's in-flight micro-batches (pipeline_slots) of them. */
#define PLAN_NCCL_SEND_SLOTS 16
/* Assumed sustained throughput per rank for the step-time estimate (TFLOP/s, as dam_layer_cost
 * counts flops): 0.1 on the CPU, about what bench/RESULTS.md measures for a DAM step on 2 cores
 * (109 GFLOP/s); 300 for a GPU of the H100 class (about 30 % of its dense bf16 peak). Both are
 * assumptions (--tflops overrides them). */
#define PLAN_CPU_TFLOPS 0.1
#define PLAN_CUDA_TFLOPS 300.0
/* The granule a fault on a mapped file makes resident (KiB): 2 MiB, the largest page-cache folio
 * on x86-64, which Linux 6 with ext4 or xfs maps whole (measured here); 64 on kernels that map 4 KiB
 * pages with 64 KiB fault-around. Only small tensors under tp notice (docs/memory.md); --folio-kib
 * sets it and --probe-folio DIR measures it. */
#define PLAN_FOLIO_KIB 2048.0
/* plan's exit status when a rank does not fit (0: all fit; 1: an error) */
#define PLAN_EXIT_NO_FIT 3
/* Slurm checks signal times about once a minute: a lead time needs this much on top. */
#define PLAN_SLURM_SLACK_S 60.0

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)

typedef enum { PLAN_CPU = 0, PLAN_CUDA = 1 } PlanDevice;

/* Everything the estimate needs, from the run config and config.json. */
typedef struct {
    ModelConfig cfg;            /* the sources' architecture (models[0], checked against the others) */
    int n_coef_rows, n_data;    /* coefficient rows (sources, + base); datasets */
    double es_sum;              /* Σ over coefficient rows of the stored element size (bytes) */
    const char *dtype_note;     /* stored dtype, as config.json names it ("mixed" when they differ) */
    int B, T, micro_batches, K; /* batch_size, seq_len, micro_batches, loss.topk */
    PlanDevice dev;
    size_t keep_budget; /* parallel.keep_activations: layers' activations kept when they fit */
    int wov;            /* loss.weighted_overlap on: P pair weights per linear column (pair_weights.h) */
    int cpu_bf16;       /* parallel.cpu_matmul bf16: the merged weights are materialized in bf16 */
    double baseline;    /* bytes per process (cpu) */
    double folio;       /* bytes a fault on a mapped file page makes resident around it (cpu) */
} PlanModel;

typedef struct {
    int dp, pp, tp;
    int automatic; /* chosen by layout.c (some of parallel.dp/pp/tp 0) */
} PlanLayout;

/* One rank's estimate (bytes). For cuda the seven terms are GPU memory and `host` is the host's. */
typedef struct {
    int rank, stage, tp_rank, layer0, layer1, first, last;
    int kept; /* the run states keep the layers' activations (no recompute in the backward) */
    double sources, coefficients, workspace, run_states, inputs, output_phase, baseline, total;
    double host;       /* cuda: host memory of the process */
    double cuda[3];    /* cuda: the baseline's parts: context + cuBLAS + output chunk, NCCL, send slots */
    double load_bytes; /* source bytes this rank reads (its shards) */
    double flops_mb;   /* flops of one micro-batch on this rank */
    int fits;
} PlanRank;

/* ---------------------------------------------------------------- the tensors of a stage */

/* Sums over the tensors a rank holds (arch.h: the ones model.c build_tensor_table opens). */
typedef struct {
    double src_split;   /* stored bytes of this rank's shards, every coefficient row */
    double src_rss;     /* the same as resident pages on the CPU (see plan_stage_tensors) */
    double src_largest; /* stored bytes of the largest tensor's shards, every row */
    size_t coefs;       /* coefficients: Σ n_rows × dim */
    size_t wov;         /* weighted overlap pair weights: Σ over linear tensors P × dim (fp32) */
    double out_cpu;     /* output phase on top of training, with the sources' pages released as written */
    double out_host;    /* the same without any release (cuda: the sources are not resident) */
} StageTensors;

/* The tensors of stage [l0, l1) (first / last) on a tp rank, in model.c's table order: the
 * embedding on the first stage (and on the last with tied embeddings, as its lm_head), the layers'
 * tensors, the final norm and lm_head on the last. `writer`: tp rank 0, which converts to bf16 for
 * output; `root`: world rank 0, which then merges the stages' coefficient files.
 *
 * Resident source pages on the CPU: a fault on a mapped file maps what the page cache holds around
 * the address: the whole folio (up to 2 MiB on Linux 6 with ext4/xfs large folios: measured here),
 * or the 4 KiB page and its cached neighbours within 64 KiB (fault-around) on kernels without large
 * folios. With that granule G (--folio-kib; --probe-folio measures it): a shard that is a contiguous
 * row range (q, k, v, gate, up, embedding, lm_head under tp) costs up to G more per source; a
 * row-parallel tensor (o_proj, down_proj: input columns split) is a slice of every row, and each
 * row costs its slice + G, at most the row: whole, at real shapes, in every tp rank.
 *
 * The output phase (output.c write_stage_tensors, merged_tensor) walks the owned tensors in this
 * order: each is materialized into a buffer of its local size (fp32) while its source pages are
 * still resident; then they are released (dam_model_release: the resident bytes, not the shard's
 * exact ones); then dam_model_gather_split returns local × tp floats (an allgather; a copy without
 * tp), a second such buffer while a column split is reordered, with the local buffer still
 * allocated; after that is freed the writer adds a bf16 copy (st_writer_add_f32) beside the gathered
 * one; the coefficient copies, gathered alike, are kept until the stage's coefficients file is
 * written. The phase adds to training's peak the largest of these sums less what was released
 * before; world rank 0 then maps every stage's coefficients file (all coefficients of the model,
 * fp32) while merging them. At real widths the first tensor, the embedding, is the peak: its
 * materialized copy plus its gathered copy, less its own pages (70B: 4.2 + 4.2 GB less 2.1 GB a
 * source). */
static void plan_stage_tensors(const PlanModel *pm, int tp, int l0, int l1, int first, int last, int pp,
                               int writer, int root, StageTensors *st) {
    const ModelConfig *c = &pm->cfg;
    memset(st, 0, sizeof *st);
    int n = arch_tensors(c, NULL);
    ArchTensor *all = dam_malloc((size_t)n * sizeof *all, "architecture tensors");
    arch_tensors(c, all);
    double coefs_kept = 0, released = 0, coefs_all = 0;
    for (int i = 0; i < n; i++) {
        DamTensorKind kind = all[i].def->kind;
        TensorSplit split = all[i].def->split;
        size_t rows = (size_t)all[i].rows, cols = (size_t)all[i].cols;
        TensorShare sh = arch_share(kind, split, rows, cols, tp, 0); /* every rank's is this size */
        coefs_all += (double)pm->n_coef_rows * sh.coef_full;
        if (!arch_stage_holds(&all[i], c, l0, l1, first, last)) continue;
        size_t rows_l = sh.rows, cols_l = sh.cols;
        size_t local = rows_l * cols_l, dim = (size_t)sh.dim;
        double whole = (double)rows * cols * pm->es_sum, shard = (double)local * pm->es_sum;
        double resident = shard, granules = pm->n_coef_rows * pm->folio; /* a granule per source */
        if (shard < whole && split == SPLIT_COLS)                        /* a slice of every row */
            resident = (double)rows * fmin((double)cols * pm->es_sum, (double)cols_l * pm->es_sum + granules);
        else if (shard < whole) /* a row range */
            resident = fmin(whole, shard + granules);
        st->src_split += shard;
        st->src_rss += resident;
        st->src_largest = fmax(st->src_largest, shard);
        st->coefs += (size_t)pm->n_coef_rows * dim;
        if (pm->wov && kind == DT_LINEAR)
            st->wov += (size_t)(pm->n_coef_rows * (pm->n_coef_rows - 1) / 2) * dim;
        if (pp > 1 && !first && kind == DT_EMBED) continue; /* a tied embedding is the first stage's */
        /* output.c merged_tensor: the local merged tensor (fp32) is materialized while the sources are
         * resident, then its source pages are released, then gathered (dam_model_gather_split: a
         * copy without tp, local x tp with it, twice that while a column split is reordered) with
         * the local one still allocated; after it is freed the writer makes its bf16 copy beside the
         * gathered one */
        double loc = (double)local * 4, full = loc * tp;
        double gather = split == SPLIT_COLS && kind != DT_BIAS && tp > 1 ? 2 * full : full;
        double written = full + (writer ? full / 2 : 0), before = released;
        released += resident;
        double t_cpu = fmax(loc - before, fmax(loc + gather, written) - released);
        st->out_cpu = fmax(st->out_cpu, coefs_kept + t_cpu);
        st->out_host = fmax(st->out_host, coefs_kept + fmax(loc + gather, written));
        coefs_kept += (double)pm->n_coef_rows * dim * tp * 4;
    }
    if (root) { /* merge_stage_outputs: buf and the copies are freed by then */
        st->out_cpu = fmax(st->out_cpu, coefs_all * 4 - released);
        st->out_host = fmax(st->out_host, coefs_all * 4);
    }
    free(all);
}

/* Coefficients of the whole model, each tensor once (the merged coefficients file, the checkpoint):
 * Σ n_rows × full dim. */
static double model_coefs(const PlanModel *pm) {
    StageTensors st;
    plan_stage_tensors(pm, 1, 0, pm->cfg.num_hidden_layers, 1, 1, 1, 0, 0, &st);
    return (double)st.coefs;
}

/* For tests (tests/test_plan.c declares them): the coefficient count (what dam_model_num_coefs
 * returns for a model opened with that share) and the stored bytes of the shards, stage `stage` of
 * pp on a tp rank, with n_rows sources of elem_bytes per element. */
size_t plan_num_coefs(const ModelConfig *c, int n_rows, int tp, int pp, int stage);
double plan_source_bytes(const ModelConfig *c, int n_rows, double elem_bytes, int tp, int pp, int stage);

static void plan_stage_of(const ModelConfig *c, int n_rows, double elem_bytes, int tp, int pp, int stage,
                          StageTensors *st) {
    PlanModel pm;
    memset(&pm, 0, sizeof pm);
    pm.cfg = *c, pm.n_coef_rows = n_rows, pm.es_sum = n_rows * elem_bytes;
    int l0, l1;
    dam_stage_layers(c, pp, stage, &l0, &l1);
    plan_stage_tensors(&pm, tp, l0, l1, stage == 0, stage == pp - 1, pp, 0, 0, st);
}

size_t plan_num_coefs(const ModelConfig *c, int n_rows, int tp, int pp, int stage) {
    StageTensors st;
    plan_stage_of(c, n_rows, 2, tp, pp, stage, &st);
    return st.coefs;
}

double plan_source_bytes(const ModelConfig *c, int n_rows, double elem_bytes, int tp, int pp, int stage) {
    StageTensors st;
    plan_stage_of(c, n_rows, elem_bytes, tp, pp, stage, &st);
    return st.src_split;
}

/* ---------------------------------------------------------------- one rank */

/* This rank's share of the model (model.c shard_config): heads, KV heads, FFN width, vocabulary / tp. */
static ModelConfig share_config(const ModelConfig *c, int tp) {
    ModelConfig s = *c;
    s.num_attention_heads /= tp, s.num_key_value_heads /= tp, s.intermediate_size /= tp, s.vocab_size /= tp;
    return s;
}

/* The CUDA overhead of rank r (bytes; see the constants above). `parts` (may be NULL) gets context +
 * cuBLAS + output chunk, NCCL's communicators, and the send slots. */
static double cuda_overhead(const PlanModel *pm, const PlanLayout *L, const PlanRank *r, int n_slots,
                            double parts[3]) {
    double fixed = (PLAN_CUDA_CONTEXT_MIB + PLAN_CUBLAS_WORKSPACE_MIB + PLAN_CUDA_OUTPUT_CHUNK_MIB) * MIB;
    int tied = pm->cfg.tie_word_embeddings && L->pp > 1 && (r->first || r->last) ? 2 : 1;
    int collective[3] = {L->tp, L->dp, tied};
    double nccl = 0;
    for (int i = 0; i < 3; i++) {
        int n = collective[i];
        if (n > 1)
            nccl += 2 * PLAN_NCCL_COMM_MIB + (n == 2 ? 1 : 2) * PLAN_NCCL_RING_CHANNELS * PLAN_NCCL_CONN_MIB;
    }
    double slots = 0;
    if (L->pp > 1) {
        int peers = (r->first ? 0 : 1) + (r->last ? 0 : 1);
        nccl += 2 * PLAN_NCCL_COMM_MIB + peers * PLAN_NCCL_P2P_CHANNELS * PLAN_NCCL_P2P_CONN_MIB;
        double msg = (double)pm->n_data * pm->B * pm->T * pm->cfg.hidden_size * 2; /* bf16 hidden states */
        int k = n_slots < PLAN_NCCL_SEND_SLOTS ? n_slots : PLAN_NCCL_SEND_SLOTS;
        slots = peers * k * msg; /* activations up, their gradients down */
    }
    if (parts) parts[0] = fixed, parts[1] = nccl * MIB, parts[2] = slots;
    return fixed + nccl * MIB + slots;
}

static void plan_rank(const PlanModel *pm, const PlanLayout *L, int rank, PlanRank *r) {
    memset(r, 0, sizeof *r);
    int tp = L->tp, pp = L->pp;
    r->rank = rank, r->tp_rank = rank % tp, r->stage = (rank / tp) % pp;
    dam_stage_layers(&pm->cfg, pp, r->stage, &r->layer0, &r->layer1);
    r->first = r->stage == 0, r->last = r->stage == pp - 1;
    StageTensors st;
    plan_stage_tensors(pm, tp, r->layer0, r->layer1, r->first, r->last, pp, r->tp_rank == 0, rank == 0, &st);
    if (rank >= pp * tp) st.out_cpu = st.out_host = 0; /* only data-parallel replica 0 writes the output */
    int local_mb = pm->micro_batches / L->dp;
    int n_slots = pipeline_slots(local_mb, pp, r->stage); /* as train.c allocates them */
    if (n_slots > 64) n_slots = 64;
    /* activations: model.c's own lists (dam_model_activation_bytes) for this rank's share, in the
     * backend's activation dtype (cpu F32; cuda BF16, its F32 buffers F32), the layers' activations
     * kept in the run states when they fit parallel.keep_activations (as dam_model_keep_fits) */
    ModelConfig share = share_config(&pm->cfg, tp);
    size_t ws, rs, rs_keep;
    int Bt = pm->n_data * pm->B, nl = r->layer1 - r->layer0;
    dam_dtype act = pm->dev == PLAN_CUDA ? DAM_BF16 : DAM_F32;
    dam_dtype wdt = pm->dev == PLAN_CUDA || pm->cpu_bf16 ? DAM_BF16 : DAM_F32; /* the merged weights */
    dam_model_activation_bytes(&share, nl, r->last, Bt, pm->T, act, wdt, 1, &ws, &rs_keep);
    dam_model_activation_bytes(&share, nl, r->last, Bt, pm->T, act, wdt, 0, &ws, &rs);
    r->kept = pm->keep_budget > 0 && (rs_keep - rs) * (size_t)n_slots <= pm->keep_budget;
    if (r->kept) rs = rs_keep;
    /* the trainer's inputs (train.c open_data, alloc_step_buffers): ids int32 + mask int8 per token
     * of every dataset's micro-batch, once more per local micro-batch under pp; top-K caches */
    double rows = (double)Bt * pm->T, per_mb = rows * 5 + rows * pm->K * 8.0;
    double inputs = per_mb * (1 + (pp > 1 ? local_mb : 0));
    r->coefficients = (double)st.coefs * 5 * 4 /* c, f(c), grad, Adam m, Adam v: fp32 */
                      + (double)st.wov * 4;    /* the weighted overlap's pair weights */
    r->run_states = (double)rs * n_slots;
    r->load_bytes = st.src_split;
    double tokens = rows;
    r->flops_mb =
        ((r->layer1 - r->layer0) * dam_layer_cost(&pm->cfg) + (r->last ? dam_head_cost(&pm->cfg) : 0)) *
        tokens / tp;
    if (pm->dev == PLAN_CPU) {
        r->sources = st.src_rss;
        r->workspace = (double)ws;
        r->inputs = inputs;
        r->output_phase = st.out_cpu;
        r->baseline = pm->baseline + (pm->cpu_bf16 ? PLAN_DNNL_MIB * MIB : 0);
        r->host = 0;
    } else {
        /* the CUDA contract (docs/memory.md): shards uploaded in their stored dtype; the step in bf16:
         * merged weights, lm_head buffers and activations (layer inputs kept for the backward
         * included) in bf16, the F32 ones (norm statistics, log-sum-exps, the loss chunks' logits
         * and dL/dz, top-K) in F32, as the model allocates them; the output materialized on the GPU
         * and written from the host; inputs stay on the host */
        r->sources = st.src_split;
        r->workspace = (double)ws;
        r->inputs = 0;
        r->output_phase = 0;
        r->baseline = cuda_overhead(pm, L, r, n_slots, r->cuda);
        /* host: the process, its inputs, the output buffers, and the pages of the tensor being
         * uploaded (sources are read once, then released: not resident) */
        r->host = pm->baseline + inputs + st.out_host + st.src_largest;
    }
    r->total = r->sources + r->coefficients + r->workspace + r->run_states + r->inputs + r->output_phase +
               r->baseline;
}

/* Every rank of a layout; returns the largest total. */
static double plan_layout(const PlanModel *pm, const PlanLayout *L, PlanRank *ranks) {
    double worst = 0;
    int n = L->dp * L->pp * L->tp;
    for (int i = 0; i < n; i++) {
        PlanRank one;
        memset(&one, 0, sizeof one);
        PlanRank *r = ranks ? &ranks[i] : &one;
        if (!ranks && i >= L->pp * L->tp) break; /* replicas repeat replica 0 */
        if (!ranks && i % L->tp > 1) continue;   /* tp ranks > 0 are alike */
        plan_rank(pm, L, i, r);
        if (r->total > worst) worst = r->total;
    }
    return worst;
}

/* ---------------------------------------------------------------- inputs */

typedef struct {
    const char *config;
    int ranks;
    PlanDevice dev;
    double gpu_mem, mem_per_rank; /* GiB; 0 = not given */
    int json;
    double read_gbps, write_gbps, tflops, baseline_mib, folio_kib;
    int seq_len;
    const char *probe_dir;    /* --probe-folio DIR */
    int dev_given;            /* --device given (else the config's parallel.device) */
    const char *model_config; /* --model-config FILE */
} PlanArgs;

static const char plan_usage[] =
    "usage: dam_dist plan --config F --ranks N [--device cpu|cuda] [--gpu-mem GiB] [--mem-per-rank GiB]\n"
    "                     [--model-config FILE] [--json] [--read-gbps X] [--write-gbps X] [--tflops X]\n"
    "                     [--baseline-mib M] [--seq-len T]\n"
    "Exit status: 0 every rank fits; 3 a rank does not fit (the table says which, and the smallest\n"
    "layout that would); 1 an error (one line).\n"
    "  --device cpu|cuda   cpu: peak RSS per rank; cuda: GPU memory per rank (default: the config's\n"
    "                      parallel.device; docs/memory.md)\n"
    "  --gpu-mem GiB       memory per GPU (cuda; required)\n"
    "  --model-config FILE plan with this config.json (the model family's public one) for every\n"
    "                      source, before the models are there (default: each source's own, else\n"
    "                      the config's model_config)\n"
    "  --mem-per-rank GiB  memory per rank (cpu; default: this node's MemTotal / N)\n"
    "  --json              one JSON object instead of the table\n"
    "  --read-gbps X       source read rate per rank for the load time (default 2 GB/s)\n"
    "  --write-gbps X      checkpoint write rate (default 1 GB/s)\n"
    "  --tflops X          sustained TFLOP/s per rank for the step time (default 0.1 cpu, 300 cuda)\n"
    "  --baseline-mib M    per-process baseline in MiB (default: measured, docs/memory.md)\n"
    "  --seq-len T         tokens per row, instead of train.seq_len (needed when it is 0 and the\n"
    "                      datasets cannot be read)\n"
    "  --folio-kib K       what a fault on a mapped file makes resident (cpu; default 2048)\n"
    "  dam_dist plan --probe-folio DIR   measure that on DIR's file system (an 8 MiB scratch file)";
static const char plan_short[] =
    "usage: dam_dist plan --config F --ranks N [options]; dam_dist plan --help lists them";

static double parse_positive(const char *s, const char *what) {
    char *named = dam_asprintf("plan: %s", what);
    double v = dam_parse_positive(s, named);
    free(named);
    return v;
}

static void parse_args(PlanArgs *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->read_gbps = 2, a->write_gbps = 1, a->ranks = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--json")) {
            a->json = 1;
            continue;
        }
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            printf("%s\n", plan_usage);
            exit(0);
        }
        static const char *const with_value[] = {
            "--config",       "--ranks",  "--device",       "--gpu-mem", "--mem-per-rank", "--read-gbps",
            "--write-gbps",   "--tflops", "--baseline-mib", "--seq-len", "--folio-kib",    "--probe-folio",
            "--model-config", NULL};
        int known = 0;
        for (int k = 0; with_value[k]; k++) known |= !strcmp(o, with_value[k]);
        if (!known) cli_unknown_option("plan", o);
        if (i + 1 >= argc) cli_missing_value("plan", o);
        const char *v = argv[++i];
        if (!strcmp(o, "--config"))
            a->config = v;
        else if (!strcmp(o, "--ranks"))
            a->ranks = (int)dam_parse_int(v, 1, 1 << 20, "plan --ranks");
        else if (!strcmp(o, "--device")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda"))
                dam_fail("plan: --device: expected cpu or cuda, got '%s'", v);
            a->dev = strcmp(v, "cuda") ? PLAN_CPU : PLAN_CUDA;
            a->dev_given = 1;
        } else if (!strcmp(o, "--model-config"))
            a->model_config = v;
        else if (!strcmp(o, "--gpu-mem"))
            a->gpu_mem = parse_positive(v, o);
        else if (!strcmp(o, "--mem-per-rank"))
            a->mem_per_rank = parse_positive(v, o);
        else if (!strcmp(o, "--read-gbps"))
            a->read_gbps = parse_positive(v, o);
        else if (!strcmp(o, "--write-gbps"))
            a->write_gbps = parse_positive(v, o);
        else if (!strcmp(o, "--tflops"))
            a->tflops = parse_positive(v, o);
        else if (!strcmp(o, "--baseline-mib"))
            a->baseline_mib = parse_positive(v, o);
        else if (!strcmp(o, "--folio-kib"))
            a->folio_kib = parse_positive(v, o);
        else if (!strcmp(o, "--probe-folio"))
            a->probe_dir = v;
        else
            a->seq_len = (int)dam_parse_int(v, 1, 1 << 30, "plan --seq-len");
    }
    if (a->probe_dir) return;
    if (!a->config) dam_fail("plan: --config F is required (%s)", plan_short);
    if (!a->ranks) dam_fail("plan: --ranks N is required (%s)", plan_short);
    if (!a->baseline_mib) a->baseline_mib = PLAN_BASELINE_MIB;
    if (!a->folio_kib) a->folio_kib = PLAN_FOLIO_KIB;
}

/* The device: --device, else the config's parallel.device; and its limits' options. */
static void plan_device(PlanArgs *a, const DamConfig *c) {
    if (!a->dev_given) a->dev = strcmp(c->device, "cuda") ? PLAN_CPU : PLAN_CUDA;
    char *from = a->dev_given ? dam_strdup("--device") : dam_asprintf("parallel.device of %s", c->file);
    if (a->dev == PLAN_CUDA && !a->gpu_mem)
        dam_fail("plan: device cuda (%s) needs --gpu-mem GiB (memory per GPU)", from);
    if (a->dev == PLAN_CPU && a->gpu_mem) dam_fail("plan: --gpu-mem applies to device cuda (%s: cpu)", from);
    if (a->dev == PLAN_CUDA && a->mem_per_rank)
        dam_fail("plan: --mem-per-rank applies to device cpu (%s: cuda)", from);
    free(from);
    if (!a->tflops) a->tflops = a->dev == PLAN_CUDA ? PLAN_CUDA_TFLOPS : PLAN_CPU_TFLOPS;
}

/* The config.json plan reads for source directory `dir` (heap): --model-config; else the
 * directory's own; else the run config's model_config (*family set). A directory that is not there
 * gets one line: a placeholder left in (a /path/to/ path), or the way to plan without it. */
static char *source_config(const DamConfig *c, const PlanArgs *a, const char *dir, int *family) {
    if (a->model_config) return *family = 1, dam_strdup(a->model_config);
    char *p = dam_path_join(dir, "config.json");
    if (dam_file_exists(p)) return p;
    if (c->model_config) return free(p), *family = 1, dam_strdup(c->model_config);
    if (strstr(dir, "/path/to/"))
        dam_fail("%s: source '%s' is a placeholder: write your model paths into the config, or plan before "
                 "the models are there with --model-config FILE (the family's config.json; configs/models/ "
                 "holds the shipped configs' ones)",
                 c->file, dir);
    dam_fail("%s: cannot open (plan reads each source's config.json; before the models are there, "
             "--model-config FILE or the config's model_config names the family's config.json)",
             p);
}

/* Bytes per element of a source's stored weights, from its config.json p (torch_dtype, or dtype as
 * transformers 5 writes it). Absent: float32 assumed (the conservative choice), with a note. */
static double stored_dtype(const char *p, const char **name, int *assumed) {
    cJSON *root = json_parse_file(p);
    const char *key = "torch_dtype";
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(root, key = "dtype");
    static const struct {
        const char *name;
        double size;
    } known[] = {{"bfloat16", 2}, {"float16", 2}, {"float32", 4}};
    double size = 0;
    *name = "float32", *assumed = 1;
    if (cJSON_IsString(t)) {
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            if (!strcmp(t->valuestring, known[i].name))
                size = known[i].size, *name = known[i].name, *assumed = 0;
        if (!size)
            dam_fail("%s: field '%s': '%s' is not a dtype dam_dist reads (bfloat16, float16, float32)", p,
                     key, t->valuestring);
    } else {
        size = 4;
    }
    cJSON_Delete(root);
    return size;
}

/* The run config and the sources' config.json into a PlanModel. */
static void load_model(PlanModel *pm, const DamConfig *c, const PlanArgs *a, int *dtype_assumed,
                       int *family) {
    memset(pm, 0, sizeof *pm);
    const char *dirs[DAM_MAX_SOURCES + 1];
    int n = 0;
    for (int i = 0; i < c->n_models; i++) dirs[n++] = c->models[i].path;
    if (c->include_base) dirs[n++] = c->base_model;
    for (int i = 0; i < n; i++) {
        char *p = source_config(c, a, dirs[i], family);
        ModelConfig mc;
        hfconfig_load(&mc, p);
        if (i == 0)
            pm->cfg = mc;
        else
            hfconfig_check_same(&pm->cfg, dirs[0], &mc, dirs[i]);
        const char *name;
        int assumed;
        pm->es_sum += stored_dtype(p, &name, &assumed);
        free(p);
        *dtype_assumed |= assumed;
        pm->dtype_note = !pm->dtype_note || !strcmp(pm->dtype_note, name) ? name : "mixed dtypes";
    }
    if (pm->cfg.mlp_bias) dam_fail("%s: mlp_bias is not supported", dirs[0]);
    pm->n_coef_rows = n, pm->n_data = c->n_models + (c->base_dataset != NULL);
    pm->B = c->batch_size, pm->micro_batches = c->micro_batches, pm->K = c->loss.topk;
    pm->dev = a->dev, pm->baseline = a->baseline_mib * MIB, pm->folio = a->folio_kib * 1024;
    pm->keep_budget = c->keep_activations;
    pm->wov = c->weighted_overlap > 0;
    pm->cpu_bf16 = c->cpu_matmul_bf16;
    pm->T = a->seq_len ? a->seq_len : c->seq_len;
    if (!pm->T) { /* train.seq_len 0: the datasets' row length, when they can be read */
        for (int k = 0; k < c->n_models; k++) {
            if (!c->models[k].dataset || !dam_file_exists(c->models[k].dataset))
                dam_fail("%s: train.seq_len is 0 (the datasets' row length) and %s cannot be read: give "
                         "--seq-len T",
                         c->file, c->models[k].dataset ? c->models[k].dataset : "a dataset");
            DamDataset d;
            dataset_open(&d, c->models[k].dataset);
            if (d.seq_len > pm->T) pm->T = (int)d.seq_len;
            dataset_close(&d);
        }
    }
    if (pm->T > pm->cfg.max_position_embeddings)
        dam_fail("%s: sequence length %d exceeds max_position_embeddings %d of %s", c->file, pm->T,
                 pm->cfg.max_position_embeddings, dirs[0]);
}

/* dp x pp x tp from the config and --ranks: layout.c's own choice and checks (without MPI). */
static void resolve_layout(PlanLayout *L, const DamConfig *c, const ModelConfig *mc, int ranks) {
    DamLayout d;
    char *err = layout_resolve(c, mc, c->models[0].path, ranks, &d);
    if (err) dam_fail("%s", err);
    L->dp = d.dp, L->pp = d.pp, L->tp = d.tp, L->automatic = d.automatic;
}

/* MemTotal of /proc/meminfo in bytes (0 when unreadable). */
static double node_memory(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    double kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %lf kB", &kib) == 1) break;
    fclose(f);
    return kib * 1024;
}

/* Memory available to each of `ranks` ranks (bytes). */
static double limit_per_rank(const PlanArgs *a, double node, int ranks) {
    if (a->dev == PLAN_CUDA) return a->gpu_mem * GIB;
    if (a->mem_per_rank) return a->mem_per_rank * GIB;
    return node / ranks;
}

/* The smallest layout that fits: dp = 1, tp from 1 to 8 dividing heads, KV heads, FFN width and
 * vocabulary, pp up to the layers; the fewest ranks, then the smaller tp. 0 when none does. */
static int smallest_fit(const PlanModel *pm, const PlanArgs *a, double node, PlanLayout *out) {
    const ModelConfig *c = &pm->cfg;
    int L = c->num_hidden_layers, tps[8] = {0}, n_tp = 0;
    for (int tp = 1; tp <= 8; tp++)
        if (c->num_attention_heads % tp == 0 && c->num_key_value_heads % tp == 0 &&
            c->intermediate_size % tp == 0 && c->vocab_size % tp == 0)
            tps[n_tp++] = tp;
    double sources_all = (double)hfconfig_num_params(c) * pm->es_sum;
    for (int R = 1; R <= 8 * L; R++)
        for (int i = 0; i < n_tp; i++) {
            int tp = tps[i], pp = R / tp;
            if (R % tp || pp > L) continue;
            double limit = limit_per_rank(a, node, R);
            if (sources_all / R > limit) continue; /* the shards alone do not fit */
            PlanLayout lay = {1, pp, tp, 0};
            if (plan_layout(pm, &lay, NULL) <= limit) return *out = lay, 1;
        }
    return 0;
}

/* ---------------------------------------------------------------- report */

typedef struct {
    PlanLayout lay;
    PlanRank *ranks;
    int n_ranks, all_fit, have_fit;
    PlanLayout fit;
    double limit, node, bubble, load_s, load_total, step_s, save_s, save_bytes, worst;
    int lead_T, m;
} PlanReport;

static double unit_div(double worst) { return worst >= 4 * GIB ? GIB : MIB; }

static void print_table(const PlanModel *pm, const PlanArgs *a, const DamConfig *c, const PlanReport *R) {
    const ModelConfig *mc = &pm->cfg;
    double P = (double)hfconfig_num_params(mc);
    printf("dam_dist plan: %s (%d layers, d=%d, %.2fB parameters per source, %s), %d coefficient rows, "
           "%d datasets x %d x %d tokens, micro_batches %d\n",
           mc->architecture, mc->num_hidden_layers, mc->hidden_size, P / 1e9, pm->dtype_note, pm->n_coef_rows,
           pm->n_data, pm->B, pm->T, pm->micro_batches);
    DamLayout d = {R->lay.dp, R->lay.pp, R->lay.tp, R->lay.automatic};
    char desc[256];
    printf("layout: %s\n", layout_describe(c, &d, desc, sizeof desc));
    for (int s = 0; s < R->lay.pp; s++) {
        int l0, l1;
        dam_stage_layers(mc, R->lay.pp, s, &l0, &l1);
        printf("  stage %d: layers %d-%d (%d)%s%s\n", s, l0, l1 - 1, l1 - l0, s == 0 ? " + embed_tokens" : "",
               s == R->lay.pp - 1
                   ? (mc->tie_word_embeddings ? " + norm, lm_head (tied: embed_tokens)" : " + norm, lm_head")
                   : "");
    }
    double u = unit_div(R->worst);
    const char *un = u == GIB ? "GiB" : "MiB";
    if (a->dev == PLAN_CUDA)
        printf("memory per rank, device cuda: GPU memory in %s (the contract of the coming CUDA backend, "
               "docs/memory.md)\n",
               un);
    else
        printf("memory per rank, device cpu: peak RSS in %s\n", un);
    printf("%5s %5s %3s %7s %9s %9s %9s %10s %8s %8s %8s %9s  %s\n", "rank", "stage", "tp", "layers",
           "sources", "coefs", "workspace", "run_states", "inputs", "output", "baseline", "total", "fits");
    for (int i = 0; i < R->n_ranks; i++) {
        const PlanRank *r = &R->ranks[i];
        char layers[32];
        snprintf(layers, sizeof layers, "%d-%d", r->layer0, r->layer1 - 1);
        printf("%5d %5d %3d %7s %9.2f %9.2f %9.2f %10.2f %8.2f %8.2f %8.2f %9.2f  %s\n", r->rank, r->stage,
               r->tp_rank, layers, r->sources / u, r->coefficients / u, r->workspace / u, r->run_states / u,
               r->inputs / u, r->output_phase / u, r->baseline / u, r->total / u, r->fits ? "yes" : "NO");
    }
    if (a->dev == PLAN_CUDA) {
        double nccl = 0, slots = 0;
        for (int i = 0; i < R->n_ranks; i++) {
            nccl = fmax(nccl, R->ranks[i].cuda[1]);
            slots = fmax(slots, R->ranks[i].cuda[2]);
        }
        printf("baseline (cuda): context %.0f + cuBLAS workspace %.0f + output chunk %.0f MiB, NCCL up to "
               "%.0f MiB, "
               "pipeline send slots up to %.0f MiB per GPU: a model to calibrate on a GPU (docs/memory.md)\n",
               PLAN_CUDA_CONTEXT_MIB, PLAN_CUBLAS_WORKSPACE_MIB, PLAN_CUDA_OUTPUT_CHUNK_MIB, nccl / MIB,
               slots / MIB);
        printf("limit: --gpu-mem %.1f GiB per GPU\n", a->gpu_mem);
        double host = 0;
        for (int i = 0; i < R->n_ranks; i++) host = R->ranks[i].host > host ? R->ranks[i].host : host;
        printf("host memory per rank: up to %.2f GiB (process, inputs, output buffers; the sources are "
               "mapped, read once for the upload and released: not resident)\n",
               host / GIB);
    } else {
        if (a->mem_per_rank)
            printf("limit: --mem-per-rank %.1f GiB\n", a->mem_per_rank);
        else
            printf("limit: %.1f GiB per rank (MemTotal %.1f GiB of this node / %d ranks; --mem-per-rank to "
                   "set it)\n",
                   R->limit / GIB, R->node / GIB, R->n_ranks);
        printf("sources are mmapped in their stored dtype and every page of a stage is touched each step, so "
               "they count fully in RSS (tp: o_proj and down_proj slices share pages: whole)\n");
    }
    if (R->all_fit)
        printf("fits: every rank\n");
    else if (R->have_fit)
        printf("fits: NO; the smallest layout that fits: dp=1 x pp=%d x tp=%d = %d ranks "
               "(\"parallel\": {\"dp\": 1, \"pp\": %d, \"tp\": %d})\n",
               R->fit.pp, R->fit.tp, R->fit.pp * R->fit.tp, R->fit.pp, R->fit.tp);
    else
        printf("fits: NO; no layout with dp=1, tp <= 8 and pp <= %d layers fits\n", mc->num_hidden_layers);
    printf("pipeline bubble: (pp-1)/(m+pp-1) = %d/%d = %.1f %% (m = %d micro-batches per replica)\n",
           R->lay.pp - 1, R->m + R->lay.pp - 1, 100 * R->bubble, R->m);
    printf("load: up to %.1f GB of sources per rank (%.1f GB on average) at %.3g GB/s = %.0f s "
           "(%.1f GB over all ranks)\n",
           R->load_s * a->read_gbps, R->load_total / R->n_ranks / 1e9, a->read_gbps, R->load_s,
           R->load_total / 1e9);
    printf("stop lead: a step %.0f s (at an assumed %.3g TFLOP/s per rank) + a checkpoint save %.1f s "
           "(%.2f GB of coefficients and Adam state at %.3g GB/s) = %.0f s\n",
           R->step_s, a->tflops, R->save_s, R->save_bytes / 1e9, a->write_gbps, R->step_s + R->save_s);
    printf("suggest: #SBATCH --signal=B:USR1@%d (%.0f s more: Slurm's signal timer is coarse)\n", R->lead_T,
           PLAN_SLURM_SLACK_S);
}

static void print_json(const PlanModel *pm, const PlanArgs *a, const PlanReport *R) {
    cJSON *o = cJSON_CreateObject();
    cJSON *lay = cJSON_AddObjectToObject(o, "layout");
    cJSON_AddNumberToObject(lay, "dp", R->lay.dp);
    cJSON_AddNumberToObject(lay, "pp", R->lay.pp);
    cJSON_AddNumberToObject(lay, "tp", R->lay.tp);
    cJSON_AddNumberToObject(lay, "ranks", R->n_ranks);
    cJSON *stages = cJSON_AddArrayToObject(lay, "stages");
    for (int s = 0; s < R->lay.pp; s++) {
        int l0, l1;
        dam_stage_layers(&pm->cfg, R->lay.pp, s, &l0, &l1);
        cJSON *st = cJSON_CreateObject();
        cJSON_AddNumberToObject(st, "stage", s);
        cJSON_AddNumberToObject(st, "layer0", l0);
        cJSON_AddNumberToObject(st, "layer1", l1);
        cJSON_AddItemToArray(stages, st);
    }
    cJSON_AddStringToObject(o, "device", a->dev == PLAN_CUDA ? "cuda" : "cpu");
    cJSON_AddNumberToObject(o, "limit_bytes", R->limit);
    cJSON *arr = cJSON_AddArrayToObject(o, "ranks");
    for (int i = 0; i < R->n_ranks; i++) {
        const PlanRank *r = &R->ranks[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "rank", r->rank);
        cJSON_AddNumberToObject(x, "stage", r->stage);
        cJSON_AddNumberToObject(x, "tp_rank", r->tp_rank);
        cJSON_AddItemToObject(x, "layers", cJSON_CreateIntArray((const int[]){r->layer0, r->layer1}, 2));
        cJSON *b = cJSON_AddObjectToObject(x, "bytes");
        const char *keys[] = {"sources", "coefficients", "workspace", "run_states",
                              "inputs",  "output_phase", "baseline",  "total"};
        double vals[] = {r->sources, r->coefficients, r->workspace, r->run_states,
                         r->inputs,  r->output_phase, r->baseline,  r->total};
        for (int k = 0; k < 8; k++) cJSON_AddNumberToObject(b, keys[k], round(vals[k]));
        if (a->dev == PLAN_CUDA) {
            cJSON_AddNumberToObject(x, "host_bytes", round(r->host));
            cJSON *o = cJSON_AddObjectToObject(x, "cuda_baseline_bytes");
            cJSON_AddNumberToObject(o, "context_cublas_output", round(r->cuda[0]));
            cJSON_AddNumberToObject(o, "nccl", round(r->cuda[1]));
            cJSON_AddNumberToObject(o, "send_slots", round(r->cuda[2]));
        }
        cJSON_AddBoolToObject(x, "activations_kept", r->kept);
        cJSON_AddBoolToObject(x, "fits", r->fits);
        cJSON_AddItemToArray(arr, x);
    }
    cJSON_AddBoolToObject(o, "fits", R->all_fit);
    if (!R->all_fit && R->have_fit) {
        cJSON *f = cJSON_AddObjectToObject(o, "smallest_fit");
        cJSON_AddNumberToObject(f, "dp", 1);
        cJSON_AddNumberToObject(f, "pp", R->fit.pp);
        cJSON_AddNumberToObject(f, "tp", R->fit.tp);
        cJSON_AddNumberToObject(f, "ranks", R->fit.pp * R->fit.tp);
    } else {
        cJSON_AddNullToObject(o, "smallest_fit");
    }
    cJSON_AddNumberToObject(o, "bubble", R->bubble);
    cJSON_AddNumberToObject(o, "load_s", R->load_s);
    cJSON_AddNumberToObject(o, "load_bytes_total", R->load_total);
    cJSON_AddNumberToObject(o, "step_s", R->step_s);
    cJSON_AddNumberToObject(o, "save_s", R->save_s);
    cJSON_AddNumberToObject(o, "stop_lead_s", R->step_s + R->save_s);
    char sugg[64];
    snprintf(sugg, sizeof sugg, "--signal=B:USR1@%d", R->lead_T);
    cJSON_AddStringToObject(o, "suggestion", sugg);
    char *text = cJSON_Print(o);
    printf("%s\n", text);
    free(text);
    cJSON_Delete(o);
}

/* --probe-folio DIR: write an 8 MiB scratch file in DIR (in 4 MiB writes, as the safetensors writer
 * does), map it, read one byte in the middle and return how many KiB the mapping's RSS grew by: the
 * granule a fault makes resident on that file system, for pages the page cache got from a write. */
static double probe_folio_kib(const char *dir) {
    enum { CHUNK = 4 << 20, SIZE = 2 * CHUNK };
    char *path = dam_asprintf("%s/.dam_plan_probe.XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) dam_fail("plan --probe-folio: cannot create a file in %s (%s)", dir, strerror(errno));
    unlink(path); /* nothing left behind, whatever happens */
    char *buf = dam_malloc(CHUNK, "probe");
    memset(buf, 1, CHUNK);
    for (int i = 0; i < SIZE / CHUNK; i++)
        if (write(fd, buf, CHUNK) != CHUNK)
            dam_fail("plan --probe-folio: cannot write %s (%s)", path, strerror(errno));
    free(buf);
    const char *map = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) dam_fail("plan --probe-folio: cannot map %s (%s)", path, strerror(errno));
    volatile char touched = map[SIZE / 2 + 12345];
    (void)touched;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) dam_fail("plan --probe-folio: cannot read /proc/self/smaps");
    char line[512];
    double kib = -1;
    int in_map = 0;
    while (kib < 0 && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
            in_map = lo == (unsigned long)(uintptr_t)map;
        else if (in_map && sscanf(line, "Rss: %lf kB", &kib) != 1)
            kib = -1;
    }
    fclose(f);
    munmap((void *)map, SIZE);
    close(fd);
    if (kib <= 0) dam_fail("plan --probe-folio: the mapping of %s is not in /proc/self/smaps", path);
    free(path);
    return kib;
}

int cmd_plan(int argc, char **argv) {
    PlanArgs a;
    parse_args(&a, argc, argv);
    if (a.probe_dir) {
        printf("%.0f\n", probe_folio_kib(a.probe_dir));
        return 0;
    }
    DamConfig c;
    config_load(&c, a.config);
    plan_device(&a, &c);
    PlanModel pm;
    int dtype_assumed = 0, family = 0;
    load_model(&pm, &c, &a, &dtype_assumed, &family);
    PlanReport R;
    memset(&R, 0, sizeof R);
    resolve_layout(&R.lay, &c, &pm.cfg, a.ranks);
    R.n_ranks = a.ranks;
    R.node = node_memory();
    if (a.dev == PLAN_CPU && !a.mem_per_rank && !R.node)
        dam_fail("plan: /proc/meminfo cannot be read: give --mem-per-rank GiB");
    R.limit = limit_per_rank(&a, R.node, a.ranks);
    R.ranks = dam_calloc((size_t)a.ranks, sizeof(PlanRank), "plan ranks");
    R.worst = plan_layout(&pm, &R.lay, R.ranks);
    R.all_fit = 1;
    double max_load = 0, max_flops = 0;
    for (int i = 0; i < a.ranks; i++) {
        PlanRank *r = &R.ranks[i];
        r->fits = r->total <= R.limit;
        R.all_fit &= r->fits;
        R.load_total += r->load_bytes;
        max_load = r->load_bytes > max_load ? r->load_bytes : max_load;
        max_flops = r->flops_mb > max_flops ? r->flops_mb : max_flops;
    }
    if (!R.all_fit) R.have_fit = smallest_fit(&pm, &a, R.node, &R.fit);
    R.m = c.micro_batches / R.lay.dp;
    R.bubble = (double)(R.lay.pp - 1) / (R.m + R.lay.pp - 1);
    R.load_s = max_load / (a.read_gbps * 1e9);
    /* a step under 1F1B: m + pp - 1 micro-batch slots of the slowest stage */
    R.step_s = (R.m + R.lay.pp - 1) * max_flops / (a.tflops * 1e12);
    R.save_bytes = model_coefs(&pm) * 3 * 4; /* c, Adam m, Adam v in fp32 (checkpoint.c) */
    R.save_s = R.save_bytes / (a.write_gbps * 1e9);
    R.lead_T = (int)ceil(R.step_s + R.save_s + PLAN_SLURM_SLACK_S);
    if (a.json)
        print_json(&pm, &a, &R);
    else {
        print_table(&pm, &a, &c, &R);
        if (dtype_assumed) printf("note: a source's config.json names no torch_dtype: float32 assumed\n");
        if (family)
            printf("note: planned with %s (the family's config.json) for the sources%s\n",
                   a.model_config ? a.model_config : c.model_config,
                   a.model_config ? "" : " whose own is not there yet");
    }
    free(R.ranks);
    config_free(&c);
    /* a layout that does not fit stops the job that checks it (jobs/dam_job.sh) */
    return R.all_fit ? 0 : PLAN_EXIT_NO_FIT;
}
