/* Unit tests for http_etag_match (common/http.c): If-None-Match against
 * the strong ETag of GET /tidings.js, as RFC 9110 section 13.1.2 says. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/http.h"

static const char TAG[] = "\"0123abcd\"";

static int match(const char *v) {
  /* an exact-size copy without a NUL, so that ASan sees any read past it */
  size_t n = strlen(v);
  char *b = test_malloc(n ? n : 1);
  memcpy(b, v, n);
  int r = http_etag_match((struct http_str){b, n}, TAG);
  test_free(b);
  return r;
}

static void test_exact(void **state) {
  (void)state;
  assert_int_equal(match("\"0123abcd\""), 1);
  assert_int_equal(match("  \"0123abcd\"  "), 1);
}

static void test_weak_compares_equal(void **state) {
  (void)state;
  /* If-None-Match uses the weak comparison: W/ is ignored */
  assert_int_equal(match("W/\"0123abcd\""), 1);
}

static void test_list(void **state) {
  (void)state;
  assert_int_equal(match("\"x\", \"0123abcd\""), 1);
  assert_int_equal(match("\"0123abcd\",\"y\""), 1);
  assert_int_equal(match("\"a\" ,\tW/\"b\", \"0123abcd\""), 1);
  assert_int_equal(match(", ,\"0123abcd\","), 1); /* empty elements */
  assert_int_equal(match("\"a\", \"b\""), 0);
}

static void test_star(void **state) {
  (void)state;
  assert_int_equal(match("*"), 1);
  assert_int_equal(match(" * "), 1);
  assert_int_equal(match("*, \"a\""), 0); /* "*" stands alone */
}

static void test_no_match(void **state) {
  (void)state;
  assert_int_equal(match(""), 0);
  assert_int_equal(match("\"0123abc\""), 0);   /* a prefix */
  assert_int_equal(match("\"0123abcde\""), 0); /* longer */
  assert_int_equal(match("0123abcd"), 0);      /* unquoted */
  assert_int_equal(match("\"0123ABCD\""), 0);  /* case matters */
}

static void test_malformed(void **state) {
  (void)state;
  /* a malformed list never yields 304, even when it holds the tag */
  assert_int_equal(match("\"0123abcd"), 0);
  assert_int_equal(match("\"0123abcd\" x"), 0);
  assert_int_equal(match("\"0123abcd\", bad"), 0);
  assert_int_equal(match("w/\"0123abcd\""), 0); /* W is upper case */
  assert_int_equal(match("W/"), 0);
  assert_int_equal(match("\""), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact),    cmocka_unit_test(test_weak_compares_equal),
      cmocka_unit_test(test_list),     cmocka_unit_test(test_star),
      cmocka_unit_test(test_no_match), cmocka_unit_test(test_malformed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
