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
    bool check_only;
    int exit_code = cfg_cli(argc, argv, "turnout-proxy",
                            "splits evaluation submissions between the legacy queue and a Celery-format "
                            "Redis priority queue, and measures both",
                            pconfig_table, pconfig_count, &check_only);
    if (exit_code >= 0) return exit_code;

    proxy_settings s = {0};
    char errs[8192] = "";
    int n = pconfig_read(&s, getenv("TURNOUT_ENV_FILE"), errs, sizeof(errs));
    exit_code = cfg_report("turnout-proxy", n, errs, check_only);
    if (exit_code >= 0) {
        pconfig_free(&s);
        return exit_code;
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
