#include "list_api.h"

#include <stdio.h>
#include <stdlib.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "admin_auth.h"
#include "pserver.h"
#include "reply.h"

typedef struct list_call {
    preq *r;
    const list_api *spec;
    bool redact;
} list_call;

static void on_list(struct redisReply *reply, const char *err, void *arg)
{
    list_call *lc = arg;
    preq *r = lc->r;
    const list_api *spec = lc->spec;
    bool redact = lc->redact;
    free(lc);
    px_hold_in_flight(r, NOT_WAITING);
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        px_count_upstream_error(r->p, PATH_NEW, UP_REDIS_ERROR);
        px_finish_error(r, 503, "redis_unavailable", err ? err : "Redis did not answer; retry shortly", 1);
        return;
    }
    json_t *entries = json_array();
    for (size_t i = 0; entries && i < reply->elements; i++) {
        redisReply *e = reply->element[i];
        json_t *j = e->type == REDIS_REPLY_STRING ? json_loadb(e->str, e->len, 0, NULL) : NULL;
        if (!j) continue;
        if (spec->decorate) spec->decorate(r->p, j);
        if (redact) spec->redact(j);
        json_array_append_new(entries, j);
    }
    json_t *o = json_object();
    if (o) {
        json_object_set_new(o, spec->field, entries ? entries : json_array());
        if (spec->extra) spec->extra(r->p, o);
        if (redact) json_object_set_new(o, "redacted", json_string(spec->redact_note));
    }
    px_finish_json(r, 200, o);
    json_decref(o);
}

void list_api_get(proxy *p, struct evhttp_request *req, double t0, const list_api *spec)
{
    char msg[160];
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        snprintf(msg, sizeof(msg), "use GET with ?limit=1..%ld (default %ld)", spec->max, spec->dflt);
        px_reply_method_not_allowed(p, req, RT_ADMIN, t0, "GET", msg);
        return;
    }
    long limit = spec->dflt;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    if (q && *q) {
        struct evkeyvalq kv = {0};
        const char *v = evhttp_parse_query_str(q, &kv) == 0 ? evhttp_find_header(&kv, "limit") : NULL;
        char *end = NULL;
        if (v) limit = strtol(v, &end, 10);
        bool bad = v && (!*v || *end || limit < 1 || limit > spec->max);
        evhttp_clear_headers(&kv);
        if (bad) {
            px_count_reject(p, RJ_INVALID_FIELD);
            snprintf(msg, sizeof(msg), "limit: must be an integer 1..%ld (default %ld)", spec->max, spec->dflt);
            px_reply_error(p, req, RT_ADMIN, t0, 422, "invalid_parameter", msg, 0);
            return;
        }
    }
    int access = spec->redact ? px_read_access(p, req, RT_ADMIN, t0) : 1;
    if (access < 0) return;
    list_call *lc = malloc(sizeof(*lc));
    preq *r = lc ? px_req_new(p, req, RT_ADMIN, t0) : NULL;
    if (!r) {
        free(lc);
        px_reply_oom(p, req, RT_ADMIN, t0, NULL);
        return;
    }
    *lc = (list_call){r, spec, access == 0};
    char stop[24];
    snprintf(stop, sizeof(stop), "%ld", limit - 1);
    const char *argv[] = {"LRANGE", spec->key, "0", stop};
    size_t lens[] = {6, strlen(spec->key), 1, strlen(stop)};
    px_hold_in_flight(r, PATH_NEW);
    if (rclient_command(p->broker, on_list, lc, 4, argv, lens) != 0) {
        free(lc);
        px_hold_in_flight(r, NOT_WAITING);
        px_count_upstream_error(p, PATH_NEW, UP_REDIS_DOWN);
        px_finish_error(r, 503, "redis_unavailable", "Redis is unreachable; the list is kept there. Retry shortly", 1);
    }
}
