/* Unit tests for common/topic.c: topic name validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/config.h"
#include "../../common/topic.h"

/* Validates a copy of name[0..len) in a heap block of exactly len bytes, so
 * that AddressSanitizer catches reads past the end. */
static int validate_n(const char *name, size_t len) {
  char *b = malloc(len ? len : 1);
  assert_non_null(b);
  if (len) memcpy(b, name, len);
  int rc = topic_validate(b, len);
  free(b);
  return rc;
}

static int validate(const char *name) { return validate_n(name, strlen(name)); }

static void test_valid_names(void **state) {
  (void)state;
  const char *good[] = {
      "a",
      "Z",
      "0",
      "_",
      "-",
      ":",
      "/",
      "@",
      "news",
      "news.sports",
      "a.b.c.d",
      "user:42/inbox",
      "room-1_A@example.com",
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@",
      "trailing.",
      "/leading/slash",
      "a.b.",
      "--",
      "@@",
      "a/./b",
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    int rc = validate(good[i]);
    if (rc != 0) {
      print_error("\"%s\": %d, want 0\n", good[i], rc);
      fail();
    }
  }
}

static void test_empty(void **state) {
  (void)state;
  assert_int_equal(validate_n("", 0), TOPIC_EEMPTY);
  assert_int_equal(topic_validate(NULL, 0), TOPIC_EEMPTY);
}

static void test_length_limit(void **state) {
  (void)state;
  assert_int_equal(TOPIC_MAX_LEN, 128);
  char buf[TOPIC_MAX_LEN + 2];
  memset(buf, 'a', sizeof(buf));
  assert_int_equal(validate_n(buf, 127), 0);
  assert_int_equal(validate_n(buf, 128), 0);
  assert_int_equal(validate_n(buf, 129), TOPIC_ETOOLONG);
  assert_int_equal(validate_n(buf, 130), TOPIC_ETOOLONG);
  /* a long dotted name at the limit */
  for (size_t i = 1; i < 128; i += 2) buf[i] = '.';
  assert_int_equal(validate_n(buf, 128), 0);
  assert_int_equal(validate_n(buf, 129), TOPIC_ETOOLONG);
  /* far too long */
  char *big = malloc(100000);
  assert_non_null(big);
  memset(big, 'x', 100000);
  assert_int_equal(topic_validate(big, 100000), TOPIC_ETOOLONG);
  free(big);
}

static void test_length_is_not_strlen(void **state) {
  (void)state;
  /* only len bytes count: the rest of the string is not looked at */
  assert_int_equal(topic_validate("abc def", 3), 0);
  assert_int_equal(topic_validate("..abc", 0), TOPIC_EEMPTY);
  assert_int_equal(topic_validate("a..", 2), 0);
  assert_int_equal(topic_validate("a..", 3), TOPIC_ECHAR);
  /* an embedded NUL is a character like any other, and not allowed */
  assert_int_equal(validate_n("ab\0cd", 5), TOPIC_ECHAR);
  assert_int_equal(validate_n("\0", 1), TOPIC_ECHAR);
}

static void test_dots(void **state) {
  (void)state;
  assert_int_equal(validate("."), TOPIC_ECHAR);
  assert_int_equal(validate(".a"), TOPIC_ECHAR);
  assert_int_equal(validate(".."), TOPIC_ECHAR);
  assert_int_equal(validate("a..b"), TOPIC_ECHAR);
  assert_int_equal(validate("a...b"), TOPIC_ECHAR);
  assert_int_equal(validate("a.b..c"), TOPIC_ECHAR);
  assert_int_equal(validate("ab.."), TOPIC_ECHAR);
  assert_int_equal(validate("a.b.c"), 0);
  assert_int_equal(validate("a._.b"), 0);
  assert_int_equal(validate("a./.b"), 0);
}

static void test_reserved_and_invalid_chars(void **state) {
  (void)state;
  const char *bad[] = {
      "*",
      "news.*",
      "a*b",
      "a b",
      " a",
      "a ",
      "a\tb",
      "a\nb",
      "a\rb",
      "a\"b",
      "a\\b",
      "a#b",
      "a?b",
      "a%20b",
      "a+b",
      "a,b",
      "a;b",
      "a=b",
      "a&b",
      "a!b",
      "a$b",
      "a'b",
      "a(b)",
      "a[b]",
      "a{b}",
      "a<b>",
      "a|b",
      "a~b",
      "a^b",
      "a`b",
      "caf\xc3\xa9",
      "\xc3\xa9",
      "\xe2\x82\xac",
      "\xf0\x9f\x98\x80",
      "a\x7f",
      "a\x01",
      "a\xff",
      "a\x80",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = validate(bad[i]);
    if (rc != TOPIC_ECHAR) {
      print_error("case %zu: %d, want TOPIC_ECHAR\n", i, rc);
      fail();
    }
  }
}

/* Every byte value, alone and after a valid prefix, against the documented
 * alphabet. */
static void test_every_byte(void **state) {
  (void)state;
  for (int c = 0; c < 256; c++) {
    int allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == '@';
    char one[1] = {(char)c};
    char two[2] = {'x', (char)c};
    int want_one = allowed && c != '.' ? 0 : TOPIC_ECHAR;
    int want_two = allowed ? 0 : TOPIC_ECHAR;
    if (validate_n(one, 1) != want_one || validate_n(two, 2) != want_two) {
      print_error("byte 0x%02x\n", c);
      fail();
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_names),  cmocka_unit_test(test_empty),
      cmocka_unit_test(test_length_limit), cmocka_unit_test(test_length_is_not_strlen),
      cmocka_unit_test(test_dots),         cmocka_unit_test(test_reserved_and_invalid_chars),
      cmocka_unit_test(test_every_byte),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
