/* Unit tests for common/utf8.c: strict UTF-8 validation (RFC 3629). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/utf8.h"

/* Runs both functions on a copy of s[0..len) in a heap block of exactly len
 * bytes, so that AddressSanitizer catches reads past the end. */
static size_t prefix_n(const void *s, size_t len, int *valid) {
  uint8_t *b = malloc(len ? len : 1);
  assert_non_null(b);
  if (len) memcpy(b, s, len);
  size_t p = utf8_valid_prefix(b, len);
  *valid = utf8_valid(b, len);
  free(b);
  return p;
}

#define L(s) s, sizeof(s) - 1

static void expect(const char *s, size_t len, int want_valid, size_t want_prefix) {
  int v;
  size_t p = prefix_n(s, len, &v);
  if (v != want_valid || p != want_prefix) {
    print_error("sequence of %zu bytes:", len);
    for (size_t i = 0; i < len; i++) print_error(" %02X", (unsigned char)s[i]);
    print_error(": valid %d prefix %zu, want %d %zu\n", v, p, want_valid, want_prefix);
    fail();
  }
}

static void valid(const char *s, size_t len) { expect(s, len, 1, len); }

static void test_empty_and_ascii(void **state) {
  (void)state;
  valid(L(""));
  valid(L("hello, world"));
  valid(L("\0"));
  valid(L("a\0b"));
  valid(L("\x7f"));
  char all[128];
  for (int i = 0; i < 128; i++) all[i] = (char)i;
  valid(all, sizeof(all));
}

static void test_valid_multibyte(void **state) {
  (void)state;
  valid(L("\xc3\xa9"));         /* U+00E9 */
  valid(L("\xe2\x82\xac"));     /* U+20AC */
  valid(L("\xf0\x9d\x84\x9e")); /* U+1D11E */
  valid(L("\xf0\x9f\x98\x80")); /* U+1F600 */
  valid(L("caf\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80!"));
  /* the boundaries of each length */
  valid(L("\xc2\x80"));         /* U+0080 */
  valid(L("\xdf\xbf"));         /* U+07FF */
  valid(L("\xe0\xa0\x80"));     /* U+0800 */
  valid(L("\xec\xbf\xbf"));     /* U+CFFF */
  valid(L("\xed\x80\x80"));     /* U+D000 */
  valid(L("\xed\x9f\xbf"));     /* U+D7FF, just below the surrogates */
  valid(L("\xee\x80\x80"));     /* U+E000, just above */
  valid(L("\xef\xbf\xbd"));     /* U+FFFD */
  valid(L("\xef\xbf\xbf"));     /* U+FFFF */
  valid(L("\xf0\x90\x80\x80")); /* U+10000 */
  valid(L("\xf1\x80\x80\x80")); /* U+40000 */
  valid(L("\xf3\xbf\xbf\xbf")); /* U+FFFFF */
  valid(L("\xf4\x80\x80\x80")); /* U+100000 */
  valid(L("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
  valid(L("\xef\xbb\xbf"));     /* BOM */
}

static void test_overlong(void **state) {
  (void)state;
  expect(L("\xc0\x80"), 0, 0);     /* U+0000 in 2 bytes */
  expect(L("\xc0\xaf"), 0, 0);     /* '/' */
  expect(L("\xc1\xbf"), 0, 0);     /* U+007F */
  expect(L("\xe0\x80\x80"), 0, 0); /* U+0000 in 3 bytes */
  expect(L("\xe0\x80\xaf"), 0, 0);
  expect(L("\xe0\x9f\xbf"), 0, 0);     /* U+07FF in 3 bytes */
  expect(L("\xf0\x80\x80\x80"), 0, 0); /* U+0000 in 4 bytes */
  expect(L("\xf0\x80\x80\xaf"), 0, 0);
  expect(L("\xf0\x8f\xbf\xbf"), 0, 0); /* U+FFFF in 4 bytes */
  expect(L("\xf8\x80\x80\x80\x80"), 0, 0);
  expect(L("\xfc\x80\x80\x80\x80\x80"), 0, 0);
  expect(L("ab\xc0\x80"), 0, 2);
}

static void test_surrogates(void **state) {
  (void)state;
  expect(L("\xed\xa0\x80"), 0, 0); /* U+D800 */
  expect(L("\xed\xad\xbf"), 0, 0); /* U+DB7F */
  expect(L("\xed\xae\x80"), 0, 0); /* U+DB80 */
  expect(L("\xed\xaf\xbf"), 0, 0); /* U+DBFF */
  expect(L("\xed\xb0\x80"), 0, 0); /* U+DC00 */
  expect(L("\xed\xbf\xbf"), 0, 0); /* U+DFFF */
  /* a CESU-8 pair */
  expect(L("\xed\xa0\xbd\xed\xb8\x80"), 0, 0);
  expect(L("x\xed\xa0\x80y"), 0, 1);
}

static void test_above_max(void **state) {
  (void)state;
  expect(L("\xf4\x90\x80\x80"), 0, 0); /* U+110000 */
  expect(L("\xf4\xbf\xbf\xbf"), 0, 0);
  expect(L("\xf5\x80\x80\x80"), 0, 0);
  expect(L("\xf7\xbf\xbf\xbf"), 0, 0); /* U+1FFFFF */
  expect(L("\xfe"), 0, 0);
  expect(L("\xff"), 0, 0);
  expect(L("ok\xf4\x90\x80\x80"), 0, 2);
}

static void test_bad_continuations(void **state) {
  (void)state;
  expect(L("\x80"), 0, 0); /* lone continuation bytes */
  expect(L("\xbf"), 0, 0);
  expect(L("a\x80"), 0, 1);
  expect(L("\xc3\xa9\xa9"), 0, 2); /* one too many */
  expect(L("\xc3\x28"), 0, 0);     /* second byte not a continuation */
  expect(L("\xc3\xc3\xa9"), 0, 0);
  expect(L("\xe2\x28\xa1"), 0, 0);
  expect(L("\xe2\x82\x28"), 0, 0);     /* third byte */
  expect(L("\xf0\x9f\x98\x28"), 0, 0); /* fourth byte */
  expect(L("\xf0\x28\x8c\xbc"), 0, 0);
  expect(L("\xf0\x9f\x28\x80"), 0, 0);
  expect(L("\xe2\x82\xac\xe2\x82"), 0, 3);  /* truncated, then end */
  expect(L("\xe2\x82\xac\xe2\x82 "), 0, 3); /* truncated, then ASCII */
}

static void test_truncated(void **state) {
  (void)state;
  expect(L("\xc3"), 0, 0);
  expect(L("\xe2"), 0, 0);
  expect(L("\xe2\x82"), 0, 0);
  expect(L("\xf0"), 0, 0);
  expect(L("\xf0\x9f"), 0, 0);
  expect(L("\xf0\x9f\x98"), 0, 0);
  expect(L("ab\xf0\x9f\x98"), 0, 2);
  expect(L("\xc3\xa9\xe2\x82"), 0, 2);
}

/* Every cut of a valid string: the prefix ends on the last complete
 * character before the cut. */
static void test_prefix_every_cut(void **state) {
  (void)state;
  static const char s[] =
      "a\xc3\xa9"
      "b\xe2\x82\xac"
      "c\xf0\x9f\x98\x80"
      "d\xf4\x8f\xbf\xbf";
  size_t len = sizeof(s) - 1;
  size_t boundaries[] = {0, 1, 3, 4, 7, 8, 12, 13, 17};
  size_t nb = sizeof(boundaries) / sizeof(boundaries[0]);
  assert_int_equal(boundaries[nb - 1], len);
  for (size_t cut = 0; cut <= len; cut++) {
    size_t want = 0;
    int on_boundary = 0;
    for (size_t k = 0; k < nb; k++) {
      if (boundaries[k] <= cut) want = boundaries[k];
      if (boundaries[k] == cut) on_boundary = 1;
    }
    expect(s, cut, on_boundary, want);
  }
}

/* ---- against a reference decoder ---- */

/* Decodes the way RFC 3629 defines it: the longest sequence the lead byte
 * announces, then reject overlongs, surrogates and > U+10FFFF.  Returns the
 * length of the character or 0. */
static size_t ref_char(const uint8_t *s, size_t len) {
  uint8_t c = s[0];
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xc0 && c < 0xe0) n = 2, cp = c & 0x1f;
  else if (c >= 0xe0 && c < 0xf0) n = 3, cp = c & 0x0f;
  else if (c >= 0xf0 && c < 0xf8) n = 4, cp = c & 0x07;
  else return 0;
  if (len < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return 0;
  return n;
}

static int ref_valid(const uint8_t *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t n = ref_char(s + i, len - i);
    if (!n) return 0;
    i += n;
  }
  return 1;
}

static void test_exhaustive_short(void **state) {
  (void)state;
  uint8_t b[4];
  /* every 1- and 2-byte string */
  for (int x = 0; x < 256; x++) {
    b[0] = (uint8_t)x;
    assert_int_equal(utf8_valid(b, 1), ref_valid(b, 1));
    for (int y = 0; y < 256; y++) {
      b[1] = (uint8_t)y;
      if (utf8_valid(b, 2) != ref_valid(b, 2)) {
        print_error("%02X %02X\n", x, y);
        fail();
      }
    }
  }
  /* every 3-byte string with a multi-byte lead */
  for (int x = 0xc0; x < 256; x++)
    for (int y = 0; y < 256; y++)
      for (int z = 0; z < 256; z++) {
        b[0] = (uint8_t)x, b[1] = (uint8_t)y, b[2] = (uint8_t)z;
        if (utf8_valid(b, 3) != ref_valid(b, 3)) {
          print_error("%02X %02X %02X\n", x, y, z);
          fail();
        }
      }
  /* 4-byte strings: every lead and second byte, samples of the rest */
  static const uint8_t tails[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f,
                                  0xa0, 0xbf, 0xc0, 0xc3, 0xe0, 0xf0, 0xff};
  for (int x = 0xe0; x < 256; x++)
    for (int y = 0; y < 256; y++)
      for (size_t i = 0; i < sizeof(tails); i++)
        for (size_t j = 0; j < sizeof(tails); j++) {
          b[0] = (uint8_t)x, b[1] = (uint8_t)y, b[2] = tails[i], b[3] = tails[j];
          if (utf8_valid(b, 4) != ref_valid(b, 4)) {
            print_error("%02X %02X %02X %02X\n", x, y, b[2], b[3]);
            fail();
          }
        }
}

/* Every code point encodes to valid UTF-8 except the surrogates. */
static void test_every_code_point(void **state) {
  (void)state;
  uint8_t b[4];
  for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
    size_t n;
    if (cp < 0x80) b[0] = (uint8_t)cp, n = 1;
    else if (cp < 0x800)
      b[0] = (uint8_t)(0xc0 | cp >> 6), b[1] = (uint8_t)(0x80 | (cp & 0x3f)), n = 2;
    else if (cp < 0x10000) {
      b[0] = (uint8_t)(0xe0 | cp >> 12);
      b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
      b[2] = (uint8_t)(0x80 | (cp & 0x3f));
      n = 3;
    } else {
      b[0] = (uint8_t)(0xf0 | cp >> 18);
      b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
      b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
      b[3] = (uint8_t)(0x80 | (cp & 0x3f));
      n = 4;
    }
    int want = !(cp >= 0xd800 && cp <= 0xdfff);
    if (utf8_valid(b, n) != want || utf8_valid_prefix(b, n) != (want ? n : 0)) {
      print_error("U+%04X\n", (unsigned)cp);
      fail();
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_ascii),  cmocka_unit_test(test_valid_multibyte),
      cmocka_unit_test(test_overlong),         cmocka_unit_test(test_surrogates),
      cmocka_unit_test(test_above_max),        cmocka_unit_test(test_bad_continuations),
      cmocka_unit_test(test_truncated),        cmocka_unit_test(test_prefix_every_cut),
      cmocka_unit_test(test_exhaustive_short), cmocka_unit_test(test_every_code_point),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
