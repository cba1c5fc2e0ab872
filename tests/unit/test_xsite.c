/* The cross-site policy's pure parts (xsite.h): Host names against
 * ALLOWED_HOSTS, Origin against the proxy's own origin and
 * ALLOWED_ORIGINS, the JSON content type; and the settings' checks. */
#include <stdlib.h>

#include "pconfig.h"
#include "xsite.h"
#include "unit.h"

static void test_hosts(void)
{
    /* empty: any host, even a malformed or missing one */
    CHECK(xsite_host_allowed("", "anything:1"));
    CHECK(xsite_host_allowed(NULL, NULL));
    const char *l = "api.example.com, 127.0.0.1,[::1] ,.corp.test";
    CHECK(xsite_host_allowed(l, "api.example.com"));
    CHECK(xsite_host_allowed(l, "API.Example.COM:8080")); /* case and port ignored */
    CHECK(xsite_host_allowed(l, "api.example.com."));     /* the root's dot */
    CHECK(xsite_host_allowed(l, "127.0.0.1:8080"));
    CHECK(xsite_host_allowed(l, "[::1]:8080"));
    CHECK(xsite_host_allowed(l, "[::1]"));
    CHECK(xsite_host_allowed(l, "corp.test"));             /* .corp.test: the domain itself */
    CHECK(xsite_host_allowed(l, "a.b.corp.test:1"));       /* and every name under it */
    CHECK(!xsite_host_allowed(l, "evilcorp.test"));        /* not a suffix of the name, of the domain */
    CHECK(!xsite_host_allowed(l, "corp.test.evil.com"));
    CHECK(!xsite_host_allowed(l, "example.com"));
    CHECK(!xsite_host_allowed(l, "x.api.example.com"));    /* exact names are exact */
    CHECK(!xsite_host_allowed(l, "127.0.0.2"));
    CHECK(!xsite_host_allowed(l, NULL));                   /* no Host at all */
    CHECK(!xsite_host_allowed(l, ""));
    CHECK(!xsite_host_allowed(l, "api.example.com:"));     /* malformed: never matches */
    CHECK(!xsite_host_allowed(l, "api.example.com:99999"));
    CHECK(!xsite_host_allowed(l, "api.example.com:80:80"));
    CHECK(!xsite_host_allowed(l, "api.example.com@evil"));
    CHECK(!xsite_host_allowed(l, "api.example.com/x"));
    CHECK(!xsite_host_allowed(l, "::1"));                  /* v6 goes in brackets */
    CHECK(!xsite_host_allowed(l, "[::1"));
}

static void test_origins(void)
{
    /* the proxy's own origin: the listener's scheme and the Host header */
    CHECK(xsite_origin_allowed("", "http://127.0.0.1:8080", "127.0.0.1:8080", false));
    CHECK(xsite_origin_allowed("", "HTTP://LocalHost:8080", "localhost:8080", false));
    CHECK(xsite_origin_allowed("", "https://api.example.com", "api.example.com:443", true)); /* default port */
    CHECK(xsite_origin_allowed("", "http://api.example.com:80", "api.example.com", false));
    CHECK(xsite_origin_allowed("", "http://[::1]:8080", "[::1]:8080", false));
    CHECK(!xsite_origin_allowed("", "https://127.0.0.1:8080", "127.0.0.1:8080", false)); /* other scheme */
    CHECK(!xsite_origin_allowed("", "http://127.0.0.1:8080", "127.0.0.1:8080", true));
    CHECK(!xsite_origin_allowed("", "http://127.0.0.1:8081", "127.0.0.1:8080", false));  /* other port */
    CHECK(!xsite_origin_allowed("", "http://localhost:8080", "127.0.0.1:8080", false));  /* other name */
    CHECK(!xsite_origin_allowed("", "http://127.0.0.1:8080", NULL, false));
    CHECK(!xsite_origin_allowed("", "null", "127.0.0.1:8080", false));
    CHECK(!xsite_origin_allowed("", "", "127.0.0.1:8080", false));
    CHECK(!xsite_origin_allowed("", "http://127.0.0.1:8080/", "127.0.0.1:8080", false)); /* not an origin */
    CHECK(!xsite_origin_allowed("", "file://", "127.0.0.1:8080", false));
    CHECK(!xsite_origin_allowed("", "http://a@127.0.0.1:8080", "127.0.0.1:8080", false));
    /* the list */
    const char *l = "https://app.example.com, http://localhost:3000";
    CHECK(xsite_origin_allowed(l, "https://app.example.com", "api.example.com", true));
    CHECK(xsite_origin_allowed(l, "https://APP.example.com:443", "api.example.com", true));
    CHECK(xsite_origin_allowed(l, "http://localhost:3000", "api.example.com", true));
    CHECK(!xsite_origin_allowed(l, "http://app.example.com", "api.example.com", true));
    CHECK(!xsite_origin_allowed(l, "https://app.example.com:8443", "api.example.com", true));
    CHECK(!xsite_origin_allowed(l, "https://evil.app.example.com", "api.example.com", true));
    CHECK(!xsite_origin_allowed(l, "http://localhost:30000", "api.example.com", true));
    CHECK(xsite_origin_listed(l, "http://localhost:3000"));
    CHECK(!xsite_origin_listed(l, "null"));
    CHECK(!xsite_origin_listed("", "https://app.example.com"));
}

static void test_content_type(void)
{
    CHECK(xsite_is_json("application/json"));
    CHECK(xsite_is_json("Application/JSON; charset=utf-8"));
    CHECK(xsite_is_json(" application/json ;charset=UTF-8"));
    CHECK(!xsite_is_json(NULL));
    CHECK(!xsite_is_json(""));
    CHECK(!xsite_is_json("text/plain"));
    CHECK(!xsite_is_json("text/plain; application/json"));
    CHECK(!xsite_is_json("application/jsonp"));
    CHECK(!xsite_is_json("application/json-patch+json"));
    CHECK(!xsite_is_json("application/x-www-form-urlencoded"));
    CHECK(!xsite_is_json("multipart/form-data; boundary=x"));
}

typedef struct kv {
    const char *k, *v;
} kv;

static const char *lookup(const char *name, void *ud)
{
    for (const kv *p = ud; p->k; p++)
        if (strcmp(p->k, name) == 0) return p->v;
    return NULL;
}

static void test_settings(void)
{
    proxy_settings s = {0};
    char errs[4096];
    kv ok[] = {{"ALLOWED_HOSTS", "api.example.com,.corp.test,127.0.0.1,[::1]"},
               {"ALLOWED_ORIGINS", "https://app.example.com,http://localhost:3000"},
               {"READ_TOKEN", "r"}, {NULL, NULL}};
    CHECK_EQ_INT(pconfig_load(&s, lookup, ok, errs, sizeof(errs)), 0);
    CHECK_STR(s.allowed_origins, "https://app.example.com,http://localhost:3000");
    CHECK_STR(s.read_token, "r");
    pconfig_free(&s);
    kv star[] = {{"ALLOWED_ORIGINS", "https://ok.example.com, *"}, {"ALLOWED_HOSTS", "*"}, {NULL, NULL}};
    CHECK_EQ_INT(pconfig_load(&s, lookup, star, errs, sizeof(errs)), 2);
    CHECK_CONTAINS(errs, "ALLOWED_ORIGINS: \"*\" a wildcard would let any web page send writes");
    CHECK_CONTAINS(errs, "ALLOWED_HOSTS: \"*\" * is not a host name: leave ALLOWED_HOSTS empty");
    kv bad[] = {{"ALLOWED_ORIGINS", "app.example.com,https://a.example.com/,null,https://*.example.com"},
                {"ALLOWED_HOSTS", "example.com:8080,http://x.test,a b"}, {NULL, NULL}};
    CHECK_EQ_INT(pconfig_load(&s, lookup, bad, errs, sizeof(errs)), 7);
    CHECK_CONTAINS(errs, "ALLOWED_ORIGINS: \"app.example.com\" must be an origin as browsers send it");
    CHECK_CONTAINS(errs, "ALLOWED_ORIGINS: \"https://a.example.com/\" must be an origin only");
    CHECK_CONTAINS(errs, "ALLOWED_ORIGINS: \"null\" null is the origin of sandboxed frames");
    CHECK_CONTAINS(errs, "ALLOWED_ORIGINS: \"https://*.example.com\" a wildcard");
    CHECK_CONTAINS(errs, "ALLOWED_HOSTS: \"example.com:8080\" must be a host name without a port");
    CHECK_CONTAINS(errs, "ALLOWED_HOSTS: \"http://x.test\" must be a host name");
    CHECK_CONTAINS(errs, "ALLOWED_HOSTS: \"a b\" holds a character");
}

int main(void)
{
    RUN(test_hosts);
    RUN(test_origins);
    RUN(test_content_type);
    RUN(test_settings);
    UNIT_END();
}
