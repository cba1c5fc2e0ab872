/* curldl — dlopen libcurl on first use; see curldl.h. */
#include "curldl.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>

static curldl_fns fns;
static bool loaded;
static const char *soname_override; /* tests */

void curldl_set_soname(const char *soname) { soname_override = soname; }

const curldl_fns *curldl_load(char err[256])
{
    if (loaded) return &fns;
    const char *soname = soname_override ? soname_override : CURLDL_SONAME;
    /* RTLD_LOCAL: curl's dependencies (the TLS library among them) do not
     * become visible to later lookups in the process. */
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, 256, "cannot load libcurl, needed for https://, host names and proxies: %s"
                 " (install the Debian package " CURLDL_PACKAGE ")", why ? why : soname);
        return NULL;
    }
    curldl_fns t;
    void *p;
    /* ISO C has no conversion from void * to a function pointer; POSIX
     * requires dlsym's result to convert back to the function's type. */
#define CURLDL_RESOLVE(name)                                                              \
    if (!(p = dlsym(h, "curl_" #name))) {                                                 \
        snprintf(err, 256, "%s is not libcurl: no function curl_" #name                    \
                 " (install the Debian package " CURLDL_PACKAGE ")", soname);              \
        goto err;                                                                         \
    }                                                                                     \
    t.name = (__typeof__(t.name))p;
    CURLDL_FUNCTIONS(CURLDL_RESOLVE)
#undef CURLDL_RESOLVE
    fns = t;
    loaded = true;
    return &fns;
err:
    /* nothing of it was called yet: unloading is safe */
    dlclose(h);
    return NULL;
}
