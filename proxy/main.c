/* turnout-proxy: the front door.  See DESIGN §1–§4 and README. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cfg.h"
#include "log.h"
#include "pconfig.h"
#include "proxy.h"
#include "util.h"

static void usage(FILE *out)
{
    fprintf(out,
            "turnout-proxy %s — splits evaluation submissions between the legacy queue and\n"
            "a Celery-format Redis priority queue, and measures both.\n\n"
            "Usage: turnout-proxy [--help | --version | --check-config | --print-config-markdown]\n"
            "Configuration comes from the environment only.\n\n",
            TURNOUT_VERSION);
    cfg_print_help(pconfig_table, pconfig_count, out);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    LOG_INFO("signal received, draining", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM");
    proxy_drain(arg);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    proxy_reload(arg);
}

int main(int argc, char **argv)
{
    bool check_only = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("turnout-proxy %s\n", TURNOUT_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check_only = true;
        } else if (strcmp(argv[i], "--print-config-markdown") == 0) {
            cfg_print_markdown(pconfig_table, pconfig_count, stdout);
            return 0;
        } else {
            fprintf(stderr, "turnout-proxy: unknown argument \"%s\"; see --help\n", argv[i]);
            return 2;
        }
    }

    proxy_settings s = {0};
    char errs[8192];
    int n = pconfig_load(&s, cfg_getenv, NULL, errs, sizeof(errs));
    if (n) {
        fprintf(stderr, "turnout-proxy: %d configuration problem%s:\n%s", n, n == 1 ? "" : "s", errs);
        return 2;
    }
    if (check_only) {
        printf("turnout-proxy: configuration OK\n");
        pconfig_free(&s);
        return 0;
    }
    if (log_setup(s.log_level, s.log_format, "turnout-proxy") != 0) {
        pconfig_free(&s);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    char err[256];
    struct event *sigs[3] = {NULL, NULL, NULL};
    proxy *p = NULL;
    struct event_base *base = event_base_new();
    if (!base) {
        fprintf(stderr, "turnout-proxy: cannot create the event loop\n");
        goto done;
    }
    p = proxy_new(base, &s, err);
    if (!p || proxy_listen(p, err) != 0) {
        fprintf(stderr, "turnout-proxy: %s\n", err);
        rc = 2;
        goto done;
    }
    sigs[0] = evsignal_new(base, SIGTERM, on_term, p);
    sigs[1] = evsignal_new(base, SIGINT, on_term, p);
    sigs[2] = evsignal_new(base, SIGHUP, on_hup, p);
    for (int i = 0; i < 3; i++) {
        if (!sigs[i] || evsignal_add(sigs[i], NULL) != 0) {
            fprintf(stderr, "turnout-proxy: cannot install signal handlers\n");
            goto done;
        }
    }
    event_base_dispatch(base);
    LOG_INFO("stopped");
    rc = 0;
done:
    for (int i = 0; i < 3; i++)
        if (sigs[i]) event_free(sigs[i]);
    proxy_free(p);
    pconfig_free(&s);
    if (base) event_base_free(base);
    return rc;
}
