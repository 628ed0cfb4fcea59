/* Unit tests for common/frame.c: the client frame header parser, the
 * unmasking helper and the stream tracker built on the parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/frame.h"

/* Parses a copy of buf[0..n) at the very end of a heap block, so that
 * AddressSanitizer reports any read past what was given. */
static int parse_exact(const uint8_t *buf, size_t n, struct frame_head *h) {
  uint8_t *b = malloc(n ? n : 1);
  assert_non_null(b);
  if (n) memcpy(b, buf, n);
  int r = frame_parse_head(b, n, h);
  free(b);
  return r;
}

/* Builds a client header: byte 0 from fin/rsv/opcode, the length in the
 * given encoding (7, 16 or 64 bits, possibly non-minimal), then the key. */
static size_t build(uint8_t out[FRAME_HEADER_MAX_MASKED], int fin, int rsv, int opcode, int bits,
                    uint64_t len, const uint8_t *mask) {
  size_t k = 0;
  out[k++] = (uint8_t)((fin ? 0x80 : 0) | (rsv << 4) | opcode);
  uint8_t m = mask ? 0x80 : 0;
  if (bits == 7) {
    out[k++] = (uint8_t)(m | len);
  } else if (bits == 16) {
    out[k++] = m | 126;
    out[k++] = (uint8_t)(len >> 8);
    out[k++] = (uint8_t)len;
  } else {
    out[k++] = m | 127;
    for (int i = 7; i >= 0; i--) out[k++] = (uint8_t)(len >> (8 * i));
  }
  if (mask) {
    memcpy(out + k, mask, 4);
    k += 4;
  }
  return k;
}

static const uint8_t KEY[4] = {0x37, 0xfa, 0x21, 0x3d};

struct hcase {
  int fin, rsv, opcode, bits;
  uint64_t len;
  const uint8_t *mask;
};

static const struct hcase CASES[] = {
    {1, 0, FRAME_TEXT, 7, 0, NULL},
    {1, 0, FRAME_TEXT, 7, 5, KEY},
    {0, 0, FRAME_BINARY, 7, 125, KEY},
    {1, 4, FRAME_TEXT, 7, 1, KEY}, /* RSV1 */
    {1, 7, 0x3, 7, 1, NULL},       /* every reserved bit, a reserved opcode */
    {1, 0, FRAME_PING, 7, 0, KEY},
    {1, 0, FRAME_CLOSE, 7, 2, KEY},
    {0, 0, 0x0, 7, 17, KEY}, /* continuation */
    {1, 0, FRAME_TEXT, 16, 126, NULL},
    {1, 0, FRAME_TEXT, 16, 126, KEY},
    {1, 0, FRAME_BINARY, 16, 0xffff, KEY},
    {1, 0, FRAME_BINARY, 64, 0x10000, NULL},
    {1, 0, FRAME_BINARY, 64, 0x10000, KEY},
    {1, 0, FRAME_BINARY, 64, 0x0123456789abcdefULL, KEY},
    {1, 0, FRAME_BINARY, 64, INT64_MAX, KEY}, /* the largest length there is */
    {1, 0, FRAME_TEXT, 16, 5, KEY},           /* non-minimal: the caller's business */
    {1, 0, FRAME_TEXT, 64, 5, NULL},
};

static void check_head(const struct frame_head *h, const struct hcase *c) {
  assert_int_equal(h->fin, c->fin);
  assert_int_equal(h->rsv, c->rsv);
  assert_int_equal(h->opcode, c->opcode);
  assert_true(h->len == c->len);
  assert_int_equal(h->masked, c->mask != NULL);
  static const uint8_t zero[4];
  assert_memory_equal(h->mask, c->mask ? c->mask : zero, 4);
}

static void test_every_header(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
    const struct hcase *c = &CASES[i];
    uint8_t b[FRAME_HEADER_MAX_MASKED + 3];
    size_t hl = build(b, c->fin, c->rsv, c->opcode, c->bits, c->len, c->mask);
    size_t want = 2 + (c->bits == 16 ? 2 : c->bits == 64 ? 8 : 0) + (c->mask ? 4 : 0);
    assert_int_equal(hl, want);
    struct frame_head h;
    assert_int_equal(parse_exact(b, hl, &h), (int)hl);
    check_head(&h, c);
    /* payload bytes after the header change nothing */
    memcpy(b + hl, "abc", 3);
    memset(&h, 0xee, sizeof(h));
    assert_int_equal(parse_exact(b, hl + 3, &h), (int)hl);
    check_head(&h, c);
  }
}

static void test_every_prefix_is_incomplete(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
    const struct hcase *c = &CASES[i];
    uint8_t b[FRAME_HEADER_MAX_MASKED];
    size_t hl = build(b, c->fin, c->rsv, c->opcode, c->bits, c->len, c->mask);
    for (size_t cut = 0; cut < hl; cut++) {
      struct frame_head h, before;
      memset(&h, 0x5a, sizeof(h));
      before = h;
      assert_int_equal(parse_exact(b, cut, &h), FRAME_INCOMPLETE);
      assert_memory_equal(&h, &before, sizeof(h)); /* untouched */
    }
  }
}

static void test_lengths_agree_with_the_writer(void **state) {
  (void)state;
  static const uint64_t lens[] = {0,
                                  1,
                                  125,
                                  126,
                                  127,
                                  1000,
                                  0xfffe,
                                  0xffff,
                                  0x10000,
                                  0x10001,
                                  1 << 24,
                                  UINT32_MAX,
                                  (uint64_t)UINT32_MAX + 1,
                                  INT64_MAX};
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    uint8_t b[FRAME_HEADER_MAX];
    size_t hl = frame_header(b, FRAME_BINARY, 1, lens[i]);
    struct frame_head h;
    assert_int_equal(parse_exact(b, hl, &h), (int)hl);
    assert_true(h.len == lens[i]);
    assert_int_equal(h.fin, 1);
    assert_int_equal(h.rsv, WSLAY_RSV1_BIT);
    assert_int_equal(h.opcode, FRAME_BINARY);
    assert_int_equal(h.masked, 0);
    assert_int_equal(hl, lens[i] < 126 ? 2 : lens[i] <= 0xffff ? 4 : 10);
  }
}

static void test_top_bit_of_64_bit_length(void **state) {
  (void)state;
  static const uint64_t bad[] = {1ULL << 63, UINT64_MAX, (1ULL << 63) | 5};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    for (int masked = 0; masked < 2; masked++) {
      uint8_t b[FRAME_HEADER_MAX_MASKED];
      size_t hl = build(b, 1, 0, FRAME_BINARY, 64, bad[i], masked ? KEY : NULL);
      struct frame_head h;
      /* two bytes cannot tell; from the first length byte on it is known */
      assert_int_equal(parse_exact(b, 2, &h), FRAME_INCOMPLETE);
      for (size_t cut = 3; cut <= hl; cut++)
        assert_int_equal(parse_exact(b, cut, &h), FRAME_EMALFORMED);
    }
  }
  /* the top bit of a 16-bit length is an ordinary length bit */
  uint8_t b[FRAME_HEADER_MAX_MASKED];
  size_t hl = build(b, 1, 0, FRAME_BINARY, 16, 0x8000, KEY);
  struct frame_head h;
  assert_int_equal(parse_exact(b, hl, &h), (int)hl);
  assert_true(h.len == 0x8000);
}

static void test_unmask(void **state) {
  (void)state;
  /* RFC 6455 5.7: a masked "Hello" */
  static const uint8_t frame[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
  struct frame_head h;
  int hl = parse_exact(frame, sizeof(frame), &h);
  assert_int_equal(hl, 6);
  assert_true(h.len == 5 && h.masked && h.fin && h.opcode == FRAME_TEXT);
  assert_memory_equal(h.mask, KEY, 4);
  uint8_t p[5];
  memcpy(p, frame + hl, 5);
  frame_unmask(p, 5, h.mask, 0);
  assert_memory_equal(p, "Hello", 5);

  /* in pieces of every size and at every offset: as a whole */
  uint8_t plain[300], whole[300], pieces[300];
  for (size_t i = 0; i < sizeof(plain); i++) plain[i] = (uint8_t)(i * 7 + 3);
  memcpy(whole, plain, sizeof(plain));
  frame_unmask(whole, sizeof(whole), KEY, 0);
  for (size_t step = 1; step <= 9; step++) {
    memcpy(pieces, plain, sizeof(plain));
    for (size_t off = 0; off < sizeof(pieces); off += step) {
      size_t n = sizeof(pieces) - off < step ? sizeof(pieces) - off : step;
      frame_unmask(pieces + off, n, KEY, off);
    }
    assert_memory_equal(pieces, whole, sizeof(whole));
  }
  frame_unmask(whole, sizeof(whole), KEY, 0); /* its own inverse */
  assert_memory_equal(whole, plain, sizeof(plain));
  frame_unmask(NULL, 0, KEY, 3);
}

/* ---- frame_track ---- */

/* A stream of client frames and, for each byte, whether the tracker must be
 * idle once that byte has been fed. */
struct stream {
  uint8_t b[4096];
  uint8_t idle[4096];
  size_t n;
};

static void add(struct stream *s, int fin, int opcode, int bits, size_t len, int ends_idle) {
  size_t k = build(s->b + s->n, fin, 0, opcode, bits, len, KEY);
  memset(s->idle + s->n, 0, k + len);
  for (size_t i = 0; i < len; i++) s->b[s->n + k + i] = (uint8_t)(i ^ 0x55);
  s->n += k + len;
  s->idle[s->n - 1] = (uint8_t)ends_idle;
  assert_true(s->n < sizeof(s->b));
}

static void make_stream(struct stream *s) {
  memset(s, 0, sizeof(*s));
  add(s, 1, FRAME_TEXT, 7, 5, 1);
  add(s, 1, FRAME_TEXT, 7, 0, 1);      /* ends with its header */
  add(s, 0, FRAME_TEXT, 7, 3, 0);      /* a fragmented message... */
  add(s, 1, FRAME_PING, 7, 4, 0);      /* ...interleaved control frame... */
  add(s, 0, 0x0, 16, 300, 0);          /* ...continuation... */
  add(s, 1, 0x0, 7, 2, 1);             /* ...last fragment */
  add(s, 1, FRAME_BINARY, 64, 100, 1); /* non-minimal 64-bit length */
  add(s, 1, FRAME_CLOSE, 7, 2, 1);
}

static void feed_in_chunks(const struct stream *s, size_t chunk) {
  struct frame_tracker t;
  memset(&t, 0, sizeof(t));
  assert_true(frame_tracker_idle(&t));
  for (size_t off = 0; off < s->n; off += chunk) {
    size_t n = s->n - off < chunk ? s->n - off : chunk;
    frame_track(&t, s->b + off, n);
    if (chunk == 1 && !!frame_tracker_idle(&t) != s->idle[off]) {
      print_error("byte %zu: idle %d, want %d\n", off, frame_tracker_idle(&t), s->idle[off]);
      fail();
    }
  }
  assert_true(frame_tracker_idle(&t));
}

static void test_track_one_byte_at_a_time(void **state) {
  (void)state;
  struct stream *s = malloc(sizeof(*s));
  assert_non_null(s);
  make_stream(s);
  feed_in_chunks(s, 1);
  free(s);
}

static void test_track_in_chunks(void **state) {
  (void)state;
  struct stream *s = malloc(sizeof(*s));
  assert_non_null(s);
  make_stream(s);
  for (size_t chunk = 2; chunk <= 20; chunk++) feed_in_chunks(s, chunk);
  feed_in_chunks(s, s->n);
  free(s);
}

static void test_track_large_lengths(void **state) {
  (void)state;
  struct frame_tracker t;
  memset(&t, 0, sizeof(t));
  uint8_t b[FRAME_HEADER_MAX_MASKED];
  size_t hl = build(b, 1, 0, FRAME_BINARY, 64, (uint64_t)1 << 40, KEY);
  for (size_t i = 0; i < hl; i++) frame_track(&t, b + i, 1);
  assert_false(frame_tracker_idle(&t));
  assert_true(t.left == (uint64_t)1 << 40);
  assert_int_equal(t.hdr_len, 0);
}

static void test_track_stops_at_a_malformed_header(void **state) {
  (void)state;
  struct frame_tracker t;
  memset(&t, 0, sizeof(t));
  uint8_t b[FRAME_HEADER_MAX_MASKED + 2];
  size_t hl = build(b, 1, 0, FRAME_BINARY, 64, UINT64_MAX, KEY);
  b[hl] = 0x81; /* what looks like another frame after it */
  b[hl + 1] = 0x00;
  for (size_t i = 0; i < hl + 2; i++) frame_track(&t, b + i, 1);
  assert_true(t.broken);
  assert_false(frame_tracker_idle(&t));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_header),
      cmocka_unit_test(test_every_prefix_is_incomplete),
      cmocka_unit_test(test_lengths_agree_with_the_writer),
      cmocka_unit_test(test_top_bit_of_64_bit_length),
      cmocka_unit_test(test_unmask),
      cmocka_unit_test(test_track_one_byte_at_a_time),
      cmocka_unit_test(test_track_in_chunks),
      cmocka_unit_test(test_track_large_lengths),
      cmocka_unit_test(test_track_stops_at_a_malformed_header),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
