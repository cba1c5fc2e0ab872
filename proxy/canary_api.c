/* canary_api — GET /admin/canary (the canary as canary_view shows it) and
 * POST /admin/canary/{start,pause,resume,abort} (canary_act, by the admin
 * the token names).  The walk itself is canary.c. */
#include "canary_api.h"

#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <jansson.h>

#include "admin_auth.h"
#include "canary.h"
#include "pserver.h"
#include "reply.h"
#include "rollout.h"

static void on_done(int status, const char *code, const char *msg, int retry_after, void *arg)
{
    preq *r = arg;
    px_hold_in_flight(r, NOT_WAITING);
    if (status == 200) {
        json_t *o = json_pack("{s:b, s:s, s:o}", "ok", 1, "message", msg, "canary", canary_view(r->p->canary));
        px_finish_json(r, 200, o);
        json_decref(o);
    } else {
        px_finish_error(r, status, code, msg, retry_after);
    }
}

void canary_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/admin/canary") == 0) {
        if (cmd != EVHTTP_REQ_GET) {
            px_reply_method_not_allowed(p, req, RT_ADMIN, t0, "GET", "GET /admin/canary reads; POST /admin/canary/{start,pause,resume,abort} acts");
            return;
        }
        json_t *o = canary_view(p->canary);
        px_reply_json(p, req, RT_ADMIN, t0, 200, o);
        json_decref(o);
        return;
    }
    const char *action = path + strlen("/admin/canary/");
    static const char *const actions[] = {"start", "pause", "resume", "abort"};
    bool known = false;
    for (int i = 0; i < 4; i++) known |= strcmp(action, actions[i]) == 0;
    if (!known) {
        px_reply_error(p, req, RT_ADMIN, t0, 404, "not_found",
                       "canary actions: POST /admin/canary/start, /pause, /resume, /abort", 0);
        return;
    }
    if (cmd != EVHTTP_REQ_POST) {
        px_reply_method_not_allowed(p, req, RT_ADMIN, t0, "POST", "canary actions take POST");
        return;
    }
    if (!px_admin_authorized(p, req, RT_ADMIN, t0)) return;
    if (px_refuse_overload(p, req, RT_ADMIN, t0)) return;
    preq *r = px_req_new(p, req, RT_ADMIN, t0);
    if (!r) {
        px_reply_oom(p, req, RT_ADMIN, t0, NULL);
        return;
    }
    char by[128];
    rollout_actor(p, req, by);
    px_hold_in_flight(r, PATH_NEW);
    if (canary_act(p->canary, action, by, on_done, r) != 0) {
        px_hold_in_flight(r, NOT_WAITING);
        px_finish_error(r, 503, "redis_unavailable", "Redis is unreachable; the canary state is kept there. Retry shortly", 1);
    }
}
