/* Unit tests for redis/history_lib.c: the Redis function library's source
 * rendered from the embedded template redis/history.lua.
 *
 * Also a helper for tests/integration/test_history_redis.py, which loads
 * into a real redis-server exactly the text the server would load:
 *   test_history_lib --print PREFIX MAXLEN TTL   writes the library to stdout
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../redis/history_lib.h"

/* Renders into a heap block of exactly outlen bytes, so that AddressSanitizer
 * catches any write past it; returns the text (free it) or NULL on -1. */
static char *render_n(size_t outlen, const char *prefix, unsigned maxlen, unsigned ttl, int sharded,
                      int *rc) {
  char *out = malloc(outlen ? outlen : 1);
  assert_non_null(out);
  *rc = history_lib_source(outlen ? out : NULL, outlen, prefix, maxlen, ttl, sharded);
  if (*rc < 0) {
    if (outlen) assert_string_equal(out, "");
    free(out);
    return NULL;
  }
  return out;
}

static char *render(const char *prefix, unsigned maxlen, unsigned ttl) {
  int rc;
  char *out = render_n(history_lib_source_bound(), prefix, maxlen, ttl, 0, &rc);
  assert_non_null(out);
  assert_int_equal(rc, (int)strlen(out));
  return out;
}

/* The body of the Lua string literal assigned to PREFIX, decoded; also
 * returns in *after the text that follows the literal's closing quote. */
static char *prefix_literal(const char *src, const char **after) {
  const char *p = strstr(src, "\nlocal PREFIX = \"");
  assert_non_null(p);
  p += strlen("\nlocal PREFIX = \"");
  char *dec = malloc(strlen(p) + 1);
  assert_non_null(dec);
  size_t n = 0;
  for (;;) {
    unsigned char c = (unsigned char)*p;
    assert_true(c != '\0' && c != '\n' && c != '\r');
    if (c == '"') break;
    if (c == '\\') {
      /* the only escape history_lib emits: exactly three decimal digits */
      for (int i = 1; i <= 3; i++) assert_true(p[i] >= '0' && p[i] <= '9');
      int v = (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
      assert_true(v >= 0x20 && v <= 0x7e);
      dec[n++] = (char)v;
      p += 4;
    } else {
      assert_true(c >= 0x20 && c <= 0x7e);
      dec[n++] = (char)c;
      p++;
    }
  }
  dec[n] = '\0';
  *after = p + 1;
  return dec;
}

static void test_values_baked_in(void **state) {
  (void)state;
  char *src = render("app1:", 1234, 567);
  assert_true(strncmp(src, "#!lua name=tidings\n", 19) == 0);
  assert_non_null(strstr(src, "\nlocal PREFIX = \"app1:\"\n"));
  assert_non_null(strstr(src, "\nlocal DEFAULT_MAXLEN = 1234\n"));
  assert_non_null(strstr(src, "\nlocal DEFAULT_TTL = 567\n"));
  assert_null(strstr(src, "__PREFIX__"));
  assert_null(strstr(src, "__MAXLEN__"));
  assert_null(strstr(src, "__TTL__"));
  /* the functions the server calls */
  assert_non_null(strstr(src, "function_name = 'tidings_publish'"));
  assert_non_null(strstr(src, "function_name = 'tidings_history'"));
  free(src);

  src = render("", UINT_MAX, 1);
  assert_non_null(strstr(src, "\nlocal PREFIX = \"\"\n"));
  assert_non_null(strstr(src, "\nlocal DEFAULT_MAXLEN = 4294967295\n"));
  assert_non_null(strstr(src, "\nlocal DEFAULT_TTL = 1\n"));
  free(src);
}

static void test_hostile_prefix_is_escaped(void **state) {
  (void)state;
  char longest[HISTORY_LIB_PREFIX_MAX + 1];
  memset(longest, '"', HISTORY_LIB_PREFIX_MAX);
  longest[HISTORY_LIB_PREFIX_MAX] = '\0';
  const char *hostile[] = {
      "\"",
      "\\",
      "\\\"",
      "\"; redis.call('FLUSHALL') --",
      "\" .. redis.call('FLUSHALL') .. \"",
      "]] --[[",
      "\\n\\0\\z",
      "'",
      "__MAXLEN__",
      "__PREFIX__",
      "__TTL__x",
      "{braces}",
      "~`!#$%^&*()+=[]|;<>,?",
      longest,
  };
  /* everything after the literal is the same whatever the prefix */
  char *plain = render("x", 100, 60);
  const char *plain_after;
  char *dec = prefix_literal(plain, &plain_after);
  assert_string_equal(dec, "x");
  free(dec);
  for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
    char *src = render(hostile[i], 100, 60);
    const char *after;
    dec = prefix_literal(src, &after);
    assert_string_equal(dec, hostile[i]);
    assert_string_equal(after, plain_after);
    /* and everything before it */
    size_t head = (size_t)(strstr(src, "\nlocal PREFIX = ") - src);
    assert_int_equal(head, (size_t)(strstr(plain, "\nlocal PREFIX = ") - plain));
    assert_memory_equal(src, plain, head);
    free(dec);
    free(src);
  }
  free(plain);
}

static void test_bad_arguments(void **state) {
  (void)state;
  char buf[16384];
  char too_long[HISTORY_LIB_PREFIX_MAX + 2];
  memset(too_long, 'a', HISTORY_LIB_PREFIX_MAX + 1);
  too_long[HISTORY_LIB_PREFIX_MAX + 1] = '\0';
  assert_int_equal(history_lib_source(buf, sizeof buf, too_long, 100, 60, 0), -1);
  assert_string_equal(buf, "");
  too_long[HISTORY_LIB_PREFIX_MAX] = '\0'; /* 64 bytes: fine */
  assert_true(history_lib_source(buf, sizeof buf, too_long, 100, 60, 0) > 0);
  const char *unprintable[] = {"a\nb", "\r", "\t", "a\x7f", "\x80", "caf\xc3\xa9", "\x1b[0m"};
  for (size_t i = 0; i < sizeof unprintable / sizeof *unprintable; i++)
    assert_int_equal(history_lib_source(buf, sizeof buf, unprintable[i], 100, 60, 0), -1);
  assert_int_equal(history_lib_source(buf, sizeof buf, "p:", 0, 60, 0), -1);
  assert_int_equal(history_lib_source(buf, sizeof buf, "p:", 100, 0, 0), -1);
  assert_int_equal(history_lib_source(buf, sizeof buf, NULL, 100, 60, 0), -1);
  assert_int_equal(history_lib_source(NULL, sizeof buf, "p:", 100, 60, 0), -1);
}

static void test_too_small(void **state) {
  (void)state;
  int rc;
  char *full = render("pre\"fix:", 1000, 3600);
  size_t len = strlen(full);
  /* every size short of len + 1 fails without writing past it */
  for (size_t outlen = 0; outlen <= len; outlen++) {
    assert_null(render_n(outlen, "pre\"fix:", 1000, 3600, 0, &rc));
    assert_int_equal(rc, -1);
  }
  char *exact = render_n(len + 1, "pre\"fix:", 1000, 3600, 0, &rc);
  assert_non_null(exact);
  assert_int_equal(rc, (int)len);
  assert_string_equal(exact, full);
  free(exact);
  free(full);
}

static void test_bound_suffices(void **state) {
  (void)state;
  char worst[HISTORY_LIB_PREFIX_MAX + 1];
  memset(worst, '\\', HISTORY_LIB_PREFIX_MAX);
  worst[HISTORY_LIB_PREFIX_MAX] = '\0';
  int rc;
  /* the longest: every prefix byte escaped, the widest numbers, SPUBLISH */
  char *src = render_n(history_lib_source_bound(), worst, UINT_MAX, UINT_MAX, 1, &rc);
  assert_non_null(src);
  assert_int_equal((size_t)rc + 1, history_lib_source_bound());
  assert_non_null(strstr(src, "local PUBLISH = 'SPUBLISH'"));
  free(src);
  src = render_n(history_lib_source_bound(), "p:", 10, 10, 0, &rc);
  assert_non_null(strstr(src, "local PUBLISH = 'PUBLISH'"));
  free(src);
}

static int print_library(const char *prefix, const char *maxlen, const char *ttl) {
  size_t cap = history_lib_source_bound();
  char *out = malloc(cap);
  if (!out) return 1;
  int n = history_lib_source(out, cap, prefix, (unsigned)strtoul(maxlen, NULL, 10),
                             (unsigned)strtoul(ttl, NULL, 10), 0);
  int rc = n < 0 || fwrite(out, 1, (size_t)n, stdout) != (size_t)n || fflush(stdout) != 0;
  if (n < 0) fprintf(stderr, "history_lib_source failed\n");
  free(out);
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "--print") == 0) return print_library(argv[2], argv[3], argv[4]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_values_baked_in), cmocka_unit_test(test_hostile_prefix_is_escaped),
      cmocka_unit_test(test_bad_arguments),   cmocka_unit_test(test_too_small),
      cmocka_unit_test(test_bound_suffices),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
