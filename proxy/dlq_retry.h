/* dlq_retry — re-publishing one DLQ entry (POST /api/dlq/{task_id}/retry). */
#ifndef TURNOUT_DLQ_RETRY_H
#define TURNOUT_DLQ_RETRY_H

#include "dlq_op.h"

/* Reads op's entry and re-publishes it; replies once (202, 404, 409, 503). */
void dlq_retry_start(dlq_op *op);

#endif
