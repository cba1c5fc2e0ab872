#include "evlookup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "evstatus.h"
#include "pserver.h"
#include "records.h"

typedef struct lookup {
    evlookup_cb cb;
    void *arg;
} lookup;

static void done(lookup *l, const char *status)
{
    l->cb(status, l->arg);
    free(l);
}

static void on_task(const bk_result *res, void *arg)
{
    done(arg, res->outcome == BK_OK ? bk_normalized_status(res->doc) : NULL);
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
    enum route_path path = records_path(record);
    if (path == PATH_UNKNOWN) path = PATH_LEGACY; /* a record of an older shape: where it most likely is */
    if (!bk_get_task(p->paths[path], eval_id, on_task, l)) done(l, NULL);
}
