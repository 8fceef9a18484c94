/* fuzz_tokenizer.c — libFuzzer harness for the tokenizer.json loader (tokenizer_load), built and run
 * by `make fuzz` (seeds: tests/fixtures/tokenizers/ * /tokenizer.json).
 *
 * tokenizer_load reads a path, so each input is written to one scratch file first (in a directory
 * of its own: the loader also reads a tokenizer_config.json beside it). Text that is not JSON is
 * refused by json_parse_text before the loader is called (the loader would refuse it at the same
 * call, leaving its file buffer behind, which in dam_dist the process end frees). A refusal
 * longjmps out of the loader; the partly built tokenizer is freed with tokenizer_free (it starts
 * zeroed, every pointer it holds is NULL or its own) and the cJSON tree by fuzz_alloc.h, so leak
 * detection stays on. An accepted tokenizer encodes and decodes a few texts (ASCII, accents, CJK,
 * an emoji, bytes that are not UTF-8): the encode pipeline must not crash on any loadable file. */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include "json_util.h"
#include "tokenizer.h"
#include "util.h"
#include "fuzz_alloc.h"

static jmp_buf g_refused;
static void jump_back(int status) {
    (void)status;
    longjmp(g_refused, 1);
}

static char g_path[96];
static Tokenizer g_tok; /* static: live across setjmp/longjmp */

static void exercise(Tokenizer *t) {
    static const char *texts[] = {"Hello world, 12+35=47!", "  caf\xc3\xa9 na\xc3\xafve\n\t",
                                  "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80", "bad \xff\xfe utf8", ""};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        TokIds ids = {0};
        if (!tokenizer_encode(t, texts[i], strlen(texts[i]), &ids) && ids.n) {
            size_t len;
            free(tokenizer_decode(t, ids.ids, ids.n, &len));
        }
        tokids_free(&ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dam_set_abort_hook(jump_back);
    fuzz_track_cjson();
    if (!g_path[0]) {
        snprintf(g_path, sizeof g_path, "/tmp/fuzz_tokenizer_%d", (int)getpid());
        mkdir(g_path, 0700);
        strcat(g_path, "/tokenizer.json");
    }
    FILE *f = fopen(g_path, "wb");
    if (!f) abort();
    fwrite(data, 1, size, f);
    fclose(f);
    memset(&g_tok, 0, sizeof g_tok);
    if (setjmp(g_refused) == 0)
        cJSON_Delete(json_parse_text((const char *)data, size, g_path));
    else
        goto done;
    if (setjmp(g_refused) == 0) {
        tokenizer_load(&g_tok, g_path);
        exercise(&g_tok);
    }
    if (setjmp(g_refused) == 0) tokenizer_free(&g_tok);
done:
    fuzz_free_all();
    return 0;
}
