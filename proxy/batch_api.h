/* batch_api — POST /api/eval-batch {evaluations: [...]}: up to
 * BATCH_MAX_ITEMS submissions, each validated and routed on its own
 * (priority "batch" = 9 unless the item says otherwise), one result per
 * item in the order given. */
#ifndef TURNOUT_BATCH_API_H
#define TURNOUT_BATCH_API_H

typedef struct proxy proxy;
struct evhttp_request;

#define BATCH_MAX_ITEMS 100

void batch_api_handle(proxy *p, struct evhttp_request *req, double t0);

#endif
