/* Decoding messages as Python Celery 5.2 writes them (WIRE.md §A), and
 * refusing malformed ones with a reason; result records (WIRE.md §C). */
#include <stdlib.h>

#include <jansson.h>

#include "celery.h"
#include "results.h"
#include "unit.h"

/* Captured from app.send_task('tasks.add', args=(2,3), kwargs={'z':1}). */
static const char python_msg[] =
    "{\"body\": \"W1syLCAzXSwgeyJ6IjogMX0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d\","
    " \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\","
    " \"headers\": {\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": \"49754562-b9ce-4117-a7b9-b880aef9d424\","
    " \"shadow\": null, \"eta\": \"2026-11-22T08:42:16.316431+00:00\", \"expires\": null, \"group\": null, \"group_index\": null, \"retries\": 2,"
    " \"timelimit\": [60, 30], \"root_id\": \"49754562-b9ce-4117-a7b9-b880aef9d424\", \"parent_id\": null,"
    " \"argsrepr\": \"(2, 3)\", \"kwargsrepr\": \"{'z': 1}\", \"origin\": \"gen9697@vm\", \"ignore_result\": false},"
    " \"properties\": {\"correlation_id\": \"49754562-b9ce-4117-a7b9-b880aef9d424\","
    " \"reply_to\": \"caca80df-5331-3560-b162-015b399dceab\", \"delivery_mode\": 2,"
    " \"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 5,"
    " \"body_encoding\": \"base64\", \"delivery_tag\": \"74d7f6a4-9e38-46a2-bf13-a5bcf3aa3ab1\"}}";

static void test_python_message(void)
{
    celery_message m;
    char err[256];
    CHECK_EQ_INT(celery_decode(python_msg, strlen(python_msg), &m, err), 0);
    CHECK_STR(m.task_name, "tasks.add");
    CHECK_STR(m.task_id, "49754562-b9ce-4117-a7b9-b880aef9d424");
    CHECK_STR(m.delivery_tag, "74d7f6a4-9e38-46a2-bf13-a5bcf3aa3ab1");
    CHECK_STR(m.routing_key, "celery");
    CHECK_STR(m.exchange, "");
    CHECK_EQ_INT(m.retries, 2);
    CHECK_EQ_INT(m.priority, 5);
    CHECK(m.hard_limit_s == 60 && m.soft_limit_s == 30);
    CHECK_EQ_INT(json_integer_value(json_array_get(m.args, 1)), 3);
    CHECK_EQ_INT(json_integer_value(json_object_get(m.kwargs, "z")), 1);
    CHECK(celery_parse_iso8601(m.eta) > 1795336936.3 && celery_parse_iso8601(m.eta) < 1795336936.4);

    size_t len = 0;
    json_t *seven = json_integer(7);
    char *again = celery_reencode(&m, 3, "2030-01-01T00:00:00+00:00", "x_first", seven, &len);
    json_decref(seven);
    CHECK(again != NULL);
    celery_message m2;
    CHECK_EQ_INT(celery_decode(again, len, &m2, err), 0);
    CHECK_EQ_INT(m2.retries, 3);
    CHECK_STR(m2.eta, "2030-01-01T00:00:00+00:00");
    CHECK(strcmp(m2.delivery_tag, m.delivery_tag) != 0); /* a new tag: a new delivery */
    CHECK_STR(m2.task_id, m.task_id);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(m2.env, "headers"), "x_first")), 7);
    celery_message_free(&m2);
    free(again);
    celery_message_free(&m);
}

static void test_malformed(void)
{
    static const char *const bad[] = {
        "not json",
        "[1,2,3]",
        "{\"body\":\"W10=\"}",
        "{\"body\":\"W10=\",\"headers\":{\"task\":\"t\",\"id\":\"i\"},\"properties\":{\"body_encoding\":\"base64\"}}",
        "{\"body\":\"!!!!\",\"headers\":{\"task\":\"t\",\"id\":\"i\"},\"properties\":{\"body_encoding\":\"base64\",\"delivery_tag\":\"d\"}}",
        /* [[1], {}] has 2 elements: Celery itself dies on it (WIRE.md pitfall 1) */
        "{\"body\":\"W1sxXSwge31d\",\"headers\":{\"task\":\"t\",\"id\":\"i\"},\"properties\":{\"body_encoding\":\"base64\",\"delivery_tag\":\"d\"}}",
        "{\"body\":\"[[], {}, {}]\",\"content-type\":\"application/x-python-serialize\",\"headers\":{\"task\":\"t\",\"id\":\"i\"},\"properties\":{\"delivery_tag\":\"d\"}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        celery_message m;
        char err[256] = "";
        CHECK_EQ_INT(celery_decode(bad[i], strlen(bad[i]), &m, err), -1);
        CHECK(err[0] != '\0');
        CHECK(m.env == NULL && m.body == NULL);
    }
    /* a plain JSON body without body_encoding is accepted, as kombu does */
    const char *plain = "{\"body\":\"[[\\\"e\\\", \\\"c\\\"], {}, {}]\",\"headers\":{\"task\":\"t\",\"id\":\"i\"},\"properties\":{\"delivery_tag\":\"d\"}}";
    celery_message m;
    char err[256];
    CHECK_EQ_INT(celery_decode(plain, strlen(plain), &m, err), 0);
    CHECK_STR(json_string_value(json_array_get(m.args, 0)), "e");
    celery_message_free(&m);
}

static void test_iso8601(void)
{
    CHECK(celery_parse_iso8601("1970-01-01T00:00:10Z") == 10);
    CHECK(celery_parse_iso8601("1970-01-01T00:00:10") == 10);
    CHECK(celery_parse_iso8601("1970-01-01T01:00:10+01:00") == 10);
    CHECK(celery_parse_iso8601("1970-01-01T00:00:10-00:30") == 1810);
    CHECK(celery_parse_iso8601("yesterday") == -1);
}

static void test_records(void)
{
    char *r = results_record("tid-1", "SUCCESS", json_pack("{s:s}", "status", "completed"), NULL);
    json_t *j = json_loads(r, 0, NULL);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "SUCCESS");
    CHECK_STR(json_string_value(json_object_get(j, "task_id")), "tid-1");
    CHECK(json_is_null(json_object_get(j, "traceback")));
    CHECK(json_is_array(json_object_get(j, "children")));
    CHECK(json_is_string(json_object_get(j, "date_done")));
    json_decref(j);
    free(r);
    r = results_record("tid-2", "RETRY", results_exception("ExecutorBusy", "busy", "turnout"), NULL);
    j = json_loads(r, 0, NULL);
    CHECK(json_is_null(json_object_get(j, "date_done"))); /* not a ready state */
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "result"), "exc_type")), "ExecutorBusy");
    CHECK_STR(json_string_value(json_array_get(json_object_get(json_object_get(j, "result"), "exc_message"), 0)), "busy");
    json_decref(j);
    free(r);
    CHECK(results_is_terminal("REVOKED"));
    CHECK(!results_is_terminal("STARTED"));
    CHECK(!results_is_terminal(NULL));
}

int main(void)
{
    RUN(test_python_message);
    RUN(test_malformed);
    RUN(test_iso8601);
    RUN(test_records);
    UNIT_END();
}
