/* executor_run — see executor_run.h. */
#include "executor_run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "util.h"

#define PYTHON "/usr/bin/python3"
#define CODE_FILE "main.py"
#define CHILD_PATH "/usr/local/bin:/usr/bin:/bin"
#define CHILD_NOFILE 256
#define READ_CHUNK 65536
#define READS_PER_WAKEUP 16     /* fairness: one chatty child cannot hog the loop */
#define PIPE_GRACE_S 0.5        /* after the reap: a pipe held by an escaped process */
#define TRUNC_MARKER "\n[output truncated]"
#define RMTREE_PASSES 8         /* chmod-and-retry rounds for unreadable dirs */

typedef struct capture {
    int fd;                     /* -1 once at EOF (closed) */
    struct event *ev;
    char *buf;                  /* owned; NUL-terminated for logs */
    size_t len, cap;
    bool truncated;
} capture;

struct exec_run {
    exec_ctx *ctx;
    exec_run *prev, *next;      /* ctx->runs */
    char *eval_id;              /* owned copy */
    char *dir;                  /* owned: the temp dir */
    pid_t pid;
    bool reaped;
    int wstatus;
    double started, ended;
    capture out, err;
    double timeout_s;
    size_t output_limit;        /* fixed at the start: a reload must not shrink it mid-run */
    struct event *timer;        /* wall clock, then the pipe grace after the reap */
    bool grace_over;
    bool have_outcome;          /* timeout/kill decided before the end */
    exec_outcome outcome;
    const char *kill_reason;
    exec_done_fn done;
    void *ud;
};

struct exec_ctx {
    struct event_base *base;
    struct event *sigchld;
    exec_limits limits;
    char *tmp_root;
    int devnull;
    exec_run *runs;
};

const char *exec_outcome_name(exec_outcome o)
{
    switch (o) {
    case EXEC_COMPLETED: return "completed";
    case EXEC_FAILED: return "failed";
    case EXEC_TIMEOUT: return "timeout";
    case EXEC_KILLED: return "killed";
    }
    return "failed";
}

/* ---------- temp dirs ---------- */

static bool rmtree_unreadable; /* set by the nftw callback; single-threaded */

static int rmtree_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (type == FTW_DNR) {
        /* The code may have chmod'ed a dir to 000; give it back and go again. */
        if (chmod(path, 0700) == 0) rmtree_unreadable = true;
        return 0;
    }
    if (type == FTW_DP && chmod(path, 0700) != 0 && errno != ENOENT) return 0;
    if (remove(path) != 0 && errno != ENOENT) {
        if (type == FTW_DP) rmtree_unreadable = true; /* not empty yet: next pass */
    }
    return 0;
}

/* Removes `dir` and everything below it without following links or
 * crossing mounts.  Returns 0 when it is gone. */
static int rmtree(const char *dir)
{
    for (int pass = 0; pass < RMTREE_PASSES; pass++) {
        rmtree_unreadable = false;
        if (nftw(dir, rmtree_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0 && errno == ENOENT) return 0;
        struct stat st;
        if (lstat(dir, &st) != 0 && errno == ENOENT) return 0;
        if (!rmtree_unreadable) break;
    }
    return -1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---------- the child (between fork and exec: async-signal-safe only) ---------- */

typedef struct child_plan {
    const char *dir;
    int devnull, out_w, err_w;
    char *const *argv;
    char *const *envp;
    rlim_t cpu_s, as_bytes, fsize_bytes, nproc;
} child_plan;

static void __attribute__((noreturn)) child_fail(const char *what)
{
    /* stderr is the capture pipe by now (or the executor's log before). */
    static const char prefix[] = "turnout-executor: sandbox setup failed: ";
    int e = errno;
    char num[16];
    size_t n = sizeof(num);
    num[--n] = '\0';
    do {
        num[--n] = (char)('0' + e % 10);
        e /= 10;
    } while (e && n > 0);
    if (write(2, prefix, sizeof(prefix) - 1) < 0 || write(2, what, strlen(what)) < 0 ||
        write(2, " (errno ", 8) < 0 || write(2, num + n, strlen(num + n)) < 0 || write(2, ")\n", 2) < 0)
        _exit(127);
    _exit(127);
}

/* Lowers a limit; a hard limit already below the wanted value is kept (we
 * may only lower it, and lower is stricter anyway). */
static void child_limit(int res, rlim_t soft, rlim_t hard, const char *what)
{
    struct rlimit cur;
    if (getrlimit(res, &cur) != 0) child_fail(what);
    if (cur.rlim_max != RLIM_INFINITY && hard > cur.rlim_max) hard = cur.rlim_max;
    if (soft > hard) soft = hard;
    struct rlimit want = {soft, hard};
    if (setrlimit(res, &want) != 0) child_fail(what);
}

static void __attribute__((noreturn)) child_exec(const child_plan *p)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Ignored signals survive exec: the executor ignores SIGPIPE, the code
     * must not inherit that. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, NULL);

    if (setsid() < 0) child_fail("setsid");
    if (dup2(p->devnull, 0) < 0 || dup2(p->out_w, 1) < 0 || dup2(p->err_w, 2) < 0) child_fail("dup2");
    if (chdir(p->dir) != 0) child_fail("chdir");
    child_limit(RLIMIT_CPU, p->cpu_s, p->cpu_s + 1, "RLIMIT_CPU"); /* soft: SIGXCPU, hard: SIGKILL */
    child_limit(RLIMIT_AS, p->as_bytes, p->as_bytes, "RLIMIT_AS");
    child_limit(RLIMIT_FSIZE, p->fsize_bytes, p->fsize_bytes, "RLIMIT_FSIZE");
    child_limit(RLIMIT_NPROC, p->nproc, p->nproc, "RLIMIT_NPROC");
    child_limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");
    child_limit(RLIMIT_NOFILE, CHILD_NOFILE, CHILD_NOFILE, "RLIMIT_NOFILE");
    /* Nothing of the executor's (listening socket, clients, other runs'
     * pipes) may leak in, whatever its CLOEXEC flag says. */
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
        for (int fd = 3; fd < 65536; fd++) close(fd);
    }
    execve(PYTHON, p->argv, p->envp);
    child_fail("execve " PYTHON);
}

/* ---------- run bookkeeping ---------- */

static void capture_close(capture *c)
{
    if (c->ev) {
        event_free(c->ev);
        c->ev = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static void run_free(exec_run *r)
{
    capture_close(&r->out);
    capture_close(&r->err);
    free(r->out.buf);
    free(r->err.buf);
    if (r->timer) event_free(r->timer);
    if (r->dir) {
        if (rmtree(r->dir) != 0) LOG_WARN("temp dir not fully removed", "eval_id", r->eval_id, "dir", r->dir);
        free(r->dir);
    }
    free(r->eval_id);
    free(r);
}

static void run_unlink(exec_run *r)
{
    exec_ctx *ctx = r->ctx;
    if (r->prev) r->prev->next = r->next;
    else if (ctx->runs == r) ctx->runs = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* Kills the group and the leader itself: the leader may not have reached
 * setsid() yet, and then -pid names no group. */
static void run_signal_group(exec_run *r)
{
    if (r->reaped) {
        /* The pid stays allocated while any member of its group lives, so
         * this reaches only leftovers of this run. */
        kill(-r->pid, SIGKILL);
        return;
    }
    kill(-r->pid, SIGKILL);
    kill(r->pid, SIGKILL);
}

static int capture_append(capture *c, const char *data, size_t n, size_t limit)
{
    if (c->truncated) return 0;
    size_t room = limit > c->len ? limit - c->len : 0;
    if (n > room) {
        n = room;
        c->truncated = true;
    }
    size_t need = c->len + n + sizeof(TRUNC_MARKER);
    if (need > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < need) cap *= 2;
        if (cap > limit + sizeof(TRUNC_MARKER)) cap = limit + sizeof(TRUNC_MARKER);
        char *b = realloc(c->buf, cap);
        if (!b) {
            c->truncated = true; /* keep what we have; dropping beats dying */
            return -1;
        }
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    if (c->truncated) {
        memcpy(c->buf + c->len, TRUNC_MARKER, sizeof(TRUNC_MARKER) - 1);
        c->len += sizeof(TRUNC_MARKER) - 1;
    }
    c->buf[c->len] = '\0';
    return 0;
}

static void run_finish(exec_run *r)
{
    exec_result res = {0};
    if (r->have_outcome) {
        res.outcome = r->outcome;
    } else {
        res.outcome = WIFEXITED(r->wstatus) && WEXITSTATUS(r->wstatus) == 0 ? EXEC_COMPLETED : EXEC_FAILED;
    }
    res.exited = WIFEXITED(r->wstatus);
    res.exit_code = res.exited ? WEXITSTATUS(r->wstatus) : 0;
    res.term_signal = WIFSIGNALED(r->wstatus) ? WTERMSIG(r->wstatus) : 0;
    res.out = r->out.buf ? r->out.buf : "";
    res.out_len = r->out.len;
    res.err = r->err.buf ? r->err.buf : "";
    res.err_len = r->err.len;
    res.duration_s = r->ended - r->started;
    res.timeout_s = r->timeout_s;
    res.kill_reason = r->kill_reason;
    run_unlink(r);
    r->done(&res, r->ud);
    run_free(r);
}

static void run_maybe_finish(exec_run *r)
{
    if (!r->reaped) return;
    if ((r->out.fd >= 0 || r->err.fd >= 0) && !r->grace_over) return;
    if (r->out.fd >= 0 || r->err.fd >= 0)
        LOG_WARN("output pipe still held after the run ended; closed", "eval_id", r->eval_id);
    run_finish(r);
}

static void on_pipe(evutil_socket_t fd, short what, void *arg)
{
    exec_run *r = arg;
    capture *c = fd == r->out.fd ? &r->out : &r->err;
    char chunk[READ_CHUNK];
    (void)what;
    for (int i = 0; i < READS_PER_WAKEUP; i++) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n > 0) {
            if (capture_append(c, chunk, (size_t)n, r->output_limit) != 0)
                LOG_ERROR("out of memory capturing output; the rest is dropped", "eval_id", r->eval_id);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        /* EOF, or an error that will not go away: this stream is over. */
        capture_close(c);
        run_maybe_finish(r);
        return;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    exec_run *r = arg;
    (void)fd;
    (void)what;
    if (r->reaped) { /* the pipe grace ran out */
        r->grace_over = true;
        run_maybe_finish(r);
        return;
    }
    if (!r->have_outcome) {
        r->have_outcome = true;
        r->outcome = EXEC_TIMEOUT;
        LOG_INFO("run timed out; killing its process group", "eval_id", r->eval_id);
    }
    run_signal_group(r);
}

/* Children that are not a run's leader: processes of a run that escaped its
 * group (setsid) and were orphaned to us as subreaper.  Out of the sandbox's
 * reach either way, so they are killed and reaped. */
static void kill_strays(exec_ctx *ctx)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%ld/children", (long)getpid());
    FILE *f = fopen(path, "re");
    if (!f) return;
    long pid;
    while (fscanf(f, "%ld", &pid) == 1) {
        /* Still in the group of a live run (orphaned inside it): it goes
         * with that group when the run ends. */
        pid_t pgid = getpgid((pid_t)pid);
        bool known = false;
        for (exec_run *r = ctx->runs; r && !known; r = r->next)
            known = !r->reaped && (r->pid == (pid_t)pid || r->pid == pgid);
        if (!known) kill((pid_t)pid, SIGKILL);
    }
    fclose(f);
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    exec_ctx *ctx = arg;
    bool stray = false;
    (void)sig;
    (void)what;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid < 0 && errno == EINTR) continue;
        if (pid <= 0) break;
        exec_run *r = ctx->runs;
        while (r && (r->pid != pid || r->reaped)) r = r->next;
        if (!r) {
            stray = true;
            continue;
        }
        r->reaped = true;
        r->wstatus = st;
        r->ended = util_monotonic();
        /* Whatever it left running in its group goes too; that also closes
         * the pipe ends those processes held. */
        run_signal_group(r);
        event_del(r->timer);
        struct timeval tv = {0, (suseconds_t)(PIPE_GRACE_S * 1e6)};
        if (evtimer_add(r->timer, &tv) != 0) r->grace_over = true;
        stray = true; /* its escaped descendants, if any, are ours now */
    }
    if (stray) kill_strays(ctx);
    /* Finish after the loop: a completion may start a new run. */
    exec_run *r = ctx->runs;
    while (r) {
        exec_run *next = r->next;
        run_maybe_finish(r);
        r = next;
    }
}

/* ---------- public ---------- */

exec_ctx *exec_ctx_new(struct event_base *base, const exec_limits *limits, const char *tmp_root, char err[256])
{
    exec_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    ctx->base = base;
    ctx->limits = *limits;
    ctx->devnull = -1;
    ctx->tmp_root = strdup(tmp_root);
    if (!ctx->tmp_root) {
        snprintf(err, 256, "out of memory");
        goto err;
    }
    ctx->devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (ctx->devnull < 0) {
        snprintf(err, 256, "cannot open /dev/null: %s", strerror(errno));
        goto err;
    }
    /* Descendants that escape a run's group end up with us, not init, so
     * they can be found and killed (kill_strays) and never stay zombies. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        snprintf(err, 256, "prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
        goto err;
    }
    ctx->sigchld = evsignal_new(base, SIGCHLD, on_sigchld, ctx);
    if (!ctx->sigchld || event_add(ctx->sigchld, NULL) != 0) {
        snprintf(err, 256, "cannot watch SIGCHLD");
        goto err;
    }
    return ctx;
err:
    exec_ctx_free(ctx);
    return NULL;
}

void exec_ctx_free(exec_ctx *ctx)
{
    if (!ctx) return;
    while (ctx->runs) {
        exec_run *r = ctx->runs;
        if (!r->reaped) {
            run_signal_group(r);
            while (waitpid(r->pid, &r->wstatus, 0) < 0 && errno == EINTR) {}
            r->reaped = true;
            run_signal_group(r);
        }
        run_unlink(r);
        run_free(r);
    }
    if (ctx->sigchld) event_free(ctx->sigchld);
    if (ctx->devnull >= 0) close(ctx->devnull);
    free(ctx->tmp_root);
    free(ctx);
}

void exec_ctx_set_limits(exec_ctx *ctx, const exec_limits *limits) { ctx->limits = *limits; }

static rlim_t mb(long long v) { return (rlim_t)v * 1024 * 1024; }

exec_run *exec_run_start(exec_ctx *ctx, const exec_spec *spec, exec_done_fn done, void *ud, char err[256],
                         bool *busy)
{
    exec_run *r = calloc(1, sizeof(*r));
    int out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
    char *code_path = NULL, *env_home = NULL, *env_tmp = NULL;
    int fd;

    *busy = false;
    if (!r) {
        snprintf(err, 256, "out of memory");
        *busy = true;
        return NULL;
    }
    r->ctx = ctx;
    r->pid = -1;
    r->out.fd = r->err.fd = -1;
    r->done = done;
    r->ud = ud;
    r->output_limit = ctx->limits.output_limit;
    r->timeout_s = spec->timeout_s;
    r->eval_id = strdup(spec->eval_id);
    if (!r->eval_id || asprintf(&r->dir, "%s/turnout-exec-XXXXXX", ctx->tmp_root) < 0) {
        r->dir = NULL;
        snprintf(err, 256, "out of memory");
        *busy = true;
        goto err;
    }
    if (!mkdtemp(r->dir)) {
        snprintf(err, 256, "cannot make a temp dir under %s: %s", ctx->tmp_root, strerror(errno));
        free(r->dir);
        r->dir = NULL;
        *busy = errno == ENOSPC || errno == EMFILE || errno == ENFILE;
        goto err;
    }
    if (asprintf(&code_path, "%s/" CODE_FILE, r->dir) < 0) {
        code_path = NULL;
        snprintf(err, 256, "out of memory");
        *busy = true;
        goto err;
    }
    fd = open(code_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int werr = fd < 0 ? errno : write_all(fd, spec->code, spec->code_len) != 0 ? errno : 0;
    if (fd >= 0 && close(fd) != 0 && !werr) werr = errno;
    fd = -1;
    if (werr) {
        snprintf(err, 256, "cannot write the code to %s: %s", code_path, strerror(werr));
        *busy = true;
        goto err;
    }
    if (pipe2(out_p, O_CLOEXEC) != 0 || pipe2(err_p, O_CLOEXEC) != 0) {
        snprintf(err, 256, "pipe: %s", strerror(errno));
        *busy = true;
        goto err;
    }
    if (fcntl(out_p[0], F_SETFL, O_NONBLOCK) != 0 || fcntl(err_p[0], F_SETFL, O_NONBLOCK) != 0) {
        snprintf(err, 256, "fcntl: %s", strerror(errno));
        goto err;
    }
    r->out.fd = out_p[0];
    r->err.fd = err_p[0];
    out_p[0] = err_p[0] = -1;
    r->out.ev = event_new(ctx->base, r->out.fd, EV_READ | EV_PERSIST, on_pipe, r);
    r->err.ev = event_new(ctx->base, r->err.fd, EV_READ | EV_PERSIST, on_pipe, r);
    r->timer = evtimer_new(ctx->base, on_timer, r);
    if (!r->out.ev || !r->err.ev || !r->timer) {
        snprintf(err, 256, "out of memory");
        *busy = true;
        goto err;
    }
    if (asprintf(&env_home, "HOME=%s", r->dir) < 0 || asprintf(&env_tmp, "TMPDIR=%s", r->dir) < 0) {
        env_home = env_tmp = NULL;
        snprintf(err, 256, "out of memory");
        *busy = true;
        goto err;
    }
    /* -I isolates from the environment and user site; it also ignores
     * PYTHON* variables, hence -B -u for what the environment asks too. */
    char *const argv[] = {(char *)"python3", (char *)"-I", (char *)"-B", (char *)"-u", (char *)CODE_FILE, NULL};
    char *const envp[] = {(char *)"PATH=" CHILD_PATH, env_home, env_tmp, (char *)"LANG=C.UTF-8",
                          (char *)"PYTHONDONTWRITEBYTECODE=1", (char *)"PYTHONUNBUFFERED=1", NULL};
    double cpu = ceil(spec->timeout_s) + 1;
    child_plan plan = {
        .dir = r->dir,
        .devnull = ctx->devnull,
        .out_w = out_p[1],
        .err_w = err_p[1],
        .argv = argv,
        .envp = envp,
        .cpu_s = (rlim_t)cpu,
        .as_bytes = mb(ctx->limits.memory_mb),
        .fsize_bytes = mb(ctx->limits.file_mb),
        .nproc = (rlim_t)ctx->limits.max_procs,
    };
    r->started = util_monotonic();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, 256, "fork: %s", strerror(errno));
        *busy = true;
        goto err;
    }
    if (pid == 0) child_exec(&plan);
    r->pid = pid;
    close(out_p[1]);
    close(err_p[1]);
    out_p[1] = err_p[1] = -1;

    struct timeval tv = {(time_t)spec->timeout_s,
                         (suseconds_t)((spec->timeout_s - floor(spec->timeout_s)) * 1e6)};
    r->next = ctx->runs;
    if (ctx->runs) ctx->runs->prev = r;
    ctx->runs = r;
    if (event_add(r->out.ev, NULL) != 0 || event_add(r->err.ev, NULL) != 0 || evtimer_add(r->timer, &tv) != 0) {
        /* Cannot watch it: stop it now; the reap still completes it. */
        LOG_ERROR("cannot watch a run; killing it", "eval_id", r->eval_id);
        exec_run_kill(r, "the executor could not watch the run (event setup failed)");
        capture_close(&r->out);
        capture_close(&r->err);
    }
    free(code_path);
    free(env_home);
    free(env_tmp);
    return r;
err:
    for (int i = 0; i < 2; i++) {
        if (out_p[i] >= 0) close(out_p[i]);
        if (err_p[i] >= 0) close(err_p[i]);
    }
    free(code_path);
    free(env_home);
    free(env_tmp);
    run_free(r);
    return NULL;
}

void exec_run_kill(exec_run *r, const char *reason)
{
    if (!r->have_outcome && !r->reaped) {
        r->have_outcome = true;
        r->outcome = EXEC_KILLED;
        r->kill_reason = reason;
    }
    if (!r->reaped) run_signal_group(r);
}
