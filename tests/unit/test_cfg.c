/* Config table parsing: good values, every bad value reported at once. */
#include <stdlib.h>

#include "cfg.h"
#include "pconfig.h"
#include "unit.h"

typedef struct kv {
    const char *k, *v;
} kv;

static const char *lookup(const char *name, void *ud)
{
    for (const kv *p = ud; p->k; p++)
        if (strcmp(p->k, name) == 0) return p->v;
    return NULL;
}

static void test_defaults(void)
{
    kv env[] = {{NULL, NULL}};
    proxy_settings s = {0};
    char errs[2048];
    CHECK_EQ_INT(pconfig_load(&s, lookup, env, errs, sizeof(errs)), 0);
    CHECK_STR(s.listen, "127.0.0.1:8080");
    CHECK(!s.celery_enabled);
    CHECK(s.celery_percentage == 0);
    CHECK(s.fallback_to_legacy);
    CHECK_STR(s.routing_mode, "sticky");
    CHECK_STR(s.queue, "evaluation");
    CHECK_STR(s.task_name, "tasks.evaluate_code");
    CHECK_EQ_INT(s.max_body_bytes, 2097152);
    CHECK(pconfig_language_allowed(&s, "python", 6));
    CHECK(!pconfig_language_allowed(&s, "pyth", 4));
    pconfig_free(&s);
}

static void test_good_values(void)
{
    kv env[] = {{"CELERY_PERCENTAGE", "0.25"}, {"CELERY_ENABLED", "yes"}, {"ROUTING_MODE", "random"},
                {"ALLOWED_LANGUAGES", "python, node,go"}, {"PROXY_LISTEN", "[::1]:9000"},
                {"CELERY_BROKER_URL", "redis://:secret@127.0.0.1:6390/2"}, {NULL, NULL}};
    proxy_settings s = {0};
    char errs[2048];
    CHECK_EQ_INT(pconfig_load(&s, lookup, env, errs, sizeof(errs)), 0);
    CHECK(s.celery_percentage == 0.25);
    CHECK(s.celery_enabled);
    CHECK_STR(s.routing_mode, "random");
    CHECK(pconfig_language_allowed(&s, "node", 4));
    CHECK(pconfig_language_allowed(&s, "go", 2));
    CHECK(!pconfig_language_allowed(&s, "java", 4));
    pconfig_free(&s);
}

static void test_all_errors_at_once(void)
{
    kv env[] = {{"CELERY_PERCENTAGE", "50"}, {"ROUTING_MODE", "foo"}, {"PROXY_LISTEN", "nope"},
                {"MAX_BODY_BYTES", "12abc"}, {"CELERY_ENABLED", "maybe"},
                {"LEGACY_QUEUE_URL", "ftp://x"}, {NULL, NULL}};
    proxy_settings s = {0};
    char errs[4096];
    CHECK_EQ_INT(pconfig_load(&s, lookup, env, errs, sizeof(errs)), 6);
    CHECK_CONTAINS(errs, "CELERY_PERCENTAGE=\"50\": must be between 0 and 1 (a fraction, 0.5 = 50%)");
    CHECK_CONTAINS(errs, "ROUTING_MODE=\"foo\": must be one of sticky|random");
    CHECK_CONTAINS(errs, "PROXY_LISTEN=\"nope\"");
    CHECK_CONTAINS(errs, "MAX_BODY_BYTES=\"12abc\": must be an integer from 1024 to");
    CHECK_CONTAINS(errs, "CELERY_ENABLED=\"maybe\": must be true or false");
    CHECK_CONTAINS(errs, "LEGACY_QUEUE_URL=\"ftp://x\"");
    CHECK(s.listen == NULL); /* untouched on failure */
}

static void test_cross_checks(void)
{
    kv env[] = {{"PROXY_TLS_CERT", "/x.pem"}, {"CELERY_BROKER_URL", "redis://redis.example:6379/0"},
                {"ALLOWED_LANGUAGES", ""}, {NULL, NULL}};
    proxy_settings s = {0};
    char errs[4096];
    CHECK_EQ_INT(pconfig_load(&s, lookup, env, errs, sizeof(errs)), 3);
    CHECK_CONTAINS(errs, "PROXY_TLS_CERT and PROXY_TLS_KEY");
    CHECK_CONTAINS(errs, "CELERY_BROKER_URL=");
    CHECK_CONTAINS(errs, "must be an IP address");
    CHECK_CONTAINS(errs, "ALLOWED_LANGUAGES");
}

static void test_int_bounds(void)
{
    kv lo[] = {{"MAX_BODY_BYTES", "1023"}, {NULL, NULL}};
    kv hi[] = {{"MAX_BODY_BYTES", "99999999999999999999999"}, {NULL, NULL}};
    kv ok[] = {{"MAX_BODY_BYTES", "1024"}, {NULL, NULL}};
    proxy_settings s = {0};
    char errs[1024];
    CHECK_EQ_INT(pconfig_load(&s, lookup, lo, errs, sizeof(errs)), 1);
    CHECK_EQ_INT(pconfig_load(&s, lookup, hi, errs, sizeof(errs)), 1);
    CHECK_EQ_INT(pconfig_load(&s, lookup, ok, errs, sizeof(errs)), 0);
    CHECK_EQ_INT(s.max_body_bytes, 1024);
    pconfig_free(&s);
}

static void test_split_addr(void)
{
    char host[64];
    int port = 0;
    CHECK_EQ_INT(cfg_split_addr("127.0.0.1:80", host, sizeof(host), &port), 0);
    CHECK_STR(host, "127.0.0.1");
    CHECK_EQ_INT(port, 80);
    CHECK_EQ_INT(cfg_split_addr("[::1]:65535", host, sizeof(host), &port), 0);
    CHECK_STR(host, "::1");
    CHECK_EQ_INT(cfg_split_addr("host:0", host, sizeof(host), &port), -1);
    CHECK_EQ_INT(cfg_split_addr("host:65536", host, sizeof(host), &port), -1);
    CHECK_EQ_INT(cfg_split_addr(":80", host, sizeof(host), &port), -1);
    CHECK_EQ_INT(cfg_split_addr("host", host, sizeof(host), &port), -1);
}

static void test_envfile(void)
{
    char path[] = "/tmp/turnout-cfg-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("# comment\nexport CELERY_PERCENTAGE=0.4\nROUTING_MODE = \"random\"\n\nCELERY_PERCENTAGE='0.5'\n", f);
    fclose(f);
    char err[256];
    cfg_envfile *ef = cfg_envfile_read(path, err);
    CHECK(ef != NULL);
    if (ef) {
        CHECK_STR(cfg_envfile_lookup("CELERY_PERCENTAGE", ef), "0.5");
        CHECK_STR(cfg_envfile_lookup("ROUTING_MODE", ef), "random");
        cfg_envfile_free(ef);
    }
    f = fopen(path, "w");
    fputs("THIS LINE IS BAD\n", f);
    fclose(f);
    CHECK(cfg_envfile_read(path, err) == NULL);
    CHECK_CONTAINS(err, "line 1");
    remove(path);
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_good_values);
    RUN(test_all_errors_at_once);
    RUN(test_cross_checks);
    RUN(test_int_bounds);
    RUN(test_split_addr);
    RUN(test_envfile);
    UNIT_END();
}
