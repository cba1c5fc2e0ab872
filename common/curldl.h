/* curldl — libcurl, loaded when a process first needs it instead of linked.
 *
 * Linking libcurl maps it and everything it depends on (a TLS library,
 * GSSAPI, LDAP, librtmp and theirs) at start-up and runs their
 * constructors: about 6 MiB of resident pages in every process, although
 * plain http:// to an address never touches curl (hpool carries it, see
 * httpc.h).  So libcurl is opened with dlopen on the first request that
 * needs it and its functions are called through a table of pointers, the
 * way systemd treats its optional libraries.  <curl/curl.h> still gives the
 * types and constants.  The library stays loaded until the process exits.
 *
 * Call from the thread that runs the event loop. */
#ifndef TURNOUT_CURLDL_H
#define TURNOUT_CURLDL_H

#include <curl/curl.h>

/* The libcurl functions httpc calls, without their curl_ prefix. */
#define CURLDL_FUNCTIONS(X)                                                          \
    X(global_init) X(global_cleanup)                                                 \
    X(easy_init) X(easy_cleanup) X(easy_reset) X(easy_setopt) X(easy_getinfo)       \
    X(easy_strerror) X(easy_pause)                                                   \
    X(multi_init) X(multi_cleanup) X(multi_setopt) X(multi_add_handle)              \
    X(multi_remove_handle) X(multi_socket_action) X(multi_assign)                   \
    X(multi_info_read) X(multi_strerror)                                             \
    X(slist_append) X(slist_free_all)

/* Each member has the type of a pointer to the libcurl function it names:
 * t->easy_setopt is curl_easy_setopt.  (curl's own names cannot be used:
 * its headers define some of them as macros.) */
typedef struct curldl_fns {
#define CURLDL_MEMBER(name) __typeof__(&curl_##name) name;
    CURLDL_FUNCTIONS(CURLDL_MEMBER)
#undef CURLDL_MEMBER
} curldl_fns;

/* The library opened (libcurl's soname, the one -lcurl linked), and the
 * Debian package that installs it. */
#define CURLDL_SONAME "libcurl.so.4"
#define CURLDL_PACKAGE "libcurl4"

/* Loads libcurl and resolves every function on the first call; later calls
 * return the same table (borrowed, valid until exit).  On failure returns
 * NULL with err naming the library, the Debian package to install and the
 * loader's reason; nothing is kept, so a later call tries again. */
const curldl_fns *curldl_load(char err[256]) __attribute__((warn_unused_result));

/* Tests: the file curldl_load opens instead of CURLDL_SONAME (NULL: back
 * to it).  Has no effect once libcurl is loaded. */
void curldl_set_soname(const char *soname);

#endif
