#include "evlookup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "evstatus.h"
#include "keys.h"
#include "pserver.h"
#include "reply.h"
#include "rbatch.h"
#include "records.h"
#include "results.h"
#include "submission.h"

typedef struct lookup {
    evlookup_cb cb;
    void *arg;
} lookup;

static void done(lookup *l, const char *status)
{
    l->cb(status, l->arg);
    free(l);
}

static void on_legacy(const bk_result *res, void *arg)
{
    done(arg, res->outcome == BK_OK ? bk_normalized_status(res->doc) : NULL);
}

static void on_new(rbatch *b, void *arg)
{
    const rbatch_reply *res = rbatch_at(b, 0), *running = rbatch_at(b, 1), *sched = rbatch_at(b, 2);
    const char *status = NULL;
    if (!rbatch_error(b) && res && running && sched && !rbatch_redis_error(res) && !rbatch_redis_error(running) &&
        !rbatch_redis_error(sched)) {
        size_t len;
        const char *text = rbatch_str(res, &len);
        json_t *result = text ? json_loadb(text, len, JSON_ALLOW_NUL, NULL) : NULL;
        status = evstatus_from_celery(result);
        /* the words can point into the record: keep the vocabulary's own */
        int k = status ? evstatus_outcome(status) : -1;
        status = k >= 0 ? pm_outcome_names[k] : status && strcmp(status, "running") == 0 ? "running"
                 : status && strcmp(status, "retrying") == 0                            ? "retrying"
                                                                                        : NULL;
        json_decref(result);
        if (!status || strcmp(status, "queued") == 0)
            status = running->type == REDIS_REPLY_STRING ? "running"
                     : sched->type == REDIS_REPLY_STRING ? "retrying"
                                                         : "queued";
    }
    rbatch_free(b);
    done(arg, status);
}

void evlookup_status(proxy *p, const char *eval_id, json_t *record, evlookup_cb cb, void *arg)
{
    const char *kept = json_string_value(json_object_get(record, "outcome"));
    if (kept && evstatus_outcome(kept) >= 0) {
        cb(kept, arg);
        return;
    }
    lookup *l = malloc(sizeof(*l));
    if (!l) {
        cb(NULL, arg);
        return;
    }
    l->cb = cb;
    l->arg = arg;
    if (records_path(record) != PATH_NEW) {
        if (!bk_get_task(p->paths[PATH_LEGACY], eval_id, on_legacy, l)) done(l, NULL);
        return;
    }
    rbatch *b = rbatch_new(on_new, l);
    if (!b) {
        done(l, NULL);
        return;
    }
    char tid[SUB_MAX_EVAL_ID + 8], result_key[SUB_MAX_EVAL_ID + 64], running_key[SUB_MAX_EVAL_ID + 64];
    snprintf(tid, sizeof(tid), "celery-%s", eval_id);
    snprintf(result_key, sizeof(result_key), RESULTS_KEY_PREFIX "%s", tid);
    snprintf(running_key, sizeof(running_key), KEY_RUNNING_PREFIX "%s", tid);
    const char *a0[] = {"GET", result_key}, *a1[] = {"GET", running_key}, *a2[] = {"HGET", KEY_SCHEDULE_IDS, tid};
    size_t l0[] = {3, strlen(result_key)}, l1[] = {3, strlen(running_key)},
           l2[] = {4, sizeof(KEY_SCHEDULE_IDS) - 1, strlen(tid)};
    if (rbatch_add(b, px_results_rc(p), 2, a0, l0) == 0 && rbatch_add(b, p->broker, 2, a1, l1) == 1)
        (void)rbatch_add(b, p->broker, 3, a2, l2);
    rbatch_run(b);
}
