/* fuzz_celery_decode — Redis list elements through celery_decode, the
 * worker's first contact with whatever a producer (ours, Python Celery, or
 * anything else with access to the broker) pushed.
 *
 * Input: the raw list element.  When it decodes, the message goes through
 * the two ways turnout writes it back, and each result must decode again
 * to the same task:
 *   - celery_reencode (retry / restore / dead-letter: new delivery_tag,
 *     retries, eta, one extra header);
 *   - celery_encode of the decoded fields (what a producer would write).
 * It also drives the helpers run on decoded fields: celery_parse_iso8601,
 * celery_repr, celery_priority_step and celery_queue_key. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "celery.h"

#define CHECK(cond)                                                                                   \
    do {                                                                                              \
        if (!(cond)) {                                                                                \
            fprintf(stderr, "fuzz_celery_decode: invariant failed: %s (line %d)\n", #cond, __LINE__); \
            __builtin_trap();                                                                         \
        }                                                                                             \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_str(const char *a, const char *b)
{
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

/* What every successful decode promises its callers (celery.h). */
static void check_decoded(const celery_message *m)
{
    CHECK(json_is_object(m->env));
    CHECK(json_is_array(m->body) && json_array_size(m->body) == 3);
    CHECK(m->task_name != NULL);
    CHECK(m->task_id != NULL && m->task_id[0] != '\0');
    CHECK(m->delivery_tag != NULL);
    CHECK(m->exchange != NULL);
    CHECK(json_is_array(m->args) && m->args == json_array_get(m->body, 0));
    CHECK(json_is_object(m->kwargs) && m->kwargs == json_array_get(m->body, 1));
}

static void check_helpers(const celery_message *m)
{
    /* Whatever the text, the parser must not read past it; the value itself
     * is only used for comparisons. */
    (void)celery_parse_iso8601(m->eta);
    (void)celery_parse_iso8601(m->expires);

    char *r = celery_repr(m->args, 64);
    CHECK(r != NULL && strlen(r) <= 64);
    free(r);
    r = celery_repr(m->kwargs, 1024);
    CHECK(r != NULL && strlen(r) <= 1024);
    free(r);

    int step = celery_priority_step(m->priority);
    CHECK(step == 0 || step == 3 || step == 6 || step == 9);

    if (m->routing_key) {
        char key[256];
        size_t n = celery_queue_key(m->routing_key, m->priority, key, sizeof(key));
        size_t ql = strlen(m->routing_key);
        size_t need = ql + (step ? CELERY_SEP_LEN + 1 : 0);
        if (need < sizeof(key)) {
            /* bare name for step 0, else name SEP digit */
            CHECK(n == need && key[n] == '\0' && memcmp(key, m->routing_key, ql) == 0);
            if (step) CHECK(memcmp(key + ql, CELERY_SEP, CELERY_SEP_LEN) == 0 && key[n - 1] == '0' + step);
        } else {
            CHECK(n == 0);
        }
    }
}

/* A retry as the worker writes it: retries + 1, an eta, a marker header. */
static void check_reencode(const celery_message *m)
{
    static const char eta[] = "2026-11-22T08:42:16.316431+00:00";
    json_t *marker = json_string("fuzz");
    size_t len = 0;
    int retries = m->retries < 1000 && m->retries >= 0 ? m->retries + 1 : 1;
    char *text = celery_reencode(m, retries, eta, "x-turnout-fuzz", marker, &len);
    CHECK(text != NULL && len == strlen(text));

    celery_message m2;
    char err[256];
    int rc = celery_decode(text, len, &m2, err);
    if (rc != 0) fprintf(stderr, "re-encoded message does not decode: %s\n%s\n", err, text);
    CHECK(rc == 0);
    check_decoded(&m2);
    CHECK(same_str(m2.task_id, m->task_id));
    CHECK(same_str(m2.task_name, m->task_name));
    CHECK(same_str(m2.routing_key, m->routing_key));
    CHECK(same_str(m2.exchange, m->exchange));
    CHECK(same_str(m2.expires, m->expires));
    CHECK(same_str(m2.eta, eta));
    CHECK(m2.retries == retries);
    CHECK(m2.priority == m->priority);
    CHECK(strlen(m2.delivery_tag) == 36 && !same_str(m2.delivery_tag, m->delivery_tag));
    CHECK(json_equal(m2.body, m->body));
    CHECK(json_equal(json_object_get(json_object_get(m2.env, "headers"), "x-turnout-fuzz"), marker));
    celery_message_free(&m2);
    free(text);
    json_decref(marker);
}

/* The decoded fields written again by the producer's encoder. */
static void check_encode(const celery_message *m)
{
    if (!m->routing_key) return; /* a producer always names the queue */
    celery_task t = {
        .task_name = m->task_name,
        .task_id = m->task_id,
        .queue = m->routing_key,
        .priority = m->priority,
        .args = m->args,
        .kwargs = m->kwargs,
        .retries = m->retries,
        .eta = m->eta,
        .expires = m->expires,
        .hard_limit_s = m->hard_limit_s,
        .soft_limit_s = m->soft_limit_s,
    };
    char err[256];
    size_t len = 0;
    char *text = celery_encode(&t, &len, err);
    CHECK(text != NULL && len == strlen(text));

    celery_message m2;
    int rc = celery_decode(text, len, &m2, err);
    if (rc != 0) fprintf(stderr, "encoded message does not decode: %s\n%s\n", err, text);
    CHECK(rc == 0);
    check_decoded(&m2);
    CHECK(same_str(m2.task_id, m->task_id));
    CHECK(same_str(m2.task_name, m->task_name));
    CHECK(same_str(m2.routing_key, m->routing_key));
    CHECK(same_str(m2.eta, m->eta));
    CHECK(same_str(m2.expires, m->expires));
    CHECK(m2.retries == m->retries);
    CHECK(m2.priority == m->priority);
    CHECK(json_equal(m2.args, m->args));
    CHECK(json_equal(m2.kwargs, m->kwargs));
    /* Limits of 0 or less are written as null and read back as 0. */
    CHECK(m2.hard_limit_s == (m->hard_limit_s > 0 ? m->hard_limit_s : 0));
    CHECK(m2.soft_limit_s == (m->soft_limit_s > 0 ? m->soft_limit_s : 0));
    celery_message_free(&m2);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    celery_message m;
    char err[256];
    err[0] = '\0';
    if (celery_decode((const char *)data, size, &m, err) != 0) {
        /* On failure everything decoded is freed and the message zeroed. */
        CHECK(m.env == NULL && m.body == NULL);
        CHECK(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
        return 0;
    }
    check_decoded(&m);
    check_helpers(&m);
    check_reencode(&m);
    check_encode(&m);
    celery_message_free(&m);
    return 0;
}
