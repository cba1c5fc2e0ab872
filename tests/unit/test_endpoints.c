/* The endpoint table and its matching (endpoints.h): exact beats '*',
 * the longer literal wins, order does not matter, the proxy's own table
 * passes its checks and routes every documented path. */
#include <string.h>

#include "endpoints.h"
#include "proxy.h"
#include "unit.h"

static void h_a(proxy *p, struct evhttp_request *r, const char *path, double t0) { (void)p, (void)r, (void)path, (void)t0; }
static void h_b(proxy *p, struct evhttp_request *r, const char *path, double t0) { (void)p, (void)r, (void)path, (void)t0; }
static void h_c(proxy *p, struct evhttp_request *r, const char *path, double t0) { (void)p, (void)r, (void)path, (void)t0; }

static const char *who(const endpoint *t, size_t n, const char *path)
{
    const endpoint *e = endpoints_match(t, n, path);
    return e ? e->pattern : "(pass-through)";
}

static void test_matching_rules(void)
{
    /* the same three in both orders give the same answers */
    endpoint fwd[] = {{"/x", RT_SUBMIT, h_a}, {"/x/*", RT_STATUS, h_b}, {"/x/*/cancel", RT_CANCEL, h_c}};
    endpoint rev[] = {{"/x/*/cancel", RT_CANCEL, h_c}, {"/x/*", RT_STATUS, h_b}, {"/x", RT_SUBMIT, h_a}};
    endpoint *tables[] = {fwd, rev};
    for (int i = 0; i < 2; i++) {
        endpoint *t = tables[i];
        CHECK_STR(who(t, 3, "/x"), "/x");
        CHECK_STR(who(t, 3, "/x/1"), "/x/*");
        CHECK_STR(who(t, 3, "/x/a/b"), "/x/*");          /* '*' takes '/' too */
        CHECK_STR(who(t, 3, "/x/1/cancel"), "/x/*/cancel");
        CHECK_STR(who(t, 3, "/x/a/b/cancel"), "/x/*/cancel");
        CHECK_STR(who(t, 3, "/x/cancel"), "/x/*");        /* '*' is at least one character */
        CHECK_STR(who(t, 3, "/x/*"), "/x/*");             /* a literal '*' is a character like any */
        CHECK_STR(who(t, 3, "/x/*/cancel"), "/x/*/cancel");
        CHECK_STR(who(t, 3, "/x/"), "(pass-through)");
        CHECK_STR(who(t, 3, "/xy"), "(pass-through)");
        CHECK_STR(who(t, 3, "/"), "(pass-through)");
        char err[256];
        CHECK_EQ_INT(endpoints_check(t, 3, err), 0);
    }
}

static void test_bad_tables(void)
{
    char err[256];
    endpoint twice[] = {{"/a", RT_SUBMIT, h_a}, {"/a", RT_STATUS, h_b}};
    CHECK_EQ_INT(endpoints_check(twice, 2, err), -1);
    CHECK(strstr(err, "twice") != NULL);
    endpoint tie[] = {{"/a/*/x", RT_SUBMIT, h_a}, {"/a/x/*", RT_STATUS, h_b}};
    CHECK_EQ_INT(endpoints_check(tie, 2, err), -1); /* "/a/x/x" would match both, same weight */
    CHECK(strstr(err, "same weight") != NULL);
    endpoint apart[] = {{"/a/*/x", RT_SUBMIT, h_a}, {"/b/*/x", RT_STATUS, h_b}};
    CHECK_EQ_INT(endpoints_check(apart, 2, err), 0);
    endpoint stars[] = {{"/a/*/*", RT_SUBMIT, h_a}};
    CHECK_EQ_INT(endpoints_check(stars, 1, err), -1);
    endpoint relative[] = {{"a", RT_SUBMIT, h_a}};
    CHECK_EQ_INT(endpoints_check(relative, 1, err), -1);
    endpoint none[] = {{"/a", RT_SUBMIT, NULL}};
    CHECK_EQ_INT(endpoints_check(none, 1, err), -1);
}

static void test_the_proxys_table(void)
{
    size_t n;
    const endpoint *t = proxy_endpoints(&n);
    char err[256] = "";
    CHECK_EQ_INT(endpoints_check(t, n, err), 0);
    static const struct {
        const char *path;
        enum pm_route route;
    } cases[] = {
        {"/api/eval", RT_SUBMIT},        {"/api/eval-batch", RT_BATCH},     {"/api/eval/e1", RT_STATUS},
        {"/api/eval-status/e1", RT_STATUS}, {"/api/eval/e1/cancel", RT_CANCEL}, {"/api/eval/a/b/cancel", RT_CANCEL},
        {"/api/queue-status", RT_STATUS}, {"/api/dlq/", RT_DLQ},            {"/api/dlq/stats", RT_DLQ},
        {"/api/dlq/t1/retry", RT_DLQ},   {"/admin/rollout", RT_ADMIN},      {"/admin/rollout/history", RT_ADMIN},
        {"/admin/canary", RT_ADMIN},     {"/admin/canary/start", RT_ADMIN}, {"/admin/shadow/mismatches", RT_ADMIN},
        {"/healthz", RT_PROBE},          {"/readyz", RT_PROBE},             {"/metrics", RT_PROBE},
        {"/dashboard", RT_PROBE},        {"/dashboard/", RT_PROBE},         {"/api/stats", RT_PROBE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const endpoint *e = endpoints_match(t, n, cases[i].path);
        CHECK(e != NULL);
        if (e) CHECK_EQ_INT((int)e->route, (int)cases[i].route);
    }
    /* everything else is the API's */
    const char *theirs[] = {"/", "/api/evals", "/api/eval-batch/x", "/admin", "/admin/rollouts", "/users/1",
                            "/healthz/x", "/api/dlqx", "/dashboard/x"};
    for (size_t i = 0; i < sizeof(theirs) / sizeof(theirs[0]); i++)
        CHECK(endpoints_match(t, n, theirs[i]) == NULL);
}

int main(void)
{
    RUN(test_matching_rules);
    RUN(test_bad_tables);
    RUN(test_the_proxys_table);
    UNIT_END();
}
