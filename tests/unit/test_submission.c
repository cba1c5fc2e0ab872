/* Validation of POST /api/eval bodies (DESIGN §4). */
#include <stdlib.h>

#include <jansson.h>

#include "submission.h"
#include "unit.h"

static proxy_settings S;

static const char *no_env(const char *name, void *ud)
{
    (void)ud;
    return strcmp(name, "ALLOWED_LANGUAGES") == 0 ? "python,node" : NULL;
}

/* Returns the status (0 when valid) and the field named. */
static int try(const char *body, const char **field)
{
    submission sub;
    sub_error e;
    int rc = submission_parse(body, strlen(body), &S, &sub, &e);
    if (rc == 0) {
        submission_free(&sub);
        return 0;
    }
    if (field) *field = e.field;
    return e.status;
}

static void test_good(void)
{
    submission sub;
    sub_error e;
    const char *b = "{\"code\":\"print(1)\"}";
    CHECK_EQ_INT(submission_parse(b, strlen(b), &S, &sub, &e), 0);
    CHECK_STR(sub.language, "python");
    CHECK_STR(sub.engine, "docker");
    CHECK_EQ_INT(sub.timeout, 30);
    CHECK_EQ_INT(sub.priority, 3);
    CHECK_STR(sub.priority_name, "default");
    CHECK(!sub.eval_id_given);
    CHECK_EQ_INT(strlen(sub.eval_id), 29);
    CHECK(strncmp(sub.eval_id, "eval_", 5) == 0);
    CHECK(sub.eval_id[13] == '_' && sub.eval_id[20] == '_');
    submission_free(&sub);

    b = "{\"code\":\"x\",\"language\":\"node\",\"timeout\":900,\"priority\":true,\"eval_id\":\"A.b:c-d_9\",\"engine\":\"k8s\"}";
    CHECK_EQ_INT(submission_parse(b, strlen(b), &S, &sub, &e), 0);
    CHECK_EQ_INT(sub.priority, 0);
    CHECK_EQ_INT(sub.timeout, 900);
    CHECK_STR(sub.eval_id, "A.b:c-d_9");
    CHECK(sub.eval_id_given);
    submission_free(&sub);
}

static void test_priorities(void)
{
    const char *name;
    json_t *v;
#define PRIO(json, want)                                       \
    v = json_loads(json, JSON_DECODE_ANY, NULL);               \
    CHECK_EQ_INT(submission_priority(v, &name), want);         \
    json_decref(v);
    PRIO("true", 0);
    PRIO("false", 3);
    PRIO("\"high\"", 0);
    PRIO("\"default\"", 3);
    PRIO("\"low\"", 6);
    PRIO("0", 0);
    PRIO("9", 9);
    PRIO("5", 5);
    PRIO("10", -1);
    PRIO("-1", -1);
    PRIO("\"urgent\"", -1);
    PRIO("1.5", -1);
    PRIO("[]", -1);
#undef PRIO
}

static void test_bad(void)
{
    const char *f = NULL;
    CHECK_EQ_INT(try("{not json", NULL), 400);
    CHECK_EQ_INT(try("", NULL), 400);
    CHECK_EQ_INT(try("[1,2]", NULL), 422);
    CHECK_EQ_INT(try("{}", &f), 422);
    CHECK_STR(f, "code");
    CHECK_EQ_INT(try("{\"code\":\"  \\n\\t\"}", &f), 422);
    CHECK_STR(f, "code");
    CHECK_EQ_INT(try("{\"code\":42}", &f), 422);
    CHECK_STR(f, "code");
    CHECK_EQ_INT(try("{\"code\":\"x\",\"language\":\"cobol\"}", &f), 422);
    CHECK_STR(f, "language");
    CHECK_EQ_INT(try("{\"code\":\"x\",\"timeout\":0}", &f), 422);
    CHECK_STR(f, "timeout");
    CHECK_EQ_INT(try("{\"code\":\"x\",\"timeout\":901}", &f), 422);
    CHECK_EQ_INT(try("{\"code\":\"x\",\"timeout\":\"abc\"}", &f), 422);
    CHECK_EQ_INT(try("{\"code\":\"x\",\"timeout\":2.5}", &f), 422);
    CHECK_EQ_INT(try("{\"code\":\"x\",\"timeout\":30.0}", NULL), 0);
    CHECK_EQ_INT(try("{\"code\":\"x\",\"priority\":\"urgent\"}", &f), 422);
    CHECK_STR(f, "priority");
    CHECK_EQ_INT(try("{\"code\":\"x\",\"eval_id\":\"bad id!\"}", &f), 422);
    CHECK_STR(f, "eval_id");
    CHECK_EQ_INT(try("{\"code\":\"x\",\"eval_id\":\"\"}", &f), 422);
    CHECK_EQ_INT(try("{\"code\":\"x\",\"engine\":\"\"}", &f), 422);
    CHECK_STR(f, "engine");
    CHECK_EQ_INT(try("{\"code\":\"x\",\"code\":\"y\"}", NULL), 400); /* duplicate key */

    /* eval_id of 128 passes, 129 fails */
    char body[300];
    char id[130];
    memset(id, 'a', 129);
    id[128] = '\0';
    snprintf(body, sizeof(body), "{\"code\":\"x\",\"eval_id\":\"%s\"}", id);
    CHECK_EQ_INT(try(body, NULL), 0);
    id[128] = 'a';
    id[129] = '\0';
    snprintf(body, sizeof(body), "{\"code\":\"x\",\"eval_id\":\"%s\"}", id);
    CHECK_EQ_INT(try(body, &f), 422);

    /* code: 1 MiB passes, 1 MiB + 1 fails */
    size_t n = SUB_MAX_CODE_BYTES;
    char *big = malloc(n + 32);
    strcpy(big, "{\"code\":\"");
    memset(big + 9, 'x', n);
    strcpy(big + 9 + n, "\"}");
    CHECK_EQ_INT(try(big, NULL), 0);
    big[9 + n] = 'x';
    strcpy(big + 10 + n, "\"}");
    CHECK_EQ_INT(try(big, &f), 422);
    CHECK_STR(f, "code");
    free(big);
}

/* A message quoting a non-ASCII value is cut at a character boundary:
 * valid UTF-8, which jansson (and JSON) can carry. */
static void test_quoted_utf8(void)
{
    char body[256] = "{\"code\":\"x\",\"language\":\"a";
    for (int i = 0; i < 30; i++) strcat(body, "\xc3\xa9"); /* 1 + 60 bytes: a cut at 40 would split one */
    strcat(body, "\"}");
    submission sub;
    sub_error e;
    CHECK_EQ_INT(submission_parse(body, strlen(body), &S, &sub, &e), -1);
    CHECK_EQ_INT(e.status, 422);
    CHECK_STR(e.field, "language");
    json_t *m = json_string(e.message);
    CHECK(m != NULL);
    json_decref(m);
    CHECK(strstr(e.message, "\"a\xc3\xa9") != NULL);
}

int main(void)
{
    char errs[1024];
    if (pconfig_load(&S, no_env, NULL, errs, sizeof(errs)) != 0) {
        fprintf(stderr, "%s", errs);
        return 1;
    }
    RUN(test_good);
    RUN(test_priorities);
    RUN(test_bad);
    RUN(test_quoted_utf8);
    pconfig_free(&S);
    UNIT_END();
}
