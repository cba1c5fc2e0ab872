#!/bin/bash
# Builds the libFuzzer targets of tests/fuzz/ into build/fuzz/ and runs them.
#   scripts/run-fuzz.sh [seconds-per-target] [target ...]
# Default 10 s per target, every target.  For each target: every saved
# regression input (tests/fuzz/regressions/<target>/) is run once, then the
# target fuzzes a copy of its seed corpus (tests/fuzz/corpus/<target>/ ->
# build/fuzz/corpus-<target>/) for the given time.  Any crash, leak,
# sanitizer report, timeout (> 5 s) or RSS over 1 GiB fails the run and
# names the target and the crash file (build/fuzz/crashes/<target>/).
# Environment: CLANG (default /usr/bin/clang, else clang on PATH),
# FUZZ_KEEP_CORPUS=1 keeps build/fuzz/corpus-<target> from earlier runs
# (the seeds are added to it) instead of starting from the seeds alone.
set -eu

cd "$(dirname "$0")/.."

SECS=${1:-10}
[ $# -gt 0 ] && shift
case "$SECS" in
    '' | *[!0-9]*) echo "run-fuzz: seconds must be a whole number, got \"$SECS\"" >&2; exit 2 ;;
esac
TARGETS=${*:-"fuzz_submission fuzz_celery_decode fuzz_legacy_reply fuzz_config fuzz_jsonr fuzz_pickle"}

OUT=build/fuzz
PKGS="libevent libevent_openssl hiredis libcurl jansson openssl"
# linked: as the Makefile's proxy and unit tests (libcurl is loaded at run
# time, common/curldl.h; proxy/pconfig.c uses OpenSSL)
LINK_PKGS="libevent libevent_openssl hiredis jansson openssl"
APT_HINT="apt-get install -y clang libclang-rt-14-dev   (Debian: clang 14 and its libFuzzer runtime)"

# ---- toolchain: never skip, say how to get it ----
if [ -n "${CLANG:-}" ]; then
    CC=$CLANG
elif [ -x /usr/bin/clang ]; then
    CC=/usr/bin/clang
elif command -v clang >/dev/null 2>&1; then
    CC=$(command -v clang)
else
    echo "run-fuzz: FAILED: clang is not installed; the fuzz targets need it." >&2
    echo "run-fuzz: install it with:  $APT_HINT" >&2
    exit 1
fi
# shellcheck disable=SC2086 # a list of package names
if ! PKG_CFLAGS=$(pkg-config --cflags $PKGS 2>/dev/null) || ! PKG_LIBS=$(pkg-config --libs $LINK_PKGS 2>/dev/null); then
    echo "run-fuzz: FAILED: pkg-config does not know $PKGS; run scripts/deps.sh install" >&2
    exit 1
fi

mkdir -p "$OUT/obj"
probe=$OUT/probe
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$probe.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" 2> "$probe.log"; then
    cat "$probe.log" >&2
    echo "run-fuzz: FAILED: $CC cannot build a libFuzzer target (libFuzzer runtime missing?)." >&2
    echo "run-fuzz: install it with:  $APT_HINT" >&2
    exit 1
fi
rm -f "$probe" "$probe.c" "$probe.log"

# ---- build ----
# Project code is instrumented for coverage (fuzzer-no-link) and sanitized;
# only the targets link libFuzzer's main.  UB aborts instead of printing on.
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS_ALL="-std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Icommon -Iproxy -Iproxy/backend $PKG_CFLAGS"
LIB_CFLAGS="$CFLAGS_ALL $SAN -fsanitize=fuzzer-no-link"
TGT_CFLAGS="$CFLAGS_ALL -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes $SAN -fsanitize=fuzzer"
LIB_SRC="$(ls common/*.c) proxy/submission.c proxy/pconfig.c proxy/backend/legacy_http.c proxy/backend/backend.c"

# Objects are rebuilt when a file they were built from (per the .d file)
# is newer, or when the compiler command changed.
stamp="$CC $LIB_CFLAGS"
if [ ! -f "$OUT/obj/flags" ] || [ "$(cat "$OUT/obj/flags")" != "$stamp" ]; then
    rm -f "$OUT"/obj/*.o "$OUT"/obj/*.d
    printf '%s\n' "$stamp" > "$OUT/obj/flags"
fi
stale() { # obj depfile -> true when it must be rebuilt
    [ -f "$1" ] && [ -f "$2" ] || return 0
    # shellcheck disable=SC2013 # make-style dependency words, not lines
    for dep in $(sed -e 's/\\$//' -e 's/^[^:]*://' "$2"); do
        case "$dep" in *:) continue ;; esac
        [ "$dep" -nt "$1" ] && return 0
    done
    return 1
}
OBJS=""
pids=""
for src in $LIB_SRC; do
    obj=$OUT/obj/$(echo "$src" | tr '/' '_' | sed 's/\.c$/.o/')
    OBJS="$OBJS $obj"
    if stale "$obj" "${obj%.o}.d"; then
        echo "  CC      $src (fuzz)"
        # shellcheck disable=SC2086
        "$CC" $LIB_CFLAGS -MMD -MF "${obj%.o}.d" -c "$src" -o "$obj" &
        pids="$pids $!"
    fi
done
for p in $pids; do
    wait "$p" || { echo "run-fuzz: FAILED: compiling the project sources for fuzzing" >&2; exit 1; }
done
for t in $TARGETS; do
    src=tests/fuzz/$t.c
    [ -f "$src" ] || { echo "run-fuzz: no such target: $src" >&2; exit 2; }
    bin=$OUT/$t
    # shellcheck disable=SC2086 # OBJS is a list of paths without spaces
    if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ -n "$(find $OBJS -newer "$bin" 2>/dev/null | head -n 1)" ]; then
        echo "  LINK    $bin"
        # shellcheck disable=SC2086
        "$CC" $TGT_CFLAGS "$src" $OBJS -o "$bin" $PKG_LIBS -lm
    fi
done

# ---- run ----
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"
FLAGS="-timeout=5 -rss_limit_mb=1024"
failed=""

crash_report() { # target log what
    art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$2" | tail -n 1)
    echo "run-fuzz: FAILED: $1: $3" >&2
    grep -E 'ERROR: |SUMMARY: |runtime error|invariant failed|^    #[0-9]' "$2" | head -n 40 >&2 || true
    if [ -n "$art" ]; then
        echo "run-fuzz: $1: crash file: $art  (reproduce: $OUT/$1 $art)" >&2
    fi
    echo "run-fuzz: $1: full log: $2" >&2
    failed="$failed $1"
}

for t in $TARGETS; do
    bin=$OUT/$t
    crashes=$OUT/crashes/$t
    mkdir -p "$crashes"
    log=$OUT/$t.log

    # Saved regressions first: each file once.
    regs=$(find "tests/fuzz/regressions/$t" -type f ! -name '*.md' 2>/dev/null | sort)
    if [ -n "$regs" ]; then
        nreg=$(printf '%s\n' "$regs" | wc -l)
        # shellcheck disable=SC2086
        if "$bin" $FLAGS -artifact_prefix="$crashes/" $regs > "$OUT/$t.regressions.log" 2>&1; then
            echo "fuzz: $t: $nreg regression input(s) pass"
        else
            bad=$(awk '/^Running: /{f=$2} /ERROR: |runtime error|invariant failed/{print f; exit}' "$OUT/$t.regressions.log")
            crash_report "$t" "$OUT/$t.regressions.log" "a saved regression input crashes${bad:+: $bad}"
            continue
        fi
    fi

    corpus=$OUT/corpus-$t
    [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "$corpus"
    mkdir -p "$corpus"
    if [ -d "tests/fuzz/corpus/$t" ]; then cp tests/fuzz/corpus/"$t"/* "$corpus"/; fi
    dict=""
    [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"

    # shellcheck disable=SC2086
    if "$bin" $FLAGS $dict -max_total_time="$SECS" -print_final_stats=1 \
        -artifact_prefix="$crashes/" "$corpus" > "$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
        cov=$(printf '%s\n' "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
        ft=$(printf '%s\n' "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
        corp=$(printf '%s\n' "$last" | sed -n 's/.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
        echo "fuzz: $t: ok, ${SECS}s, ${execs:-?} execs (${speed:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
    else
        crash_report "$t" "$log" "the fuzzer found a crash"
    fi
done

if [ -n "$failed" ]; then
    echo "run-fuzz: FAILED:$failed" >&2
    exit 1
fi
echo "fuzz: all targets passed"
