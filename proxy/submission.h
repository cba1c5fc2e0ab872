/* submission — parsing and validation of one POST /api/eval body (DESIGN §4).
 * Pure: no I/O, so unit tests and fuzzers drive it directly. */
#ifndef TURNOUT_SUBMISSION_H
#define TURNOUT_SUBMISSION_H

#include <stdbool.h>
#include <stddef.h>

#include "pconfig.h"

typedef struct json_t json_t;

#define SUB_MAX_CODE_BYTES 1048576
#define SUB_MAX_EVAL_ID 128
#define SUB_MIN_TIMEOUT 1
#define SUB_MAX_TIMEOUT 900
#define SUB_DEFAULT_TIMEOUT 30
#define SUB_MAX_ENGINE 64

typedef struct submission {
    json_t *doc;            /* owned: the parsed body; strings below borrow from it */
    const char *code;
    size_t code_len;
    const char *language;
    size_t language_len;
    const char *engine;
    int timeout;            /* seconds, 1..900 */
    int priority;           /* kombu scale 0..9, lower first */
    const char *priority_name; /* "high" | "default" | "low" | "batch" | "p<N>" (static) */
    char eval_id[SUB_MAX_EVAL_ID + 1];
    bool eval_id_given;
} submission;

typedef struct sub_error {
    int status;             /* 400, 415, 422 */
    const char *code;       /* machine code: invalid_json, invalid_field, ... */
    const char *field;      /* field named, or NULL */
    char message[320];      /* what is wrong and how to fix it */
} sub_error;

/* Parses and validates a JSON object (a batch item or a whole body).
 * Takes a new reference to `obj` on success.  0, or -1 with err filled. */
int submission_from_json(json_t *obj, const proxy_settings *s, submission *out, sub_error *err)
    __attribute__((warn_unused_result));

/* Parses body text then validates.  0, or -1 with err filled. */
int submission_parse(const char *body, size_t len, const proxy_settings *s, submission *out,
                     sub_error *err) __attribute__((warn_unused_result));

void submission_free(submission *sub);

/* 1..128 characters of [A-Za-z0-9_.:-]. */
bool submission_valid_eval_id(const char *id, size_t len);

/* eval_YYYYMMDD_HHMMSS_<8 hex> in UTC. */
void submission_new_eval_id(char out[SUB_MAX_EVAL_ID + 1]);

/* Maps a priority JSON value to the kombu scale; -1 when invalid. */
int submission_priority(const json_t *v, const char **name);

#endif
