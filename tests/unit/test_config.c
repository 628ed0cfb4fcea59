/* Unit tests for common/config.c (options from the command line, the
 * environment and defaults) and common/redisaddr.c (--redis addresses). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/config.h"
#include "../../common/redisaddr.h"

#define ERRLEN 256

/* Removes every TIDINGS_* variable, so that the caller's environment does
 * not leak into the tests. */
static void clear_env(void) {
  for (;;) {
    char name[256];
    name[0] = '\0';
    for (char **e = environ; *e; e++) {
      if (strncmp(*e, "TIDINGS_", 8) == 0) {
        const char *eq = strchr(*e, '=');
        size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
        assert_true(n < sizeof(name));
        memcpy(name, *e, n);
        name[n] = '\0';
        break;
      }
    }
    if (!name[0]) return;
    assert_int_equal(unsetenv(name), 0);
  }
}

static int setup(void **state) {
  (void)state;
  clear_env();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  clear_env();
  return 0;
}

/* config_parse() with argv = {"tidings", args..., NULL}. */
static int parse(struct config *cfg, char *err, const char *const *args) {
  char *argv[64];
  int argc = 0;
  argv[argc++] = (char *)"tidings";
  for (; args && *args; args++) {
    assert_true(argc < 63);
    argv[argc++] = (char *)*args;
  }
  argv[argc] = NULL;
  memset(err, 'x', ERRLEN);
  err[ERRLEN - 1] = '\0';
  return config_parse(cfg, argc, argv, err, ERRLEN);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NOARGS ((const char *const *)NULL)

static void expect_ok(struct config *cfg, const char *const *args) {
  char err[ERRLEN];
  if (parse(cfg, err, args) != 0) {
    print_error("config_parse failed: %s\n", err);
    fail();
  }
}

/* One line of error text, mentioning want. */
static void expect_one_line(const char *err, const char *want) {
  assert_true(err[0] != '\0');
  assert_true(strlen(err) < ERRLEN);
  if (strchr(err, '\n') || strchr(err, '\r')) {
    print_error("error text is not one line: \"%s\"\n", err);
    fail();
  }
  if (want && !strstr(err, want)) {
    print_error("error \"%s\" does not mention \"%s\"\n", err, want);
    fail();
  }
}

static void expect_error(const char *const *args, const char *want) {
  struct config cfg;
  char err[ERRLEN];
  if (parse(&cfg, err, args) != -1) {
    print_error("config_parse accepted %s ...\n", args ? args[0] : "(no arguments)");
    fail();
  }
  expect_one_line(err, want);
}

/* ---- config_parse ---- */

static void test_defaults(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, NOARGS);
  assert_string_equal(c.bind, "0.0.0.0");
  assert_int_equal(c.port, 8080);
  assert_int_equal(c.workers, 0);
  assert_int_equal(c.ping_interval, 30);
  assert_int_equal(c.max_message_size, 64 * 1024);
  assert_int_equal(c.max_subscriptions, 100);
  assert_string_equal(c.echo_path, "");
  assert_int_equal(c.log_level, LOG_INFO);
  assert_int_equal(c.shutdown_grace, 10);
  assert_int_equal(c.handshake_timeout, 10);
  assert_string_equal(c.redis, "");
  assert_string_equal(c.redis_prefix, "");
  assert_int_equal(c.proxy_protocol, 0);
  assert_int_equal(c.no_compression, 0);
  assert_int_equal(c.compression_threshold, 256);
  assert_int_equal(c.max_queued_bytes, 1024 * 1024);
  assert_string_equal(c.slow_policy, "drop");
  assert_int_equal(c.slow_disconnect, 0);
  assert_int_equal(c.slow_grace, 5);
  assert_int_equal(c.help, 0);
  assert_int_equal(c.version, 0);
  /* an empty argv (argc 0) too */
  char err[ERRLEN];
  char *argv[] = {NULL};
  assert_int_equal(config_parse(&c, 0, argv, err, sizeof(err)), 0);
  assert_int_equal(c.port, 8080);
}

static void test_port_forms(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, ARGS("--port", "9000"));
  assert_int_equal(c.port, 9000);
  expect_ok(&c, ARGS("--port=9000"));
  assert_int_equal(c.port, 9000);
  expect_ok(&c, ARGS("--port", "1"));
  assert_int_equal(c.port, 1);
  expect_ok(&c, ARGS("--port=65535"));
  assert_int_equal(c.port, 65535);
  /* the last one wins */
  expect_ok(&c, ARGS("--port", "9000", "--port=9001"));
  assert_int_equal(c.port, 9001);
  /* everything else is unchanged */
  assert_string_equal(c.bind, "0.0.0.0");
  assert_int_equal(c.max_message_size, 64 * 1024);
}

static void test_many_options(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, ARGS("--bind", "::1", "--workers=4", "--ping-interval", "5",
                     "--max-subscriptions=1000", "--echo-path", "/echo", "--log-level=debug",
                     "--shutdown-grace", "0", "--handshake-timeout=3", "--redis",
                     "redis://h:6380/1", "--redis-prefix=app:", "--compression-threshold", "0",
                     "--max-queued-bytes=64k", "--slow-grace", "60"));
  assert_string_equal(c.bind, "::1");
  assert_int_equal(c.workers, 4);
  assert_int_equal(c.ping_interval, 5);
  assert_int_equal(c.max_subscriptions, 1000);
  assert_string_equal(c.echo_path, "/echo");
  assert_int_equal(c.log_level, LOG_DEBUG);
  assert_int_equal(c.shutdown_grace, 0);
  assert_int_equal(c.handshake_timeout, 3);
  assert_string_equal(c.redis, "redis://h:6380/1");
  assert_string_equal(c.redis_prefix, "app:");
  assert_int_equal(c.compression_threshold, 0);
  assert_int_equal(c.max_queued_bytes, 64 * 1024);
  assert_int_equal(c.slow_grace, 60);
  /* a value may start with "--" or contain '=' */
  expect_ok(&c, ARGS("--redis-prefix", "--x"));
  assert_string_equal(c.redis_prefix, "--x");
  expect_ok(&c, ARGS("--redis-prefix=a=b"));
  assert_string_equal(c.redis_prefix, "a=b");
  expect_ok(&c, ARGS("--log-level", "WARNING"));
  assert_int_equal(c.log_level, LOG_WARN);
  expect_ok(&c, ARGS("--log-level=error"));
  assert_int_equal(c.log_level, LOG_ERROR);
}

static void test_env(void **state) {
  (void)state;
  struct config c;
  assert_int_equal(setenv("TIDINGS_PORT", "9100", 1), 0);
  expect_ok(&c, NOARGS);
  assert_int_equal(c.port, 9100);
  /* the command line wins over the environment */
  expect_ok(&c, ARGS("--port", "9000"));
  assert_int_equal(c.port, 9000);
  expect_ok(&c, ARGS("--port=9001"));
  assert_int_equal(c.port, 9001);
  /* options with dashes */
  assert_int_equal(setenv("TIDINGS_MAX_MESSAGE_SIZE", "1m", 1), 0);
  assert_int_equal(setenv("TIDINGS_SLOW_POLICY", "disconnect", 1), 0);
  assert_int_equal(setenv("TIDINGS_ECHO_PATH", "/e", 1), 0);
  assert_int_equal(setenv("TIDINGS_LOG_LEVEL", "warn", 1), 0);
  expect_ok(&c, NOARGS);
  assert_int_equal(c.port, 9100);
  assert_int_equal(c.max_message_size, 1024 * 1024);
  assert_string_equal(c.slow_policy, "disconnect");
  assert_int_equal(c.slow_disconnect, 1);
  assert_string_equal(c.echo_path, "/e");
  assert_int_equal(c.log_level, LOG_WARN);
  expect_ok(&c, ARGS("--slow-policy=drop", "--max-message-size", "128k"));
  assert_string_equal(c.slow_policy, "drop");
  assert_int_equal(c.slow_disconnect, 0);
  assert_int_equal(c.max_message_size, 128 * 1024);
  /* a bad value in the environment names the variable */
  assert_int_equal(setenv("TIDINGS_PORT", "http", 1), 0);
  expect_error(NOARGS, "TIDINGS_PORT");
  assert_int_equal(setenv("TIDINGS_PORT", "0", 1), 0);
  expect_error(NOARGS, "TIDINGS_PORT");
  /* unset again: back to the default */
  clear_env();
  assert_null(getenv("TIDINGS_PORT"));
  expect_ok(&c, NOARGS);
  assert_int_equal(c.port, 8080);
  assert_int_equal(c.max_message_size, 64 * 1024);
  assert_string_equal(c.slow_policy, "drop");
  /* lower-case or unknown variables are not options */
  assert_int_equal(setenv("tidings_port", "9200", 1), 0);
  assert_int_equal(setenv("TIDINGS_NOT_AN_OPTION", "1", 1), 0);
  expect_ok(&c, NOARGS);
  assert_int_equal(c.port, 8080);
  assert_int_equal(unsetenv("tidings_port"), 0);
}

static void test_sizes(void **state) {
  (void)state;
  struct config c;
  static const struct {
    const char *arg;
    size_t want;
  } good[] = {
      {"--max-message-size=64k", 64 * 1024}, {"--max-message-size=1m", 1024 * 1024},
      {"--max-message-size=100", 100},       {"--max-message-size=64", 64},
      {"--max-message-size=64m", 64u << 20}, {"--max-message-size=2K", 2048},
      {"--max-message-size=3M", 3u << 20},   {"--max-message-size=4kb", 4096},
      {"--max-message-size=5KiB", 5 * 1024}, {"--max-message-size=1mb", 1u << 20},
      {"--max-message-size=2MiB", 2u << 20}, {"--max-message-size=65536", 65536},
      {"--max-queued-bytes=4096", 4096},     {"--max-queued-bytes=1024m", 1u << 30},
      {"--compression-threshold=0", 0},      {"--compression-threshold=1k", 1024},
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    expect_ok(&c, ARGS(good[i].arg));
    size_t got = strstr(good[i].arg, "queued")        ? c.max_queued_bytes
                 : strstr(good[i].arg, "compression") ? c.compression_threshold
                                                      : c.max_message_size;
    if (got != good[i].want) {
      print_error("%s: %zu, want %zu\n", good[i].arg, got, good[i].want);
      fail();
    }
  }
  expect_ok(&c, ARGS("--max-message-size", "1m"));
  assert_int_equal(c.max_message_size, 1024 * 1024);

  static const char *const bad[] = {
      "12q",
      "k",
      "",
      "1g",
      "1 k",
      "1.5m",
      "0x100",
      "-1k",
      "-1",
      "63",
      "65m",
      "64M1",
      "1kk",
      "m1",
      "65537k",
      "99999999999999999999",
      "99999999999999999k",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    expect_error(ARGS("--max-message-size", bad[i]), "--max-message-size");
  }
  expect_error(ARGS("--max-message-size=12q"), "'12q'");
  expect_error(ARGS("--max-queued-bytes=4095"), "--max-queued-bytes");
  expect_error(ARGS("--max-queued-bytes=1025m"), "--max-queued-bytes");
  /* integers take no suffix */
  expect_error(ARGS("--port=8k"), "--port");
}

static void test_out_of_range(void **state) {
  (void)state;
  static const char *const bad[] = {
      "--port=0",
      "--port=65536",
      "--port=-1",
      "--port=",
      "--port=80x",
      "--port=x80",
      "--port=99999999999999999999",
      "--workers=-1",
      "--workers=257",
      "--ping-interval=0",
      "--ping-interval=86401",
      "--max-subscriptions=0",
      "--max-subscriptions=1000001",
      "--shutdown-grace=-1",
      "--shutdown-grace=3601",
      "--handshake-timeout=0",
      "--slow-grace=3601",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char name[64];
    const char *eq = strchr(bad[i], '=');
    snprintf(name, sizeof(name), "%.*s", (int)(eq - bad[i]), bad[i]);
    expect_error(ARGS(bad[i]), name);
  }
  expect_error(ARGS("--port", "70000"), "'70000'");
  struct config c;
  expect_ok(&c, ARGS("--workers=256", "--ping-interval=86400", "--max-subscriptions=1000000"));
  assert_int_equal(c.workers, 256);
  assert_int_equal(c.ping_interval, 86400);
  assert_int_equal(c.max_subscriptions, 1000000);
}

static void test_unknown_and_missing(void **state) {
  (void)state;
  expect_error(ARGS("--nope"), "--nope");
  expect_error(ARGS("--nope=1"), "'--nope'");
  expect_error(ARGS("--Port=1"), "--Port");
  expect_error(ARGS("--por", "1"), "--por");
  expect_error(ARGS("--port-number", "1"), "--port-number");
  expect_error(ARGS("--"), "--");
  expect_error(ARGS("-p", "1"), "-p");
  expect_error(ARGS("8080"), "8080");
  expect_error(ARGS("--port", "1", "extra"), "extra");
  /* a value is missing at the end */
  expect_error(ARGS("--port"), "--port");
  expect_error(ARGS("--bind"), "--bind");
  expect_error(ARGS("--workers", "2", "--max-message-size"), "--max-message-size");
  /* --name= is an empty value, not a missing one */
  expect_error(ARGS("--bind="), "--bind");
  struct config c;
  expect_ok(&c, ARGS("--echo-path="));
  assert_string_equal(c.echo_path, "");
}

static void test_bools(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, ARGS("--proxy-protocol"));
  assert_int_equal(c.proxy_protocol, 1);
  assert_int_equal(c.no_compression, 0);
  expect_ok(&c, ARGS("--no-compression"));
  assert_int_equal(c.no_compression, 1);
  assert_int_equal(c.proxy_protocol, 0);
  /* a flag does not take the next argument as its value */
  expect_ok(&c, ARGS("--proxy-protocol", "--port", "81"));
  assert_int_equal(c.proxy_protocol, 1);
  assert_int_equal(c.port, 81);
  static const char *const yes[] = {"1", "true", "TRUE", "yes", "on", "On"};
  static const char *const no[] = {"0", "false", "False", "no", "off", "OFF"};
  char arg[64];
  for (size_t i = 0; i < 6; i++) {
    snprintf(arg, sizeof(arg), "--proxy-protocol=%s", yes[i]);
    expect_ok(&c, ARGS(arg));
    assert_int_equal(c.proxy_protocol, 1);
    snprintf(arg, sizeof(arg), "--no-compression=%s", no[i]);
    expect_ok(&c, ARGS(arg));
    assert_int_equal(c.no_compression, 0);
  }
  expect_error(ARGS("--proxy-protocol=maybe"), "'maybe'");
  expect_error(ARGS("--no-compression="), "--no-compression");
  expect_error(ARGS("--no-compression=2"), "--no-compression");

  assert_int_equal(setenv("TIDINGS_PROXY_PROTOCOL", "true", 1), 0);
  expect_ok(&c, NOARGS);
  assert_int_equal(c.proxy_protocol, 1);
  expect_ok(&c, ARGS("--proxy-protocol=false"));
  assert_int_equal(c.proxy_protocol, 0);
  assert_int_equal(setenv("TIDINGS_PROXY_PROTOCOL", "0", 1), 0);
  expect_ok(&c, NOARGS);
  assert_int_equal(c.proxy_protocol, 0);
  expect_ok(&c, ARGS("--proxy-protocol"));
  assert_int_equal(c.proxy_protocol, 1);
  assert_int_equal(setenv("TIDINGS_PROXY_PROTOCOL", "garbage", 1), 0);
  expect_error(NOARGS, "TIDINGS_PROXY_PROTOCOL");
  assert_int_equal(setenv("TIDINGS_PROXY_PROTOCOL", "", 1), 0);
  expect_error(NOARGS, "TIDINGS_PROXY_PROTOCOL");
  assert_int_equal(unsetenv("TIDINGS_PROXY_PROTOCOL"), 0);
  assert_int_equal(setenv("TIDINGS_NO_COMPRESSION", "yes", 1), 0);
  expect_ok(&c, NOARGS);
  assert_int_equal(c.no_compression, 1);
  assert_int_equal(c.proxy_protocol, 0);
}

static void test_slow_policy(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, ARGS("--slow-policy", "drop"));
  assert_string_equal(c.slow_policy, "drop");
  assert_int_equal(c.slow_disconnect, 0);
  expect_ok(&c, ARGS("--slow-policy=disconnect"));
  assert_string_equal(c.slow_policy, "disconnect");
  assert_int_equal(c.slow_disconnect, 1);
  expect_error(ARGS("--slow-policy", "bad"), "'bad'");
  expect_error(ARGS("--slow-policy="), "--slow-policy");
  expect_error(ARGS("--slow-policy=Drop"), "--slow-policy");
  expect_error(ARGS("--slow-policy=disconnect "), "--slow-policy");
  assert_int_equal(setenv("TIDINGS_SLOW_POLICY", "kick", 1), 0);
  expect_error(NOARGS, "'kick'");
  expect_ok(&c, ARGS("--slow-policy=drop"));
  assert_int_equal(c.slow_disconnect, 0);
}

static void test_echo_path(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, ARGS("--echo-path", "/echo"));
  assert_string_equal(c.echo_path, "/echo");
  expect_ok(&c, ARGS("--echo-path=/a/b"));
  assert_string_equal(c.echo_path, "/a/b");
  expect_ok(&c, ARGS("--echo-path", ""));
  assert_string_equal(c.echo_path, "");
  expect_error(ARGS("--echo-path", "echo"), "'echo'");
  expect_error(ARGS("--echo-path=echo/"), "--echo-path");
  expect_error(ARGS("--echo-path", "/"), "--echo-path");
  assert_int_equal(setenv("TIDINGS_ECHO_PATH", "/", 1), 0);
  expect_error(NOARGS, "--echo-path");
}

static void test_other_checks(void **state) {
  (void)state;
  struct config c;
  expect_error(ARGS("--bind", ""), "--bind");
  expect_error(ARGS("--log-level=loud"), "'loud'");
  char prefix[80];
  memset(prefix, 'p', sizeof(prefix));
  prefix[64] = '\0';
  expect_ok(&c, ARGS("--redis-prefix", prefix));
  assert_int_equal(strlen(c.redis_prefix), 64);
  prefix[65] = '\0';
  prefix[64] = 'p';
  expect_error(ARGS("--redis-prefix", prefix), "--redis-prefix");
}

static void test_api_options(void **state) {
  (void)state;
  struct config c;
  char err[ERRLEN];
  expect_ok(&c, NOARGS);
  assert_string_equal(c.api_key, "");
  assert_string_equal(c.api_listen, "");
  expect_ok(&c, ARGS("--api-key", "0123456789abcdef", "--api-listen", "127.0.0.1:8081"));
  assert_string_equal(c.api_key, "0123456789abcdef");
  expect_ok(&c, ARGS("--api-key-file", "/k", "--api-listen", "[::1]:8081"));
  /* a short key is refused, and never quoted */
  assert_int_equal(parse(&c, err, ARGS("--api-key", "0123456789abcde")), -1);
  assert_non_null(strstr(err, "--api-key"));
  assert_null(strstr(err, "0123456789abcde"));
  expect_error(ARGS("--api-key", ""), "--api-key");
  expect_error(ARGS("--api-key", "0123456789abcdef", "--api-key-file", "/k"), "only one");
  expect_error(ARGS("--api-listen", "127.0.0.1:8081"), "needs --api-key");
  expect_error(ARGS("--api-key", "0123456789abcdef", "--api-listen", "8081"), "host:port");
  expect_error(ARGS("--api-key", "0123456789abcdef", "--api-listen", "h:0"), "host:port");
  expect_error(ARGS("--api-key", "0123456789abcdef", "--api-listen", "[::1:80"), "host:port");
  char host[64];
  int port;
  assert_int_equal(config_split_hostport("[::1]:443", host, sizeof(host), &port), 0);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 443);
  assert_int_equal(config_split_hostport(":80", host, sizeof(host), &port), -1);
  assert_int_equal(config_split_hostport("a:65536", host, sizeof(host), &port), -1);
}

static void test_help_version(void **state) {
  (void)state;
  struct config c;
  expect_ok(&c, ARGS("--help"));
  assert_int_equal(c.help, 1);
  assert_int_equal(c.version, 0);
  expect_ok(&c, ARGS("-h"));
  assert_int_equal(c.help, 1);
  expect_ok(&c, ARGS("--version"));
  assert_int_equal(c.version, 1);
  assert_int_equal(c.help, 0);
  expect_ok(&c, ARGS("--port", "81", "--version", "--help"));
  assert_int_equal(c.version, 1);
  assert_int_equal(c.help, 1);
  assert_int_equal(c.port, 81);
  /* --help does not hide a bad option */
  expect_error(ARGS("--help", "--port=0"), "--port");
  expect_error(ARGS("--help=1"), "--help");

  /* the usage text lists every option with its variable */
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_non_null(f);
  config_usage(f, "tidings");
  assert_int_equal(fclose(f), 0);
  assert_non_null(strstr(text, "Usage: tidings"));
  assert_non_null(strstr(text, "--max-message-size"));
  assert_non_null(strstr(text, "TIDINGS_MAX_MESSAGE_SIZE"));
  assert_non_null(strstr(text, "TIDINGS_PROXY_PROTOCOL"));
  assert_non_null(strstr(text, "--version"));
  free(text);
}

static void test_error_is_one_line(void **state) {
  (void)state;
  /* a value with a line break does not break the message into two lines */
  expect_error(ARGS("--port=80\n81"), "--port");
  expect_error(ARGS("--slow-policy", "drop\ndisconnect"), "--slow-policy");
  expect_error(ARGS("--echo-path", "x\r\n/y"), "--echo-path");
  expect_error(ARGS("--proxy-protocol=yes\n"), "--proxy-protocol");
  expect_error(ARGS("--no\nsuch"), "unknown option");
  expect_error(ARGS("stray\nargument"), "stray");
  assert_int_equal(setenv("TIDINGS_LOG_LEVEL", "info\nwarn", 1), 0);
  expect_error(NOARGS, "TIDINGS_LOG_LEVEL");
  assert_int_equal(unsetenv("TIDINGS_LOG_LEVEL"), 0);
  /* and a long value is cut to fit err, NUL-terminated */
  char big[1024];
  memset(big, 'b', sizeof(big));
  big[sizeof(big) - 1] = '\0';
  struct config c;
  char err[32];
  char *argv[] = {(char *)"tidings", (char *)"--slow-policy", big, NULL};
  assert_int_equal(config_parse(&c, 3, argv, err, sizeof(err)), -1);
  assert_int_equal(strlen(err), sizeof(err) - 1);
}

/* ---- redis_addr_parse ---- */

static struct redis_addr ra;

static void expect_redis_ok(const char *s) {
  char err[ERRLEN] = "";
  if (redis_addr_parse(s, &ra, err, sizeof(err)) != 0) {
    print_error("redis_addr_parse(\"%s\") failed: %s\n", s, err);
    fail();
  }
}

static void expect_redis_bad(const char *s) {
  char err[ERRLEN];
  memset(err, 0, sizeof(err));
  if (redis_addr_parse(s, &ra, err, sizeof(err)) != -1) {
    print_error("redis_addr_parse(\"%s\") accepted it\n", s);
    fail();
  }
  expect_one_line(err, "--redis");
}

static void test_redis_tcp(void **state) {
  (void)state;
  expect_redis_ok("redis://localhost");
  assert_int_equal(ra.is_unix, 0);
  assert_string_equal(ra.host, "localhost");
  assert_int_equal(ra.port, 6379);
  assert_int_equal(ra.db, 0);
  assert_string_equal(ra.user, "");
  assert_string_equal(ra.password, "");
  assert_string_equal(ra.path, "");

  expect_redis_ok("redis://h:6380");
  assert_string_equal(ra.host, "h");
  assert_int_equal(ra.port, 6380);
  assert_int_equal(ra.db, 0);

  expect_redis_ok("redis://:pw@h:1/2");
  assert_string_equal(ra.host, "h");
  assert_int_equal(ra.port, 1);
  assert_int_equal(ra.db, 2);
  assert_string_equal(ra.user, "");
  assert_string_equal(ra.password, "pw");

  expect_redis_ok("redis://user:pw@h");
  assert_string_equal(ra.host, "h");
  assert_int_equal(ra.port, 6379);
  assert_string_equal(ra.user, "user");
  assert_string_equal(ra.password, "pw");

  expect_redis_ok("redis://[::1]:7000");
  assert_string_equal(ra.host, "::1");
  assert_int_equal(ra.port, 7000);

  expect_redis_ok("redis://[2001:db8::5]/3");
  assert_string_equal(ra.host, "2001:db8::5");
  assert_int_equal(ra.port, 6379);
  assert_int_equal(ra.db, 3);

  expect_redis_ok("redis://10.0.0.7:65535/15");
  assert_string_equal(ra.host, "10.0.0.7");
  assert_int_equal(ra.port, 65535);
  assert_int_equal(ra.db, 15);

  expect_redis_ok("redis://h/");
  assert_int_equal(ra.port, 6379);
  assert_int_equal(ra.db, 0);

  /* a password may hold ':', '@' and '/' */
  expect_redis_ok("redis://u:p:a@s/s@host:6390/4");
  assert_string_equal(ra.user, "u");
  assert_string_equal(ra.password, "p:a@s/s");
  assert_string_equal(ra.host, "host");
  assert_int_equal(ra.port, 6390);
  assert_int_equal(ra.db, 4);

  /* a struct reused for a shorter address keeps nothing of the old one */
  expect_redis_ok("redis://x");
  assert_string_equal(ra.user, "");
  assert_string_equal(ra.password, "");
  assert_int_equal(ra.port, 6379);
  assert_int_equal(ra.db, 0);
}

static void test_redis_unix(void **state) {
  (void)state;
  expect_redis_ok("unix:/tmp/x.sock");
  assert_int_equal(ra.is_unix, 1);
  assert_string_equal(ra.path, "/tmp/x.sock");
  assert_string_equal(ra.host, "");
  /* the longest path that fits sun_path with its NUL */
  char s[200];
  strcpy(s, "unix:/");
  memset(s + 6, 'a', 106);
  s[112] = '\0';
  assert_int_equal(strlen(s + 5), 107);
  expect_redis_ok(s);
  assert_int_equal(strlen(ra.path), 107);
  s[112] = 'a';
  s[113] = '\0';
  expect_redis_bad(s);
  memset(s + 6, 'a', 190);
  s[196] = '\0';
  expect_redis_bad(s);
}

static void test_redis_bad(void **state) {
  (void)state;
  static const char *const bad[] = {
      "",
      "http://x",
      "rediss://h",
      "redis:/h",
      "localhost:6379",
      "redis://",
      "redis:///0",
      "redis://:6379",
      "redis://h:0",
      "redis://h:99999",
      "redis://h:65536",
      "redis://h:-1",
      "redis://h:12x",
      "redis://h:",
      "redis://h:x12",
      "redis://h:6379x/1",
      "redis://h/x",
      "redis://h/1x",
      "redis://h/-1",
      "redis://[::1",
      "redis://[::1]x",
      "redis://[::1]7000",
      "redis://[]:7000",
      "redis://pw@h",
      "redis://:pw@",
      "unix:relative",
      "unix:",
      "unix:tmp/x.sock",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) expect_redis_bad(bad[i]);

  /* fields that do not fit */
  char s[1024];
  snprintf(s, sizeof(s), "redis://%0300d", 0);
  expect_redis_bad(s);
  memset(s, 0, sizeof(s));
  strcpy(s, "redis://");
  memset(s + 8, 'u', 128);
  strcat(s, ":pw@h");
  expect_redis_bad(s);
  s[8 + 127] = '\0';
  strcat(s, ":pw@h");
  expect_redis_ok(s);
  assert_int_equal(strlen(ra.user), 127);
  memset(s, 0, sizeof(s));
  strcpy(s, "redis://:");
  memset(s + 9, 'p', 256);
  strcat(s, "@h");
  expect_redis_bad(s);
}

static void test_redis_describe(void **state) {
  (void)state;
  char out[300];
  expect_redis_ok("redis://:s3cr3t@h:1/2");
  redis_addr_describe(&ra, out, sizeof(out));
  assert_string_equal(out, "h:1/2 (auth)");
  expect_redis_ok("redis://admin:s3cr3t@cache.internal");
  redis_addr_describe(&ra, out, sizeof(out));
  assert_string_equal(out, "cache.internal:6379/0 (auth)");
  assert_null(strstr(out, "s3cr3t"));
  expect_redis_ok("redis://localhost");
  redis_addr_describe(&ra, out, sizeof(out));
  assert_string_equal(out, "localhost:6379/0");
  expect_redis_ok("unix:/tmp/x.sock");
  redis_addr_describe(&ra, out, sizeof(out));
  assert_string_equal(out, "unix:/tmp/x.sock");
  /* a password that is also part of the host name still shows up only there */
  expect_redis_ok("redis://:pw@pwhost:6379");
  redis_addr_describe(&ra, out, sizeof(out));
  assert_string_equal(out, "pwhost:6379/0 (auth)");
  /* a short buffer is cut, NUL-terminated */
  char small[6];
  memset(small, 'x', sizeof(small));
  expect_redis_ok("redis://:s3cr3t@longhostname:6379/1");
  redis_addr_describe(&ra, small, sizeof(small));
  assert_string_equal(small, "longh");
  /* config_log describes it the same way: nothing of the password */
}

static void test_redis_error_hides_password(void **state) {
  (void)state;
  static const char *const bad[] = {
      "redis://:s3cr3t@h:99999", "redis://user:s3cr3t@h:12x", "redis://:s3cr3t@",
      "redis://:s3cr3t@[::1",    "rediss://:s3cr3t@h",        "http://user:s3cr3t@h",
  };
  char err[ERRLEN];
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(err, 0, sizeof(err));
    assert_int_equal(redis_addr_parse(bad[i], &ra, err, sizeof(err)), -1);
    expect_one_line(err, "--redis");
    if (strstr(err, "s3cr3t")) {
      print_error("error for \"%s\" shows the password: %s\n", bad[i], err);
      fail();
    }
  }
  /* what is left of the address is shown */
  assert_int_equal(redis_addr_parse("redis://u:s3cr3t@h:99999/1", &ra, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "'redis://***@h:99999/1'"));
  assert_int_equal(redis_addr_parse("redis://h:1\n2", &ra, err, sizeof(err)), -1);
  expect_one_line(err, "h:1 2");
  /* without credentials the address is still shown */
  assert_int_equal(redis_addr_parse("redis://h:99999", &ra, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "h:99999"));
  assert_int_equal(redis_addr_parse("http://x", &ra, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "http://x"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
      cmocka_unit_test_setup_teardown(test_port_forms, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_options, setup, teardown),
      cmocka_unit_test_setup_teardown(test_env, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sizes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_out_of_range, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_and_missing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bools, setup, teardown),
      cmocka_unit_test_setup_teardown(test_slow_policy, setup, teardown),
      cmocka_unit_test_setup_teardown(test_echo_path, setup, teardown),
      cmocka_unit_test_setup_teardown(test_other_checks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_api_options, setup, teardown),
      cmocka_unit_test_setup_teardown(test_help_version, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_is_one_line, setup, teardown),
      cmocka_unit_test(test_redis_tcp),
      cmocka_unit_test(test_redis_unix),
      cmocka_unit_test(test_redis_bad),
      cmocka_unit_test(test_redis_describe),
      cmocka_unit_test(test_redis_error_hides_password),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
