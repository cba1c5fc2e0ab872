/* turnout-proxy: the front door (README).  The shared main() skeleton is
 * common/daemon.c; these are the proxy's hooks. */
#include <signal.h>
#include <stdlib.h>

#include "daemon.h"
#include "log.h"
#include "pconfig.h"
#include "proxy.h"

typedef struct proxy_prog {
    proxy_settings s; /* moved into the proxy by proxy_new */
    proxy *p;
} proxy_prog;

static int read_settings(void *self, char *errs, size_t errs_size)
{
    proxy_prog *pp = self;
    return pconfig_read(&pp->s, getenv("TURNOUT_ENV_FILE"), errs, errs_size);
}

static void log_names(const void *self, const char **level, const char **format)
{
    const proxy_prog *pp = self;
    *level = pp->s.log_level;
    *format = pp->s.log_format;
}

static int start(void *self, struct event_base *base, char err[256])
{
    proxy_prog *pp = self;
    pp->p = proxy_new(base, &pp->s, err);
    return pp->p && proxy_listen(pp->p, err) == 0 ? 0 : 2;
}

static void on_term(evutil_socket_t sig, short what, void *self)
{
    (void)what;
    LOG_INFO("signal received, draining", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM");
    proxy_drain(((proxy_prog *)self)->p);
}

static void on_hup(evutil_socket_t sig, short what, void *self)
{
    (void)sig;
    (void)what;
    proxy_reload(((proxy_prog *)self)->p);
}

static void teardown(void *self)
{
    proxy_prog *pp = self;
    proxy_free(pp->p);
    pconfig_free(&pp->s);
}

int main(int argc, char **argv)
{
    const daemon_prog prog = {
        .name = "turnout-proxy",
        .summary = "splits evaluation submissions between the legacy queue and a Celery-format "
                   "Redis priority queue, and measures both",
        .options = pconfig_table,
        .noptions = pconfig_count,
        .read = read_settings,
        .log_names = log_names,
        .start = start,
        .stop = on_term,
        .reload = on_hup,
        .teardown = teardown,
    };
    proxy_prog pp = {0};
    return daemon_main(argc, argv, &prog, &pp);
}
