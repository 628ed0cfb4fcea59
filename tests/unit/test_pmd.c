/* Unit tests for worker/pmd.c: permessage-deflate (RFC 7692) negotiation,
 * compressed frames and bounded decompression.  Compressed inputs and
 * independent checks of the output are made with zlib directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <zlib.h>

#include "../../common/sbuf.h"
#include "../../common/frame.h"
#include "../../worker/pmd.h"

#define RESP_BASE "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint8_t rnd8(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint8_t)(rng_state >> 24);
}

static uint8_t *random_bytes(size_t n) {
  uint8_t *b = malloc(n ? n : 1);
  assert_non_null(b);
  for (size_t i = 0; i < n; i++) b[i] = rnd8();
  return b;
}

/* Text made of a few words in a pseudo-random order: compressible, but
 * with matches at every distance. */
static uint8_t *wordy_text(size_t n) {
  static const char *const words[] = {"alpha ",  "beta ", "gamma ", "delta ", "epsilon ",
                                      "zeta ",   "eta ",  "theta ", "iota ",  "kappa ",
                                      "lambda ", "mu ",   "nu ",    "xi ",    "omicron ",
                                      "pi ",     "rho ",  "sigma ", "tau ",   "upsilon "};
  uint8_t *b = malloc(n ? n : 1);
  assert_non_null(b);
  size_t k = 0;
  while (k < n) {
    const char *w = words[rnd8() % (sizeof(words) / sizeof(words[0]))];
    for (; *w && k < n; w++) b[k++] = (uint8_t)*w;
    if (k < n && rnd8() % 16 == 0) b[k++] = (uint8_t)('0' + rnd8() % 10);
  }
  return b;
}

/* pmd_negotiate() on a copy of offers in a heap block of exactly its
 * length, so that AddressSanitizer reports reads past the end. */
static int negotiate(const char *offers, struct pmd_params *p, char *resp, size_t resplen) {
  size_t len = strlen(offers);
  char *b = malloc(len ? len : 1);
  assert_non_null(b);
  memcpy(b, offers, len);
  int rc = pmd_negotiate(b, len, p, resp, resplen);
  free(b);
  return rc;
}

static void expect_accept(const char *offers, int bits, const char *want_resp) {
  struct pmd_params p = {0};
  char resp[256];
  memset(resp, 'x', sizeof(resp));
  int rc = negotiate(offers, &p, resp, sizeof(resp));
  if (rc != 1) {
    print_error("offer \"%s\" was declined\n", offers);
    fail();
  }
  if (strcmp(resp, want_resp) != 0) {
    print_error("offer \"%s\"\n  response \"%s\"\n      want \"%s\"\n", offers, resp, want_resp);
    fail();
  }
  if (p.server_bits != bits) {
    print_error("offer \"%s\": server_bits %d, want %d\n", offers, p.server_bits, bits);
    fail();
  }
}

static void expect_decline(const char *offers) {
  struct pmd_params p = {0};
  char resp[256] = "";
  int rc = negotiate(offers, &p, resp, sizeof(resp));
  if (rc != 0) {
    print_error("offer \"%s\" was accepted with \"%s\"\n", offers, resp);
    fail();
  }
}

/* Raw deflate of in[0..n) with zlib: Z_SYNC_FLUSH and the 00 00 ff ff tail
 * stripped as RFC 7692 says, or Z_FINISH (a final block) when finish. */
static uint8_t *zdeflate(const uint8_t *in, size_t n, int bits, int finish, size_t *outlen) {
  z_stream s;
  memset(&s, 0, sizeof(s));
  assert_int_equal(deflateInit2(&s, 9, Z_DEFLATED, -bits, 9, Z_DEFAULT_STRATEGY), Z_OK);
  size_t cap = deflateBound(&s, n) + 64;
  uint8_t *out = malloc(cap);
  assert_non_null(out);
  s.next_in = (Bytef *)(uintptr_t)in;
  s.avail_in = (uInt)n;
  s.next_out = out;
  s.avail_out = (uInt)cap;
  int rc = deflate(&s, finish ? Z_FINISH : Z_SYNC_FLUSH);
  assert_int_equal(rc, finish ? Z_STREAM_END : Z_OK);
  assert_int_equal(s.avail_in, 0);
  assert_true(s.avail_out > 0);
  size_t len = cap - s.avail_out;
  deflateEnd(&s);
  if (!finish) {
    assert_true(len >= 4);
    assert_memory_equal(out + len - 4, "\x00\x00\xff\xff", 4);
    len -= 4;
  }
  *outlen = len;
  return out;
}

/* Raw inflate of a permessage-deflate payload with zlib, with the tail put
 * back, using a window of bits: the compressor must not have used a larger
 * one.  Returns a malloc'd buffer of *outlen bytes. */
static uint8_t *zinflate(const uint8_t *in, size_t n, int bits, size_t cap, size_t *outlen) {
  z_stream s;
  memset(&s, 0, sizeof(s));
  assert_int_equal(inflateInit2(&s, -bits), Z_OK);
  uint8_t *msg = malloc(n + 4);
  uint8_t *out = malloc(cap + 1);
  assert_non_null(msg);
  assert_non_null(out);
  if (n) memcpy(msg, in, n);
  memcpy(msg + n, "\x00\x00\xff\xff", 4);
  s.next_in = msg;
  s.avail_in = (uInt)(n + 4);
  s.next_out = out;
  s.avail_out = (uInt)(cap + 1);
  int rc = inflate(&s, Z_SYNC_FLUSH);
  assert_true(rc == Z_OK || rc == Z_STREAM_END);
  assert_int_equal(s.avail_in, 0);
  assert_true(s.avail_out > 0);
  *outlen = cap + 1 - s.avail_out;
  inflateEnd(&s);
  free(msg);
  return out;
}

/* Checks the header of a compressed frame (FIN, RSV1, opcode, unmasked,
 * the shortest length encoding) and returns its payload. */
static const uint8_t *frame_payload(const struct sbuf *b, int opcode, size_t *plen) {
  assert_true(b->len >= 2);
  const uint8_t *d = b->data;
  assert_int_equal(d[0], 0x80 | 0x40 | opcode);
  assert_int_equal(d[1] & 0x80, 0); /* server frames are not masked */
  size_t h, len;
  if ((d[1] & 0x7f) < 126) {
    h = 2;
    len = d[1] & 0x7f;
  } else if ((d[1] & 0x7f) == 126) {
    assert_true(b->len >= 4);
    h = 4;
    len = ((size_t)d[2] << 8) | d[3];
    assert_true(len >= 126);
  } else {
    assert_true(b->len >= 10);
    h = 10;
    assert_int_equal(d[2] & 0x80, 0);
    uint64_t l = 0;
    for (int i = 0; i < 8; i++) l = (l << 8) | d[2 + i];
    assert_true(l > 0xffff);
    len = (size_t)l;
  }
  assert_int_equal(b->len, h + len);
  /* RFC 7692 7.2.1: the sync flush tail is removed */
  if (len >= 4) assert_memory_not_equal(d + h + len - 4, "\x00\x00\xff\xff", 4);
  *plen = len;
  return d + h;
}

/* Compresses in[0..n) with pmd_frame(), checks the frame, inflates it both
 * with zlib (window of bits) and with pmd_inflate() and compares.  Returns
 * the compressed payload length. */
static size_t round_trip(struct pmd *z, int bits, int opcode, const uint8_t *in, size_t n) {
  struct sbuf *f = pmd_frame(z, bits, opcode, in, n);
  assert_non_null(f);
  assert_int_equal(f->refs, 1);
  size_t plen;
  const uint8_t *payload = frame_payload(f, opcode, &plen);

  size_t zlen;
  uint8_t *zout = zinflate(payload, plen, bits, n + 16, &zlen);
  assert_int_equal(zlen, n);
  if (n) assert_memory_equal(zout, in, n);
  free(zout);

  const uint8_t *out = NULL;
  size_t outlen = 12345;
  assert_int_equal(pmd_inflate(z, payload, plen, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, n);
  if (n) assert_memory_equal(out, in, n);
  sbuf_unref(f);
  return plen;
}

/* ---- negotiation ---- */

static void test_negotiate_accepts(void **state) {
  (void)state;
  expect_accept("permessage-deflate", 15, RESP_BASE);
  expect_accept("permessage-deflate; client_max_window_bits", 15, RESP_BASE);
  expect_accept("permessage-deflate; client_max_window_bits=10", 15, RESP_BASE);
  expect_accept("permessage-deflate; client_max_window_bits=8", 15, RESP_BASE);
  expect_accept("permessage-deflate; client_max_window_bits=15", 15, RESP_BASE);
  expect_accept("permessage-deflate; client_max_window_bits=\"12\"", 15, RESP_BASE);
  expect_accept("permessage-deflate; server_max_window_bits=10", 10,
                RESP_BASE "; server_max_window_bits=10");
  expect_accept("permessage-deflate; server_max_window_bits=9", 9,
                RESP_BASE "; server_max_window_bits=9");
  expect_accept("permessage-deflate; server_max_window_bits=14", 14,
                RESP_BASE "; server_max_window_bits=14");
  expect_accept("permessage-deflate; server_max_window_bits=\"11\"", 11,
                RESP_BASE "; server_max_window_bits=11");
  /* 15 is the default, so the response need not name it */
  expect_accept("permessage-deflate; server_max_window_bits=15", 15, RESP_BASE);
  expect_accept("permessage-deflate; server_no_context_takeover", 15, RESP_BASE);
  expect_accept("permessage-deflate; client_no_context_takeover", 15, RESP_BASE);
  expect_accept(
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
      "server_max_window_bits=12; client_max_window_bits=9",
      12, RESP_BASE "; server_max_window_bits=12");
  expect_accept("permessage-deflate;client_max_window_bits;server_max_window_bits=13", 13,
                RESP_BASE "; server_max_window_bits=13");
}

static void test_negotiate_picks_first_acceptable(void **state) {
  (void)state;
  /* the first offer is unacceptable, the second is taken */
  expect_accept("permessage-deflate; server_max_window_bits=8, permessage-deflate", 15, RESP_BASE);
  expect_accept(
      "permessage-deflate; foo, permessage-deflate; server_max_window_bits=11; "
      "client_max_window_bits",
      11, RESP_BASE "; server_max_window_bits=11");
  /* a declined offer's window does not leak into the next one */
  expect_accept("permessage-deflate; server_max_window_bits=10; bogus, permessage-deflate", 15,
                RESP_BASE);
  /* the first acceptable one wins, not the smallest window */
  expect_accept("permessage-deflate; server_max_window_bits=10, permessage-deflate", 10,
                RESP_BASE "; server_max_window_bits=10");
  expect_accept("permessage-deflate, permessage-deflate; server_max_window_bits=10", 15, RESP_BASE);
  /* other extensions before it */
  expect_accept("x-webkit-deflate-frame, permessage-deflate", 15, RESP_BASE);
  expect_accept("foo; bar=1; baz, permessage-deflate; client_max_window_bits", 15, RESP_BASE);
  expect_accept(
      "mux, x-webkit-deflate-frame; no_context_takeover, permessage-deflate; "
      "server_max_window_bits=9",
      9, RESP_BASE "; server_max_window_bits=9");
  /* and after it */
  expect_accept("permessage-deflate, x-webkit-deflate-frame", 15, RESP_BASE);
}

static void test_negotiate_case_and_whitespace(void **state) {
  (void)state;
  expect_accept("PerMessage-Deflate", 15, RESP_BASE);
  expect_accept("PERMESSAGE-DEFLATE; SERVER_MAX_WINDOW_BITS=10; Client_Max_Window_Bits", 10,
                RESP_BASE "; server_max_window_bits=10");
  expect_accept("permessage-deflate; Server_No_Context_Takeover; CLIENT_NO_CONTEXT_TAKEOVER", 15,
                RESP_BASE);
  expect_accept("  permessage-deflate  ", 15, RESP_BASE);
  expect_accept("\tpermessage-deflate\t;\tclient_max_window_bits\t", 15, RESP_BASE);
  expect_accept(" permessage-deflate ; server_max_window_bits = 12 ; client_max_window_bits = 10 ",
                12, RESP_BASE "; server_max_window_bits=12");
  expect_accept("foo ,\t permessage-deflate;server_max_window_bits=9\t", 9,
                RESP_BASE "; server_max_window_bits=9");
  expect_accept("permessage-deflate;server_no_context_takeover;client_no_context_takeover", 15,
                RESP_BASE);
}

static void test_negotiate_declines(void **state) {
  (void)state;
  static const char *const bad[] = {
      "",
      " ",
      ",",
      " , ,\t",
      "x-webkit-deflate-frame",
      "x-webkit-deflate-frame; no_context_takeover",
      "deflate-frame",
      "permessage-deflat",
      "permessage-deflatex",
      "xpermessage-deflate",
      "permessage deflate",
      /* unknown parameters */
      "permessage-deflate; foo",
      "permessage-deflate; foo=1",
      "permessage-deflate; client_max_window_bits; mux",
      "permessage-deflate; server_max_window",
      "permessage-deflate; no_context_takeover",
      "permessage-deflate;",
      "permessage-deflate; ;client_max_window_bits",
      /* duplicate parameters */
      "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
      "permessage-deflate; client_no_context_takeover; Client_No_Context_Takeover",
      "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
      "permessage-deflate; server_max_window_bits=10; server_max_window_bits=12",
      "permessage-deflate; client_max_window_bits; client_max_window_bits",
      "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
      /* bad server_max_window_bits */
      "permessage-deflate; server_max_window_bits=8",
      "permessage-deflate; server_max_window_bits=16",
      "permessage-deflate; server_max_window_bits=7",
      "permessage-deflate; server_max_window_bits=0",
      "permessage-deflate; server_max_window_bits=100",
      "permessage-deflate; server_max_window_bits",
      "permessage-deflate; server_max_window_bits=",
      "permessage-deflate; server_max_window_bits= ",
      "permessage-deflate; server_max_window_bits=abc",
      "permessage-deflate; server_max_window_bits=1a",
      "permessage-deflate; server_max_window_bits=010",
      "permessage-deflate; server_max_window_bits=09",
      "permessage-deflate; server_max_window_bits=-9",
      "permessage-deflate; server_max_window_bits=+9",
      "permessage-deflate; server_max_window_bits=1 0",
      "permessage-deflate; server_max_window_bits=\"10",
      "permessage-deflate; server_max_window_bits=\"\"",
      /* bad client_max_window_bits values */
      "permessage-deflate; client_max_window_bits=7",
      "permessage-deflate; client_max_window_bits=16",
      "permessage-deflate; client_max_window_bits=",
      "permessage-deflate; client_max_window_bits=abc",
      /* no_context_takeover parameters take no value */
      "permessage-deflate; server_no_context_takeover=1",
      "permessage-deflate; client_no_context_takeover=true",
      "permessage-deflate; client_no_context_takeover=",
      /* every offer unacceptable */
      "permessage-deflate; foo, permessage-deflate; server_max_window_bits=8, "
      "x-webkit-deflate-frame",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) expect_decline(bad[i]);
}

static void test_negotiate_response_buffer(void **state) {
  (void)state;
  struct pmd_params p;
  char resp[256];
  size_t need = strlen(RESP_BASE);
  /* too small for the response and its NUL: declined rather than cut */
  assert_int_equal(negotiate("permessage-deflate", &p, resp, need), 0);
  assert_int_equal(negotiate("permessage-deflate", &p, resp, need + 1), 1);
  assert_string_equal(resp, RESP_BASE);
  const char *w10 = RESP_BASE "; server_max_window_bits=10";
  assert_int_equal(
      negotiate("permessage-deflate; server_max_window_bits=10", &p, resp, strlen(w10)), 0);
  assert_int_equal(
      negotiate("permessage-deflate; server_max_window_bits=10", &p, resp, strlen(w10) + 1), 1);
  assert_string_equal(resp, w10);
  assert_int_equal(p.server_bits, 10);
}

static void test_negotiate_length_bounds_input(void **state) {
  (void)state;
  /* only offers[0..len) counts: what follows is never looked at */
  const char *s = "permessage-deflate; server_max_window_bits=10; foo";
  struct pmd_params p;
  char resp[256];
  size_t cut = strlen("permessage-deflate; server_max_window_bits=10");
  assert_int_equal(pmd_negotiate(s, cut, &p, resp, sizeof(resp)), 1);
  assert_int_equal(p.server_bits, 10);
  assert_int_equal(pmd_negotiate(s, strlen(s), &p, resp, sizeof(resp)), 0);
  assert_int_equal(pmd_negotiate(s, 0, &p, resp, sizeof(resp)), 0);
}

/* ---- compression ---- */

static void test_frame_empty_and_tiny(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 1024);
  round_trip(&z, 15, FRAME_TEXT, (const uint8_t *)"", 0);
  round_trip(&z, 15, FRAME_TEXT, NULL, 0);
  round_trip(&z, 15, FRAME_TEXT, (const uint8_t *)"a", 1);
  round_trip(&z, 15, FRAME_BINARY, (const uint8_t *)"\0", 1);
  round_trip(&z, 9, FRAME_TEXT, (const uint8_t *)"{\"type\":\"ping\"}", 15);
  /* an empty message is one byte (an empty stored block minus its tail) */
  struct sbuf *f = pmd_frame(&z, 15, FRAME_TEXT, (const uint8_t *)"", 0);
  assert_non_null(f);
  assert_true(f->len >= 2 && f->len <= 8);
  assert_int_equal(f->data[0], 0xC1);
  assert_int_equal(f->data[1], f->len - 2);
  sbuf_unref(f);
  pmd_free(&z);
}

static void test_frame_header_lengths(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 256 * 1024);
  /* 7-bit: short message */
  struct sbuf *f = pmd_frame(&z, 15, FRAME_TEXT, (const uint8_t *)"hello", 5);
  assert_non_null(f);
  assert_int_equal(f->data[0], 0xC1);
  assert_true(f->data[1] < 126);
  assert_int_equal(f->len, 2 + f->data[1]);
  sbuf_unref(f);

  /* 16-bit: a thousand random bytes barely compress */
  uint8_t *r = random_bytes(1000);
  f = pmd_frame(&z, 15, FRAME_BINARY, r, 1000);
  assert_non_null(f);
  assert_int_equal(f->data[0], 0xC2);
  assert_int_equal(f->data[1], 126);
  size_t l16 = ((size_t)f->data[2] << 8) | f->data[3];
  assert_true(l16 >= 1000 && l16 < 1100);
  assert_int_equal(f->len, 4 + l16);
  sbuf_unref(f);
  assert_true(round_trip(&z, 15, FRAME_BINARY, r, 1000) >= 1000);
  free(r);

  /* 64-bit: 100 KB of random bytes */
  size_t n = 100 * 1024;
  r = random_bytes(n);
  f = pmd_frame(&z, 15, FRAME_TEXT, r, n);
  assert_non_null(f);
  assert_int_equal(f->data[0], 0xC1);
  assert_int_equal(f->data[1], 127);
  uint64_t l64 = 0;
  for (int i = 0; i < 8; i++) l64 = (l64 << 8) | f->data[2 + i];
  assert_true(l64 >= n && l64 < n + n / 100);
  assert_int_equal(f->len, 10 + l64);
  sbuf_unref(f);
  assert_true(round_trip(&z, 15, FRAME_TEXT, r, n) > 0xffff);
  free(r);
  pmd_free(&z);
}

static void test_frame_random_100k(void **state) {
  (void)state;
  struct pmd z;
  size_t n = 100 * 1000;
  pmd_init(&z, n);
  uint8_t *r = random_bytes(n);
  for (int bits = PMD_MIN_BITS; bits <= PMD_MAX_BITS; bits++)
    round_trip(&z, bits, FRAME_BINARY, r, n);
  free(r);
  pmd_free(&z);
}

static void test_frame_compressible_text(void **state) {
  (void)state;
  struct pmd z;
  size_t n = 100 * 1024;
  pmd_init(&z, n);
  uint8_t *t = malloc(n);
  assert_non_null(t);
  static const char pat[] = "{\"type\":\"message\",\"topic\":\"news\",\"data\":\"hello world\"}\n";
  for (size_t i = 0; i < n; i++) t[i] = (uint8_t)pat[i % (sizeof(pat) - 1)];
  size_t c = round_trip(&z, 15, FRAME_TEXT, t, n);
  assert_true(c < n / 50);
  c = round_trip(&z, 9, FRAME_TEXT, t, n);
  assert_true(c < n / 20);
  free(t);
  pmd_free(&z);
}

static void test_frame_every_window(void **state) {
  (void)state;
  struct pmd z;
  size_t n = 64 * 1024;
  pmd_init(&z, n);
  uint8_t *t = wordy_text(n);
  for (int bits = PMD_MIN_BITS; bits <= PMD_MAX_BITS; bits++) {
    size_t c = round_trip(&z, bits, FRAME_TEXT, t, n);
    assert_true(c < n / 2);
    assert_true(z.def_ready[bits]);
    /* shorter messages with the same stream: each frame starts afresh */
    round_trip(&z, bits, FRAME_TEXT, t + 1000, 3000);
    round_trip(&z, bits, FRAME_TEXT, (const uint8_t *)"x", 1);
  }
  free(t);
  pmd_free(&z);
}

static void test_frame_bad_bits_use_15(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 4096);
  const uint8_t msg[] = "out of range window sizes fall back to 15";
  int bad[] = {0, 1, 8, 16, 100, -15};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct sbuf *f = pmd_frame(&z, bad[i], FRAME_TEXT, msg, sizeof(msg) - 1);
    assert_non_null(f);
    size_t plen, olen;
    const uint8_t *p = frame_payload(f, FRAME_TEXT, &plen);
    uint8_t *o = zinflate(p, plen, 15, 4096, &olen);
    assert_int_equal(olen, sizeof(msg) - 1);
    assert_memory_equal(o, msg, olen);
    free(o);
    sbuf_unref(f);
  }
  for (int b = 0; b < PMD_MAX_BITS; b++) assert_false(z.def_ready[b]);
  assert_true(z.def_ready[PMD_MAX_BITS]);
  pmd_free(&z);
}

static void test_frame_no_context_takeover(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 8192);
  const char *m = "the same message twice: the same message twice";
  size_t n = strlen(m);
  struct sbuf *a = pmd_frame(&z, 12, FRAME_TEXT, (const uint8_t *)m, n);
  struct sbuf *b = pmd_frame(&z, 12, FRAME_TEXT, (const uint8_t *)m, n);
  assert_non_null(a);
  assert_non_null(b);
  /* nothing from the first frame is referenced by the second */
  assert_int_equal(a->len, b->len);
  assert_memory_equal(a->data, b->data, a->len);
  sbuf_unref(a);
  sbuf_unref(b);
  pmd_free(&z);
}

/* ---- decompression ---- */

static void test_inflate_zlib_input(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 64 * 1024);
  const uint8_t *out;
  size_t outlen;
  for (int bits = PMD_MIN_BITS; bits <= PMD_MAX_BITS; bits++) {
    uint8_t *t = wordy_text(20000);
    for (int finish = 0; finish <= 1; finish++) {
      size_t clen;
      uint8_t *c = zdeflate(t, 20000, bits, finish, &clen);
      assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_OK);
      assert_int_equal(outlen, 20000);
      assert_memory_equal(out, t, 20000);
      assert_ptr_equal(out, z.out);
      free(c);
    }
    free(t);
  }
  /* the RFC 7692 7.2.3.1 example: "Hello" */
  static const uint8_t hello[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
  assert_int_equal(pmd_inflate(&z, hello, sizeof(hello), &out, &outlen), PMD_OK);
  assert_int_equal(outlen, 5);
  assert_memory_equal(out, "Hello", 5);
  /* 7.2.3.3: "Hello" in a stored block */
  static const uint8_t stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                   0x65, 0x6c, 0x6c, 0x6f, 0x00};
  assert_int_equal(pmd_inflate(&z, stored, sizeof(stored), &out, &outlen), PMD_OK);
  assert_int_equal(outlen, 5);
  assert_memory_equal(out, "Hello", 5);
  /* an empty message: a lone 0x00, or nothing at all */
  assert_int_equal(pmd_inflate(&z, (const uint8_t *)"", 1, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, 0);
  assert_int_equal(pmd_inflate(&z, NULL, 0, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, 0);
  pmd_free(&z);
}

static void test_inflate_exact_limit(void **state) {
  (void)state;
  const size_t max = 1000;
  struct pmd z;
  pmd_init(&z, max);
  uint8_t *t = wordy_text(max + 100);
  const uint8_t *out;
  size_t outlen, clen;
  uint8_t *c = zdeflate(t, max, 15, 0, &clen);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, max);
  assert_memory_equal(out, t, max);
  free(c);
  c = zdeflate(t, max + 1, 15, 0, &clen);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_ETOOBIG);
  free(c);
  c = zdeflate(t, max + 100, 15, 1, &clen);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_ETOOBIG);
  free(c);
  /* the struct is usable again after an error */
  c = zdeflate(t, max - 1, 15, 0, &clen);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, max - 1);
  assert_memory_equal(out, t, max - 1);
  free(c);
  /* our own frames obey the same limit */
  struct sbuf *f = pmd_frame(&z, 15, FRAME_TEXT, t, max + 1);
  assert_non_null(f);
  size_t plen;
  const uint8_t *p = frame_payload(f, FRAME_TEXT, &plen);
  assert_int_equal(pmd_inflate(&z, p, plen, &out, &outlen), PMD_ETOOBIG);
  sbuf_unref(f);
  free(t);
  pmd_free(&z);

  /* a limit of 0 still allows the empty message */
  pmd_init(&z, 0);
  c = zdeflate((const uint8_t *)"", 0, 15, 0, &clen);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, 0);
  free(c);
  c = zdeflate((const uint8_t *)"a", 1, 15, 0, &clen);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_ETOOBIG);
  free(c);
  pmd_free(&z);
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_inflate_bomb(void **state) {
  (void)state;
  const size_t big = 10 * 1024 * 1024, max = 64 * 1024;
  uint8_t *zeros = calloc(big, 1);
  assert_non_null(zeros);
  size_t clen;
  uint8_t *c = zdeflate(zeros, big, 15, 0, &clen);
  free(zeros);
  assert_true(clen < big / 500);

  struct pmd z;
  pmd_init(&z, max);
  const uint8_t *out = NULL;
  size_t outlen = 0;
  double t0 = now_sec();
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_ETOOBIG);
  double dt = now_sec() - t0;
  /* it stopped at the limit instead of producing the 10 MB */
  assert_true(z.inf.total_out <= max + 1);
  assert_true(z.inf.total_in < clen);
  assert_true(dt < 1.0);
  /* and again, on the same struct */
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_ETOOBIG);
  assert_true(z.inf.total_out <= max + 1);
  free(c);

  /* the same bomb as one final block */
  zeros = calloc(big, 1);
  assert_non_null(zeros);
  c = zdeflate(zeros, big, 15, 1, &clen);
  free(zeros);
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_ETOOBIG);
  assert_true(z.inf.total_out <= max + 1);
  free(c);
  pmd_free(&z);
}

static void test_inflate_corrupt(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 4096);
  const uint8_t *out;
  size_t outlen;
  /* block type 3 is reserved */
  static const uint8_t btype3[] = {0xff, 0xff, 0xff, 0xff};
  assert_int_equal(pmd_inflate(&z, btype3, sizeof(btype3), &out, &outlen), PMD_ECORRUPT);
  static const uint8_t btype3b[] = {0x06};
  assert_int_equal(pmd_inflate(&z, btype3b, sizeof(btype3b), &out, &outlen), PMD_ECORRUPT);
  /* a stored block whose NLEN is not the complement of LEN */
  static const uint8_t nlen[] = {0x00, 0x05, 0x00, 0x00, 0x00, 'H', 'e', 'l', 'l', 'o'};
  assert_int_equal(pmd_inflate(&z, nlen, sizeof(nlen), &out, &outlen), PMD_ECORRUPT);
  /* a fixed-Huffman match before any output: distance too far back */
  static const uint8_t far[] = {0x03, 0x02, 0x00};
  int rc = pmd_inflate(&z, far, sizeof(far), &out, &outlen);
  assert_int_equal(rc, PMD_ECORRUPT);
  /* valid data, then a stored block header with a bad NLEN (the stripped
   * tail leaves the data at a stored block's LEN) */
  size_t clen;
  uint8_t *c = zdeflate((const uint8_t *)"Hello, world", 12, 15, 0, &clen);
  uint8_t *g = malloc(clen + 4);
  assert_non_null(g);
  memcpy(g, c, clen);
  memcpy(g + clen, "\x05\x00\x00\x00", 4);
  assert_int_equal(pmd_inflate(&z, g, clen + 4, &out, &outlen), PMD_ECORRUPT);
  /* and the struct decodes valid input again afterwards */
  assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, 12);
  assert_memory_equal(out, "Hello, world", 12);
  free(g);
  free(c);
  /* random garbage never crashes and never overflows the limit */
  for (int i = 0; i < 2000; i++) {
    size_t n = (size_t)(rnd8() % 64);
    uint8_t *r = random_bytes(n);
    rc = pmd_inflate(&z, r, n, &out, &outlen);
    assert_true(rc == PMD_OK || rc == PMD_ECORRUPT || rc == PMD_ETOOBIG);
    if (rc == PMD_OK) assert_true(outlen <= 4096);
    free(r);
  }
  pmd_free(&z);
}

static void test_inflate_each_message_alone(void **state) {
  (void)state;
  struct pmd z;
  pmd_init(&z, 4096);
  const uint8_t *out;
  size_t outlen;
  const char *msgs[] = {"first message, first message", "second", "", "third message: first"};
  for (int iter = 0; iter < 3; iter++) {
    for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
      size_t n = strlen(msgs[i]), clen;
      uint8_t *c = zdeflate((const uint8_t *)msgs[i], n, 15, 0, &clen);
      assert_int_equal(pmd_inflate(&z, c, clen, &out, &outlen), PMD_OK);
      assert_int_equal(outlen, n);
      if (n) assert_memory_equal(out, msgs[i], n);
      free(c);
    }
  }

  /* A second message compressed with context takeover refers back into the
   * first; decoded on its own (no context takeover) that is an error. */
  const char *m = "a message long enough to be matched whole the next time";
  size_t n = strlen(m);
  z_stream s;
  memset(&s, 0, sizeof(s));
  assert_int_equal(deflateInit2(&s, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY), Z_OK);
  uint8_t c1[256], c2[256];
  s.next_in = (Bytef *)(uintptr_t)m;
  s.avail_in = (uInt)n;
  s.next_out = c1;
  s.avail_out = sizeof(c1);
  assert_int_equal(deflate(&s, Z_SYNC_FLUSH), Z_OK);
  size_t l1 = sizeof(c1) - s.avail_out - 4;
  s.next_in = (Bytef *)(uintptr_t)m;
  s.avail_in = (uInt)n;
  s.next_out = c2;
  s.avail_out = sizeof(c2);
  assert_int_equal(deflate(&s, Z_SYNC_FLUSH), Z_OK);
  size_t l2 = sizeof(c2) - s.avail_out - 4;
  deflateEnd(&s);
  assert_true(l2 < l1);
  assert_int_equal(pmd_inflate(&z, c1, l1, &out, &outlen), PMD_OK);
  assert_int_equal(outlen, n);
  assert_int_equal(pmd_inflate(&z, c2, l2, &out, &outlen), PMD_ECORRUPT);
  assert_int_equal(pmd_inflate(&z, c1, l1, &out, &outlen), PMD_OK);
  assert_memory_equal(out, m, n);
  pmd_free(&z);
}

static void test_free_releases_everything(void **state) {
  (void)state;
  struct pmd z;
  /* never used */
  pmd_init(&z, 1024);
  pmd_free(&z);
  /* every deflate stream, the inflate stream and its buffer */
  pmd_init(&z, 100 * 1024);
  uint8_t *t = wordy_text(50 * 1024);
  for (int bits = PMD_MIN_BITS; bits <= PMD_MAX_BITS; bits++)
    round_trip(&z, bits, FRAME_TEXT, t, 50 * 1024);
  assert_non_null(z.out);
  assert_true(z.inf_ready);
  pmd_free(&z);
  assert_null(z.out);
  assert_false(z.inf_ready);
  for (int b = 0; b <= PMD_MAX_BITS; b++) assert_false(z.def_ready[b]);
  /* freeing twice is harmless, and the struct can be set up again */
  pmd_free(&z);
  pmd_init(&z, 1024);
  round_trip(&z, 10, FRAME_TEXT, t, 1000);
  pmd_free(&z);
  free(t);
  /* anything leaked here is reported by LeakSanitizer at exit */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_negotiate_accepts),
      cmocka_unit_test(test_negotiate_picks_first_acceptable),
      cmocka_unit_test(test_negotiate_case_and_whitespace),
      cmocka_unit_test(test_negotiate_declines),
      cmocka_unit_test(test_negotiate_response_buffer),
      cmocka_unit_test(test_negotiate_length_bounds_input),
      cmocka_unit_test(test_frame_empty_and_tiny),
      cmocka_unit_test(test_frame_header_lengths),
      cmocka_unit_test(test_frame_random_100k),
      cmocka_unit_test(test_frame_compressible_text),
      cmocka_unit_test(test_frame_every_window),
      cmocka_unit_test(test_frame_bad_bits_use_15),
      cmocka_unit_test(test_frame_no_context_takeover),
      cmocka_unit_test(test_inflate_zlib_input),
      cmocka_unit_test(test_inflate_exact_limit),
      cmocka_unit_test(test_inflate_bomb),
      cmocka_unit_test(test_inflate_corrupt),
      cmocka_unit_test(test_inflate_each_message_alone),
      cmocka_unit_test(test_free_releases_everything),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
