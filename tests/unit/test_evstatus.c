/* The one status vocabulary (evstatus), legacy's mapping, and route records. */
#include <stdlib.h>

#include <jansson.h>

#include "evstatus.h"
#include "legacy_http.h"
#include "records.h"
#include "shadow.h"
#include "unit.h"

static const char *celery(const char *text)
{
    static char out[32];
    json_t *rec = json_loads(text, 0, NULL);
    const char *s = evstatus_from_celery(rec);
    snprintf(out, sizeof(out), "%s", s ? s : "(null)");
    json_decref(rec);
    return out;
}

static void test_celery_states(void)
{
    CHECK_STR(celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"completed\"}}"), "completed");
    CHECK_STR(celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"failed\"}}"), "failed");
    CHECK_STR(celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"timeout\"}}"), "timeout");
    CHECK_STR(celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"killed\"}}"), "cancelled");
    CHECK_STR(celery("{\"status\":\"SUCCESS\",\"result\":9}"), "completed"); /* a plain Celery task */
    CHECK_STR(celery("{\"status\":\"FAILURE\",\"result\":{\"exc_type\":\"X\"}}"), "failed");
    CHECK_STR(celery("{\"status\":\"REVOKED\"}"), "cancelled");
    CHECK_STR(celery("{\"status\":\"RETRY\"}"), "retrying");
    CHECK_STR(celery("{\"status\":\"STARTED\"}"), "running");
    CHECK_STR(celery("{\"status\":\"PROGRESS\"}"), "running");
    CHECK_STR(celery("{\"status\":\"PENDING\"}"), "(null)");
    CHECK_STR(celery("{}"), "(null)");
    CHECK(evstatus_from_celery(NULL) == NULL);
}

static void test_outcomes(void)
{
    CHECK_EQ_INT(evstatus_outcome("completed"), 0);
    CHECK_EQ_INT(evstatus_outcome("failed"), 1);
    CHECK_EQ_INT(evstatus_outcome("timeout"), 2);
    CHECK_EQ_INT(evstatus_outcome("cancelled"), 3);
    CHECK_EQ_INT(evstatus_outcome("running"), -1);
    CHECK_EQ_INT(evstatus_outcome("queued"), -1);
    CHECK_EQ_INT(evstatus_outcome(NULL), -1);
}

static void test_iso(void)
{
    /* python3 -c 'import calendar,datetime as d; print(calendar.timegm(d.datetime(2026,11,22,8,42,30).timetuple()))' */
    CHECK(fabs(evstatus_parse_iso("2026-11-22T08:42:30.022342") - 1795336950.022342) < 1e-5);
    CHECK(fabs(evstatus_parse_iso("2026-11-22T08:42:30Z") - 1795336950.0) < 1e-6);
    CHECK(fabs(evstatus_parse_iso("2026-11-22T08:42:30.5+00:00") - 1795336950.5) < 1e-6);
    CHECK(evstatus_parse_iso("2026-11-22T08:42:30+02:00") < 0); /* offsets other than UTC refused */
    CHECK(evstatus_parse_iso("2026-13-22T08:42:30") < 0);
    CHECK(evstatus_parse_iso("yesterday") < 0);
    CHECK(evstatus_parse_iso("") < 0);
    CHECK(evstatus_parse_iso(NULL) < 0);
}

static const char *legacy(const char *text)
{
    static char out[32];
    json_t *t = json_loads(text, 0, NULL);
    const char *s = bk_normalized_status(t);
    snprintf(out, sizeof(out), "%s", s ? s : "(null)");
    json_decref(t);
    return out;
}

static void test_legacy_states(void)
{
    CHECK_STR(legacy("{\"status\":\"queued\"}"), "queued");
    CHECK_STR(legacy("{\"status\":\"processing\"}"), "running");
    CHECK_STR(legacy("{\"status\":\"completed\",\"outcome\":\"completed\"}"), "completed");
    CHECK_STR(legacy("{\"status\":\"failed\",\"outcome\":\"timeout\"}"), "timeout");
    CHECK_STR(legacy("{\"status\":\"failed\",\"outcome\":\"killed\"}"), "cancelled");
    CHECK_STR(legacy("{\"status\":\"failed\",\"outcome\":\"failed\"}"), "failed");
    CHECK_STR(legacy("{\"status\":\"failed\"}"), "failed");
    CHECK_STR(legacy("{\"status\":\"cancelled\"}"), "cancelled");
    CHECK_STR(legacy("{\"status\":\"exploded\"}"), "(null)");
    CHECK_STR(legacy("[]"), "(null)");
}

static void test_route_records(void)
{
    submission sub = {0};
    snprintf(sub.eval_id, sizeof(sub.eval_id), "ev-1");
    sub.priority = 6;
    sub.priority_name = "low";
    route_decision dec = {PATH_LEGACY, REASON_FALLBACK, 4242};
    char *text = records_build(&sub, PATH_LEGACY, &dec, 1795336950.25);
    CHECK(text != NULL);
    json_t *rec = records_parse(text, strlen(text));
    CHECK(rec != NULL);
    CHECK_EQ_INT(records_path(rec), PATH_LEGACY);
    CHECK_STR(json_string_value(json_object_get(rec, "eval_id")), "ev-1");
    CHECK_STR(json_string_value(json_object_get(rec, "reason")), "fallback");
    CHECK_EQ_INT(json_integer_value(json_object_get(rec, "priority")), 6);
    CHECK_EQ_INT(json_integer_value(json_object_get(rec, "bucket")), 4242);
    CHECK(fabs(json_number_value(json_object_get(rec, "submitted_at")) - 1795336950.25) < 1e-6);
    json_decref(rec);
    free(text);
    dec = (route_decision){PATH_NEW, REASON_FORCED, -1};
    text = records_build(&sub, PATH_NEW, &dec, 1.0);
    rec = records_parse(text, strlen(text));
    CHECK_EQ_INT(records_path(rec), PATH_NEW);
    CHECK(json_is_null(json_object_get(rec, "bucket")));
    json_decref(rec);
    free(text);
    CHECK(records_parse("not json", 8) == NULL);
    CHECK(records_parse("{\"eval_id\":\"x\"}", 15) == NULL); /* no path: not a record */
    CHECK_EQ_INT(records_path(NULL), PATH_UNKNOWN);                  /* no record: never a label */
    json_t *odd = json_pack("{s:s}", "path", "elsewhere");
    CHECK_EQ_INT(records_path(odd), PATH_UNKNOWN);
    json_decref(odd);
    char key[ROUTE_KEY_MAX];
    records_key("ev-1", key);
    CHECK_STR(key, "turnout:route:ev-1");
}

static const char *cmp(const char *l, const char *n, const char *want_differs)
{
    static char out[16];
    json_t *a = json_loads(l, 0, NULL), *b = json_loads(n, 0, NULL), *d = json_array();
    snprintf(out, sizeof(out), "%s", shadow_compare(a, b, d));
    char *ds = json_dumps(d, JSON_COMPACT);
    if (want_differs) CHECK_STR(ds, want_differs);
    free(ds);
    json_decref(a);
    json_decref(b);
    json_decref(d);
    return out;
}

static void test_shadow_compare(void)
{
    const char *ok = "{\"status\":\"completed\",\"output\":\"a\\nb\\n\",\"exit_code\":0}";
    CHECK_STR(cmp(ok, ok, "[]"), "match");
    /* trailing blanks on lines, at the end, and CRLF are not differences */
    CHECK_STR(cmp(ok, "{\"status\":\"completed\",\"output\":\"a  \\r\\nb\\t\\n\\n\\n\",\"exit_code\":0}", "[]"),
              "match");
    /* leading blanks are */
    CHECK_STR(cmp(ok, "{\"status\":\"completed\",\"output\":\" a\\nb\",\"exit_code\":0}", "[\"output\"]"), "mismatch");
    CHECK_STR(cmp(ok, "{\"status\":\"failed\",\"output\":\"a\\nb\",\"exit_code\":1}", "[\"status\",\"exit_code\"]"),
              "mismatch");
    CHECK_STR(cmp(ok, "{\"status\":\"completed\",\"output\":\"a\\nb\"}", "[\"exit_code\"]"), "mismatch");
    /* no program verdict on a side: not comparable */
    CHECK_STR(cmp(ok, "{\"status\":\"failed\"}", NULL), "error");
    CHECK_STR(cmp("{\"status\":\"cancelled\",\"output\":\"\",\"exit_code\":0}", ok, NULL), "error");
    CHECK_STR(cmp("{}", ok, NULL), "error");
}

static ev_class cls_celery(const char *text)
{
    json_t *rec = json_loads(text, 0, NULL);
    ev_class c = evclass_celery(rec);
    json_decref(rec);
    return c;
}

static ev_class cls_legacy(const char *text)
{
    json_t *t = json_loads(text, 0, NULL);
    ev_class c = evclass_legacy(t);
    json_decref(t);
    return c;
}

#define CHECK_CLASS(c, s, v)                                                                   \
    do {                                                                                       \
        ev_class c_ = (c);                                                                     \
        CHECK_EQ_INT(c_.sys, (s));                                                             \
        CHECK_EQ_INT(c_.verdict, (v));                                                         \
    } while (0)

/* The path's outcome apart from the program's verdict. */
static void test_classes(void)
{
    /* programs that fail are verdicts of a healthy path */
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"completed\"}}"), EV_SYS_OK, VERDICT_COMPLETED);
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"failed\"}}"), EV_SYS_OK, VERDICT_FAILED);
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"timeout\"}}"), EV_SYS_OK, VERDICT_TIMEOUT);
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"killed\"}}"), EV_SYS_OK, VERDICT_KILLED);
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":42}"), EV_SYS_OK, VERDICT_COMPLETED);
    /* the worker's hard limit: the executor did not answer */
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"timeout\",\"system_error\":\"hard_time_limit\"}}"),
                EV_SYS_EXECUTOR, EV_VERDICT_NONE);
    CHECK_CLASS(cls_celery("{\"status\":\"SUCCESS\",\"result\":{\"status\":\"error\"}}"), EV_SYS_EXECUTOR, EV_VERDICT_NONE);
    /* dead-lettered, by exception */
    CHECK_CLASS(cls_celery("{\"status\":\"FAILURE\",\"result\":{\"exc_type\":\"ExecutorUnavailable\"}}"), EV_SYS_EXECUTOR,
                EV_VERDICT_NONE);
    CHECK_CLASS(cls_celery("{\"status\":\"FAILURE\",\"result\":{\"exc_type\":\"RequestTooLarge\"}}"), EV_SYS_REJECTED,
                EV_VERDICT_NONE);
    CHECK_CLASS(cls_celery("{\"status\":\"FAILURE\",\"result\":{\"exc_type\":\"GivenBack\"}}"), EV_SYS_WORKER, EV_VERDICT_NONE);
    CHECK_CLASS(cls_celery("{\"status\":\"FAILURE\"}"), EV_SYS_WORKER, EV_VERDICT_NONE);
    /* revoked: a cancel is the user's; expired in the queue is the path's */
    CHECK_CLASS(cls_celery("{\"status\":\"REVOKED\",\"result\":{\"exc_message\":[\"revoked\"]}}"), EV_SYS_OK, VERDICT_KILLED);
    CHECK_CLASS(cls_celery("{\"status\":\"REVOKED\",\"result\":{\"exc_message\":[\"expired\"]}}"), EV_SYS_PATH_TIMEOUT,
                EV_VERDICT_NONE);
    /* the legacy protocol */
    CHECK_CLASS(cls_legacy("{\"status\":\"completed\"}"), EV_SYS_OK, VERDICT_COMPLETED);
    CHECK_CLASS(cls_legacy("{\"status\":\"failed\",\"outcome\":\"failed\"}"), EV_SYS_OK, VERDICT_FAILED);
    CHECK_CLASS(cls_legacy("{\"status\":\"failed\"}"), EV_SYS_OK, VERDICT_FAILED);
    CHECK_CLASS(cls_legacy("{\"status\":\"failed\",\"outcome\":\"timeout\"}"), EV_SYS_OK, VERDICT_TIMEOUT);
    CHECK_CLASS(cls_legacy("{\"status\":\"failed\",\"outcome\":\"error\"}"), EV_SYS_EXECUTOR, EV_VERDICT_NONE);
    CHECK_CLASS(cls_legacy("{\"status\":\"failed\",\"outcome\":\"executor_timeout\"}"), EV_SYS_EXECUTOR, EV_VERDICT_NONE);
    CHECK_CLASS(cls_legacy("{\"status\":\"cancelled\"}"), EV_SYS_OK, VERDICT_KILLED);
    CHECK_CLASS(cls_legacy("{\"status\":\"weird\"}"), EV_SYS_UNREADABLE, EV_VERDICT_NONE);
    /* waited past its own timeout before it ran: the path's doing */
    ev_class c = {EV_SYS_OK, VERDICT_COMPLETED};
    evclass_waited(&c, 1000, 1100, 5, 30); /* 95 s queued, timeout 30 */
    CHECK_CLASS(c, EV_SYS_PATH_TIMEOUT, VERDICT_COMPLETED);
    c = (ev_class){EV_SYS_OK, VERDICT_TIMEOUT};
    evclass_waited(&c, 1000, 1040, 30, 30); /* ran its 30 s after 10 s queued: the program's */
    CHECK_CLASS(c, EV_SYS_OK, VERDICT_TIMEOUT);
    c = (ev_class){EV_SYS_OK, VERDICT_COMPLETED};
    evclass_waited(&c, 1000, 1100, -1, 30); /* run time unknown: nothing said */
    CHECK_CLASS(c, EV_SYS_OK, VERDICT_COMPLETED);
    CHECK_EQ_INT(evclass_pathout((ev_class){EV_SYS_OK, VERDICT_FAILED}), EV_PATH_OK);
    CHECK_EQ_INT(evclass_pathout((ev_class){EV_SYS_LOST, EV_VERDICT_NONE}), EV_PATH_LOST);
    CHECK_EQ_INT(evclass_pathout((ev_class){EV_SYS_PATH_TIMEOUT, VERDICT_COMPLETED}), EV_PATH_TIMEOUT);
    CHECK_EQ_INT(evclass_pathout((ev_class){EV_SYS_EXECUTOR, EV_VERDICT_NONE}), EV_PATH_SYSTEM_ERROR);
    json_t *doc = json_loads("{\"status\":\"SUCCESS\",\"result\":{\"duration_s\":1.5}}", 0, NULL);
    CHECK(evclass_run_seconds(doc, 1) == 1.5);
    CHECK(evclass_run_seconds(doc, 0) == -1);
    json_decref(doc);
}

int main(void)
{
    RUN(test_classes);
    RUN(test_shadow_compare);
    RUN(test_celery_states);
    RUN(test_outcomes);
    RUN(test_iso);
    RUN(test_legacy_states);
    RUN(test_route_records);
    UNIT_END();
}
