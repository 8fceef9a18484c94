/* fuzz_alloc.h — cJSON allocation tracking for the fuzz harnesses (header-only).
 *
 * A refusal longjmps out of a parser and leaves its cJSON tree behind (in dam_dist the process
 * ends there, so nothing is lost). The harnesses route cJSON's allocations through this list and
 * free whatever is still live after each input, so that leak detection stays on and memory does
 * not grow over millions of refused inputs. */
#ifndef DAM_FUZZ_ALLOC_H
#define DAM_FUZZ_ALLOC_H

#include <cJSON.h>
#include <stddef.h>
#include <stdlib.h>

typedef union FuzzBlock {
    struct {
        union FuzzBlock *prev, *next;
    } link;
    max_align_t align; /* keeps the payload after the header aligned like malloc's */
} FuzzBlock;

static FuzzBlock fuzz_live = {.link = {&fuzz_live, &fuzz_live}};

static void *fuzz_malloc(size_t n) {
    FuzzBlock *b = malloc(sizeof(FuzzBlock) + n);
    if (!b) return NULL;
    b->link.prev = &fuzz_live;
    b->link.next = fuzz_live.link.next;
    fuzz_live.link.next->link.prev = b;
    fuzz_live.link.next = b;
    return b + 1;
}

static void fuzz_free(void *p) {
    if (!p) return;
    FuzzBlock *b = (FuzzBlock *)p - 1;
    b->link.prev->link.next = b->link.next;
    b->link.next->link.prev = b->link.prev;
    free(b);
}

static void fuzz_track_cjson(void) {
    cJSON_Hooks hooks = {fuzz_malloc, fuzz_free};
    cJSON_InitHooks(&hooks);
}

static void fuzz_free_all(void) {
    while (fuzz_live.link.next != &fuzz_live) fuzz_free(fuzz_live.link.next + 1);
}

#endif
