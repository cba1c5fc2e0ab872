#include "legacy_http.h"

#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util.h"

typedef struct legacy_client legacy_client;
struct legacy_client {
    httpc *h;
    const char *base;
    long timeout_ms;
    size_t max_reply;
    char tasks_url[1024];
    char health_url[1024];
    char status_url[1024];
};

typedef struct call {
    bk_cb cb;
    void *arg;
    enum legacy_call_kind kind;
} call;

static legacy_client *legacy_client_new(httpc *h, const char *base_url, long timeout_ms, size_t max_reply_bytes)
{
    legacy_client *lc = calloc(1, sizeof(*lc));
    if (!lc) return NULL;
    size_t n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/') n--; /* "http://x/" and "http://x" alike */
    lc->h = h;
    lc->base = base_url;
    lc->timeout_ms = timeout_ms;
    lc->max_reply = max_reply_bytes ? max_reply_bytes : (size_t)LEGACY_MAX_REPLY_DEFAULT;
    snprintf(lc->tasks_url, sizeof(lc->tasks_url), "%.*s/tasks", (int)n, base_url);
    snprintf(lc->health_url, sizeof(lc->health_url), "%.*s/health", (int)n, base_url);
    snprintf(lc->status_url, sizeof(lc->status_url), "%.*s/status", (int)n, base_url);
    return lc;
}

static void legacy_client_free(void *lc) { free(lc); }

void legacy_parse_reply(enum legacy_call_kind kind, int transfer_error, const char *errmsg,
                        long status, const char *body, size_t len, bk_result *out,
                        json_t **doc_out, char detail[BK_DETAIL_MAX])
{
    bk_result r = {BK_OK, status, -1, NULL, NULL, false, false, NULL};
    json_t *doc = NULL;

    /* The body is only trusted as JSON when the transfer completed; error
     * statuses still carry a doc so their "message" can be quoted.  An
     * output may hold NUL bytes, which JSON writes \u0000. */
    if (transfer_error == HTTPC_OK && len) doc = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    r.doc = doc;
    /* the request went out and no clear answer came back: it may have acted */
    r.maybe_done = transfer_error != HTTPC_OK && transfer_error != HTTPC_ECONNECT && transfer_error != HTTPC_ECANCELLED;
    if (transfer_error == HTTPC_ETIMEOUT) {
        r.outcome = BK_TIMEOUT;
        r.detail = "the legacy Queue Service did not answer in time";
    } else if (transfer_error == HTTPC_ETOOBIG) {
        /* it answered, with more than LEGACY_MAX_REPLY_BYTES */
        r.outcome = BK_BAD_REPLY;
        r.too_large = true;
        r.detail = "the legacy Queue Service answered with a reply larger than LEGACY_MAX_REPLY_BYTES";
    } else if (transfer_error != HTTPC_OK) {
        r.outcome = BK_UNREACHABLE;
        util_snprintf(detail, BK_DETAIL_MAX, "the legacy Queue Service is unreachable: %s",
                 errmsg ? errmsg : "transfer failed");
        r.detail = detail;
    } else if (status == 409) {
        r.outcome = BK_CONFLICT;
        const char *msg = json_string_value(json_object_get(doc, "message"));
        r.detail = msg ? msg : "the legacy Queue Service already has this eval_id";
    } else if (status == 404 && kind == LEGACY_CALL_TASK) {
        r.outcome = BK_NOT_FOUND;
        r.detail = "the legacy Queue Service does not know this eval_id";
    } else if (status < 200 || status > 299) {
        r.outcome = BK_BAD_STATUS;
        const char *msg = json_string_value(json_object_get(doc, "message"));
        snprintf(detail, BK_DETAIL_MAX, "the legacy Queue Service answered %ld%s%.*s", status,
                 msg ? ": " : "", UTF8_CUT(msg ? msg : "", 200));
        r.detail = detail;
    } else if (kind != LEGACY_CALL_HEALTH && !json_is_object(doc)) {
        r.outcome = BK_BAD_REPLY;
        r.maybe_done = true; /* a 2xx: it most likely did */
        r.detail = "the legacy Queue Service answered with something that is not a JSON object";
    } else if (kind == LEGACY_CALL_SUBMIT || kind == LEGACY_CALL_TASK) {
        json_t *pos = json_object_get(doc, "position");
        r.position = json_is_integer(pos) ? (long long)json_integer_value(pos) : -1;
    }
    *out = r;
    *doc_out = doc;
}

static void on_done(const httpc_response *resp, void *arg)
{
    call *c = arg;
    bk_result r;
    char detail[BK_DETAIL_MAX];
    json_t *doc = NULL;

    legacy_parse_reply(c->kind, resp->error, resp->errmsg, resp->status, resp->body, resp->body_len,
                       &r, &doc, detail);
    c->cb(&r, c->arg);
    json_decref(doc);
    free(c);
}

static httpc_req *start(legacy_client *lc, const char *method, const char *url, const char *body,
                        size_t len, enum legacy_call_kind kind, bk_cb cb, void *arg)
{
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Accept: application/json", NULL};
    char err[256];
    call *c = malloc(sizeof(*c));
    if (!c) return NULL;
    c->cb = cb;
    c->arg = arg;
    c->kind = kind;
    httpc_opts o = {
        .method = method,
        .url = url,
        .body = body,
        .body_len = len,
        .headers = headers,
        .timeout_ms = lc->timeout_ms,
        .max_response_bytes = lc->max_reply,
    };
    httpc_req *r = httpc_start(lc->h, &o, on_done, c, err);
    if (!r) free(c);
    return r;
}

static bool http_submit(void *impl, const bk_job *j, bk_cb cb, void *arg)
{
    legacy_client *lc = impl;
    json_t *o = json_pack("{s:s, s:s#, s:s, s:s, s:i, s:s}", "eval_id", j->eval_id, "code", j->code, j->code_len,
                          "language", j->language, "engine", j->engine, "timeout", j->timeout, "priority",
                          j->priority_name);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    httpc_req *r = body ? start(lc, "POST", lc->tasks_url, body, strlen(body), LEGACY_CALL_SUBMIT, cb, arg) : NULL;
    free(body);
    json_decref(o);
    return r != NULL;
}

static bool http_health(void *impl, bk_cb cb, void *arg)
{
    legacy_client *lc = impl;
    return start(lc, "GET", lc->health_url, NULL, 0, LEGACY_CALL_HEALTH, cb, arg) != NULL;
}

static bool task_call(legacy_client *lc, const char *method, const char *eval_id, bk_cb cb, void *arg)
{
    char url[1024 + 160];
    snprintf(url, sizeof(url), "%s/%s", lc->tasks_url, eval_id);
    return start(lc, method, url, NULL, 0, LEGACY_CALL_TASK, cb, arg) != NULL;
}

static bool http_get_task(void *impl, const char *eval_id, bk_cb cb, void *arg)
{
    return task_call(impl, "GET", eval_id, cb, arg);
}

/* The protocol has no way to stop a running task: `terminate` changes
 * nothing, and a running task is a 409 as without it. */
static bool http_cancel_task(void *impl, const char *eval_id, bool terminate, bk_cb cb, void *arg)
{
    (void)terminate;
    return task_call(impl, "DELETE", eval_id, cb, arg);
}

static bool http_queue_status(void *impl, bk_cb cb, void *arg)
{
    legacy_client *lc = impl;
    return start(lc, "GET", lc->status_url, NULL, 0, LEGACY_CALL_TASK, cb, arg) != NULL;
}

static const backend_ops http_ops = {
    .name = "http",
    .error_code = "legacy_error",
    .timeout_code = "legacy_timeout",
    .can_terminate = false,
    .submit = http_submit,
    .get_task = http_get_task,
    .cancel_task = http_cancel_task,
    .queue_status = http_queue_status,
    .health = http_health,
    .destroy = legacy_client_free,
};

backend *legacy_http_new(httpc *h, const char *base_url, long timeout_ms, size_t max_reply_bytes)
{
    return backend_new(&http_ops, legacy_client_new(h, base_url, timeout_ms, max_reply_bytes));
}

