#include "daemon.h"

#include <signal.h>
#include <stdio.h>

#include "log.h"

int daemon_main(int argc, char **argv, const daemon_prog *prog, void *self)
{
    bool check_only;
    int rc = cfg_cli(argc, argv, prog->name, prog->summary, prog->options, prog->noptions, &check_only);
    if (rc >= 0) return rc;

    char errs[8192] = "";
    int problems = prog->read(self, errs, sizeof(errs));
    rc = cfg_report(prog->name, problems, errs, check_only);
    if (rc >= 0) {
        prog->teardown(self);
        return rc;
    }
    const char *level, *format;
    prog->log_names(self, &level, &format);
    if (log_setup(level, format, prog->name) != 0) {
        fprintf(stderr, "%s: bad LOG_LEVEL or LOG_FORMAT\n", prog->name);
        prog->teardown(self);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a peer closing mid-write is an error return, not a death */
    signal(SIGHUP, SIG_IGN);  /* until the reload handler is installed */

    rc = 1;
    char err[256] = "";
    struct event *sigs[3] = {NULL, NULL, NULL};
    struct event_base *base = event_base_new();
    if (!base) {
        fprintf(stderr, "%s: cannot create the event loop\n", prog->name);
        goto done;
    }
    int started = prog->start(self, base, err);
    if (started != 0) {
        if (err[0]) fprintf(stderr, "%s: %s\n", prog->name, err);
        rc = started;
        goto done;
    }
    sigs[0] = evsignal_new(base, SIGTERM, prog->stop, self);
    sigs[1] = evsignal_new(base, SIGINT, prog->stop, self);
    sigs[2] = evsignal_new(base, SIGHUP, prog->reload, self);
    for (int i = 0; i < 3; i++) {
        if (!sigs[i] || evsignal_add(sigs[i], NULL) != 0) {
            fprintf(stderr, "%s: cannot install signal handlers\n", prog->name);
            goto done;
        }
    }
    if (event_base_dispatch(base) < 0) {
        LOG_ERROR("event loop failed");
        goto done;
    }
    LOG_INFO("stopped");
    rc = 0;
done:
    for (int i = 0; i < 3; i++)
        if (sigs[i]) event_free(sigs[i]);
    prog->teardown(self);
    if (base) event_base_free(base);
    return rc;
}
