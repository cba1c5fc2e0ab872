/* celery — the Celery protocol v2 message as kombu's Redis transport stores
 * it (shared/WIRE.md §A, §B), and the priority list names. */
#ifndef TURNOUT_CELERY_H
#define TURNOUT_CELERY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct json_t json_t;
typedef struct jsonw jsonw;

/* kombu's default priority_steps and the list-name separator (0x06 0x16). */
#define CELERY_SEP "\x06\x16"
#define CELERY_SEP_LEN 2
#define CELERY_NSTEPS 4
extern const int celery_priority_steps[CELERY_NSTEPS]; /* 0, 3, 6, 9 */

/* Celery truncates argsrepr/kwargsrepr to this many characters. */
#define CELERY_REPR_MAX 1024
/* The longest task id turnout runs, stores and addresses, in bytes.  The
 * worker refuses a longer id (or one that is not printable UTF-8) up front,
 * dead-lettering the message under a substitute id, and never truncates
 * one; the DLQ API addresses every id it accepts (percent-encoded in the
 * path). */
#define CELERY_TASK_ID_MAX 255

/* The rule for a task id turnout runs: 1..CELERY_TASK_ID_MAX bytes of
 * valid UTF-8 with no control character (C0, DEL, C1); spaces are fine. */
bool celery_task_id_ok(const char *id, size_t len);

/* The id a refused id is dead-lettered under: "invalid-id-" and the 40
 * hex digits of the SHA-1 of its raw bytes (stable, so one bad id always
 * lands on one DLQ entry). */
#define CELERY_INVALID_ID_LEN (11 + 40)
void celery_invalid_id(const char *id, size_t len, char out[CELERY_INVALID_ID_LEN + 1]);

/* A task's args and kwargs already written as JSON text (jsonw), with
 * their reprs (celery_repr_str, celery_repr_cut): for producers that build
 * no jansson tree.  All borrowed. */
typedef struct celery_body {
    const char *args_json;   /* a JSON array */
    size_t args_len;
    const char *kwargs_json; /* a JSON object */
    size_t kwargs_len;
    const char *argsrepr, *kwargsrepr;
    size_t argsrepr_len, kwargsrepr_len;
} celery_body;

typedef struct celery_task {
    const char *task_name;  /* headers.task */
    const char *task_id;    /* headers.id, correlation_id, root_id default */
    const char *queue;      /* routing_key */
    int priority;           /* 0..9, lower first (kombu on Redis) */
    json_t *args;           /* array, borrowed */
    json_t *kwargs;         /* object, borrowed */
    const celery_body *body; /* instead of args and kwargs when not NULL */
    int retries;
    const char *eta;        /* ISO-8601 or NULL */
    const char *expires;    /* ISO-8601 or NULL */
    double hard_limit_s;    /* 0 = null */
    double soft_limit_s;    /* 0 = null */
    const char *origin;     /* "<name>@<host>" */
    const char *root_id;    /* NULL = task_id */
    const char *parent_id;  /* NULL = null */
} celery_task;

/* The step a 0..9 priority maps to (bisect over the steps), clamping. */
int celery_priority_step(int priority);

/* Writes the Redis list name of `queue` at `priority` into buf (binary:
 * bare name for step 0, else name SEP step).  Returns the length, or 0 when
 * it does not fit. */
size_t celery_queue_key(const char *queue, int priority, char *buf, size_t cap);

/* Encodes the envelope (one Redis list element).  Returns a new string the
 * caller frees with free(), length in *len; NULL with err on failure. */
char *celery_encode(const celery_task *t, size_t *len, char err[256]);
/* The same appended to `out`: 0, or -1 with err (out is then unusable). */
int celery_encode_into(const celery_task *t, jsonw *out, char err[256]) __attribute__((warn_unused_result));

/* A message taken from a queue list, decoded and checked.  Fields borrow
 * from `env` (owned), which is kept so the message can be re-published. */
typedef struct celery_message {
    json_t *env;            /* owned: the whole envelope */
    json_t *body;           /* owned: decoded [args, kwargs, embed] */
    const char *task_name;
    const char *task_id;
    const char *delivery_tag;
    const char *exchange;
    const char *routing_key;
    json_t *args;           /* borrowed from body */
    json_t *kwargs;         /* borrowed from body */
    int retries;
    int priority;           /* properties.priority, 0 if absent */
    const char *eta;        /* NULL when none */
    const char *expires;    /* NULL when none */
    double hard_limit_s;    /* 0 when none */
    double soft_limit_s;
} celery_message;

/* Decodes a list element.  0, or -1 with err naming what is malformed (the
 * caller dead-letters it).  On -1, whatever was decoded is freed. */
int celery_decode(const char *msg, size_t len, celery_message *out, char err[256])
    __attribute__((warn_unused_result));
void celery_message_free(celery_message *m);

/* Re-encodes the envelope of `m` with headers.retries, headers.eta and a
 * new delivery_tag (and headers.<extra_key> = extra_value when non-NULL);
 * new string, caller frees; NULL on OOM. */
char *celery_reencode(const celery_message *m, int retries, const char *eta, const char *extra_key,
                      json_t *extra_value, size_t *len);

/* Parses ISO-8601 ("2026-11-22T08:42:16.316431+00:00", "...Z", or naive =
 * UTC) into unix seconds; -1 when not parseable. */
double celery_parse_iso8601(const char *s);

/* Python-style repr of a JSON value for argsrepr/kwargsrepr, truncated to
 * `max` bytes with "..." (never inside a UTF-8 character, so a cut repr is
 * still valid text).  New string, caller frees; NULL on OOM. */
char *celery_repr(const json_t *v, size_t max);

/* The same built piece by piece in a writer used as a plain buffer: appends
 * the repr of the str s[0..n) (stopping once w holds more than `max`
 * bytes, as nothing past that is kept); celery_repr_cut then truncates the
 * whole text as celery_repr does. */
void celery_repr_str(jsonw *w, const char *s, size_t n, size_t max);
void celery_repr_cut(jsonw *w, size_t max);

/* The pidbox broadcast of `celery control revoke` (a Python worker obeys
 * it): kombu's envelope of {"method": "revoke", "arguments": {task_id,
 * terminate, signal: SIGTERM}, "destination": null}, expiring `expires`
 * (unix seconds), as JSON text (caller frees); NULL on OOM. */
char *celery_pidbox_revoke(const char *task_id, bool terminate, double expires);

#endif
