/* list_api — GET of a Redis list of JSON entries (newest first), paged by
 * ?limit=N: the rollout history and the shadow mismatches. */
#ifndef TURNOUT_LIST_API_H
#define TURNOUT_LIST_API_H

#include "pmetrics.h"

typedef struct proxy proxy;
typedef struct json_t json_t;
struct evhttp_request;

typedef struct list_api {
    const char *key;     /* the Redis list */
    const char *field;   /* the reply's array field */
    long dflt, max;      /* ?limit default and bound */
    /* optional: adds to each entry / to the reply object */
    void (*decorate)(proxy *p, json_t *entry);
    void (*extra)(proxy *p, json_t *reply);
    /* optional: the list holds sensitive fields (admin_auth.h px_read_access):
     * without a token each entry goes through redact and the reply says
     * redact_note in "redacted" */
    void (*redact)(json_t *entry);
    const char *redact_note;
} list_api;

/* Answers the request (route "admin"); `spec` must be static. */
void list_api_get(proxy *p, struct evhttp_request *req, double t0, const list_api *spec);

#endif
