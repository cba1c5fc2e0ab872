/* Celery protocol v2 envelope and kombu list names (WIRE.md §A, §B). */
#include <stdlib.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "celery.h"
#include "pconfig.h"
#include "producer.h"
#include "submission.h"
#include "unit.h"

static void test_steps(void)
{
    int want[10] = {0, 0, 0, 3, 3, 3, 6, 6, 6, 9};
    for (int p = 0; p < 10; p++) CHECK_EQ_INT(celery_priority_step(p), want[p]);
    CHECK_EQ_INT(celery_priority_step(-4), 0);
    CHECK_EQ_INT(celery_priority_step(42), 9);
}

static void test_queue_keys(void)
{
    char buf[64];
    CHECK_EQ_INT(celery_queue_key("evaluation", 0, buf, sizeof(buf)), 10);
    CHECK_STR(buf, "evaluation");
    CHECK_EQ_INT(celery_queue_key("evaluation", 5, buf, sizeof(buf)), 13);
    CHECK(memcmp(buf, "evaluation\x06\x16" "3", 13) == 0);
    CHECK_EQ_INT(celery_queue_key("q", 9, buf, sizeof(buf)), 4);
    CHECK(memcmp(buf, "q\x06\x16" "9", 4) == 0);
    CHECK_EQ_INT(celery_queue_key("evaluation", 6, buf, 8), 0); /* too small */
}

static void test_repr(void)
{
    json_t *args = json_pack("[s,s,i,b,n]", "e1", "it's\n", 3, 1);
    char *r = celery_repr(args, 1024);
    CHECK_STR(r, "('e1', \"it's\\n\", 3, True, None)");
    free(r);
    json_decref(args);
    json_t *one = json_pack("[s]", "x");
    r = celery_repr(one, 1024);
    CHECK_STR(r, "('x',)");
    free(r);
    json_decref(one);
    json_t *kw = json_pack("{s:i,s:s}", "timeout", 30, "engine", "docker");
    r = celery_repr(kw, 1024);
    CHECK_STR(r, "{'timeout': 30, 'engine': 'docker'}");
    free(r);
    json_decref(kw);
    json_t *big = json_pack("[s]", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    r = celery_repr(big, 16);
    CHECK_EQ_INT(strlen(r), 16);
    CHECK_STR(r + 13, "...");
    free(r);
    json_decref(big);
}

static json_t *decode_body(const char *b64)
{
    size_t n = strlen(b64);
    unsigned char *out = malloc(n);
    int len = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
    while (n > 0 && b64[n - 1] == '=') { len--; n--; }
    json_t *j = json_loadb((const char *)out, (size_t)len, 0, NULL);
    free(out);
    return j;
}

static const char *no_env(const char *name, void *ud)
{
    (void)name;
    (void)ud;
    return NULL;
}

static void test_producer_message(void)
{
    proxy_settings s = {0};
    char errs[1024], err[256];
    CHECK_EQ_INT(pconfig_load(&s, no_env, NULL, errs, sizeof(errs)), 0);
    submission sub;
    sub_error serr;
    const char *body = "{\"code\":\"print('hi')\",\"eval_id\":\"e-1\",\"priority\":\"low\",\"timeout\":12}";
    CHECK_EQ_INT(submission_parse(body, strlen(body), &s, &sub, &serr), 0);
    producer *p = producer_new(NULL, "evaluation", "tasks.evaluate_code");
    size_t len = 0;
    char *msg = producer_encode(p, &sub, &len, err);
    CHECK(msg != NULL);
    json_t *env = msg ? json_loadb(msg, len, 0, NULL) : NULL;
    CHECK(env != NULL);
    json_t *h = json_object_get(env, "headers"), *pr = json_object_get(env, "properties");
    CHECK_STR(json_string_value(json_object_get(env, "content-type")), "application/json");
    CHECK_STR(json_string_value(json_object_get(env, "content-encoding")), "utf-8");
    CHECK_STR(json_string_value(json_object_get(h, "task")), "tasks.evaluate_code");
    CHECK_STR(json_string_value(json_object_get(h, "id")), "celery-e-1");
    CHECK_STR(json_string_value(json_object_get(h, "root_id")), "celery-e-1");
    CHECK_STR(json_string_value(json_object_get(h, "lang")), "py");
    CHECK_EQ_INT(json_integer_value(json_object_get(h, "retries")), 0);
    CHECK(json_is_null(json_object_get(h, "eta")));
    CHECK(json_is_null(json_object_get(h, "parent_id")));
    CHECK(json_is_false(json_object_get(h, "ignore_result")));
    CHECK_EQ_INT(json_array_size(json_object_get(h, "timelimit")), 2);
    CHECK_STR(json_string_value(json_object_get(h, "argsrepr")), "('e-1', \"print('hi')\", 'python')");
    static const char *const keys[] = {"shadow", "expires", "group", "group_index", "kwargsrepr", "origin"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) CHECK(json_object_get(h, keys[i]) != NULL);
    json_t *di = json_object_get(pr, "delivery_info");
    CHECK_STR(json_string_value(json_object_get(di, "exchange")), "");
    CHECK_STR(json_string_value(json_object_get(di, "routing_key")), "evaluation");
    CHECK_STR(json_string_value(json_object_get(pr, "body_encoding")), "base64");
    CHECK_EQ_INT(strlen(json_string_value(json_object_get(pr, "delivery_tag"))), 36);
    CHECK_EQ_INT(json_integer_value(json_object_get(pr, "priority")), 6);
    CHECK_STR(json_string_value(json_object_get(pr, "correlation_id")), "celery-e-1");
    json_t *b = decode_body(json_string_value(json_object_get(env, "body")));
    CHECK(json_array_size(b) == 3);
    json_t *args = json_array_get(b, 0), *kw = json_array_get(b, 1), *embed = json_array_get(b, 2);
    CHECK_STR(json_string_value(json_array_get(args, 0)), "e-1");
    CHECK_STR(json_string_value(json_array_get(args, 1)), "print('hi')");
    CHECK_STR(json_string_value(json_array_get(args, 2)), "python");
    CHECK_EQ_INT(json_integer_value(json_object_get(kw, "timeout")), 12);
    CHECK_STR(json_string_value(json_object_get(kw, "engine")), "docker");
    CHECK_EQ_INT(json_integer_value(json_object_get(kw, "priority")), 6);
    CHECK(json_is_null(json_object_get(embed, "callbacks")));
    CHECK(json_is_null(json_object_get(embed, "chord")));
    json_decref(b);
    json_decref(env);
    free(msg);
    producer_free(p);
    submission_free(&sub);
    pconfig_free(&s);
}

int main(void)
{
    RUN(test_steps);
    RUN(test_queue_keys);
    RUN(test_repr);
    RUN(test_producer_message);
    UNIT_END();
}
