/* tool_arcee_data.c — used by tests/test_arcee.c and tests/cli_preset.sh: the rows of
 * tests/fixtures/arcee/inputs.safetensors (ids/<k> I32 [R, L], mask/<k> I8 [R, L]) as dataset files
 * DIR/d<k>.h5, one per dataset k (the directory is created).
 * usage: tool_arcee_data INPUTS.safetensors DIR → exit 0, or 1 with one line on stderr. */
#include <stdio.h>

#include "dataset.h"
#include "safetensors.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUTS.safetensors DIR\n", argv[0]);
        return 2;
    }
    StFile in;
    st_open(&in, argv[1]);
    dam_mkdir_p(argv[2]);
    int k = 0;
    for (;; k++) {
        char key[32], path[4096];
        snprintf(key, sizeof key, "ids/%d", k);
        const StTensor *ids = st_find(&in, key);
        snprintf(key, sizeof key, "mask/%d", k);
        const StTensor *mask = st_find(&in, key);
        if (!ids || !mask) break;
        if (ids->dtype != DAM_I32 || mask->dtype != DAM_I8 || ids->ndim != 2 || mask->numel != ids->numel) {
            fprintf(stderr, "%s: ids/%d must be I32 [R, L] and mask/%d I8 of the same shape\n", argv[1], k,
                    k);
            return 1;
        }
        snprintf(path, sizeof path, "%s/d%d.h5", argv[2], k);
        dataset_write(path, ids->shape[0], ids->shape[1], ids->data, mask->data, 0, NULL);
    }
    st_close(&in);
    if (k == 0) fprintf(stderr, "%s: no ids/0 and mask/0\n", argv[1]);
    return k == 0;
}
