/* turnout-legacyd — the reference legacy Queue Service (DESIGN §7) and its
 * pulling worker: an evhttp server over an in-memory FIFO (legacyd_queue),
 * and, when EXECUTOR_SERVICE_URL is set, a loop that hands queued tasks to
 * executors (DESIGN §8) through httpc on the same event base. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "cfg.h"
#include "daemon.h"
#include "httpc.h"
#include "jsafe.h"
#include "jsonw.h"
#include "legacyd_queue.h"
#include "log.h"
#include "util.h"

#define PROGRAM "turnout-legacyd"
#define MAX_BODY_BYTES (2u * 1024 * 1024)
#define EVHTTP_BODY_CEILING (4u * 1024 * 1024) /* above it evhttp sends its own HTML 413 */
#define MAX_EVAL_ID 128
#define MAX_WORD 64                            /* language, engine */
#define DEFAULT_TIMEOUT_S 30
#define MAX_TIMEOUT_S 3600
#define EXECUTOR_GRACE_S 10                    /* on top of the task's own timeout */
#define EXECUTOR_CONNECT_MS 5000
#define EXECUTOR_MAX_REPLY (16u * 1024 * 1024)
#define EXECUTOR_MAX_ATTEMPTS 5                /* calls ending without a verdict */
#define BACKOFF_BASE_S 0.2
#define BACKOFF_MAX_S 5.0
#define BUSY_DEFAULT_S 1.0                     /* 503 without Retry-After */
#define BUSY_MAX_S 30.0
#define QUEUE_FULL_RETRY_S 5
#define DRAIN_S 0.2

/* ---------- configuration ---------- */

typedef struct settings {
    char *listen;
    char *executors;
    long long concurrency;
    long long max_queue;
    long long result_ttl_s;
    char *log_level;
    char *log_format;
} settings;

static const cfg_option options[] = {
    {"LEGACYD_LISTEN", CFG_ADDR, "127.0.0.1:8081", 0, 0, NULL, offsetof(settings, listen),
     "address:port to serve the legacy Queue Service on (loopback by default)", false},
    {"EXECUTOR_SERVICE_URL", CFG_LIST, "", 0, 0, NULL, offsetof(settings, executors),
     "comma list of executor base URLs (http:// or https://), used round-robin; empty: tasks wait for an external worker (GET /tasks/next)", true},
    {"LEGACYD_CONCURRENCY", CFG_INT, "2", 1, 1024, NULL, offsetof(settings, concurrency),
     "executor calls in flight at once", true},
    {"LEGACYD_MAX_QUEUE", CFG_INT, "100000", 1, 10000000, NULL, offsetof(settings, max_queue),
     "queued tasks accepted; beyond it POST /tasks answers 503 with Retry-After", true},
    {"LEGACYD_RESULT_TTL_S", CFG_INT, "3600", 1, 2592000, NULL, offsetof(settings, result_ttl_s),
     "seconds a finished task's result stays readable at GET /tasks/{id}", true},
    {"LOG_LEVEL", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", offsetof(settings, log_level),
     "lowest level logged", true},
    {"LOG_FORMAT", CFG_ENUM, "logfmt", 0, 0, "logfmt|json", offsetof(settings, log_format),
     "log line format", true},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

/* Calls fn(item, len, ud) for each trimmed item of a comma list; stops at the
 * first non-zero return and passes it on. */
static int each_item(const char *list, int (*fn)(const char *, size_t, void *), void *ud)
{
    const char *p = list;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *b = p;
        while (b < end && (*b == ' ' || *b == '\t')) b++;
        const char *e = end;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e > b) {
            int rc = fn(b, (size_t)(e - b), ud);
            if (rc) return rc;
        }
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

typedef struct url_check {
    const char *list;
    char *errs;
    size_t size;
    int problems;
} url_check;

static int check_url(const char *item, size_t len, void *ud)
{
    url_check *uc = ud;
    size_t skip = len >= 7 && strncmp(item, "http://", 7) == 0    ? 7
                  : len >= 8 && strncmp(item, "https://", 8) == 0 ? 8
                                                                  : 0;
    if (skip && len > skip && !memchr(item, ' ', len)) return 0;
    uc->problems++;
    size_t used = strlen(uc->errs);
    if (used + 1 < uc->size)
        util_snprintf(uc->errs + used, uc->size - used,
                      "EXECUTOR_SERVICE_URL=\"%.*s\": item \"%.*s\" must be a URL starting with http:// or https://\n",
                      UTF8_CUT(uc->list, 300), (int)util_utf8_trim_end(item, len > 200 ? 200 : len), item);
    return 0;
}

/* Parses the whole table plus the checks the table cannot express.  Problems
 * go to errs, one per line; on success *s is replaced (old strings freed). */
static int settings_load(settings *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t size)
{
    settings fresh = {0};
    int problems = cfg_load(options, NOPTIONS, &fresh, sizeof(fresh), lookup, ud, errs, size);
    if (problems == 0) {
        url_check uc = {fresh.executors, errs, size, 0};
        each_item(fresh.executors, check_url, &uc);
        problems = uc.problems;
    } else {
        /* cfg_load reported its own problems; still name bad executor URLs. */
        const char *raw = lookup("EXECUTOR_SERVICE_URL", ud);
        url_check uc = {raw, errs, size, 0};
        if (raw) each_item(raw, check_url, &uc);
        problems += uc.problems;
    }
    if (problems) {
        cfg_free(options, NOPTIONS, &fresh);
        return problems;
    }
    cfg_free(options, NOPTIONS, s);
    *s = fresh;
    return 0;
}

static int settings_load_any(void *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t size)
{
    return settings_load(s, lookup, ud, errs, size);
}

/* The environment, or TURNOUT_ENV_FILE over it when that is set. */
static int settings_read(settings *s, char *errs, size_t size)
{
    return cfg_load_with_env_file(getenv("TURNOUT_ENV_FILE"), settings_load_any, s, errs, size);
}

/* ---------- state ---------- */

typedef struct executor {
    char *execute_url; /* "<base>/execute" */
    double hold_until; /* monotonic: busy (503) or unreachable until then */
    unsigned failures; /* consecutive calls without an HTTP answer */
} executor;

typedef struct legacyd {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    settings cfg;
    lq *q;
    httpc *hc;
    executor *execs;
    size_t nexec, rr;
    unsigned exec_gen; /* bumped when the executor list is replaced */
    size_t in_flight;
    struct event *hold_timer;  /* wakes the dispatcher when an executor is free again */
    struct event *prune_timer;
    bool stopping;
} legacyd;

/* One executor call; the task is found again by eval_id and token because it
 * may have been finished, cancelled or pruned meanwhile. */
typedef struct exec_call {
    legacyd *ld;
    uint64_t token;
    size_t exec_idx;
    unsigned exec_gen;
    char eval_id[];
} exec_call;

static void pump(legacyd *ld);

static void executors_free(executor *e, size_t n)
{
    for (size_t i = 0; i < n; i++) free(e[i].execute_url);
    free(e);
}

typedef struct exec_build {
    executor *e;
    size_t n;
} exec_build;

static int add_executor(const char *item, size_t len, void *ud)
{
    exec_build *b = ud;
    while (len > 0 && item[len - 1] == '/') len--;
    executor *e = realloc(b->e, (b->n + 1) * sizeof(*e));
    if (!e) return -1;
    b->e = e;
    e[b->n] = (executor){0};
    if (asprintf(&e[b->n].execute_url, "%.*s/execute", (int)len, item) < 0) return -1;
    b->n++;
    return 0;
}

static int executors_set(legacyd *ld, const char *list)
{
    exec_build b = {NULL, 0};
    if (each_item(list, add_executor, &b) != 0) {
        executors_free(b.e, b.n);
        return -1;
    }
    executors_free(ld->execs, ld->nexec);
    ld->execs = b.e;
    ld->nexec = b.n;
    ld->rr = 0;
    ld->exec_gen++;
    return 0;
}

static void prune_expired(legacyd *ld)
{
    size_t n = lq_prune(ld->q, util_now() - (double)ld->cfg.result_ttl_s);
    if (n) {
        char num[24];
        snprintf(num, sizeof(num), "%zu", n);
        LOG_DEBUG("results pruned", "count", num);
    }
}

/* ---------- replies ---------- */

/* Sends `o` (stolen) as JSON; 503 when it could not be built. */
static void reply_obj(struct evhttp_request *req, int status, json_t *o)
{
    /* reals are durations rounded to microseconds: 15 digits write them short */
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15)) : NULL;
    if (text) util_reply_json(req, status, text, strlen(text));
    else util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
    free(text);
    json_decref(o);
}

static void reply_field(struct evhttp_request *req, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 422 naming the field, both in the message and as "field". */
static void reply_field(struct evhttp_request *req, const char *field, const char *fmt, ...)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "%s: ", field);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    if (m >= (int)(sizeof(msg) - (size_t)n)) msg[util_utf8_trim_end(msg, sizeof(msg) - 1)] = '\0';
    reply_obj(req, 422, json_pack("{s:s, s:o, s:s}", "error", "invalid_field", "message", jsafe_stringn(msg, strlen(msg)),
                                  "field", field));
}

static json_t *iso_or_null(double t)
{
    if (t <= 0) return json_null();
    char buf[32];
    util_iso8601(t, buf);
    return json_string(buf);
}


/* Seconds rounded to microseconds, as the executor measures them
 * (written with 15 significant digits: 0.011113, not 0.011113000000000001). */
static json_t *seconds_or_null(double s)
{
    return s >= 0 ? json_real(round(s * 1e6) / 1e6) : json_null();
}

/* Reads the body as a JSON object.  On failure the reply is sent and NULL
 * returned. */
static json_t *read_json_object(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char msg[400];
    if (len > MAX_BODY_BYTES) {
        snprintf(msg, sizeof(msg), "the body is %zu bytes; at most %u are accepted", len, MAX_BODY_BYTES);
        util_reply_error(req, 413, "body_too_large", msg, 0);
        return NULL;
    }
    const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
    if (len && !data) {
        util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
        return NULL;
    }
    json_error_t jerr;
    /* \u0000 is valid JSON (an output may hold NUL bytes); the fields that
     * must be plain text check their length against strlen */
    json_t *doc = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!doc) {
        util_snprintf(msg, sizeof(msg), "the body is not valid JSON (%s at line %d, column %d); send a JSON object",
                 jerr.text, jerr.line, jerr.column);
        util_reply_error(req, 400, "bad_json", msg, 0);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        util_reply_error(req, 400, "bad_json", "the body must be a JSON object, e.g. {\"eval_id\": \"e1\", \"code\": \"print(1)\"}", 0);
        return NULL;
    }
    return doc;
}

/* ---------- task views ---------- */

static const char *status_message(const legacyd *ld, const lq_task *t, size_t pos, char *buf, size_t n)
{
    switch (t->status) {
    case LQ_QUEUED:
        snprintf(buf, n, "waiting in the queue at position %zu of %zu", pos, lq_get_counts(ld->q).queued);
        return buf;
    case LQ_PROCESSING: return "taken by a worker and running";
    case LQ_COMPLETED: return "finished; the output is in the result";
    case LQ_FAILED: return "failed; the reason is in \"error\"";
    case LQ_CANCELLED: return "cancelled before it ran";
    }
    return "";
}

static json_t *task_status_json(const legacyd *ld, const lq_task *t)
{
    char buf[128];
    size_t pos = lq_position(ld->q, t);
    json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:o, s:s}", "eval_id", t->eval_id, "status",
                          lq_status_name(t->status), "position", pos ? json_integer((json_int_t)pos) : json_null(),
                          "queued_at", iso_or_null(t->queued_at), "started_at", iso_or_null(t->started_at),
                          "message", status_message(ld, t, pos, buf, sizeof(buf)));
    if (o && lq_is_finished(t)) {
        int rc = json_object_set_new(o, "output", jsafe_stringn(t->output, t->output_len));
        rc |= json_object_set_new(o, "error", jsafe_stringn(t->error, t->error_len));
        rc |= json_object_set_new(o, "duration_s", seconds_or_null(t->duration_s));
        rc |= json_object_set_new(o, "exit_code", t->has_exit_code ? json_integer(t->exit_code) : json_null());
        rc |= json_object_set_new(o, "completed_at", iso_or_null(t->completed_at));
        rc |= json_object_set_new(o, "outcome", t->outcome ? jsafe_stringn(t->outcome, strlen(t->outcome)) : json_null());
        if (rc) {
            json_decref(o);
            o = NULL;
        }
    }
    return o;
}

/* ---------- handlers ---------- */

static bool valid_eval_id(const char *s, size_t n)
{
    if (n == 0 || n > MAX_EVAL_ID || strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* An optional short string field; false after replying 422. */
static bool opt_word(struct evhttp_request *req, json_t *doc, const char *field, const char *def,
                     const char **out)
{
    json_t *v = json_object_get(doc, field);
    if (!v || json_is_null(v)) {
        *out = def;
        return true;
    }
    size_t n = json_string_length(v);
    if (!json_is_string(v) || n == 0 || n > MAX_WORD || strlen(json_string_value(v)) != n) {
        reply_field(req, field, "must be a non-empty string of at most %d characters (default \"%s\")", MAX_WORD, def);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static void handle_submit(legacyd *ld, struct evhttp_request *req)
{
    json_t *doc = read_json_object(req);
    char msg[400];
    if (!doc) return;

    json_t *id = json_object_get(doc, "eval_id");
    json_t *code = json_object_get(doc, "code");
    json_t *timeout = json_object_get(doc, "timeout");
    json_t *priority = json_object_get(doc, "priority");
    const char *eval_id = json_string_value(id), *language, *engine;
    long long timeout_s = DEFAULT_TIMEOUT_S;

    if (!eval_id || !valid_eval_id(eval_id, json_string_length(id))) {
        reply_field(req, "eval_id", "%s; it must be 1 to %d characters of A-Z a-z 0-9 _ . : -",
                    id ? "is not valid" : "is required", MAX_EVAL_ID);
        goto done;
    }
    if (strcmp(eval_id, "next") == 0) {
        reply_field(req, "eval_id", "\"next\" is reserved (GET /tasks/next takes the next task); choose another id");
        goto done;
    }
    if (!json_is_string(code) || json_string_length(code) == 0) {
        reply_field(req, "code", "%s; send the program text as a non-empty string",
                    code ? "must be a non-empty string" : "is required");
        goto done;
    }
    if (!opt_word(req, doc, "language", "python", &language)) goto done;
    if (!opt_word(req, doc, "engine", "docker", &engine)) goto done;
    if (timeout && !json_is_null(timeout)) {
        double tv = json_number_value(timeout);
        if (!json_is_number(timeout) || tv != (double)(long long)tv || tv < 1 || tv > MAX_TIMEOUT_S) {
            reply_field(req, "timeout", "must be a whole number of seconds from 1 to %d (default %d)",
                        MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S);
            goto done;
        }
        timeout_s = (long long)tv;
    }
    if (priority && (json_is_object(priority) || json_is_array(priority))) {
        reply_field(req, "priority", "must be true/false, \"high\"/\"default\"/\"low\" or an integer 0..9");
        goto done;
    }

    prune_expired(ld);
    lq_task *known = lq_find(ld->q, eval_id);
    if (known) {
        snprintf(msg, sizeof(msg), "eval_id \"%s\" is already known (status %s); use a new eval_id, or read it at GET /tasks/%s",
                 eval_id, lq_status_name(known->status), eval_id);
        util_reply_error(req, 409, "duplicate_eval_id", msg, 0);
        goto done;
    }
    lq_counts c = lq_get_counts(ld->q);
    if (c.queued >= (size_t)ld->cfg.max_queue) {
        snprintf(msg, sizeof(msg), "the queue holds %zu tasks, its limit (LEGACYD_MAX_QUEUE); retry later", c.queued);
        LOG_WARN("queue full", "eval_id", eval_id);
        util_reply_error(req, 503, "queue_full", msg, QUEUE_FULL_RETRY_S);
        goto done;
    }
    lq_task *t = lq_push(ld->q, eval_id, json_string_value(code), json_string_length(code), language, engine,
                         timeout_s, priority, util_now());
    if (!t) {
        LOG_ERROR("out of memory queueing a task", "eval_id", eval_id);
        util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
        goto done;
    }
    size_t pos = lq_get_counts(ld->q).queued; /* appended: last place */
    char posbuf[24];
    snprintf(posbuf, sizeof(posbuf), "%zu", pos);
    LOG_INFO("task queued", "eval_id", eval_id, "position", posbuf);
    reply_obj(req, 201, json_pack("{s:s, s:s, s:I, s:o, s:s}", "eval_id", eval_id, "status", "queued", "position",
                                  (json_int_t)pos, "queued_at", iso_or_null(t->queued_at), "message",
                                  "queued; poll GET /tasks/{eval_id} for the result"));
    pump(ld);
done:
    json_decref(doc);
}

static void handle_next(legacyd *ld, struct evhttp_request *req)
{
    lq_task *t = lq_take(ld->q, util_now());
    if (!t) {
        util_reply_json(req, 200, "null", 4);
        return;
    }
    json_t *o = json_pack("{s:s, s:s%, s:s, s:s, s:I, s:O, s:s, s:o, s:o}", "eval_id", t->eval_id, "code", t->code,
                          t->code_len, "language", t->language, "engine", t->engine, "timeout",
                          (json_int_t)t->timeout, "priority", t->priority, "status", "processing", "queued_at",
                          iso_or_null(t->queued_at), "started_at", iso_or_null(t->started_at));
    if (!o) {
        lq_requeue_front(ld->q, t); /* nobody got it: keep its place */
        util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
        return;
    }
    LOG_INFO("task taken", "eval_id", t->eval_id, "by", "external worker");
    reply_obj(req, 200, o);
}

static void handle_get(legacyd *ld, struct evhttp_request *req, lq_task *t)
{
    reply_obj(req, 200, task_status_json(ld, t));
}

static void handle_delete(legacyd *ld, struct evhttp_request *req, lq_task *t)
{
    char msg[300];
    if (t->status == LQ_PROCESSING) {
        snprintf(msg, sizeof(msg), "task \"%s\" is running and cannot be cancelled here; wait for its result", t->eval_id);
        util_reply_error(req, 409, "task_running", msg, 0);
        return;
    }
    if (t->status != LQ_QUEUED) {
        snprintf(msg, sizeof(msg), "task \"%s\" already finished (%s); nothing to cancel", t->eval_id,
                 lq_status_name(t->status));
        util_reply_error(req, 409, "task_finished", msg, 0);
        return;
    }
    lq_result cancelled = {.outcome = "cancelled", .duration_s = -1};
    if (lq_finish(ld->q, t, LQ_CANCELLED, &cancelled, util_now()) != 0) {
        util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
        return;
    }
    LOG_INFO("task cancelled", "eval_id", t->eval_id);
    reply_obj(req, 200, json_pack("{s:s, s:s, s:s}", "eval_id", t->eval_id, "status", "cancelled", "message",
                                  "removed from the queue; it will not run"));
}

/* POST /tasks/{id}/complete and /fail from an external worker. */
static void handle_finish(legacyd *ld, struct evhttp_request *req, lq_task *t, bool ok)
{
    char msg[300];
    json_t *doc = read_json_object(req);
    if (!doc) return;
    json_t *output = json_object_get(doc, "output");
    json_t *error = json_object_get(doc, "error");
    json_t *exit_code = json_object_get(doc, "exit_code");

    if (lq_is_finished(t)) {
        snprintf(msg, sizeof(msg), "task \"%s\" already finished (%s); a result is recorded once", t->eval_id,
                 lq_status_name(t->status));
        util_reply_error(req, 409, "task_finished", msg, 0);
        goto done;
    }
    if (ok ? !(json_is_string(output) || json_is_null(output)) : output && !json_is_string(output) && !json_is_null(output)) {
        reply_field(req, "output", "%s; send the program's output as a string",
                    output ? "must be a string" : "is required");
        goto done;
    }
    if (!ok && !json_is_string(error)) {
        reply_field(req, "error", "%s; send the reason the task failed as a string",
                    error ? "must be a string" : "is required");
        goto done;
    }
    if (exit_code && !json_is_null(exit_code) && !json_is_integer(exit_code)) {
        reply_field(req, "exit_code", "must be an integer (or left out)");
        goto done;
    }
    lq_result r = {
        .output = json_string_value(output),
        .output_len = json_string_length(output),
        .error = ok ? NULL : json_string_value(error),
        .error_len = ok ? 0 : json_string_length(error),
        .outcome = ok ? "completed" : "failed",
        .has_exit_code = json_is_integer(exit_code),
        .exit_code = json_integer_value(exit_code),
        .duration_s = -1,
    };
    if (lq_finish(ld->q, t, ok ? LQ_COMPLETED : LQ_FAILED, &r, util_now()) != 0) {
        util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
        goto done;
    }
    LOG_INFO(ok ? "task completed" : "task failed", "eval_id", t->eval_id, "by", "external worker");
    reply_obj(req, 200, json_pack("{s:s, s:s}", "eval_id", t->eval_id, "status", lq_status_name(t->status)));
done:
    json_decref(doc);
}

static void handle_status(legacyd *ld, struct evhttp_request *req)
{
    lq_counts c = lq_get_counts(ld->q);
    reply_obj(req, 200, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "queued", (json_int_t)c.queued,
                                  "processing", (json_int_t)c.processing, "queue_length", (json_int_t)c.queued,
                                  "total_tasks", (json_int_t)c.total, "finished", (json_int_t)c.finished,
                                  "executors", (json_int_t)ld->nexec, "executor_calls_in_flight",
                                  (json_int_t)ld->in_flight));
}

static void reply_method(struct evhttp_request *req, const char *allow, const char *path)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s accepts %s only", path, allow);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    util_reply_error(req, 405, "method_not_allowed", msg, 0);
}

static void route_task(legacyd *ld, struct evhttp_request *req, enum evhttp_cmd_type cmd, const char *rest)
{
    const char *slash = strchr(rest, '/');
    size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *action = slash ? slash + 1 : NULL;
    char raw[MAX_EVAL_ID * 3 + 1], msg[300];
    char *id = NULL;
    size_t n = 0;

    if (idlen == 0 || idlen >= sizeof(raw)) goto unknown;
    memcpy(raw, rest, idlen);
    raw[idlen] = '\0';
    id = evhttp_uridecode(raw, 0, &n);
    if (!id) {
        util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
        return;
    }
    if (!valid_eval_id(id, n)) goto unknown;
    lq_task *t = lq_find(ld->q, id);
    if (!action) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_DELETE) {
            reply_method(req, "GET, DELETE", "/tasks/{eval_id}");
            goto done;
        }
        if (!t) goto unknown;
        if (cmd == EVHTTP_REQ_GET) handle_get(ld, req, t);
        else handle_delete(ld, req, t);
        goto done;
    }
    if (strcmp(action, "complete") != 0 && strcmp(action, "fail") != 0) goto not_found;
    if (cmd != EVHTTP_REQ_POST) {
        reply_method(req, "POST", action[0] == 'c' ? "/tasks/{eval_id}/complete" : "/tasks/{eval_id}/fail");
        goto done;
    }
    if (!t) goto unknown;
    handle_finish(ld, req, t, action[0] == 'c');
    goto done;
unknown:
    snprintf(msg, sizeof(msg), "no task \"%.*s\" (never queued, or its result expired after LEGACYD_RESULT_TTL_S)",
             (int)util_utf8_trim_end(rest, idlen > 130 ? 130 : idlen), rest);
    util_reply_error(req, 404, "not_found", msg, 0);
    goto done;
not_found:
    util_reply_error(req, 404, "not_found", "unknown path; see GET /status, POST /tasks, GET /tasks/{eval_id}", 0);
done:
    free(id);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    legacyd *ld = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    char buf[512];

    if (!path || !*path) path = "/";
    size_t n = strlen(path);
    if (n > 1 && path[n - 1] == '/' && n < sizeof(buf)) { /* "/tasks/" as "/tasks" */
        memcpy(buf, path, n - 1);
        buf[n - 1] = '\0';
        path = buf;
    }
    prune_expired(ld);

    if (strcmp(path, "/health") == 0) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) reply_method(req, "GET", path);
        else util_reply_json(req, 200, "{\"status\":\"ok\"}", 15);
    } else if (strcmp(path, "/status") == 0) {
        if (cmd != EVHTTP_REQ_GET) reply_method(req, "GET", path);
        else handle_status(ld, req);
    } else if (strcmp(path, "/tasks") == 0) {
        if (cmd != EVHTTP_REQ_POST) reply_method(req, "POST", path);
        else handle_submit(ld, req);
    } else if (strcmp(path, "/tasks/next") == 0) {
        if (cmd != EVHTTP_REQ_GET) reply_method(req, "GET", path);
        else handle_next(ld, req);
    } else if (strncmp(path, "/tasks/", 7) == 0) {
        route_task(ld, req, cmd, path + 7);
    } else {
        util_reply_error(req, 404, "not_found", "unknown path; see GET /status, POST /tasks, GET /tasks/{eval_id}", 0);
    }
}

/* ---------- executor loop ---------- */

static void hold_executor(executor *ex, double seconds)
{
    if (!ex) return;
    double until = util_monotonic() + seconds;
    if (until > ex->hold_until) ex->hold_until = until;
}

/* Exponential backoff per executor: 0.2 s, 0.4 s … capped at 5 s. */
static void backoff_executor(executor *ex)
{
    if (!ex) return;
    double d = BACKOFF_BASE_S;
    for (unsigned i = 0; i < ex->failures && d < BACKOFF_MAX_S; i++) d *= 2;
    ex->failures++;
    hold_executor(ex, d < BACKOFF_MAX_S ? d : BACKOFF_MAX_S);
}

static void arm_hold_timer(legacyd *ld, double delay_s)
{
    if (delay_s < 0.001) delay_s = 0.001;
    struct timeval tv = {(time_t)delay_s, (suseconds_t)((delay_s - (double)(time_t)delay_s) * 1e6)};
    evtimer_add(ld->hold_timer, &tv);
}

static double retry_after(const httpc_response *resp)
{
    for (size_t i = 0; i < resp->nheaders; i++) {
        if (strncasecmp(resp->headers[i], "Retry-After:", 12) != 0) continue;
        char *end;
        errno = 0;
        double s = strtod(resp->headers[i] + 12, &end);
        if (errno || end == resp->headers[i] + 12 || s < 0) break;
        return s > BUSY_MAX_S ? BUSY_MAX_S : s < 0.1 ? 0.1 : s;
    }
    return BUSY_DEFAULT_S;
}

static void finish_task(legacyd *ld, lq_task *t, lq_status st, const lq_result *r)
{
    const char *error = r->error, *outcome = r->outcome;
    if (lq_finish(ld->q, t, st, r, util_now()) != 0) {
        /* Out of memory: running it again later beats losing it. */
        LOG_ERROR("out of memory recording a result; task queued again", "eval_id", t->eval_id);
        lq_requeue_front(ld->q, t);
        arm_hold_timer(ld, 1.0);
        return;
    }
    LOG_INFO(st == LQ_COMPLETED ? "task completed" : "task failed", "eval_id", t->eval_id, "outcome", outcome,
             "error", error);
}

/* A task that failed without a run to show: no output, no exit code. */
static void fail_task(legacyd *ld, lq_task *t, const char *outcome, const char *error)
{
    lq_result r = {.error = error, .error_len = strlen(error), .outcome = outcome, .duration_s = -1};
    finish_task(ld, t, LQ_FAILED, &r);
}

/* No verdict from the executor (reset, 5xx): try again, a few times. */
static void retry_or_fail(legacyd *ld, lq_task *t, executor *ex, const char *why)
{
    if (++t->attempts >= EXECUTOR_MAX_ATTEMPTS) {
        char msg[400];
        util_snprintf(msg, sizeof(msg), "gave up after %u executor calls without a result; last: %s", t->attempts, why);
        fail_task(ld, t, "error", msg);
        return;
    }
    LOG_WARN("executor call failed; task queued again", "eval_id", t->eval_id, "error", why);
    lq_requeue_front(ld->q, t);
    backoff_executor(ex);
}

static void apply_verdict(legacyd *ld, lq_task *t, const httpc_response *resp)
{
    /* output is the program's bytes: a NUL in it is \u0000, valid JSON */
    json_t *doc = json_loadb(resp->body, resp->body_len, JSON_ALLOW_NUL, NULL);
    const char *st = json_string_value(json_object_get(doc, "status"));
    json_t *output = json_object_get(doc, "output"), *error = json_object_get(doc, "error");
    json_t *code = json_object_get(doc, "exit_code"), *dur = json_object_get(doc, "duration_s");
    lq_result r = {
        .output = json_string_value(output),
        .output_len = json_string_length(output),
        .error = json_string_value(error),
        .error_len = json_string_length(error),
        .outcome = st,
        .has_exit_code = json_is_integer(code),
        .exit_code = json_integer_value(code),
        .duration_s = json_is_number(dur) && json_number_value(dur) >= 0 ? json_number_value(dur) : -1,
    };
    char msg[200];

    if (st && strcmp(st, "completed") == 0) {
        if (!r.output) r.output = "";
        r.error = NULL; /* a run that completed has no error */
        r.error_len = 0;
        finish_task(ld, t, LQ_COMPLETED, &r);
    } else if (st && (strcmp(st, "failed") == 0 || strcmp(st, "timeout") == 0 || strcmp(st, "killed") == 0)) {
        if (!r.error || !r.error_len) {
            snprintf(msg, sizeof(msg), "the execution ended with status %s", st);
            r.error = msg;
            r.error_len = strlen(msg);
        }
        finish_task(ld, t, LQ_FAILED, &r);
    } else {
        snprintf(msg, sizeof(msg), "the executor answered %ld with %s", resp->status,
                 st ? "an unknown status" : "no JSON status");
        fail_task(ld, t, "error", msg);
    }
    json_decref(doc);
}

static void on_executor_done(const httpc_response *resp, void *arg)
{
    exec_call *c = arg;
    legacyd *ld = c->ld;
    executor *ex = c->exec_gen == ld->exec_gen && c->exec_idx < ld->nexec ? &ld->execs[c->exec_idx] : NULL;
    lq_task *t = lq_find(ld->q, c->eval_id);
    char msg[400];

    ld->in_flight--;
    if (!t || t->token != c->token || t->status != LQ_PROCESSING) {
        LOG_DEBUG("stale executor reply ignored", "eval_id", c->eval_id);
        goto done;
    }
    if (ex && resp->error == HTTPC_OK && resp->status < 500) ex->failures = 0; /* it answers sensibly */
    switch (resp->error) {
    case HTTPC_ECANCELLED: /* shutting down: the task simply stays queued */
        lq_requeue_front(ld->q, t);
        goto done;
    case HTTPC_ECONNECT:
        LOG_WARN("executor unreachable; task queued again", "eval_id", t->eval_id, "error", resp->errmsg);
        lq_requeue_front(ld->q, t);
        backoff_executor(ex);
        goto done;
    case HTTPC_ETIMEOUT:
        /* the executor stops a program at its timeout: not answering by
         * then and a grace is the executor's failure, not the program's */
        snprintf(msg, sizeof(msg), "the executor did not answer within %lld s", t->timeout + EXECUTOR_GRACE_S);
        fail_task(ld, t, "executor_timeout", msg);
        goto done;
    case HTTPC_ETOOBIG:
        snprintf(msg, sizeof(msg), "the executor's reply is larger than %u bytes", EXECUTOR_MAX_REPLY);
        fail_task(ld, t, "error", msg);
        goto done;
    case HTTPC_OK: break;
    default:
        retry_or_fail(ld, t, ex, resp->errmsg ? resp->errmsg : "transfer failed");
        goto done;
    }
    if (resp->status == 503 || resp->status == 429) {
        double wait = retry_after(resp);
        LOG_DEBUG("executor busy; task queued again", "eval_id", t->eval_id);
        lq_requeue_front(ld->q, t);
        hold_executor(ex, wait);
    } else if (resp->status >= 200 && resp->status < 300) {
        apply_verdict(ld, t, resp);
    } else if (resp->status >= 500 || resp->status == 408) {
        snprintf(msg, sizeof(msg), "the executor answered %ld", resp->status);
        retry_or_fail(ld, t, ex, msg);
    } else {
        json_t *doc = json_loadb(resp->body, resp->body_len, JSON_ALLOW_NUL, NULL);
        const char *m = json_string_value(json_object_get(doc, "message"));
        snprintf(msg, sizeof(msg), "the executor rejected the task with %ld%s%.*s", resp->status, m ? ": " : "",
                 UTF8_CUT(m ? m : "", 300));
        json_decref(doc);
        fail_task(ld, t, "error", msg);
    }
done:
    free(c);
    pump(ld);
}

/* Next executor in round-robin order that is not held; -1 when all are. */
static long pick_executor(legacyd *ld, double now, double *soonest)
{
    *soonest = -1;
    for (size_t k = 0; k < ld->nexec; k++) {
        size_t i = (ld->rr + k) % ld->nexec;
        executor *ex = &ld->execs[i];
        if (ex->hold_until <= now) {
            ld->rr = i + 1;
            return (long)i;
        }
        if (*soonest < 0 || ex->hold_until < *soonest) *soonest = ex->hold_until;
    }
    return -1;
}

static int start_call(legacyd *ld, lq_task *t, size_t ei)
{
    static const char *const headers[] = {"Content-Type: application/json", "Accept: application/json", NULL};
    char err[256];
    size_t idlen = strlen(t->eval_id);
    exec_call *c = malloc(sizeof(*c) + idlen + 1);
    json_t *o = json_pack("{s:s, s:s%, s:s, s:I}", "eval_id", t->eval_id, "code", t->code, t->code_len, "language",
                          t->language, "timeout", (json_int_t)t->timeout);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    int rc = -1;

    if (!c || !body) {
        LOG_ERROR("out of memory calling an executor", "eval_id", t->eval_id);
        goto done;
    }
    c->ld = ld;
    c->token = t->token;
    c->exec_idx = ei;
    c->exec_gen = ld->exec_gen;
    memcpy(c->eval_id, t->eval_id, idlen + 1);
    httpc_opts opts = {
        .method = "POST",
        .url = ld->execs[ei].execute_url,
        .body = body,
        .body_len = strlen(body),
        .headers = headers,
        .timeout_ms = (t->timeout + EXECUTOR_GRACE_S) * 1000,
        .connect_timeout_ms = EXECUTOR_CONNECT_MS,
        .max_response_bytes = EXECUTOR_MAX_REPLY,
        .want_headers = true,
    };
    if (!httpc_start(ld->hc, &opts, on_executor_done, c, err)) {
        LOG_ERROR("cannot call the executor", "eval_id", t->eval_id, "error", err);
        goto done;
    }
    c = NULL;
    ld->in_flight++;
    LOG_DEBUG("task sent to executor", "eval_id", t->eval_id, "executor", ld->execs[ei].execute_url);
    rc = 0;
done:
    free(c);
    free(body);
    json_decref(o);
    return rc;
}

/* Hands queued tasks to free executors up to LEGACYD_CONCURRENCY. */
static void pump(legacyd *ld)
{
    if (ld->stopping || ld->nexec == 0) return;
    while (ld->in_flight < (size_t)ld->cfg.concurrency && lq_get_counts(ld->q).queued > 0) {
        double now = util_monotonic(), soonest;
        long ei = pick_executor(ld, now, &soonest);
        if (ei < 0) {
            arm_hold_timer(ld, soonest - now);
            return;
        }
        lq_task *t = lq_take(ld->q, util_now());
        if (start_call(ld, t, (size_t)ei) != 0) {
            lq_requeue_front(ld->q, t);
            arm_hold_timer(ld, 1.0);
            return;
        }
    }
}

static void on_hold_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

static void on_prune_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    prune_expired(arg);
}

static int arm_prune_timer(legacyd *ld)
{
    long long every = ld->cfg.result_ttl_s / 4;
    if (every < 1) every = 1;
    if (every > 60) every = 60;
    struct timeval tv = {(time_t)every, 0};
    return evtimer_add(ld->prune_timer, &tv);
}

/* ---------- signals ---------- */

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    legacyd *ld = arg;
    (void)what;
    if (ld->stopping) return;
    ld->stopping = true;
    LOG_INFO("shutting down", "signal", sig == SIGTERM ? "TERM" : "INT");
    /* No new connections; replies already queued get DRAIN_S to flush. */
    if (ld->listener) evhttp_del_accept_socket(ld->http, ld->listener);
    ld->listener = NULL;
    struct timeval tv = {0, (suseconds_t)(DRAIN_S * 1e6)};
    event_base_loopexit(ld->base, &tv);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    legacyd *ld = arg;
    settings fresh = {0};
    char errs[4096] = "";
    (void)sig;
    (void)what;
    if (settings_read(&fresh, errs, sizeof(errs)) != 0) {
        size_t n = strlen(errs);
        if (n && errs[n - 1] == '\n') errs[n - 1] = '\0';
        LOG_ERROR("reload refused; keeping the current settings", "problems", errs);
        cfg_free(options, NOPTIONS, &fresh);
        return;
    }
    if (executors_set(ld, fresh.executors) != 0) {
        LOG_ERROR("reload refused: out of memory");
        cfg_free(options, NOPTIONS, &fresh);
        return;
    }
    /* the options marked live change now; LEGACYD_LISTEN keeps its bound address */
    char restart[256] = "";
    cfg_reload_take(options, NOPTIONS, &ld->cfg, &fresh, restart, sizeof(restart));
    cfg_free(options, NOPTIONS, &fresh);
    if (restart[0]) LOG_WARN("reload: these settings change only on restart; kept as they run", "settings", restart);
    if (log_setup(ld->cfg.log_level, ld->cfg.log_format, PROGRAM) != 0)
        LOG_WARN("bad log settings ignored");
    arm_prune_timer(ld);
    LOG_INFO("settings reloaded");
    pump(ld);
}

/* ---------- main ---------- */


static int start(void *self, struct event_base *base, char err[256])
{
    legacyd *ld = self;
    char host[256];
    int port;

    if (cfg_split_addr(ld->cfg.listen, host, sizeof(host), &port) != 0) {
        snprintf(err, 256, "LEGACYD_LISTEN=\"%s\" is not host:port", ld->cfg.listen);
        return 2;
    }
    ld->base = base;
    ld->q = ld->base ? lq_new() : NULL;
    ld->http = ld->q ? evhttp_new(ld->base) : NULL;
    ld->hc = ld->http ? httpc_new(ld->base, err) : NULL;
    ld->hold_timer = ld->hc ? evtimer_new(ld->base, on_hold_timer, ld) : NULL;
    ld->prune_timer = ld->hold_timer ? event_new(ld->base, -1, EV_PERSIST, on_prune_timer, ld) : NULL;
    if (!ld->prune_timer || executors_set(ld, ld->cfg.executors) != 0 || arm_prune_timer(ld) != 0) {
        snprintf(err, 256, "cannot start (out of memory or event setup failed)");
        return 1;
    }
    evhttp_set_max_body_size(ld->http, EVHTTP_BODY_CEILING);
    evhttp_set_max_headers_size(ld->http, 64 * 1024);
    evhttp_set_timeout(ld->http, 60);
    evhttp_set_allowed_methods(ld->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(ld->http, on_request, ld);
    ld->listener = evhttp_bind_socket_with_handle(ld->http, host, (ev_uint16_t)port);
    if (!ld->listener) {
        LOG_ERROR("cannot listen", "listen", ld->cfg.listen, "error", strerror(errno));
        return 1;
    }
    char conc[24];
    snprintf(conc, sizeof(conc), "%lld", ld->cfg.concurrency);
    LOG_INFO("listening", "listen", ld->cfg.listen, "version", TURNOUT_VERSION, "executors",
             ld->nexec ? ld->cfg.executors : "none (external worker)", "concurrency", conc);
    return 0;
}

static void teardown(void *self)
{
    legacyd *ld = self;
    ld->stopping = true;
    httpc_free(ld->hc); /* in-flight calls complete as cancelled; tasks requeue */
    if (ld->http) evhttp_free(ld->http);
    if (ld->hold_timer) event_free(ld->hold_timer);
    if (ld->prune_timer) event_free(ld->prune_timer);
    lq_free(ld->q);
    executors_free(ld->execs, ld->nexec);
    cfg_free(options, NOPTIONS, &ld->cfg);
}

static int read_settings(void *self, char *errs, size_t size)
{
    return settings_read(&((legacyd *)self)->cfg, errs, size);
}

static void log_names(const void *self, const char **level, const char **format)
{
    const legacyd *ld = self;
    *level = ld->cfg.log_level;
    *format = ld->cfg.log_format;
}

int main(int argc, char **argv)
{
    const daemon_prog prog = {
        .name = PROGRAM,
        .summary = "the reference legacy Queue Service of turnout (POST /tasks, GET /tasks/next, GET /tasks/{id}, POST /tasks/{id}/complete|fail, DELETE /tasks/{id}, GET /status, GET /health)",
        .options = options,
        .noptions = NOPTIONS,
        .read = read_settings,
        .log_names = log_names,
        .start = start,
        .stop = on_stop,
        .reload = on_reload,
        .teardown = teardown,
    };
    legacyd ld = {0};
    return daemon_main(argc, argv, &prog, &ld);
}
