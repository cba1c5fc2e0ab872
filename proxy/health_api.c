/* health_api — the probes: /healthz (the process answers), /readyz (Redis
 * and the legacy backend answer), /metrics, and the built-in page. */
#include "health_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "conns.h"
#include "backend.h"
#include "metrics.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"

/* /readyz names each path by what it depends on. */
static const char *const ready_names[PATH_NONE] = {[PATH_LEGACY] = "legacy", [PATH_NEW] = "redis"};

typedef struct ready {
    preq *r;
    int checks_left;
    bool up[PATH_NONE];
} ready;

typedef struct ready_check {
    ready *rd;
    enum route_path path;
} ready_check;

static void readyz_done(ready *rd)
{
    if (--rd->checks_left > 0) return;
    bool ok = true;
    for (int i = 0; i < PATH_NONE; i++) ok = ok && rd->up[i];
    json_t *o = json_object(), *down = json_array();
    json_object_set_new(o, "status", json_string(ok ? "ready" : "not_ready"));
    for (int i = PATH_NONE - 1; i >= 0; i--) {
        json_object_set_new(o, ready_names[i], json_string(rd->up[i] ? "up" : "down"));
        if (!rd->up[i]) json_array_append_new(down, json_string(ready_names[i]));
    }
    if (!ok) json_object_set(o, "down", down);
    json_decref(down);
    px_finish_json(rd->r, ok ? 200 : 503, o);
    json_decref(o);
    free(rd);
}

static void on_ready(const bk_result *res, void *arg)
{
    ready_check *c = arg;
    c->rd->up[c->path] = res->outcome == BK_OK;
    ready *rd = c->rd;
    free(c);
    readyz_done(rd);
}

void health_api_readyz(proxy *p, struct evhttp_request *req, double t0)
{
    ready *rd = calloc(1, sizeof(*rd));
    preq *r = rd ? px_req_new(p, req, RT_PROBE, t0) : NULL;
    if (!r) {
        free(rd);
        px_reply_error(p, req, RT_PROBE, t0, 503, "out_of_memory", "the proxy is short of memory", 1);
        return;
    }
    rd->r = r;
    rd->checks_left = PATH_NONE + 1; /* each path + this function's own hold */
    for (int i = 0; i < PATH_NONE; i++) {
        ready_check *c = malloc(sizeof(*c));
        if (c) *c = (ready_check){rd, (enum route_path)i};
        if (!c || !bk_health(p->paths[i], on_ready, c)) {
            free(c);
            rd->checks_left--;
        }
    }
    readyz_done(rd);
}

void health_api_metrics(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    if (metrics_render(p->m.reg, out) != 0) {
        px_reply_error(p, req, RT_PROBE, t0, 503, "out_of_memory", "could not render metrics", 1);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    conns_reply_out(p->conns, req);
    evhttp_send_reply(req, 200, "OK", NULL);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

/* ---------- the built-in page ---------- */

extern const unsigned char dashboard_page[]; /* build/gen/dashboard_page.c */
extern const size_t dashboard_page_len;

void health_api_dashboard(proxy *p, struct evhttp_request *req, double t0)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET && evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        px_reply_method_not_allowed(p, req, RT_PROBE, t0, "GET", "use GET /dashboard");
        return;
    }
    evhttp_add_header(out, "Content-Type", "text/html; charset=utf-8");
    evhttp_add_header(out, "Cache-Control", "no-cache");
    /* everything is in the page itself: nothing else may load; and no other
     * page may frame it (its controls must not be clicked through a decoy) */
    evhttp_add_header(out, "Content-Security-Policy",
                      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                      "img-src 'self' data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'");
    evhttp_add_header(out, "X-Frame-Options", "DENY");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(out, "Referrer-Policy", "no-referrer");
    evbuffer_add_reference(evhttp_request_get_output_buffer(req), dashboard_page, dashboard_page_len, NULL, NULL);
    conns_reply_out(p->conns, req);
    evhttp_send_reply(req, 200, "OK", NULL);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

void health_api_healthz(proxy *p, struct evhttp_request *req, double t0)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    conns_reply_out(p->conns, req);
    util_reply_json(req, 200, ok, sizeof(ok) - 1);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

