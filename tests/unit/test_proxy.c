/* Unit tests for worker/proxy.c: the PROXY protocol v2 header parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "../../worker/proxy.h"

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Writes a header: signature, version/command byte, family/protocol byte,
 * the address length, then alen bytes of addr (zeros when addr is NULL).
 * Returns the header length. */
static size_t make_header(uint8_t *out, uint8_t ver_cmd, uint8_t fam_proto, const uint8_t *addr,
                          size_t alen) {
  memcpy(out, SIG, 12);
  out[12] = ver_cmd;
  out[13] = fam_proto;
  out[14] = (uint8_t)(alen >> 8);
  out[15] = (uint8_t)alen;
  if (addr) memcpy(out + 16, addr, alen);
  else memset(out + 16, 0, alen);
  return 16 + alen;
}

/* proxy_parse() on a copy of buf[0..len) in a heap block of exactly len
 * bytes, so that AddressSanitizer reports any read past the end. */
static int parse_exact(const uint8_t *buf, size_t len, struct proxy_info *info) {
  uint8_t *b = malloc(len ? len : 1);
  assert_non_null(b);
  if (len) memcpy(b, buf, len);
  int rc = proxy_parse(b, len, info);
  free(b);
  return rc;
}

/* 192.0.2.1:51234 -> 10.0.0.1:443 */
static const uint8_t TCP4_ADDR[12] = {192, 0, 2, 1, 10, 0, 0, 1, 0xC8, 0x22, 0x01, 0xBB};

/* [2001:db8::1]:40000 -> [::1]:443 */
static const uint8_t TCP6_ADDR[36] = {
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, /* src */
    0,    0,    0,    0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, /* dst */
    0x9C, 0x40, 0x01, 0xBB};

static void expect_tcp4(const struct proxy_info *pi, const char *addr, uint16_t port) {
  assert_int_equal(pi->local, 0);
  const struct sockaddr_in *s4 = (const struct sockaddr_in *)&pi->src;
  assert_int_equal(s4->sin_family, AF_INET);
  char buf[INET_ADDRSTRLEN];
  assert_non_null(inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof(buf)));
  assert_string_equal(buf, addr);
  assert_int_equal(ntohs(s4->sin_port), port);
}

static void expect_tcp6(const struct proxy_info *pi, const char *addr, uint16_t port) {
  assert_int_equal(pi->local, 0);
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&pi->src;
  assert_int_equal(s6->sin6_family, AF_INET6);
  char buf[INET6_ADDRSTRLEN];
  assert_non_null(inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof(buf)));
  assert_string_equal(buf, addr);
  assert_int_equal(ntohs(s6->sin6_port), port);
}

static void expect_local(const struct proxy_info *pi) {
  assert_int_equal(pi->local, 1);
  assert_int_equal(pi->src.ss_family, AF_UNSPEC);
}

/* ---- valid headers ---- */

static void test_tcp4(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  size_t n = make_header(h, 0x21, 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
  assert_int_equal(n, 28);
  assert_int_equal(parse_exact(h, n, &pi), 28);
  expect_tcp4(&pi, "192.0.2.1", 51234);

  static const uint8_t other[12] = {255, 255, 255, 255, 0, 0, 0, 0, 0xff, 0xff, 0, 1};
  n = make_header(h, 0x21, 0x11, other, sizeof(other));
  assert_int_equal(parse_exact(h, n, &pi), 28);
  expect_tcp4(&pi, "255.255.255.255", 65535);
}

static void test_tcp6(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  size_t n = make_header(h, 0x21, 0x21, TCP6_ADDR, sizeof(TCP6_ADDR));
  assert_int_equal(n, 52);
  assert_int_equal(parse_exact(h, n, &pi), 52);
  expect_tcp6(&pi, "2001:db8::1", 40000);

  /* an IPv4-mapped source */
  uint8_t mapped[36] = {0};
  mapped[10] = 0xff;
  mapped[11] = 0xff;
  mapped[12] = 198;
  mapped[13] = 51;
  mapped[14] = 100;
  mapped[15] = 7;
  mapped[32] = 0x00;
  mapped[33] = 0x50;
  n = make_header(h, 0x21, 0x21, mapped, sizeof(mapped));
  assert_int_equal(parse_exact(h, n, &pi), 52);
  expect_tcp6(&pi, "::ffff:198.51.100.7", 80);
}

static void test_data_after_header_is_not_consumed(void **state) {
  (void)state;
  uint8_t h[128];
  struct proxy_info pi;
  size_t n = make_header(h, 0x21, 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
  static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  memcpy(h + n, req, sizeof(req) - 1);
  assert_int_equal(parse_exact(h, n + sizeof(req) - 1, &pi), 28);
  expect_tcp4(&pi, "192.0.2.1", 51234);
  /* even a second PROXY header right after it */
  size_t m = make_header(h + n, 0x21, 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
  assert_int_equal(parse_exact(h, n + m, &pi), 28);
}

static void test_local(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  /* LOCAL, UNSPEC: HAProxy's health checks */
  size_t n = make_header(h, 0x20, 0x00, NULL, 0);
  assert_int_equal(parse_exact(h, n, &pi), 16);
  expect_local(&pi);
  /* LOCAL with addresses: they are ignored */
  n = make_header(h, 0x20, 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
  assert_int_equal(parse_exact(h, n, &pi), 28);
  expect_local(&pi);
  n = make_header(h, 0x20, 0x21, TCP6_ADDR, sizeof(TCP6_ADDR));
  assert_int_equal(parse_exact(h, n, &pi), 52);
  expect_local(&pi);
  /* LOCAL must be accepted whatever the family says */
  n = make_header(h, 0x20, 0x12, TCP4_ADDR, sizeof(TCP4_ADDR));
  assert_int_equal(parse_exact(h, n, &pi), 28);
  expect_local(&pi);
  n = make_header(h, 0x20, 0x11, NULL, 0);
  assert_int_equal(parse_exact(h, n, &pi), 16);
  expect_local(&pi);
}

static void test_unspec_family(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  /* PROXY with AF_UNSPEC: keep the connection's own address */
  size_t n = make_header(h, 0x21, 0x00, NULL, 0);
  assert_int_equal(parse_exact(h, n, &pi), 16);
  expect_local(&pi);
  /* whatever follows is skipped */
  n = make_header(h, 0x21, 0x00, TCP4_ADDR, sizeof(TCP4_ADDR));
  assert_int_equal(parse_exact(h, n, &pi), 28);
  expect_local(&pi);
}

static void test_unix_family(void **state) {
  (void)state;
  uint8_t h[512];
  uint8_t addr[216] = {0};
  struct proxy_info pi;
  memcpy(addr, "/run/haproxy/client.sock", 24);
  memcpy(addr + 108, "/run/tidings.sock", 17);
  size_t n = make_header(h, 0x21, 0x31, addr, sizeof(addr));
  assert_int_equal(n, 232);
  assert_int_equal(parse_exact(h, n, &pi), 232);
  expect_local(&pi);
  /* only stream transports are taken, as for UDP */
  n = make_header(h, 0x21, 0x32, addr, sizeof(addr));
  assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
}

static void test_tlvs_after_addresses(void **state) {
  (void)state;
  uint8_t h[PROXY_MAX_HEADER + 64];
  uint8_t block[PROXY_MAX_HEADER];
  struct proxy_info pi;
  /* TCP4 addresses, then PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY and a NOOP */
  size_t a = 0;
  memcpy(block, TCP4_ADDR, 12);
  a = 12;
  static const uint8_t tlvs[] = {0x01, 0x00, 0x02, 'h',  '2', 0x02, 0x00, 0x0b, 'e',
                                 'x',  'a',  'm',  'p',  'l', 'e',  '.',  'c',  'o',
                                 'm',  0x04, 0x00, 0x03, 0,   0,    0};
  memcpy(block + a, tlvs, sizeof(tlvs));
  a += sizeof(tlvs);
  size_t n = make_header(h, 0x21, 0x11, block, a);
  assert_int_equal(parse_exact(h, n, &pi), (int)(16 + a));
  expect_tcp4(&pi, "192.0.2.1", 51234);

  /* TCP6 addresses with TLVs */
  memcpy(block, TCP6_ADDR, 36);
  memcpy(block + 36, tlvs, sizeof(tlvs));
  n = make_header(h, 0x21, 0x21, block, 36 + sizeof(tlvs));
  assert_int_equal(parse_exact(h, n, &pi), (int)n);
  expect_tcp6(&pi, "2001:db8::1", 40000);

  /* the largest header allowed: the address block fills PROXY_MAX_HEADER */
  memset(block, 0, sizeof(block));
  memcpy(block, TCP4_ADDR, 12);
  n = make_header(h, 0x21, 0x11, block, PROXY_MAX_HEADER - 16);
  assert_int_equal(n, PROXY_MAX_HEADER);
  assert_int_equal(parse_exact(h, n, &pi), PROXY_MAX_HEADER);
  expect_tcp4(&pi, "192.0.2.1", 51234);
}

/* ---- incomplete headers ---- */

static void expect_every_prefix_incomplete(const uint8_t *h, size_t n) {
  struct proxy_info pi;
  for (size_t len = 0; len < n; len++) {
    int rc = parse_exact(h, len, &pi);
    if (rc != PROXY_INCOMPLETE) {
      print_error("prefix of %zu of %zu bytes: %d, want PROXY_INCOMPLETE\n", len, n, rc);
      fail();
    }
  }
  assert_int_equal(parse_exact(h, n, &pi), (int)n);
}

static void test_every_prefix_incomplete(void **state) {
  (void)state;
  uint8_t h[PROXY_MAX_HEADER + 16];
  size_t n = make_header(h, 0x21, 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
  expect_every_prefix_incomplete(h, n);
  n = make_header(h, 0x21, 0x21, TCP6_ADDR, sizeof(TCP6_ADDR));
  expect_every_prefix_incomplete(h, n);
  n = make_header(h, 0x20, 0x00, NULL, 0);
  expect_every_prefix_incomplete(h, n);
  n = make_header(h, 0x21, 0x00, NULL, 0);
  expect_every_prefix_incomplete(h, n);
  uint8_t block[300] = {0};
  memcpy(block, TCP4_ADDR, 12);
  block[12] = 0x04; /* a NOOP TLV over the rest */
  block[13] = (uint8_t)((300 - 15) >> 8);
  block[14] = (uint8_t)(300 - 15);
  n = make_header(h, 0x21, 0x11, block, sizeof(block));
  expect_every_prefix_incomplete(h, n);
  n = make_header(h, 0x21, 0x31, NULL, 216);
  expect_every_prefix_incomplete(h, n);
  n = make_header(h, 0x21, 0x11, NULL, PROXY_MAX_HEADER - 16);
  memcpy(h + 16, TCP4_ADDR, 12);
  expect_every_prefix_incomplete(h, n);
}

/* ---- invalid headers ---- */

static int parse_str(const char *s) {
  struct proxy_info pi;
  return parse_exact((const uint8_t *)s, strlen(s), &pi);
}

static void test_wrong_signature(void **state) {
  (void)state;
  assert_int_equal(parse_str("PROXY TCP4 192.0.2.1 10.0.0.1 51234 443\r\n"), PROXY_EINVALID);
  assert_int_equal(parse_str("PROXY TCP6 2001:db8::1 ::1 40000 443\r\nGET / HTTP/1.1\r\n\r\n"),
                   PROXY_EINVALID);
  assert_int_equal(parse_str("PROXY UNKNOWN\r\n"), PROXY_EINVALID);
  assert_int_equal(parse_str("GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n"),
                   PROXY_EINVALID);
  /* as soon as the first byte is wrong */
  assert_int_equal(parse_str("G"), PROXY_EINVALID);
  assert_int_equal(parse_str("P"), PROXY_EINVALID);
  assert_int_equal(parse_str("\r\n\r\nGET"), PROXY_EINVALID);

  /* every byte of the signature matters, in a full header and in the
   * shortest prefix that shows the difference */
  uint8_t h[64];
  struct proxy_info pi;
  size_t n = make_header(h, 0x21, 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
  for (size_t i = 0; i < 12; i++) {
    for (int bit = 0; bit < 8; bit++) {
      h[i] ^= (uint8_t)(1u << bit);
      assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
      assert_int_equal(parse_exact(h, i + 1, &pi), PROXY_EINVALID);
      h[i] ^= (uint8_t)(1u << bit);
    }
  }
  assert_int_equal(parse_exact(h, n, &pi), 28);
}

static void test_bad_version(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  for (int ver = 0; ver < 16; ver++) {
    if (ver == 2) continue;
    for (int cmd = 0; cmd < 2; cmd++) {
      size_t n = make_header(h, (uint8_t)(ver << 4 | cmd), 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
      assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
    }
  }
}

static void test_bad_command(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  for (int cmd = 2; cmd < 16; cmd++) {
    size_t n = make_header(h, (uint8_t)(0x20 | cmd), 0x11, TCP4_ADDR, sizeof(TCP4_ADDR));
    assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
    n = make_header(h, (uint8_t)(0x20 | cmd), 0x00, NULL, 0);
    assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  }
}

static void test_bad_protocol_or_family(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  /* UDP over IPv4 and IPv6 */
  size_t n = make_header(h, 0x21, 0x12, TCP4_ADDR, sizeof(TCP4_ADDR));
  assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  n = make_header(h, 0x21, 0x22, TCP6_ADDR, sizeof(TCP6_ADDR));
  assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  /* unspecified or undefined transport protocols */
  static const uint8_t fp[] = {0x10, 0x13, 0x1f, 0x20, 0x2f};
  for (size_t i = 0; i < sizeof(fp); i++) {
    n = make_header(h, 0x21, fp[i], TCP6_ADDR, sizeof(TCP6_ADDR));
    assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  }
  /* undefined families */
  for (int fam = 4; fam < 16; fam++) {
    n = make_header(h, 0x21, (uint8_t)(fam << 4 | 1), TCP6_ADDR, sizeof(TCP6_ADDR));
    assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  }
}

static void test_length_over_max(void **state) {
  (void)state;
  uint8_t h[16];
  struct proxy_info pi;
  /* rejected from the fixed 16 bytes alone: no waiting for the rest */
  static const size_t lens[] = {PROXY_MAX_HEADER - 16 + 1, PROXY_MAX_HEADER, 4096, 0xffff};
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    memcpy(h, SIG, 12);
    h[12] = 0x21;
    h[13] = 0x11;
    h[14] = (uint8_t)(lens[i] >> 8);
    h[15] = (uint8_t)lens[i];
    assert_int_equal(parse_exact(h, 16, &pi), PROXY_EINVALID);
    h[12] = 0x20;
    h[13] = 0x00;
    assert_int_equal(parse_exact(h, 16, &pi), PROXY_EINVALID);
  }
  /* exactly at the limit: wait for the rest */
  h[12] = 0x21;
  h[13] = 0x11;
  h[14] = (uint8_t)((PROXY_MAX_HEADER - 16) >> 8);
  h[15] = (uint8_t)(PROXY_MAX_HEADER - 16);
  assert_int_equal(parse_exact(h, 16, &pi), PROXY_INCOMPLETE);
}

static void test_address_too_short(void **state) {
  (void)state;
  uint8_t h[64];
  struct proxy_info pi;
  for (size_t alen = 0; alen < 12; alen++) {
    size_t n = make_header(h, 0x21, 0x11, TCP4_ADDR, alen);
    assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  }
  for (size_t alen = 0; alen < 36; alen++) {
    size_t n = make_header(h, 0x21, 0x21, TCP6_ADDR, alen);
    assert_int_equal(parse_exact(h, n, &pi), PROXY_EINVALID);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tcp4),
      cmocka_unit_test(test_tcp6),
      cmocka_unit_test(test_data_after_header_is_not_consumed),
      cmocka_unit_test(test_local),
      cmocka_unit_test(test_unspec_family),
      cmocka_unit_test(test_unix_family),
      cmocka_unit_test(test_tlvs_after_addresses),
      cmocka_unit_test(test_every_prefix_incomplete),
      cmocka_unit_test(test_wrong_signature),
      cmocka_unit_test(test_bad_version),
      cmocka_unit_test(test_bad_command),
      cmocka_unit_test(test_bad_protocol_or_family),
      cmocka_unit_test(test_length_over_max),
      cmocka_unit_test(test_address_too_short),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
