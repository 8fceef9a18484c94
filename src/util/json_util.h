/* json_util.h — small cJSON helpers shared by every JSON reader (run config, config.json,
 * index.json, tokenizer.json). Required getters fail with one line naming the file and field;
 * optional getters return the default when the key is absent (or the object is NULL) and fail
 * when the key is present with the wrong type. */
#ifndef DAM_JSON_UTIL_H
#define DAM_JSON_UTIL_H

#include <cJSON.h>
#include <stdint.h>

/* Parse a whole file; a syntax error fails as "FILE:LINE:COLUMN: malformed JSON at line L, column C
 * (hint)". */
cJSON *json_parse_file(const char *path);
/* Parse text in memory; `what` names it in messages. */
cJSON *json_parse_text(const char *text, size_t n, const char *what);

const char *json_get_string(const cJSON *obj, const char *key, const char *file, const char *section);
int64_t json_get_int(const cJSON *obj, const char *key, const char *file, const char *section);
double json_get_number(const cJSON *obj, const char *key, const char *file, const char *section);

const char *json_opt_string(const cJSON *obj, const char *key, const char *def);
int json_opt_int(const cJSON *obj, const char *key, int def);
double json_opt_number(const cJSON *obj, const char *key, double def);
int json_opt_bool(const cJSON *obj, const char *key, int def);

/* The file name used by the optional getters' messages (set by the caller before parsing a file;
 * it also clears the section below). Returns the previous one, so that a nested reader can put it
 * back. */
const char *json_set_context(const char *file);

/* The section ("train", "models[1]") that the optional getters' messages put before the key, so
 * that a wrong type reads "field 'train.lr'", not "field 'lr'" (NULL or "": none). Returns the
 * previous one. */
const char *json_set_section(const char *section);

/* 1-based line and column (in characters) of byte `offset` of text. */
void json_line_column(const char *text, size_t offset, int *line, int *column);

/* Optional integer field that must lie in [lo, hi]; fails naming the field and the range. */
int json_opt_int_range(const cJSON *obj, const char *key, int def, int lo, int hi);
/* Required integer field in [lo, hi]. */
int json_get_int_range(const cJSON *obj, const char *key, int lo, int hi, const char *file,
                       const char *section);

#endif
