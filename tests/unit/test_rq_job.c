/* rq_job: an RQ job written as Queue.enqueue writes it and read back in the
 * backend vocabulary, without Redis (the job hash and the result stream
 * are built as hiredis replies).  The interop tests run the same layout
 * through real `rq worker` processes. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <zlib.h>

#include "pickle.h"
#include "rq_job.h"
#include "unit.h"

static const bk_job job = {"e1", "print('hi')", 11, "python", "docker", 30, 3, "default", NULL, 0};

static json_t *unpack(const unsigned char *z, size_t n, bool pickle)
{
    unsigned char raw[4096];
    uLongf cap = sizeof(raw);
    if (uncompress(raw, &cap, z, (uLong)n) != Z_OK) return NULL;
    char why[160];
    if (pickle) return pickle_loads(raw, cap, why);
    return json_loadb((const char *)raw, cap, 0, NULL);
}

static void test_data_both_serializers(void)
{
    for (int pk = 0; pk < 2; pk++) {
        size_t n = 0;
        unsigned char *z = rq_job_data("tasks.evaluate_code", pk, &job, &n);
        CHECK(z != NULL);
        json_t *t = z ? unpack(z, n, pk) : NULL;
        CHECK(json_is_array(t));
        CHECK_STR(json_string_value(json_array_get(t, 0)), "tasks.evaluate_code");
        CHECK(json_is_null(json_array_get(t, 1)));
        json_t *args = json_array_get(t, 2), *kw = json_array_get(t, 3);
        CHECK_STR(json_string_value(json_array_get(args, 0)), "e1");
        CHECK_STR(json_string_value(json_array_get(args, 1)), "print('hi')");
        CHECK_STR(json_string_value(json_array_get(args, 2)), "python");
        CHECK_EQ_INT(json_integer_value(json_object_get(kw, "timeout")), 30);
        CHECK_STR(json_string_value(json_object_get(kw, "engine")), "docker");
        CHECK_EQ_INT(json_integer_value(json_object_get(kw, "priority")), 3);
        json_decref(t);
        free(z);
    }
}

static void test_description_as_rq_logs_it(void)
{
    char d[1400];
    rq_job_description("tasks.evaluate_code", &job, d, sizeof(d));
    /* a quote inside: Python's repr switches to double quotes */
    CHECK_STR(d, "tasks.evaluate_code('e1', \"print('hi')\", 'python', engine='docker', priority=3, timeout=30)");
    bk_job long_code = job;
    char code[200];
    memset(code, 'x', sizeof(code));
    long_code.code = code;
    long_code.code_len = sizeof(code);
    rq_job_description("f", &long_code, d, sizeof(d));
    CHECK_CONTAINS(d, "...");
    CHECK(strlen(d) < 200);
}

static void test_time_format(void)
{
    char t[40];
    rq_job_time(1795336978.25, t);
    CHECK_EQ_INT(strlen(t), 27);
    CHECK(t[26] == 'Z' && t[10] == 'T');
}

/* ---------- reading: replies built by hand ---------- */

static redisReply *str(const char *s)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_STRING;
    r->str = strdup(s);
    r->len = strlen(s);
    return r;
}

static redisReply *arr(size_t n)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof(redisReply *));
    return r;
}

static redisReply *hash(const char *const *kv)
{
    size_t n = 0;
    while (kv[n]) n++;
    redisReply *h = arr(n);
    for (size_t i = 0; i < n; i++) h->element[i] = str(kv[i]);
    return h;
}

static char *b64(const unsigned char *data, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)data[i] << 16 | (i + 1 < n ? (unsigned)data[i + 1] << 8 : 0) | (i + 2 < n ? data[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* The result stream's newest entry: [[id, [type, T, return_value, V]]]. */
static redisReply *results(const char *type, const char *value_b64)
{
    redisReply *r = arr(1), *entry = arr(2), *kv = arr(value_b64 ? 4 : 2);
    entry->element[0] = str("1795336978250-0");
    kv->element[0] = str("type");
    kv->element[1] = str(type);
    if (value_b64) {
        kv->element[2] = str("return_value");
        kv->element[3] = str(value_b64);
    }
    entry->element[1] = kv;
    r->element[0] = entry;
    return r;
}

static void test_finished_job_with_the_executors_verdict(void)
{
    json_t *v = json_pack("{s:s, s:s, s:i, s:f}", "status", "failed", "output", "boom\n", "exit_code", 1, "duration_s",
                          0.25);
    char *text = json_dumps(v, JSON_COMPACT);
    char *enc = b64((const unsigned char *)text, strlen(text));
    static const char *const kv[] = {"status", "finished", "origin", "default", "enqueued_at",
                                     "2026-12-07T10:00:00.000000Z", "started_at", "2026-12-07T10:00:01.000000Z",
                                     "ended_at", "2026-12-07T10:00:01.500000Z", NULL};
    redisReply *h = hash(kv), *res = results("1", enc);
    json_t *doc = rq_job_doc(false, "e1", h, res, NULL);
    CHECK_STR(json_string_value(json_object_get(doc, "status")), "failed");
    CHECK_STR(json_string_value(json_object_get(doc, "outcome")), "failed");
    CHECK_STR(json_string_value(json_object_get(doc, "output")), "boom\n");
    CHECK_EQ_INT(json_integer_value(json_object_get(doc, "exit_code")), 1);
    CHECK_STR(json_string_value(json_object_get(doc, "queued_at")), "2026-12-07T10:00:00.000000");
    CHECK_STR(bk_normalized_status(doc), "failed");
    json_decref(doc);
    freeReplyObject(h);
    freeReplyObject(res);
    free(enc);
    free(text);
    json_decref(v);
}

static void test_queued_started_canceled(void)
{
    static const char *const q[] = {"status", "queued", "origin", "high", NULL};
    static const char *const s[] = {"status", "started", "started_at", "2026-12-07T10:00:01.000000Z", NULL};
    static const char *const c[] = {"status", "canceled", NULL};
    redisReply *hq = hash(q), *hs = hash(s), *hc = hash(c), pos = {.type = REDIS_REPLY_INTEGER, .integer = 4};
    json_t *dq = rq_job_doc(true, "e2", hq, NULL, &pos), *ds = rq_job_doc(true, "e2", hs, NULL, NULL),
           *dc = rq_job_doc(true, "e2", hc, NULL, NULL);
    CHECK_STR(bk_normalized_status(dq), "queued");
    CHECK_EQ_INT(json_integer_value(json_object_get(dq, "position")), 5); /* 1-based, as the Queue Service says */
    CHECK_STR(json_string_value(json_object_get(dq, "queue")), "high");
    CHECK_STR(bk_normalized_status(ds), "running");
    CHECK_STR(bk_normalized_status(dc), "cancelled");
    json_decref(dq);
    json_decref(ds);
    json_decref(dc);
    freeReplyObject(hq);
    freeReplyObject(hs);
    freeReplyObject(hc);
}

static void test_a_pickled_call_is_refused_not_run(void)
{
    /* os.system('echo pwned') by GLOBAL + REDUCE: a result that would
     * import and call is unreadable, never a verdict */
    static const unsigned char evil[] = "\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x0a"
                                        "echo pwned\x94\x85\x94R\x94.";
    char *enc = b64(evil, sizeof(evil) - 1);
    static const char *const kv[] = {"status", "finished", NULL};
    redisReply *h = hash(kv), *res = results("1", enc);
    json_t *doc = rq_job_doc(true, "e3", h, res, NULL);
    CHECK_STR(json_string_value(json_object_get(doc, "status")), "failed");
    CHECK_STR(json_string_value(json_object_get(doc, "outcome")), "error");
    CHECK_CONTAINS(json_string_value(json_object_get(doc, "error")), "could not be read");
    CHECK_CONTAINS(json_string_value(json_object_get(doc, "error")), "refused");
    json_decref(doc);
    freeReplyObject(h);
    freeReplyObject(res);
    free(enc);
}

int main(void)
{
    RUN(test_data_both_serializers);
    RUN(test_description_as_rq_logs_it);
    RUN(test_time_format);
    RUN(test_finished_job_with_the_executors_verdict);
    RUN(test_queued_started_canceled);
    RUN(test_a_pickled_call_is_refused_not_run);
    UNIT_END();
}
