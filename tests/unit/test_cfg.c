/* Config table parsing: good values, every bad value reported at once. */
#include <stdlib.h>

#include "cfg.h"
#include "pconfig.h"
#include "util.h"
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
    CHECK_CONTAINS(errs, "CELERY_ENABLED=\"maybe\": must be true/false, 1/0, yes/no or on/off (any case)");
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

/* Writes `text` to a fresh temporary file; its path goes to path[32]. */
static void temp_file(char path[32], const char *text)
{
    strcpy(path, "/tmp/turnout-cfg-XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
}

/* True when s is whole UTF-8 characters (no character cut at the end). */
static bool utf8_whole(const char *s)
{
    size_t n = strlen(s);
    return util_utf8_trim_end(s, n) == n;
}

static void test_error_lines_cut_between_characters(void)
{
    char value[1000] = "";
    for (int i = 0; i < 300; i++) strcat(value, "\xe2\x82\xac"); /* 300 x EURO SIGN, 3 bytes each */
    kv env[] = {{"ROLLOUT_SALT", value}, {NULL, NULL}};
    proxy_settings s = {0};
    char errs[4096];
    CHECK_EQ_INT(pconfig_load(&s, lookup, env, errs, sizeof(errs)), 1);
    CHECK_CONTAINS(errs, "ROLLOUT_SALT=\"\xe2\x82\xac");
    CHECK_CONTAINS(errs, "\xe2\x82\xac...\": must be text of at most 256 characters"); /* shown value cut */
    CHECK(utf8_whole(errs));
    for (size_t size = 20; size < 120; size++) { /* a full buffer is cut between characters too */
        char small[120];
        CHECK_EQ_INT(pconfig_load(&s, lookup, env, small, size), 1);
        CHECK(strlen(small) < size && utf8_whole(small));
    }
    kv steps[] = {{"ROLLOUT_STEPS", value}, {NULL, NULL}};
    CHECK_EQ_INT(pconfig_load(&s, lookup, steps, errs, sizeof(errs)), 1);
    CHECK_CONTAINS(errs, "ROLLOUT_STEPS=\"\xe2\x82\xac");
    CHECK(utf8_whole(errs));
    for (size_t size = 20; size < 120; size++) {
        char small[120];
        CHECK_EQ_INT(pconfig_load(&s, lookup, steps, small, size), 1);
        CHECK(strlen(small) < size && utf8_whole(small));
    }
}

static void test_bool_rule(void)
{
    const char *yes[] = {"true", "TRUE", "True", "1", "yes", "YES", "Yes", "on", "ON", "On"};
    const char *no[] = {"false", "FALSE", "False", "0", "no", "NO", "No", "off", "OFF", "Off"};
    const char *bad[] = {"", "maybe", "t", "f", "y", "n", "truee", " true", "true ", "2", "-1", "enabled", "yes!"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        bool b = false;
        CHECK(cfg_parse_bool(yes[i], &b) && b);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        bool b = true;
        CHECK(cfg_parse_bool(no[i], &b) && !b);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool b = true;
        CHECK(!cfg_parse_bool(bad[i], &b) && b); /* refused, untouched */
    }
    /* every boolean of the table takes the same words */
    kv env[] = {{"FORCE_LEGACY_QUEUE", "On"}, {"CELERY_ENABLED", "1"}, {"FALLBACK_TO_LEGACY", "NO"}, {NULL, NULL}};
    proxy_settings s = {0};
    char errs[2048];
    CHECK_EQ_INT(pconfig_load(&s, lookup, env, errs, sizeof(errs)), 0);
    CHECK(s.force_legacy && s.celery_enabled && !s.fallback_to_legacy);
    pconfig_free(&s);
    kv bad_env[] = {{"FORCE_LEGACY_QUEUE", "enabled"}, {NULL, NULL}};
    CHECK_EQ_INT(pconfig_load(&s, lookup, bad_env, errs, sizeof(errs)), 1);
    CHECK_CONTAINS(errs, "FORCE_LEGACY_QUEUE=\"enabled\": must be true/false, 1/0, yes/no or on/off (any case)");
}

static void test_edit_distance(void)
{
    CHECK_EQ_INT(cfg_edit_distance("CELERY_PERCENTAGE", "CELERY_PERCENTAGE"), 0);
    CHECK_EQ_INT(cfg_edit_distance("CELERY_PERCENTGE", "CELERY_PERCENTAGE"), 1);   /* a key left out */
    CHECK_EQ_INT(cfg_edit_distance("CELERY_PERCENTAAGE", "CELERY_PERCENTAGE"), 1); /* one too many */
    CHECK_EQ_INT(cfg_edit_distance("CELERY_PERCENTAEG", "CELERY_PERCENTAGE"), 1);  /* two swapped */
    CHECK_EQ_INT(cfg_edit_distance("CELERY_PERCENTXGE", "CELERY_PERCENTAGE"), 1);  /* one wrong */
    CHECK_EQ_INT(cfg_edit_distance("celery_percentage", "CELERY_PERCENTAGE"), 0);  /* case is no typo */
    CHECK_EQ_INT(cfg_edit_distance("", "ABC"), 3);
    CHECK_EQ_INT(cfg_edit_distance("ABC", ""), 3);
    CHECK_EQ_INT(cfg_edit_distance("KITTEN", "SITTING"), 3);
}

static void test_suggestion(void)
{
    CHECK_STR(cfg_suggest("CELERY_PERCENTGE"), "CELERY_PERCENTAGE");
    CHECK_STR(cfg_suggest("FORCE_LEGACY_QUEU"), "FORCE_LEGACY_QUEUE");
    CHECK_STR(cfg_suggest("FORCE_LEGACY_QUEUES"), "FORCE_LEGACY_QUEUE");
    CHECK_STR(cfg_suggest("LEGACYD_MAXQUEUE"), "LEGACYD_MAX_QUEUE");        /* another binary's name */
    CHECK_STR(cfg_suggest("EXECUTOR_MEMORY_MiB"), "EXECUTOR_MEMORY_MB");
    CHECK_STR(cfg_suggest("worker_name"), "WORKER_NAME");
    CHECK(cfg_suggest("REDIS_URL") == NULL); /* nothing close: no guess */
    CHECK(cfg_suggest("") == NULL);
    char longname[200];
    memset(longname, 'A', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK(cfg_suggest(longname) == NULL);

    char msg[400];
    CHECK(cfg_unknown_name("CELERY_PERCENTGE", msg, sizeof(msg)));
    CHECK_STR(msg, "CELERY_PERCENTGE is not a turnout setting; did you mean CELERY_PERCENTAGE?");
    CHECK(cfg_unknown_name("REDIS_URL", msg, sizeof(msg)));
    CHECK_STR(msg, "REDIS_URL is not a turnout setting; see --help for the settings");
    CHECK(cfg_unknown_name("CELERY_\x01\nX", msg, sizeof(msg)));
    CHECK_CONTAINS(msg, "CELERY_??X is not a turnout setting");
    /* a long name is cut between characters, never inside one */
    char big[300] = "CELERY_";
    for (size_t i = strlen(big); i + 2 < sizeof(big); i += 2) memcpy(big + i, "\xc3\xa9", 2);
    big[sizeof(big) - 1] = '\0';
    CHECK(cfg_unknown_name(big, msg, sizeof(msg)));
    CHECK(strstr(msg, "\xc3\xa9...") != NULL);
    CHECK(strlen(msg) < 200);
}

static void test_prefix_rule(void)
{
    /* derived from the binaries' names: each claims its first word */
    for (size_t p = 0; p < cfg_nprograms; p++)
        for (size_t i = 0; i < cfg_programs[p].n; i++) CHECK(cfg_name_has_turnout_prefix(cfg_programs[p].names[i]));
    const char *ours[] = {"CELERY_X", "PROXY_X", "TURNOUT_X", "LEGACY_X", "LEGACYD_X", "ROLLOUT_X", "GATE_X",
                          "SHADOW_X", "WORKER_X", "EXECUTOR_X", "RETRY_X", "REDIS_URL", "ROUTE_X", "ROUTING_X",
                          "DLQ_X", "COMPLETION_X", "ADMIN_X", "UPSTREAM_X", "FORCE_X", "FALLBACK_X", "ALLOWED_X",
                          "LOG_X", "MAX_X", "CLIENT_X", "SHUTDOWN_X", "STORAGE_X", "VISIBILITY_X",
                          "SOFT_TIME_LIMIT", "TIME_LIMIT_X", "RESULT_X", "PROGRESS_X", "celery_enabled"};
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++) CHECK(cfg_name_has_turnout_prefix(ours[i]));
    const char *theirs[] = {"PATH", "HOME", "LANG", "TMPDIR", "MYAPP_CELERY", "TIME_STYLE", "TIMEOUT", "CELERY",
                            "LOGNAME", "PYTHONPATH", "ASAN_OPTIONS", "DEMOX", ""};
    for (size_t i = 0; i < sizeof(theirs) / sizeof(theirs[0]); i++) CHECK(!cfg_name_has_turnout_prefix(theirs[i]));

    /* known: any binary's setting (one env file for all), the project's own names */
    const char *known[] = {"WORKER_NAME", "CELERY_PERCENTAGE", "LEGACYD_MAX_QUEUE", "EXECUTOR_ID", "TURNOUT_BIN_DIR",
                           "TURNOUT_SOAK", "DEMO_PROXY_PORT", "FUZZ_SECONDS"};
    char msg[400];
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        CHECK(cfg_name_known(known[i]));
        CHECK(!cfg_unknown_name(known[i], msg, sizeof(msg)));
    }
    CHECK(!cfg_name_known("CELERY_PERCENTGE"));
    CHECK(!cfg_unknown_name("MYAPP_DEBUG", msg, sizeof(msg))); /* not ours: never mentioned */
    CHECK(!cfg_unknown_name("TIME_STYLE", msg, sizeof(msg)));
}

static void test_names_match_tables(void)
{
    char err[400];
    CHECK_EQ_INT(cfg_check_names("turnout-proxy", pconfig_table, pconfig_count, err, sizeof(err)), 0);
    /* a table with a setting the list lacks, or without one it has */
    CHECK_EQ_INT(cfg_check_names("turnout-worker", pconfig_table, pconfig_count, err, sizeof(err)), -1);
    CHECK_CONTAINS(err, "setting PROXY_LISTEN is missing from turnout-worker's list in common/cfg_names.c");
    CHECK_EQ_INT(cfg_check_names("turnout-proxy", pconfig_table, pconfig_count - 1, err, sizeof(err)), -1);
    CHECK_CONTAINS(err, "lists TURNOUT_ENV_FILE for turnout-proxy, which has no such setting");
    CHECK_EQ_INT(cfg_check_names("turnout-other", pconfig_table, pconfig_count, err, sizeof(err)), -1);
    CHECK_CONTAINS(err, "no list of turnout-other's settings");
}

static void test_envfile_unknown_names(void)
{
    char path[32], err[256];
    temp_file(path, "CELERY_ENABLED=true\nFORCE_LEGACY_QUEU=true\n# WORKER_NAMEE=x is a comment\n"
                    "WORKER_NAME=w1\nTURNOUT_BIN_DIR=/x\nMYAPP_MODE=fast\nexport CELERY_PERCENTGE=1\n");
    CHECK(cfg_envfile_read(path, err) == NULL);
    CHECK_CONTAINS(err, " line 2: FORCE_LEGACY_QUEU is not a turnout setting; did you mean FORCE_LEGACY_QUEUE?");
    CHECK_CONTAINS(err, "; ");
    CHECK_CONTAINS(err, " line 7: CELERY_PERCENTGE is not a turnout setting; did you mean CELERY_PERCENTAGE?");
    char errs[2048] = "";
    int problems = 0;
    CHECK(cfg_envfile_open(path, errs, sizeof(errs), &problems) == NULL);
    CHECK_EQ_INT(problems, 2);
    CHECK_CONTAINS(errs, "line 2: FORCE_LEGACY_QUEU");
    CHECK_CONTAINS(errs, "\n");

    /* through the loader: the start-up and reload path of every binary */
    proxy_settings s = {0};
    CHECK_EQ_INT(pconfig_read(&s, path, errs, sizeof(errs)), 2);
    CHECK(s.listen == NULL); /* nothing taken */
    temp_file(path, "FORCE_LEGACY_QUEUE=yes\nWORKER_NAME=w1\nLEGACYD_MAX_QUEUE=3\nMYAPP_MODE=fast\n");
    CHECK_EQ_INT(pconfig_read(&s, path, errs, sizeof(errs)), 0);
    CHECK(s.force_legacy);
    pconfig_free(&s);
    remove(path);
    CHECK_EQ_INT(pconfig_read(&s, path, errs, sizeof(errs)), 1);
    CHECK_CONTAINS(errs, "TURNOUT_ENV_FILE=\"/tmp/turnout-cfg-");
    CHECK_CONTAINS(errs, "cannot open it");
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
    RUN(test_bool_rule);
    RUN(test_error_lines_cut_between_characters);
    RUN(test_edit_distance);
    RUN(test_suggestion);
    RUN(test_prefix_rule);
    RUN(test_names_match_tables);
    RUN(test_envfile_unknown_names);
    UNIT_END();
}
