/* Celery protocol v2 envelope and kombu list names (WIRE.md §A, §B). */
#include <stdlib.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "celery.h"
#include "pconfig.h"
#include "producer.h"
#include "submission.h"
#include "unit.h"

static const char *no_env_cb(const char *name, void *ud)
{
    (void)name;
    (void)ud;
    return NULL;
}

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

/* The encoder as it was before the JSON writer: a jansson tree packed and
 * dumped.  The writer's output must match it (delivery tags aside). */
static json_t *str_or_null(const char *v) { return v ? json_string(v) : json_null(); }
static json_t *limit_or_null(double v) { return v > 0 ? json_real(v) : json_null(); }

static char *reference_encode(const celery_task *t, const char *tag)
{
    json_t *body = json_pack("[OO{s:n,s:n,s:n,s:n}]", t->args, t->kwargs, "callbacks", "errbacks", "chain", "chord");
    char *body_text = json_dumps(body, JSON_COMPACT);
    size_t blen = strlen(body_text);
    char *b64 = malloc(4 * ((blen + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body_text, (int)blen);
    char *argsrepr = celery_repr(t->args, CELERY_REPR_MAX), *kwargsrepr = celery_repr(t->kwargs, CELERY_REPR_MAX);
    json_t *env = json_pack(
        "{s:s, s:s, s:s,"
        " s:{s:s, s:s, s:s, s:n, s:o, s:o, s:n, s:n, s:i, s:[oo], s:s, s:o, s:s, s:s, s:s, s:b},"
        " s:{s:s, s:s, s:i, s:{s:s, s:s}, s:i, s:s, s:s}}",
        "body", b64, "content-encoding", "utf-8", "content-type", "application/json", "headers", "lang", "py",
        "task", t->task_name, "id", t->task_id, "shadow", "eta", str_or_null(t->eta), "expires",
        str_or_null(t->expires), "group", "group_index", "retries", t->retries, "timelimit",
        limit_or_null(t->hard_limit_s), limit_or_null(t->soft_limit_s), "root_id", t->root_id ? t->root_id : t->task_id,
        "parent_id", str_or_null(t->parent_id), "argsrepr", argsrepr, "kwargsrepr", kwargsrepr, "origin",
        t->origin ? t->origin : "turnout", "ignore_result", 0, "properties", "correlation_id", t->task_id, "reply_to",
        "", "delivery_mode", 2, "delivery_info", "exchange", "", "routing_key", t->queue, "priority", t->priority,
        "body_encoding", "base64", "delivery_tag", tag);
    char *out = env ? json_dumps(env, JSON_COMPACT) : NULL;
    json_decref(env);
    json_decref(body);
    free(body_text);
    free(b64);
    free(argsrepr);
    free(kwargsrepr);
    return out;
}

/* The encoded message with its delivery tag, checked, replaced by `tag`. */
static char *with_tag(const char *msg, size_t len, const char *tag)
{
    celery_message m;
    char err[256];
    if (celery_decode(msg, len, &m, err) != 0) {
        fprintf(stderr, "does not decode: %s\n", err);
        return NULL;
    }
    char *out = NULL;
    const char *at = strstr(msg, m.delivery_tag);
    if (strlen(m.delivery_tag) == 36 && at && !strstr(at + 1, m.delivery_tag)) {
        out = strdup(msg);
        memcpy(out + (at - msg), tag, 36);
    }
    celery_message_free(&m);
    return out;
}

/* celery_encode against the reference, byte for byte, and decoded. */
static void check_like_reference(const celery_task *t)
{
    static const char tag[] = "00000000-1111-4222-8333-444444444444";
    char err[256];
    size_t len = 0;
    char *mine = celery_encode(t, &len, err);
    CHECK(mine != NULL && len == strlen(mine));
    char *ref = reference_encode(t, tag);
    CHECK(ref != NULL);
    char *mine_tagged = mine ? with_tag(mine, len, tag) : NULL;
    CHECK_STR(mine_tagged, ref);
    json_t *a = mine_tagged ? json_loads(mine_tagged, 0, NULL) : NULL, *b = ref ? json_loads(ref, 0, NULL) : NULL;
    CHECK(a && b && json_equal(a, b));
    json_decref(a);
    json_decref(b);
    celery_message m;
    int rc = mine ? celery_decode(mine, len, &m, err) : -1;
    CHECK_EQ_INT(rc, 0);
    if (rc == 0) {
        CHECK(json_equal(m.args, t->args));
        CHECK(json_equal(m.kwargs, t->kwargs));
        CHECK_STR(m.task_id, t->task_id);
        CHECK_EQ_INT(m.priority, t->priority);
        CHECK_EQ_INT(m.retries, t->retries);
        celery_message_free(&m);
    }
    free(mine);
    free(mine_tagged);
    free(ref);
}

static void test_encode_like_reference(void)
{
    json_t *args = json_pack("[s,s,s]", "e-1", "print('hi')\n\tx = \"\\u00e9\" + '\u20ac'\x01", "python");
    json_t *kwargs = json_pack("{s:i,s:s,s:i}", "timeout", 30, "engine", "docker", "priority", 3);
    celery_task t = {.task_name = "tasks.evaluate_code", .task_id = "celery-e-1", .queue = "evaluation",
                     .priority = 3, .args = args, .kwargs = kwargs, .origin = "turnout12@host"};
    check_like_reference(&t);
    /* every optional header set, reals in the time limits */
    celery_task full = t;
    full.retries = 4;
    full.eta = "2026-11-22T08:42:16.316431+00:00";
    full.expires = "2026-11-23T08:42:16+00:00";
    full.hard_limit_s = 300;
    full.soft_limit_s = 270.5;
    full.root_id = "root-\"1\"";
    full.parent_id = "parent-1";
    full.origin = NULL;
    full.priority = 9;
    check_like_reference(&full);
    json_decref(args);
    json_decref(kwargs);
    /* arbitrary args and kwargs: nested, numbers, long enough to cut the reprs */
    char long_code[3000];
    for (size_t i = 0; i < sizeof(long_code) - 1; i++) long_code[i] = "ab'\"\\\n"[i % 6];
    long_code[sizeof(long_code) - 1] = '\0';
    args = json_pack("[s,i,f,b,n,[i,{s:s}],{}]", long_code, -7, 0.25, 1, 8, "k", "v");
    kwargs = json_pack("{s:s,s:[],s:{s:f}}", "code", long_code, "empty", "nested", "x", 1e-9);
    celery_task big = {.task_name = "t", .task_id = "id", .queue = "q", .args = args, .kwargs = kwargs};
    check_like_reference(&big);
    json_decref(args);
    json_decref(kwargs);
}

/* The producer writes args, kwargs and reprs without a tree: the same
 * message as the reference built from the same values as a tree. */
static void check_producer_like_reference(const char *body_json)
{
    proxy_settings s = {0};
    char errs[1024], err[256];
    CHECK_EQ_INT(pconfig_load(&s, no_env_cb, NULL, errs, sizeof(errs)), 0);
    submission sub;
    sub_error serr;
    int rc = submission_parse(body_json, strlen(body_json), &s, &sub, &serr);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) {
        pconfig_free(&s);
        return;
    }
    producer *p = producer_new("evaluation", "tasks.evaluate_code");
    size_t len = 0;
    char *msg = producer_encode(p, &sub, &len, err);
    CHECK(msg != NULL);
    celery_message m;
    rc = msg ? celery_decode(msg, len, &m, err) : -1;
    CHECK_EQ_INT(rc, 0);
    if (rc == 0) {
        json_t *args = json_pack("[ss#s#]", sub.eval_id, sub.code, sub.code_len, sub.language, sub.language_len);
        json_t *kwargs = json_pack("{s:i, s:s, s:i}", "timeout", sub.timeout, "engine", sub.engine, "priority",
                                   sub.priority);
        json_t *h = json_object_get(m.env, "headers");
        celery_task t = {.task_name = "tasks.evaluate_code", .task_id = m.task_id, .queue = "evaluation",
                         .priority = sub.priority, .args = args, .kwargs = kwargs,
                         .origin = json_string_value(json_object_get(h, "origin"))};
        char *ref = reference_encode(&t, m.delivery_tag);
        CHECK_STR(msg, ref);
        CHECK(json_equal(m.args, args));
        CHECK(json_equal(m.kwargs, kwargs));
        free(ref);
        json_decref(args);
        json_decref(kwargs);
        celery_message_free(&m);
    }
    free(msg);
    producer_free(p);
    submission_free(&sub);
    pconfig_free(&s);
}

static void test_producer_like_reference(void)
{
    check_producer_like_reference("{\"code\": \"print(6*7)\", \"language\": \"python\"}");
    check_producer_like_reference("{\"code\":\"it's \\\"q\\\"\\n\\t\\u0001\\u007f\\u00e9\\u20ac\\ud83d\\ude00\\\\\","
                                  "\"eval_id\":\"e-2\",\"priority\":\"high\",\"timeout\":900,\"engine\":\"gvisor-1.0\"}");
    /* code long enough that argsrepr is cut, with the cut landing inside a
     * 2-byte character for one of the offsets */
    for (int pad = 0; pad < 3; pad++) {
        char body[4096];
        int n = snprintf(body, sizeof(body), "{\"eval_id\":\"e-3\",\"priority\":7,\"code\":\"%.*s", pad, "xx");
        for (int i = 0; i < 700; i++) n += snprintf(body + n, sizeof(body) - (size_t)n, "\xc3\xa9");
        snprintf(body + n, sizeof(body) - (size_t)n, "\"}");
        check_producer_like_reference(body);
    }
}

/* A cut repr never ends inside a UTF-8 character (it would make the
 * message invalid JSON text). */
static void test_repr_cut_utf8(void)
{
    for (size_t max = 8; max < 16; max++) {
        json_t *v = json_pack("[s]", "\xc3\xa9\xc3\xa9\xe2\x82\xac\xe2\x82\xac\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xc3\xa9");
        char *r = celery_repr(v, max);
        CHECK(r != NULL && strlen(r) <= max && strlen(r) >= max - 3);
        CHECK(r && strcmp(r + strlen(r) - 3, "...") == 0);
        json_t *valid = r ? json_string(r) : NULL; /* NULL for invalid UTF-8 */
        CHECK(valid != NULL);
        json_decref(valid);
        free(r);
        json_decref(v);
    }
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


static void test_producer_message(void)
{
    proxy_settings s = {0};
    char errs[1024], err[256];
    CHECK_EQ_INT(pconfig_load(&s, no_env_cb, NULL, errs, sizeof(errs)), 0);
    submission sub;
    sub_error serr;
    const char *body = "{\"code\":\"print('hi')\",\"eval_id\":\"e-1\",\"priority\":\"low\",\"timeout\":12}";
    CHECK_EQ_INT(submission_parse(body, strlen(body), &s, &sub, &serr), 0);
    producer *p = producer_new("evaluation", "tasks.evaluate_code");
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

/* The task id rule the worker and the DLQ API share. */
static void test_task_id_rule(void)
{
    char id[CELERY_TASK_ID_MAX + 2];
    memset(id, 'a', sizeof(id));
    CHECK(celery_task_id_ok("celery-e1", 9));
    CHECK(celery_task_id_ok("an id with spaces", 17));
    CHECK(celery_task_id_ok("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14));
    CHECK(celery_task_id_ok(id, CELERY_TASK_ID_MAX));
    CHECK(!celery_task_id_ok(id, CELERY_TASK_ID_MAX + 1));
    CHECK(!celery_task_id_ok("", 0));
    CHECK(!celery_task_id_ok("a\x01b", 3));
    CHECK(!celery_task_id_ok("a\nb", 3));
    CHECK(!celery_task_id_ok("a\x7f", 2));
    CHECK(!celery_task_id_ok("a\0b", 3));
    CHECK(!celery_task_id_ok("\xc2\x85", 2));          /* C1 control (NEL) */
    CHECK(!celery_task_id_ok("caf\xc3", 4));            /* cut character */
    CHECK(!celery_task_id_ok("\xc0\xaf", 2));          /* overlong */
    CHECK(!celery_task_id_ok("\xed\xa0\x80", 3));      /* surrogate */
    CHECK(!celery_task_id_ok("\xf4\x90\x80\x80", 4));  /* above U+10FFFF */
    CHECK(!celery_task_id_ok("\xff", 1));
    char sub[CELERY_INVALID_ID_LEN + 1];
    celery_invalid_id("abc", 3, sub); /* SHA-1("abc") */
    CHECK_STR(sub, "invalid-id-a9993e364706816aba3e25717850c26c9cd0d89d");
}

int main(void)
{
    RUN(test_task_id_rule);
    RUN(test_steps);
    RUN(test_queue_keys);
    RUN(test_repr);
    RUN(test_producer_message);
    RUN(test_encode_like_reference);
    RUN(test_producer_like_reference);
    RUN(test_repr_cut_utf8);
    UNIT_END();
}
