/* Pure parts of the admin, DLQ and cancel endpoints (issue 3): bearer
 * parsing, the constant-time token compare, DLQ paging and path parsing,
 * cancel path/terminate parsing, the pidbox revoke envelope, and the EVAL
 * argv of the shared "write unless terminal" script. */
#include "admin_auth.h"
#include "cancel_api.h"
#include "dlq_api.h"
#include "results.h"
#include "unit.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

static void test_bearer(void)
{
    const char *t;
    size_t n;
    CHECK(admin_auth_bearer("Bearer abc", &t, &n));
    CHECK_EQ_INT(n, 3);
    CHECK(strncmp(t, "abc", 3) == 0);
    CHECK(admin_auth_bearer("bearer  s3cr.et-_~+/=  ", &t, &n));
    CHECK_EQ_INT(n, 13);
    CHECK(strncmp(t, "s3cr.et-_~+/=", 13) == 0);
    CHECK(admin_auth_bearer("  BEARER\tx", &t, &n));
    CHECK_EQ_INT(n, 1);
    CHECK(!admin_auth_bearer(NULL, &t, &n));
    CHECK(!admin_auth_bearer("", &t, &n));
    CHECK(!admin_auth_bearer("Bearer", &t, &n));
    CHECK(!admin_auth_bearer("Bearer   ", &t, &n));
    CHECK(!admin_auth_bearer("Bearerabc", &t, &n));
    CHECK(!admin_auth_bearer("Basic dXNlcjpwYXNz", &t, &n));
    CHECK(!admin_auth_bearer("Bearer a b", &t, &n));
    CHECK(!admin_auth_bearer("Token abc", &t, &n));
}

static void test_token_equal(void)
{
    CHECK(admin_auth_token_equal("secret", 6, "secret", 6));
    CHECK(!admin_auth_token_equal("secret", 6, "secreT", 6));
    CHECK(!admin_auth_token_equal("secret", 6, "secret2", 7));
    CHECK(!admin_auth_token_equal("secret", 6, "secre", 5));
    CHECK(!admin_auth_token_equal("", 0, "x", 1));
    CHECK(admin_auth_token_equal("", 0, "", 0));
    /* only the given length counts */
    CHECK(admin_auth_token_equal("secretXYZ", 6, "secret", 6));
}

static void test_dlq_query(void)
{
    dlq_query q;
    char msg[256];
    CHECK_EQ_INT(dlq_api_parse_query(NULL, &q, msg), 0);
    CHECK_EQ_INT(q.limit, DLQ_LIMIT_DEFAULT);
    CHECK_EQ_INT(q.offset, 0);
    CHECK(!q.has_eval_id);
    CHECK_EQ_INT(dlq_api_parse_query("limit=10&offset=20&other=x", &q, msg), 0);
    CHECK_EQ_INT(q.limit, 10);
    CHECK_EQ_INT(q.offset, 20);
    CHECK_EQ_INT(dlq_api_parse_query("limit=500", &q, msg), 0);
    CHECK_EQ_INT(q.limit, 500);
    CHECK_EQ_INT(dlq_api_parse_query("eval_id=e1.x:y-z_", &q, msg), 0);
    CHECK(q.has_eval_id);
    CHECK_STR(q.eval_id, "e1.x:y-z_");

    CHECK_EQ_INT(dlq_api_parse_query("limit=0", &q, msg), -1);
    CHECK_CONTAINS(msg, "limit");
    CHECK_EQ_INT(dlq_api_parse_query("limit=501", &q, msg), -1);
    CHECK_CONTAINS(msg, "limit");
    CHECK_EQ_INT(dlq_api_parse_query("limit=abc", &q, msg), -1);
    CHECK_CONTAINS(msg, "limit");
    CHECK_EQ_INT(dlq_api_parse_query("limit=", &q, msg), -1);
    CHECK_EQ_INT(dlq_api_parse_query("limit=5x", &q, msg), -1);
    CHECK_EQ_INT(dlq_api_parse_query("offset=-1", &q, msg), -1);
    CHECK_CONTAINS(msg, "offset");
    CHECK_EQ_INT(dlq_api_parse_query("offset=99999999999999999999", &q, msg), -1);
    CHECK_CONTAINS(msg, "offset");
    CHECK_EQ_INT(dlq_api_parse_query("eval_id=a%20b", &q, msg), -1);
    CHECK_CONTAINS(msg, "eval_id");
    CHECK_EQ_INT(dlq_api_parse_query("eval_id=", &q, msg), -1);
    char longq[200] = "eval_id=";
    memset(longq + 8, 'a', 129);
    longq[8 + 129] = '\0';
    CHECK_EQ_INT(dlq_api_parse_query(longq, &q, msg), -1);
    longq[8 + 128] = '\0';
    CHECK_EQ_INT(dlq_api_parse_query(longq, &q, msg), 0);
}

static void test_dlq_target(void)
{
    char tid[DLQ_TASK_ID_MAX + 1];
    size_t n = 0;
    CHECK_EQ_INT(dlq_api_target("/api/dlq/list", tid, &n), DLQ_T_LIST);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/stats", tid, &n), DLQ_T_STATS);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/celery-e1", tid, &n), DLQ_T_ENTRY);
    CHECK_EQ_INT(n, 9);
    CHECK(strcmp(tid, "celery-e1") == 0);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/celery-e1/retry", tid, &n), DLQ_T_RETRY);
    CHECK_EQ_INT(n, 9);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/celery-e1/other", tid, &n), DLQ_T_NONE);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq//retry", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/other", tid, &n), DLQ_T_NONE);
    /* the id is percent-decoded from one segment: spaces, '/', '%', '+' and
     * non-ASCII text are ids like any other */
    CHECK_EQ_INT(dlq_api_target("/api/dlq/bad%20id", tid, &n), DLQ_T_ENTRY);
    CHECK(strcmp(tid, "bad id") == 0);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%2Fb%25c+d/retry", tid, &n), DLQ_T_RETRY);
    CHECK(strcmp(tid, "a/b%c+d") == 0 && n == 7);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/caf%C3%A9", tid, &n), DLQ_T_ENTRY);
    CHECK(strcmp(tid, "caf\xc3\xa9") == 0);
    /* outside the rule: bad escapes, control characters, invalid UTF-8, too long */
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%2", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%zz", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%0Ab", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%00b", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%7F", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%C2%85", tid, &n), DLQ_T_BAD_ID); /* C1 control */
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%FF", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/a%C3", tid, &n), DLQ_T_BAD_ID);
    CHECK_EQ_INT(dlq_api_target("/api/dlq/%ED%A0%80", tid, &n), DLQ_T_BAD_ID); /* surrogate */
    char path[9 + 3 * 256 + 1];
    memcpy(path, "/api/dlq/", 9);
    memset(path + 9, 'x', 255);
    path[9 + 255] = '\0';
    CHECK_EQ_INT(dlq_api_target(path, tid, &n), DLQ_T_ENTRY);
    CHECK_EQ_INT(n, 255);
    path[9 + 255] = 'x';
    path[9 + 256] = '\0';
    CHECK_EQ_INT(dlq_api_target(path, tid, &n), DLQ_T_BAD_ID);
    /* 255 bytes encoded as %XX: the limit is on the decoded id */
    for (int i = 0; i < 85; i++) memcpy(path + 9 + 9 * i, "%E2%82%AC", 9); /* 85 euro signs */
    path[9 + 9 * 85] = '\0';
    CHECK_EQ_INT(dlq_api_target(path, tid, &n), DLQ_T_ENTRY);
    CHECK_EQ_INT(n, 255);
    CHECK(dlq_api_valid_task_id("invalid-id-0123456789abcdef0123456789abcdef01234567", 51));
    CHECK(!dlq_api_valid_task_id("", 0));
}

static void test_cancel_path(void)
{
    const char *id;
    size_t n;
    CHECK(cancel_api_match("/api/eval/e1/cancel", &id, &n));
    CHECK_EQ_INT(n, 2);
    CHECK(strncmp(id, "e1", 2) == 0);
    CHECK(cancel_api_match("/api/eval/a/b/cancel", &id, &n)); /* matched, then refused as an id */
    CHECK_EQ_INT(n, 3);
    CHECK(!cancel_api_match("/api/eval//cancel", &id, &n));
    CHECK(!cancel_api_match("/api/eval/cancel", &id, &n));
    CHECK(!cancel_api_match("/api/eval/e1", &id, &n));
    CHECK(!cancel_api_match("/api/eval/e1/cancelled", &id, &n));
    CHECK(cancel_api_match("/api/eval/e1/cancel", NULL, NULL));

    bool t = true;
    CHECK_EQ_INT(cancel_api_parse_terminate(NULL, &t), 0);
    CHECK(!t);
    CHECK_EQ_INT(cancel_api_parse_terminate("terminate=true", &t), 0);
    CHECK(t);
    CHECK_EQ_INT(cancel_api_parse_terminate("x=1&terminate=1", &t), 0);
    CHECK(t);
    CHECK_EQ_INT(cancel_api_parse_terminate("terminate=false", &t), 0);
    CHECK(!t);
    CHECK_EQ_INT(cancel_api_parse_terminate("terminate=yes", &t), -1);
}

static void test_pidbox(void)
{
    char *env = celery_pidbox_revoke("celery-e1", true, 1795336978.5);
    CHECK(env != NULL);
    json_t *j = json_loads(env, 0, NULL);
    CHECK(j != NULL);
    CHECK_STR(json_string_value(json_object_get(j, "content-type")), "application/json");
    json_t *props = json_object_get(j, "properties");
    CHECK_STR(json_string_value(json_object_get(props, "body_encoding")), "base64");
    CHECK_STR(json_string_value(json_object_get(json_object_get(props, "delivery_info"), "exchange")), "celery.pidbox");
    CHECK_STR(json_string_value(json_object_get(json_object_get(props, "delivery_info"), "routing_key")), "");
    CHECK_EQ_INT(strlen(json_string_value(json_object_get(props, "delivery_tag"))), 36);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "headers"), "clock")), 1);
    CHECK(json_real_value(json_object_get(json_object_get(j, "headers"), "expires")) > 1795336978.0);
    const char *b64 = json_string_value(json_object_get(j, "body"));
    unsigned char body[512];
    int n = b64 ? EVP_DecodeBlock(body, (const unsigned char *)b64, (int)strlen(b64)) : -1;
    CHECK(n > 0);
    if (n > 0) {
        while (n > 0 && body[n - 1] == '\0') n--; /* DecodeBlock counts the padding */
        json_t *m = json_loadb((const char *)body, (size_t)n, 0, NULL);
        CHECK_STR(json_string_value(json_object_get(m, "method")), "revoke");
        json_t *args = json_object_get(m, "arguments");
        CHECK_STR(json_string_value(json_object_get(args, "task_id")), "celery-e1");
        CHECK(json_is_true(json_object_get(args, "terminate")));
        CHECK_STR(json_string_value(json_object_get(args, "signal")), "SIGTERM");
        CHECK(json_is_null(json_object_get(m, "destination")));
        json_decref(m);
    }
    json_decref(j);
    free(env);
}

static void test_results_argv(void)
{
    const char *argv[RESULTS_WRITE_ARGC];
    size_t len[RESULTS_WRITE_ARGC];
    char exp[24];
    results_write_argv("celery-task-meta-x", "{\"status\":\"REVOKED\"}", 86400, exp, argv, len);
    CHECK_STR(argv[0], "EVAL");
    CHECK(argv[1] == results_write_unless_terminal_script);
    CHECK_STR(argv[2], "1");
    CHECK_STR(argv[3], "celery-task-meta-x");
    CHECK_STR(argv[5], "86400");
    CHECK_EQ_INT(len[4], strlen("{\"status\":\"REVOKED\"}"));
    CHECK_EQ_INT(len[1], strlen(results_write_unless_terminal_script));
}

int main(void)
{
    RUN(test_bearer);
    RUN(test_token_equal);
    RUN(test_dlq_query);
    RUN(test_dlq_target);
    RUN(test_cancel_path);
    RUN(test_pidbox);
    RUN(test_results_argv);
    UNIT_END();
}
