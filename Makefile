# tidings - a WebSocket publish/subscribe server.
#
#   make            release build: bin/tidings
#   make test       unit, fuzz (brief), integration tests against an ASan/UBSan build
#   make fuzz       each libFuzzer harness for FUZZ_TIME seconds (default 60)
#   make bench      tidings vs uWebSockets.js vs Node ws -> docs/benchmarks.md
#   make unit       C unit tests only (ASan/UBSan)
#   make asan       bin/tidings-asan
#   make clean
#
# SANITIZE=1 builds everything with AddressSanitizer and UBSan.

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

COMMON_SRC := common/backoff.c common/log.c common/config.c common/sbuf.c common/utf8.c common/topic.c \
              common/redisaddr.c common/shm.c common/http.c common/frame.c
WORKER_SRC := worker/worker.c worker/conn.c worker/ws.c worker/proto.c \
              worker/outq.c worker/topics.c worker/broadcast.c worker/proxy.c worker/pmd.c \
              worker/origin.c worker/auth.c worker/auth_load.c
BUS_SRC    := redis/bridge.c redis/uvadapter.c
MASTER_SRC := master/master.c master/embedded_redis.c master/main.c master/admin.c master/admin_metrics.c master/admin_status.c master/status_page.c
SERVER_SRC := $(COMMON_SRC) $(WORKER_SRC) $(BUS_SRC) $(MASTER_SRC)

UNIT_TESTS := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c))
# what each unit test links besides itself
UNIT_LIB_SRC := $(COMMON_SRC) worker/proto.c worker/outq.c worker/topics.c \
                worker/proxy.c worker/pmd.c worker/origin.c worker/auth.c

all: bin/tidings

# ---- release build ----
build/rel/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(PKG_CFLAGS) $(DEPFLAGS) -c $< -o $@

bin/tidings: $(SERVER_SRC:%.c=build/rel/%.o)
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(LIBS)

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

unit: $(UNIT_TESTS:%=bin/unit/%)
	@fail=0; for t in $(UNIT_TESTS); do echo "== $$t"; \
	  ASAN_OPTIONS=detect_leaks=1 ./bin/unit/$$t || fail=1; done; exit $$fail

# ---- the whole suite ----
# fuzzing (libFuzzer, clang): make fuzz, make fuzz-smoke, make fuzz-regress
include tests/fuzz/Makefile

test: bin/tidings bin/tidings-asan unit fuzz-regress fuzz-smoke
	TIDINGS_BIN=$(CURDIR)/bin/tidings-asan /usr/bin/python3 -m pytest -q tests/integration

format:
	clang-format -i $(SERVER_SRC) $(wildcard */*.h) $(wildcard tests/unit/*.c)

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)

.PHONY: all asan unit test clean format

# ---- benchmarks: tidings vs uWebSockets.js vs node ws (~5 min) -> docs/benchmarks.md ----
bench: bin/tidings
	bash tests/bench/run.sh

.PHONY: bench
