# tidings - a WebSocket publish/subscribe server.
#
#   make              release build: bin/tidings
#   make test         format-check, then test-suite
#   make test-suite   unit, fuzz (brief), integration tests against an ASan/UBSan build
#   make fuzz         each libFuzzer harness for FUZZ_TIME seconds (default 60)
#   make bench        tidings vs uWebSockets.js vs Node ws -> docs/benchmarks.md
#   make unit         C unit tests only (ASan/UBSan)
#   make asan         bin/tidings-asan
#   make format       rewrite every C source and header in place with clang-format
#   make format-check list the C sources and headers that clang-format would change
#   make clean
#
# SANITIZE=1 (e.g. `make SANITIZE=1`) makes the release binary bin/tidings an
# AddressSanitizer + UBSan build too, from objects in build/rel-san/ (kept
# apart from the plain ones in build/rel/; switching back and forth relinks).
# bin/tidings-asan, the unit tests and the fuzzers are always sanitized.
# Invariants are assert()ed: the sanitized builds check them, the plain
# release build is compiled with -DNDEBUG.

CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN    := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wstrict-prototypes -Wwrite-strings \
           -Wshadow -Wno-unused-parameter
DEPFLAGS = -MMD -MP
PKGS    := libuv jansson hiredis zlib libcrypto libjwt
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LIBS    := $(PKG_LIBS) -lwslay
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# SANITIZE=1: the release build gets $(SAN), in its own object directory.
SANITIZE ?= 0
ifeq ($(filter 0 1,$(or $(SANITIZE),0)),)
$(error SANITIZE must be 0 or 1, not '$(SANITIZE)')
endif
ifeq ($(SANITIZE),1)
REL_DIR   := build/rel-san
REL_FLAGS := $(CFLAGS) $(SAN)
else
REL_DIR   := build/rel
REL_FLAGS := $(CFLAGS) -DNDEBUG
endif

COMMON_SRC := common/backoff.c common/log.c common/config.c common/sbuf.c common/utf8.c common/topic.c \
              common/redisaddr.c common/shm.c common/http.c common/frame.c
WORKER_SRC := worker/worker.c worker/conn.c worker/ws.c worker/proto.c \
              worker/outq.c worker/topics.c worker/broadcast.c worker/proxy.c worker/pmd.c \
              worker/origin.c worker/auth.c worker/auth_load.c worker/pubsub.c worker/handshake.c worker/slow.c
BUS_SRC    := redis/bridge.c redis/uvadapter.c
MASTER_SRC := master/master.c master/main.c master/admin.c master/status_page.c
SERVER_SRC := $(COMMON_SRC) $(WORKER_SRC) $(BUS_SRC) $(MASTER_SRC)

UNIT_TESTS := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c))
# what each unit test links besides itself
UNIT_LIB_SRC := $(COMMON_SRC) worker/proto.c worker/outq.c worker/topics.c \
                worker/proxy.c worker/pmd.c worker/origin.c worker/auth.c

all: bin/tidings

# ---- release build (build/rel/, or build/rel-san/ with SANITIZE=1) ----
$(REL_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(REL_FLAGS) $(WARN) $(PKG_CFLAGS) $(DEPFLAGS) -c $< -o $@

# which object directory bin/tidings was linked from; rewritten only when
# that changes, so that switching SANITIZE relinks bin/tidings even when the
# objects of the other directory are older than it
build/tidings.flavor: FORCE
	@mkdir -p build
	@echo '$(REL_DIR)' | cmp -s - $@ || echo '$(REL_DIR)' > $@

bin/tidings: $(SERVER_SRC:%.c=$(REL_DIR)/%.o) build/tidings.flavor
	@mkdir -p bin
	$(CC) $(REL_FLAGS) -o $@ $(filter %.o,$^) $(LIBS)

# ---- sanitizer build ----
build/san/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) -O1 -g $(SAN) $(WARN) $(PKG_CFLAGS) $(DEPFLAGS) -c $< -o $@

bin/tidings-asan: $(SERVER_SRC:%.c=build/san/%.o)
	@mkdir -p bin
	$(CC) -O1 -g $(SAN) -o $@ $^ $(LIBS)

asan: bin/tidings-asan

# ---- unit tests (cmocka) ----
bin/unit/%: build/san/tests/unit/%.o $(UNIT_LIB_SRC:%.c=build/san/%.o)
	@mkdir -p bin/unit
	$(CC) -O1 -g $(SAN) -o $@ $^ $(LIBS) -lcmocka

# test_bus runs a whole worker on the in-process bus instead of Redis
bin/unit/test_bus: build/san/tests/unit/test_bus.o $(COMMON_SRC:%.c=build/san/%.o) \
                   $(WORKER_SRC:%.c=build/san/%.o) build/san/worker/bus_local.o
	@mkdir -p bin/unit
	$(CC) -O1 -g $(SAN) -o $@ $^ $(LIBS) -lcmocka

unit: $(UNIT_TESTS:%=bin/unit/%)
	@fail=0; for t in $(UNIT_TESTS); do echo "== $$t"; \
	  ASAN_OPTIONS=detect_leaks=1 ./bin/unit/$$t || fail=1; done; exit $$fail

# ---- the whole suite ----
# fuzzing (libFuzzer, clang): make fuzz, make fuzz-smoke, make fuzz-regress
include tests/fuzz/Makefile

# the format check first, on its own: a drifting file fails fast
test: format-check
	@$(MAKE) --no-print-directory test-suite

test-suite: bin/tidings bin/tidings-asan unit fuzz-regress fuzz-smoke
	TIDINGS_BIN=$(CURDIR)/bin/tidings-asan /usr/bin/python3 -m pytest -q tests/integration

# ---- formatting (clang-format 14, style in .clang-format) ----
# every C source and header: server, unit tests, fuzz harnesses, load generator
CLANG_FORMAT ?= clang-format
FORMAT_DIRS  := common worker redis master tests/unit tests/fuzz tests/bench
FORMAT_SRC   := $(sort $(foreach d,$(FORMAT_DIRS),$(wildcard $(d)/*.c $(d)/*.h)))

format-tool:
	@command -v $(CLANG_FORMAT) >/dev/null 2>&1 || { echo "$(CLANG_FORMAT) not found:" \
	  "apt-get install clang-format (or run deploy/install-deps.sh)" >&2; exit 2; }
	@$(CLANG_FORMAT) --style=file --dump-config >/dev/null || \
	  { echo "$(CLANG_FORMAT) cannot read .clang-format" >&2; exit 2; }

format: format-tool
	$(CLANG_FORMAT) -i --style=file $(FORMAT_SRC)

format-check: format-tool
	@bad=; for f in $(FORMAT_SRC); do \
	  $(CLANG_FORMAT) --dry-run -Werror --style=file "$$f" >/dev/null 2>&1 || bad="$$bad $$f"; \
	done; \
	if [ -n "$$bad" ]; then \
	  n=$$(echo $$bad | wc -w); \
	  echo "format-check: $$n of $(words $(FORMAT_SRC)) files differ from .clang-format:"; \
	  for f in $$bad; do echo "  $$f"; done; \
	  echo "Run 'make format' to rewrite them, or '$(CLANG_FORMAT) --dry-run FILE' to see where."; \
	  echo "($$($(CLANG_FORMAT) --version); the style was tuned for clang-format 14)"; \
	  exit 1; \
	fi; \
	echo "format-check: $(words $(FORMAT_SRC)) files formatted as .clang-format says"

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)

.PHONY: all asan unit test test-suite clean format format-check format-tool FORCE
FORCE:

# ---- benchmarks: tidings vs uWebSockets.js vs node ws (~5 min) -> docs/benchmarks.md ----
bench: bin/tidings
	bash tests/bench/run.sh

.PHONY: bench
