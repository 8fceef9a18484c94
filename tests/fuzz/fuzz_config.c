/* fuzz_config.c — libFuzzer harness for the run configuration parser (config_load: every key of
 * docs/config.md, presets, the effective settings and their hash), built and run by `make fuzz`
 * (seeds: configs/ *.json).
 *
 * config_load reads a path, so each input is written to one scratch file first. A refusal longjmps
 * out, leaving config_load's file buffer (kept until its end) behind: the harness is linked with
 * -Wl,--wrap=dam_read_file to note it and frees it then. The partly filled DamConfig (zeroed first, every
 * pointer NULL or its own) is freed with config_free and the cJSON trees by fuzz_alloc.h. An accepted config
 * is also diffed against itself (config_diff must find no difference). config.c's run-time helpers that open
 * datasets or backends are not reached from config_load; they are stubbed so that the harness links without
 * HDF5, MPI and the backends. */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "util.h"
#include "fuzz_alloc.h"

const Backend *backend_by_name(const char *name) {
    (void)name;
    abort();
}
void dataset_open(DamDataset *d, const char *path) {
    (void)d, (void)path;
    abort();
}
void dataset_check_ids(const DamDataset *d, int64_t vocab) {
    (void)d, (void)vocab;
    abort();
}

char *__real_dam_read_file(const char *path, size_t *n_out);
static char *g_text; /* config_load's file buffer, while it holds it */
char *__wrap_dam_read_file(const char *path, size_t *n_out) {
    return g_text = __real_dam_read_file(path, n_out);
}

static jmp_buf g_refused;
static void jump_back(int status) {
    (void)status;
    longjmp(g_refused, 1);
}

static char g_path[64];
static DamConfig g_cfg; /* static: live across setjmp/longjmp */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dam_set_abort_hook(jump_back);
    fuzz_track_cjson();
    if (!g_path[0]) snprintf(g_path, sizeof g_path, "/tmp/fuzz_config_%d.json", (int)getpid());
    FILE *f = fopen(g_path, "wb");
    if (!f) abort();
    fwrite(data, 1, size, f);
    fclose(f);
    memset(&g_cfg, 0, sizeof g_cfg);
    if (setjmp(g_refused) == 0) {
        config_load(&g_cfg, g_path);
        g_text = NULL; /* config_load freed it */
        char diff[256];
        if (config_diff(g_cfg.effective, g_cfg.effective, diff, sizeof diff) != 0) abort();
    }
    config_free(&g_cfg);
    free(g_text);
    g_text = NULL;
    fuzz_free_all();
    return 0;
}
