# turnout — top-level build.  `make` builds every binary into build/.
# CFLAGS stays yours; the project's flags are added on top.

CC      ?= cc
CFLAGS  ?= -O2 -g
BUILD   ?= build
VERSION := $(shell cat VERSION)
PKGS    := libevent libevent_openssl hiredis libcurl jansson openssl zlib
# Each binary links only what it calls: libcurl is never linked (httpc loads
# it on first use, common/curldl.h; dlopen is in glibc's libc since 2.34, no
# -ldl) and OpenSSL only into the proxy (TLS server, routing hash, admin
# token compare).  A linked library is mapped and initialised at start-up,
# used or not: 6-8 MiB of resident memory for these two.
PROXY_PKGS  := libevent libevent_openssl hiredis jansson openssl zlib
DAEMON_PKGS := libevent hiredis jansson

PROJECT_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wformat=2 \
	-Wstrict-prototypes -Wmissing-prototypes -Wwrite-strings \
	-Icommon -Iproxy -Iproxy/backend -Iworker -Iexecutor -Ilegacyd \
	-DTURNOUT_VERSION='"$(VERSION)"' -MMD -MP
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PROXY_LIBS  = $(shell pkg-config --libs $(PROXY_PKGS) 2>/dev/null) -lm
DAEMON_LIBS = $(shell pkg-config --libs $(DAEMON_PKGS) 2>/dev/null) -lm

ALL_CFLAGS = $(PROJECT_CFLAGS) $(PKG_CFLAGS) $(CFLAGS) $(EXTRA_CFLAGS)
ALL_LDFLAGS = $(LDFLAGS) $(EXTRA_LDFLAGS)

COMMON_SRC  := $(wildcard common/*.c)
PROXY_SRC   := $(wildcard proxy/*.c proxy/backend/*.c)
LEGACYD_SRC := $(wildcard legacyd/*.c)
EXECUTOR_SRC := $(wildcard executor/*.c)
WORKER_SRC  := $(wildcard worker/*.c)
UNIT_SRC    := $(wildcard tests/unit/test_*.c)

Q := $(if $(V),,@)
obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

BINS := $(BUILD)/turnout-proxy $(BUILD)/turnout-legacyd $(BUILD)/turnout-executor \
	$(BUILD)/turnout-worker
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/unit/%,$(UNIT_SRC))

.PHONY: all run test check unit sim integration asan bench clean deps readme-check layer-check fuzz faults soak valgrind
all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

# The built-in page, compiled into the proxy (no file on disk at run time).
PAGE_OBJ := $(call obj,$(BUILD)/gen/dashboard_page.c)
$(BUILD)/embed: scripts/embed.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) -O2 -Wall -Werror $< -o $@
$(BUILD)/gen/dashboard_page.c: proxy/dashboard/index.html $(BUILD)/embed
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  EMBED   $<")
	$(Q)$(BUILD)/embed dashboard_page < $< > $@

$(BUILD)/turnout-proxy: $(call obj,$(PROXY_SRC) $(COMMON_SRC)) $(PAGE_OBJ)
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(ALL_LDFLAGS) $(PROXY_LIBS)

$(BUILD)/turnout-legacyd: $(call obj,$(LEGACYD_SRC) $(COMMON_SRC))
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(ALL_LDFLAGS) $(DAEMON_LIBS)

$(BUILD)/turnout-executor: $(call obj,$(EXECUTOR_SRC) $(COMMON_SRC))
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(ALL_LDFLAGS) $(DAEMON_LIBS)

$(BUILD)/turnout-worker: $(call obj,$(WORKER_SRC) $(COMMON_SRC))
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(ALL_LDFLAGS) $(DAEMON_LIBS)

# Unit tests use the modules through their headers; they link the rest of
# common/ and proxy/ minus the programs' main().
UNIT_LINK_SRC := $(filter-out proxy/main.c,$(PROXY_SRC)) $(COMMON_SRC)
$(BUILD)/unit/%: tests/unit/%.c $(call obj,$(UNIT_LINK_SRC)) $(PAGE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/unit $(filter %.c %.o,$^) -o $@ $(ALL_LDFLAGS) $(PROXY_LIBS)

# The canary judge simulated (tests/sim): proxy/gates.c over thousands of
# fixed-seed canaries; prints its figures and fails when one misses.
$(BUILD)/sim/canary_sim: tests/sim/canary_sim.c $(call obj,proxy/gates.c)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(ALL_LDFLAGS) -lm

sim: $(BUILD)/sim/canary_sim
	@$(BUILD)/sim/canary_sim

deps:
	@scripts/deps.sh install

unit: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

integration: all
	@TURNOUT_BIN_DIR=$(abspath $(BUILD)) scripts/run-pytest.sh

readme-check: all
	@/usr/bin/python3 scripts/readme-check.py $(BUILD)

# The include layering (scripts/layer-check.py): no folder includes from a
# layer above it, no include cycle among proxy modules.
layer-check:
	@/usr/bin/python3 scripts/layer-check.py

test:
	@scripts/deps.sh check-or-install
	@$(MAKE) --no-print-directory layer-check all unit sim readme-check
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory faults
	@scripts/run-fuzz.sh 5

# Fault and load tests (tests/faults/): a short form in make test, the long
# one with make soak.  Not under asan/valgrind: their time bounds would not hold.
faults: all
	@TURNOUT_BIN_DIR=$(abspath $(BUILD)) scripts/run-faults.sh

soak:
	@scripts/deps.sh check-or-install
	@$(MAKE) --no-print-directory all
	@TURNOUT_BIN_DIR=$(abspath $(BUILD)) scripts/run-faults.sh --soak

# libFuzzer targets (tests/fuzz/README.md): the saved regressions, then
# FUZZ_SECONDS of fuzzing per target.
FUZZ_SECONDS ?= 60
fuzz:
	@scripts/deps.sh check-or-install
	@scripts/run-fuzz.sh $(FUZZ_SECONDS)

check: test

asan:
	@scripts/deps.sh check-or-install
	@$(MAKE) --no-print-directory BUILD=build/asan \
		EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
		EXTRA_LDFLAGS="-fsanitize=address,undefined" CFLAGS="-O1 -g" all unit integration

run:
	@scripts/deps.sh check-or-install
	@$(MAKE) --no-print-directory all
	@DEMO_LEGACY=$(LEGACY) scripts/run-demo.sh $(BUILD)

# The integration tests with every turnout binary under valgrind (except the
# executor, whose sandbox valgrind cannot set up); fails on any leak or error.
valgrind:
	@scripts/deps.sh check-or-install
	@scripts/run-valgrind.sh

# turnout against nginx, HAProxy, Celery and redis-benchmark on loopback;
# results with the machine's description in bench/results/ (bench/bench.py).
bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	@TURNOUT_BIN_DIR=$(abspath $(BUILD)) /usr/bin/python3 bench/bench.py

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj $(BUILD)/unit -name '*.d' 2>/dev/null)
