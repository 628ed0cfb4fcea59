/* Unit tests for common/http.c: the HTTP/1.1 request parser, the RFC 6455
 * upgrade check, Sec-WebSocket-Accept and response formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/http.h"

/* The handshake of RFC 6455 section 1.3, plus a query and a protocol list. */
static const char VALID[] =
    "GET /chat?room=1&x HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

/* Parses a copy of buf[0..len) held in a heap block of exactly len bytes, so
 * that AddressSanitizer reports any read past the end. */
static int parse_exact(const char *buf, size_t len, struct http_request *req, char **copy) {
  char *b = malloc(len ? len : 1);
  assert_non_null(b);
  if (len) memcpy(b, buf, len);
  int rc = http_parse_request(b, len, req);
  if (copy) *copy = b;
  else free(b);
  return rc;
}

/* Parses s (which outlives req) twice: from an exact-size copy, for ASan,
 * then in place so that req's strings point into s.  Both must agree. */
static int parse_str(const char *s, struct http_request *req) {
  size_t len = strlen(s);
  int rc = parse_exact(s, len, req, NULL);
  int rc2 = http_parse_request(s, len, req);
  assert_int_equal(rc, rc2);
  return rc2;
}

static void assert_str(struct http_str s, const char *want) {
  assert_non_null(s.p);
  size_t n = strlen(want);
  if (s.n != n || memcmp(s.p, want, n) != 0) {
    print_error("got \"%.*s\" (%zu), want \"%s\"\n", (int)s.n, s.p, s.n, want);
    fail();
  }
}

static void assert_absent(struct http_str s) {
  assert_null(s.p);
  assert_int_equal(s.n, 0);
}

/* ---- parsing ---- */

static void test_parse_valid_request(void **state) {
  (void)state;
  struct http_request req;
  char *b;
  size_t len = strlen(VALID);
  int rc = parse_exact(VALID, len, &req, &b);
  assert_int_equal(rc, (int)len);
  assert_str(req.method, "GET");
  assert_str(req.target, "/chat?room=1&x");
  assert_str(req.path, "/chat");
  assert_str(req.query, "room=1&x");
  assert_int_equal(req.minor_version, 1);
  assert_int_equal(req.nheaders, 7);
  assert_str(req.host, "server.example.com");
  assert_str(req.upgrade, "websocket");
  assert_str(req.connection, "Upgrade");
  assert_str(req.ws_key, "dGhlIHNhbXBsZSBub25jZQ==");
  assert_str(req.ws_version, "13");
  assert_str(req.origin, "http://example.com");
  assert_str(req.ws_protocol, "chat, superchat");
  assert_absent(req.ws_extensions);
  assert_absent(req.authorization);
  assert_int_equal(req.dup_key, 0);
  /* the strings point into the caller's buffer */
  assert_ptr_equal(req.method.p, b);
  assert_ptr_equal(req.target.p, b + 4);
  assert_ptr_equal(req.path.p, b + 4);
  assert_ptr_equal(req.query.p, b + 10);
  assert_true(req.host.p > b && req.host.p + req.host.n < b + len);
  free(b);
}

static void test_parse_returns_head_length_only(void **state) {
  (void)state;
  char buf[1024];
  size_t hl = strlen(VALID);
  memcpy(buf, VALID, hl);
  memcpy(buf + hl, "\x81\x85garbage after the head", 25);
  struct http_request req;
  assert_int_equal(parse_exact(buf, hl + 25, &req, NULL), (int)hl);
  assert_int_equal(http_parse_request(buf, hl + 25, &req), (int)hl);
  assert_str(req.host, "server.example.com");
  /* a second head after the first is not looked at */
  char two[2048];
  snprintf(two, sizeof(two), "%s%s", VALID, VALID);
  assert_int_equal(parse_str(two, &req), (int)hl);
}

static void test_parse_minimal_and_variants(void **state) {
  (void)state;
  struct http_request req;
  const char *s = "GET / HTTP/1.1\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_str(req.path, "/");
  assert_int_equal(req.query.n, 0);
  assert_int_equal(req.nheaders, 0);
  assert_absent(req.host);

  s = "GET /? HTTP/1.1\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_str(req.target, "/?");
  assert_str(req.path, "/");
  assert_int_equal(req.query.n, 0);

  s = "GET /a?b?c HTTP/1.1\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_str(req.path, "/a");
  assert_str(req.query, "b?c");

  s = "OPTIONS * HTTP/1.0\r\nX: y\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_str(req.method, "OPTIONS");
  assert_str(req.target, "*");
  assert_int_equal(req.minor_version, 0);
  assert_int_equal(req.nheaders, 1);

  s = "GET http://h/x HTTP/1.9\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_int_equal(req.minor_version, 9);
}

static void test_parse_header_whitespace_and_case(void **state) {
  (void)state;
  struct http_request req;
  const char *s =
      "GET / HTTP/1.1\r\n"
      "hOsT:example.org\r\n"
      "UPGRADE: \t websocket \t \r\n"
      "connection:   \r\n"
      "Sec-Websocket-Key:\tdGhlIHNhbXBsZSBub25jZQ==\t\r\n"
      "X-Obs-Text: caf\xc3\xa9 \xff\r\n"
      "X-Inner:  a  b \r\n"
      "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
      "Authorization: Bearer abc.def\r\n"
      "\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_int_equal(req.nheaders, 8);
  assert_str(req.host, "example.org");
  assert_str(req.upgrade, "websocket");
  /* present but empty */
  assert_non_null(req.connection.p);
  assert_int_equal(req.connection.n, 0);
  assert_str(req.ws_key, "dGhlIHNhbXBsZSBub25jZQ==");
  assert_str(req.ws_extensions, "permessage-deflate; client_max_window_bits");
  assert_str(req.authorization, "Bearer abc.def");
}

static void test_parse_repeated_headers(void **state) {
  (void)state;
  struct http_request req;
  const char *s =
      "GET / HTTP/1.1\r\nHost: first\r\nHost: second\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_str(req.host, "first");
  assert_int_equal(req.dup_key, 0);

  s = "GET / HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_int_equal(req.dup_key, 1);
  assert_str(req.ws_key, "dGhlIHNhbXBsZSBub25jZQ==");

  /* an empty first key still counts */
  s = "GET / HTTP/1.1\r\nSec-WebSocket-Key:\r\nSec-WebSocket-Key: x\r\n\r\n";
  assert_int_equal(parse_str(s, &req), (int)strlen(s));
  assert_int_equal(req.dup_key, 1);
}

/* picohttpparser's test: every strict prefix of a valid request is
 * incomplete, read from a buffer of exactly that size. */
static void check_all_prefixes_incomplete(const char *full) {
  size_t len = strlen(full);
  struct http_request req;
  for (size_t n = 0; n < len; n++) {
    int rc = parse_exact(full, n, &req, NULL);
    if (rc != HTTP_INCOMPLETE) {
      print_error("prefix of %zu/%zu bytes: got %d\n", n, len, rc);
      fail();
    }
  }
  assert_int_equal(parse_exact(full, len, &req, NULL), (int)len);
}

static void test_parse_every_prefix_incomplete(void **state) {
  (void)state;
  check_all_prefixes_incomplete(VALID);
  check_all_prefixes_incomplete("GET / HTTP/1.1\r\n\r\n");
  check_all_prefixes_incomplete("GET /x HTTP/1.0\r\nA:\r\nB: \t\r\n\r\n");
  check_all_prefixes_incomplete("M-SEARCH * HTTP/1.1\r\nHost: 239.255.255.250:1900\r\n\r\n");
}

static void test_parse_head_spanning_reads(void **state) {
  (void)state;
  /* the empty line split over two reads: "\r\n\r" then "\n" */
  struct http_request req;
  size_t len = strlen(VALID);
  assert_int_equal(parse_exact(VALID, len - 1, &req, NULL), HTTP_INCOMPLETE);
  assert_int_equal(parse_exact(VALID, len, &req, NULL), (int)len);
}

static void test_parse_malformed(void **state) {
  (void)state;
#define L(s) s, sizeof(s) - 1
  static const struct {
    const char *s;
    size_t len; /* the literal's, NULs included */
  } cases[] = {
      {L("GET / HTTP/1.1\r\nHost example.com\r\n\r\n")},    /* no colon */
      {L("GET / HTTP/1.1\r\nHost : example.com\r\n\r\n")},  /* space before colon */
      {L("GET / HTTP/1.1\r\n: value\r\n\r\n")},             /* empty name */
      {L("GET / HTTP/1.1\r\nHo(st: x\r\n\r\n")},            /* separator in name */
      {L("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n")},  /* obs-fold */
      {L("GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n")}, /* obs-fold, tab */
      {L("GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n")},           /* control char */
      {L("GET / HTTP/1.1\r\nX: a\x7fz\r\n\r\n")},           /* DEL */
      {L("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n")},             /* bare CR */
      {L("GET / HTTP/1.1\r\nX: a\nb\r\n\r\n")},             /* bare LF */
      {L("GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n")},          /* LF line end */
      {L("GET / HTTP/1.1\nHost: x\r\n\r\n")},               /* LF after request line */
      {L("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n")},             /* NUL in value */
      {L("GET / HTTP/1.1\r\nHo\0st: x\r\n\r\n")},           /* NUL in name */
      {L("G\0T / HTTP/1.1\r\nHost: x\r\n\r\n")},            /* NUL in method */
      {L("GET\0/ HTTP/1.1\r\nHost: x\r\n\r\n")},            /* NUL after method */
      {L("GET /a\0b HTTP/1.1\r\n\r\n")},                    /* NUL in target */
      {L("GET  / HTTP/1.1\r\n\r\n")},                       /* empty target */
      {L(" GET / HTTP/1.1\r\n\r\n")},                       /* empty method */
      {L("GET\t/ HTTP/1.1\r\n\r\n")},                       /* tab separator */
      {L("GE(T / HTTP/1.1\r\n\r\n")},                       /* separator in method */
      {L("GET /a\x7f HTTP/1.1\r\n\r\n")},                   /* DEL in target */
      {L("GET /\r\n\r\n")},                                 /* HTTP/0.9 */
      {L("GET / \r\n\r\n")},                                /* no version */
      {L("GET / HTTP/1.1 \r\n\r\n")},                       /* trailing space */
      {L("GET / HTTP/1.11\r\n\r\n")},                       /* two digits */
      {L("GET / HTTP/1.x\r\n\r\n")},                        /* not a digit */
      {L("GET / HTTP/2.0\r\n\r\n")},                        /* major 2 */
      {L("GET / HTTP/1\r\n\r\n")},                          /* no minor */
      {L("GET / http/1.1\r\n\r\n")},                        /* lower case */
      {L("GET / HTTP/1.1 extra\r\n\r\n")},                  /* junk */
      {L("\r\nGET / HTTP/1.1\r\n\r\n")},                    /* leading CRLF */
      {L("\r\n\r\n")},                                      /* nothing */
      {L("GET / HTTP/1.1\r\n\r\r\n\r\n")},                  /* stray CR line */
      {L("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")},  /* TLS, incomplete */
      {L("{\"type\":\"subscribe\"")},                       /* JSON, incomplete */
      {L("GE\x80")},                                        /* high byte, incomplete */
      {L("GET\r\n")},                                       /* CR in method, incomplete */
      {L("G\0")},                                           /* NUL in method, incomplete */
  };
  int failures = 0;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct http_request req;
    size_t len = cases[i].len;
    int rc = parse_exact(cases[i].s, len, &req, NULL);
    if (rc != HTTP_EMALFORMED) {
      print_error("case %zu: got %d, want HTTP_EMALFORMED\n", i, rc);
      failures++;
    }
  }
  assert_int_equal(failures, 0);
#undef L
}

static void test_parse_header_limit(void **state) {
  (void)state;
  char buf[8192];
  struct http_request req;
  for (int count = HTTP_MAX_HEADERS; count <= HTTP_MAX_HEADERS + 1; count++) {
    size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
    for (int i = 0; i < count; i++)
      n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X-%d: %d\r\n", i, i);
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
    int rc = parse_exact(buf, n, &req, NULL);
    if (count <= HTTP_MAX_HEADERS) {
      assert_int_equal(rc, (int)n);
      assert_int_equal(req.nheaders, count);
    } else {
      assert_int_equal(rc, HTTP_EMALFORMED);
    }
  }
}

/* ---- the upgrade check ---- */

static int check(const char *s, const char **why) {
  struct http_request req;
  int rc = parse_str(s, &req);
  if (rc <= 0) {
    print_error("parse failed (%d): %s\n", rc, s);
    fail();
  }
  *why = NULL;
  int st = http_check_upgrade(&req, why);
  assert_non_null(*why);
  return st;
}

/* Builds a request from the parts; NULL leaves a header out. */
static const char *build(char *buf, size_t size, const char *method, const char *version,
                         const char *host, const char *upgrade, const char *connection,
                         const char *wsversion, const char *key) {
  size_t n = (size_t)snprintf(buf, size, "%s /ws %s\r\n", method, version);
  if (host) n += (size_t)snprintf(buf + n, size - n, "Host: %s\r\n", host);
  if (upgrade) n += (size_t)snprintf(buf + n, size - n, "Upgrade: %s\r\n", upgrade);
  if (connection) n += (size_t)snprintf(buf + n, size - n, "Connection: %s\r\n", connection);
  if (wsversion)
    n += (size_t)snprintf(buf + n, size - n, "Sec-WebSocket-Version: %s\r\n", wsversion);
  if (key) n += (size_t)snprintf(buf + n, size - n, "Sec-WebSocket-Key: %s\r\n", key);
  snprintf(buf + n, size - n, "\r\n");
  return buf;
}

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="

static void test_upgrade_valid(void **state) {
  (void)state;
  const char *why;
  assert_int_equal(check(VALID, &why), 0);
  assert_string_equal(why, "ok");
  char b[1024];
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", "13", KEY), &why),
      0);
  /* higher minor versions are HTTP/1.1 compatible */
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.2", "h", "websocket", "Upgrade", "13", KEY), &why),
      0);
}

static void test_upgrade_method(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  const char *methods[] = {"POST", "HEAD", "PUT", "get", "Get", "GETX", "OPTIONS"};
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    assert_int_equal(
        check(build(b, sizeof b, methods[i], "HTTP/1.1", "h", "websocket", "Upgrade", "13", KEY),
              &why),
        405);
    assert_string_equal(why, "method must be GET");
  }
}

static void test_upgrade_http10(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.0", "h", "websocket", "Upgrade", "13", KEY), &why),
      400);
  assert_string_equal(why, "HTTP/1.1 required");
}

static void test_upgrade_host(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", NULL, "websocket", "Upgrade", "13", KEY), &why),
      400);
  assert_string_equal(why, "missing Host");
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "", "websocket", "Upgrade", "13", KEY), &why),
      400);
  assert_string_equal(why, "missing Host");
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", " \t ", "websocket", "Upgrade", "13", KEY), &why),
      400);
}

static void test_upgrade_upgrade_header(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  const char *good[] = {"websocket",      "WebSocket",       "WEBSOCKET",        "h2c, websocket",
                        "websocket, h2c", " websocket ,foo", "foo,\twebsocket\t"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    assert_int_equal(
        check(build(b, sizeof b, "GET", "HTTP/1.1", "h", good[i], "Upgrade", "13", KEY), &why), 0);
  const char *bad[] = {"", "websockets", "web socket", "h2c", "websocket/13x", "xwebsocket"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(
        check(build(b, sizeof b, "GET", "HTTP/1.1", "h", bad[i], "Upgrade", "13", KEY), &why), 400);
    assert_string_equal(why, "Upgrade must be websocket");
  }
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "h", NULL, "Upgrade", "13", KEY), &why), 400);
  assert_string_equal(why, "Upgrade must be websocket");
}

static void test_upgrade_connection_header(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  const char *good[] = {"Upgrade",
                        "upgrade",
                        "UPGRADE",
                        "keep-alive, Upgrade",
                        "Upgrade, keep-alive",
                        "keep-alive,upgrade",
                        ", , upgrade ,"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    assert_int_equal(
        check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", good[i], "13", KEY), &why),
        0);
  const char *bad[] = {"", "keep-alive", "close", "Upgraded", "up grade", "keep-alive upgrade"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(
        check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", bad[i], "13", KEY), &why),
        400);
    assert_string_equal(why, "Connection must include upgrade");
  }
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", NULL, "13", KEY), &why), 400);
}

static void test_upgrade_version(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  const char *bad[] = {"8", "12", "14", "013", "13, 8", "1 3", "", "thirteen"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(
        check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", bad[i], KEY),
              &why),
        426);
    assert_string_equal(why, "Sec-WebSocket-Version must be 13");
  }
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", NULL, KEY), &why),
      426);
  /* OWS around the value is not part of it */
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", " 13 ", KEY), &why),
      0);
}

static void test_upgrade_key(void **state) {
  (void)state;
  const char *why;
  char b[1024];
  const char *good[] = {
      KEY,
      "AAAAAAAAAAAAAAAAAAAAAA==",
      "/////////////////////w==", /* 16 x 0xff */
      "+++++++++++++++++++++g==",
      "AAAAAAAAAAAAAAAAAAAAAQ==", /* the 2 used bits of the last char */
      "AAAAAAAAAAAAAAAAAAAAAg==",
      "AAAAAAAAAAAAAAAAAAAAAw==",
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    int st = check(
        build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", "13", good[i]), &why);
    if (st != 0) {
      print_error("key %s: %d\n", good[i], st);
      fail();
    }
  }
  const char *bad[] = {
      "",
      "dGhlIHNhbXBsZSBub25jZQ",     /* no padding */
      "dGhlIHNhbXBsZSBub25jZQ=",    /* 23 characters */
      "dGhlIHNhbXBsZSBub25jZQ===",  /* 25 characters */
      "dGhlIHNhbXBsZSBub25jZQ==AA", /* trailing data */
      "AAAAAAAAAAAAAAAAAAAAAB==",   /* unused bits set: not canonical */
      "AAAAAAAAAAAAAAAAAAAAAP==",
      "AAAAAAAAAAAAAAAAAAAAA/==",
      "AAAAAAAAAAAAAAAAAAAAAAAA", /* 18 bytes */
      "AAAAAAAAAAAAAAAAAAAAA===", /* wrong padding */
      "AAAAAAAAAAAAAAAAAAAA=A==", /* padding inside */
      "AAAAAAAAAA-AAAAAAAAAAA==", /* base64url alphabet */
      "AAAAAAAAAA_AAAAAAAAAAA==",
      "AAAAAAAAAA AAAAAAAAAAA==", /* space inside */
      "AAAAAAAAAA!AAAAAAAAAAA==",
      "AAAAAAAAAAAAAAAAAAAAAA=\xc3",
      "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==",
      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", /* 32 bytes */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int st = check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", "13", bad[i]),
                   &why);
    if (st != 400) {
      print_error("key \"%s\": %d, want 400\n", bad[i], st);
      fail();
    }
    assert_string_equal(why, "bad Sec-WebSocket-Key");
  }
  assert_int_equal(
      check(build(b, sizeof b, "GET", "HTTP/1.1", "h", "websocket", "Upgrade", "13", NULL), &why),
      400);
  assert_string_equal(why, "bad Sec-WebSocket-Key");
}

static void test_upgrade_duplicate_key(void **state) {
  (void)state;
  const char *why;
  const char *same =
      "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " KEY
      "\r\n"
      "Sec-WebSocket-Key: " KEY "\r\n\r\n";
  assert_int_equal(check(same, &why), 400);
  assert_string_equal(why, "bad Sec-WebSocket-Key");
  const char *other =
      "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: " KEY
      "\r\nSec-WebSocket-Version: 13\r\n"
      "SEC-WEBSOCKET-KEY: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n";
  assert_int_equal(check(other, &why), 400);
}

static void test_upgrade_check_order(void **state) {
  (void)state;
  /* a request that is wrong in every way gets the method error first */
  const char *why;
  assert_int_equal(check("POST / HTTP/1.0\r\n\r\n", &why), 405);
  assert_int_equal(check("GET / HTTP/1.0\r\n\r\n", &why), 400);
  assert_string_equal(why, "HTTP/1.1 required");
  assert_int_equal(check("GET / HTTP/1.1\r\n\r\n", &why), 400);
  assert_string_equal(why, "missing Host");
}

static void test_wants_websocket(void **state) {
  (void)state;
  struct http_request req;
  const char *s = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  assert_true(http_parse_request(s, strlen(s), &req) > 0);
  assert_int_equal(http_wants_websocket(&req), 0);
  s = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n";
  assert_true(http_parse_request(s, strlen(s), &req) > 0);
  assert_int_equal(http_wants_websocket(&req), 1);
  s = "GET / HTTP/1.1\r\nSec-WebSocket-Key: x\r\n\r\n";
  assert_true(http_parse_request(s, strlen(s), &req) > 0);
  assert_int_equal(http_wants_websocket(&req), 1);
  s = "GET / HTTP/1.1\r\nSec-WebSocket-Version: 13\r\n\r\n";
  assert_true(http_parse_request(s, strlen(s), &req) > 0);
  assert_int_equal(http_wants_websocket(&req), 1);
  assert_true(http_parse_request(VALID, strlen(VALID), &req) > 0);
  assert_int_equal(http_wants_websocket(&req), 1);
}

/* ---- tokens ---- */

static int has(const char *value, const char *token) {
  size_t n = strlen(value);
  char *b = malloc(n ? n : 1);
  assert_non_null(b);
  memcpy(b, value, n);
  int r = http_has_token((struct http_str){b, n}, token);
  free(b);
  return r;
}

static void test_has_token(void **state) {
  (void)state;
  assert_int_equal(has("upgrade", "upgrade"), 1);
  assert_int_equal(has("Upgrade", "upgrade"), 1);
  assert_int_equal(has("UPGRADE", "upgrade"), 1);
  assert_int_equal(has("upgrade", "UpGrAdE"), 1);
  assert_int_equal(has("keep-alive, Upgrade", "upgrade"), 1);
  assert_int_equal(has("Upgrade, keep-alive", "upgrade"), 1);
  assert_int_equal(has("a,b,upgrade,c", "upgrade"), 1);
  assert_int_equal(has("  upgrade  ", "upgrade"), 1);
  assert_int_equal(has("\tupgrade\t,x", "upgrade"), 1);
  assert_int_equal(has(",,upgrade,,", "upgrade"), 1);
  assert_int_equal(has("x , upgrade", "upgrade"), 1);
  assert_int_equal(has("", "upgrade"), 0);
  assert_int_equal(has(",", "upgrade"), 0);
  assert_int_equal(has(" , ", "upgrade"), 0);
  assert_int_equal(has("upgrades", "upgrade"), 0);
  assert_int_equal(has("upgrad", "upgrade"), 0);
  assert_int_equal(has("xupgrade", "upgrade"), 0);
  assert_int_equal(has("up grade", "upgrade"), 0);
  assert_int_equal(has("keep-alive upgrade", "upgrade"), 0);
  assert_int_equal(has("upgrade;q=1", "upgrade"), 0);
  assert_int_equal(has("keep-alive", "upgrade"), 0);
  /* the last element of a list, at the very end of the buffer */
  assert_int_equal(has("a, upgrade", "upgrade"), 1);
  assert_int_equal(has("a, upgrad", "upgrade"), 0);
  /* an absent header */
  assert_int_equal(http_has_token((struct http_str){NULL, 0}, "upgrade"), 0);
}

/* ---- Sec-WebSocket-Accept ---- */

static void test_accept_key(void **state) {
  (void)state;
  char out[29];
  memset(out, 'x', sizeof(out));
  http_accept_key((struct http_str){KEY, strlen(KEY)}, out);
  assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  assert_int_equal(strlen(out), 28);
  /* a second known pair (SHA-1 of key + GUID, base64) */
  http_accept_key((struct http_str){"x3JJHMbDL1EzLkh9GBhXDw==", 24}, out);
  assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
  /* the key is used as given, not NUL-terminated */
  const char buf[] = KEY "GARBAGE";
  http_accept_key((struct http_str){buf, 24}, out);
  assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

/* ---- responses ---- */

static void test_format_response(void **state) {
  (void)state;
  char out[512];
  const char *want =
      "HTTP/1.1 400 Bad Request\r\n"
      "Content-Type: text/plain\r\n"
      "Content-Length: 12\r\n"
      "Cache-Control: no-store\r\n"
      "Connection: close\r\n"
      "\r\n"
      "bad request\n";
  int n = http_format_response(out, sizeof(out), 400, NULL, NULL, "bad request\n");
  assert_int_equal(n, (int)strlen(want));
  assert_string_equal(out, want);

  want =
      "HTTP/1.1 426 Upgrade Required\r\n"
      "Content-Type: application/json\r\n"
      "Content-Length: 2\r\n"
      "Cache-Control: no-store\r\n"
      "Connection: close\r\n"
      "Sec-WebSocket-Version: 13\r\n"
      "\r\n"
      "{}";
  n = http_format_response(out, sizeof(out), 426, "application/json",
                           "Sec-WebSocket-Version: 13\r\n", "{}");
  assert_int_equal(n, (int)strlen(want));
  assert_string_equal(out, want);

  want =
      "HTTP/1.1 200 OK\r\n"
      "Content-Type: text/plain\r\n"
      "Content-Length: 0\r\n"
      "Cache-Control: no-store\r\n"
      "Connection: close\r\n"
      "\r\n";
  n = http_format_response(out, sizeof(out), 200, NULL, NULL, NULL);
  assert_int_equal(n, (int)strlen(want));
  assert_string_equal(out, want);

  /* unknown status */
  n = http_format_response(out, sizeof(out), 599, NULL, NULL, "");
  assert_true(n > 0);
  assert_memory_equal(out, "HTTP/1.1 599 Error\r\n", 20);
}

static void test_format_response_too_small(void **state) {
  (void)state;
  char big[512];
  int n = http_format_response(big, sizeof(big), 404, NULL, NULL, "not found");
  assert_true(n > 0);
  /* exactly big enough needs room for the NUL */
  char *out = malloc((size_t)n + 1);
  assert_non_null(out);
  assert_int_equal(http_format_response(out, (size_t)n + 1, 404, NULL, NULL, "not found"), n);
  assert_string_equal(out, big);
  assert_int_equal(http_format_response(out, (size_t)n, 404, NULL, NULL, "not found"), -1);
  assert_int_equal(http_format_response(out, 10, 404, NULL, NULL, "not found"), -1);
  assert_int_equal(http_format_response(out, 1, 404, NULL, NULL, "not found"), -1);
  free(out);
}

static void test_reason(void **state) {
  (void)state;
  assert_string_equal(http_reason(101), "Switching Protocols");
  assert_string_equal(http_reason(200), "OK");
  assert_string_equal(http_reason(400), "Bad Request");
  assert_string_equal(http_reason(401), "Unauthorized");
  assert_string_equal(http_reason(403), "Forbidden");
  assert_string_equal(http_reason(404), "Not Found");
  assert_string_equal(http_reason(405), "Method Not Allowed");
  assert_string_equal(http_reason(408), "Request Timeout");
  assert_string_equal(http_reason(426), "Upgrade Required");
  assert_string_equal(http_reason(429), "Too Many Requests");
  assert_string_equal(http_reason(431), "Request Header Fields Too Large");
  assert_string_equal(http_reason(500), "Internal Server Error");
  assert_string_equal(http_reason(503), "Service Unavailable");
  assert_string_equal(http_reason(0), "Error");
  assert_string_equal(http_reason(418), "Error");
}

/* ---- requests with a body (the HTTP API) ---- */

static int framing_of(const char *head, struct http_body *b) {
  struct http_request req;
  assert_true(parse_str(head, &req) > 0);
  return http_body_framing(&req, b);
}

static void test_body_framing(void **state) {
  (void)state;
  struct http_body b;
  assert_int_equal(framing_of("POST /api/publish HTTP/1.1\r\n\r\n", &b), 0);
  assert_int_equal(b.kind, HTTP_BODY_NONE);
  assert_int_equal(framing_of("POST / HTTP/1.1\r\nContent-Length: 42\r\n\r\n", &b), 0);
  assert_int_equal(b.kind, HTTP_BODY_LENGTH);
  assert_int_equal(b.length, 42);
  assert_int_equal(framing_of("POST / HTTP/1.1\r\ncontent-length:0\r\n\r\n", &b), 0);
  assert_int_equal(b.kind, HTTP_BODY_LENGTH);
  assert_int_equal(b.length, 0);
  assert_int_equal(framing_of("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", &b), 0);
  assert_int_equal(b.kind, HTTP_BODY_CHUNKED);
  assert_int_equal(framing_of("POST / HTTP/1.1\r\nContent-Length: 9007199254740992\r\n\r\n", &b),
                   0);
  /* what cannot be delimited safely */
  const char *bad[] = {
      "POST / HTTP/1.1\r\nContent-Length: 9007199254740993\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 5,5\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (framing_of(bad[i], &b) != HTTP_EMALFORMED) {
      print_error("accepted: %s\n", bad[i]);
      fail();
    }
  }
}

static int keep_alive_of(const char *head) {
  struct http_request req;
  assert_true(parse_str(head, &req) > 0);
  return http_keep_alive(&req);
}

static void test_keep_alive(void **state) {
  (void)state;
  assert_true(keep_alive_of("GET / HTTP/1.1\r\n\r\n"));
  assert_false(keep_alive_of("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
  assert_false(keep_alive_of("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"));
  assert_false(keep_alive_of("GET / HTTP/1.0\r\n\r\n"));
  assert_true(keep_alive_of("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
}

static void test_media_type(void **state) {
  (void)state;
  struct http_str s = {"application/json", 16};
  assert_true(http_media_type_is(s, "application/json"));
  s = (struct http_str){"Application/JSON ; charset=utf-8", 32};
  assert_true(http_media_type_is(s, "application/json"));
  s = (struct http_str){"application/jsonx", 17};
  assert_false(http_media_type_is(s, "application/json"));
  s = (struct http_str){"text/plain", 10};
  assert_false(http_media_type_is(s, "application/json"));
  s = (struct http_str){NULL, 0};
  assert_false(http_media_type_is(s, "application/json"));
}

static void test_expect(void **state) {
  (void)state;
  struct http_request req;
  assert_true(parse_str("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n", &req) > 0);
  assert_true(http_expects_continue(&req));
  assert_true(parse_str("POST / HTTP/1.1\r\n\r\n", &req) > 0);
  assert_false(http_expects_continue(&req));
}

static void test_query_param(void **state) {
  (void)state;
  char out[16];
  const char *q = "topic=a%2Fb&since=5&limit=&x&topicx=9&sp=a+b%20c";
  struct http_str qs = {q, strlen(q)};
  assert_int_equal(http_query_param(qs, "topic", out, sizeof(out)), 3);
  assert_string_equal(out, "a/b");
  assert_int_equal(http_query_param(qs, "since", out, sizeof(out)), 1);
  assert_string_equal(out, "5");
  assert_int_equal(http_query_param(qs, "limit", out, sizeof(out)), 0);
  assert_string_equal(out, "");
  assert_int_equal(http_query_param(qs, "x", out, sizeof(out)), 0);
  assert_int_equal(http_query_param(qs, "sp", out, sizeof(out)), 5);
  assert_string_equal(out, "a b c");
  assert_int_equal(http_query_param(qs, "nope", out, sizeof(out)), HTTP_ENOTFOUND);
  assert_int_equal(http_query_param(qs, "top", out, sizeof(out)), HTTP_ENOTFOUND);
  /* bad escapes and values that do not fit (room for the NUL) */
  struct http_str b1 = {"t=%4", 4}, b2 = {"t=%zz", 5}, b3 = {"t=0123456789abcdef", 18};
  assert_int_equal(http_query_param(b1, "t", out, sizeof(out)), HTTP_EMALFORMED);
  assert_int_equal(http_query_param(b2, "t", out, sizeof(out)), HTTP_EMALFORMED);
  assert_int_equal(http_query_param(b3, "t", out, sizeof(out)), HTTP_EMALFORMED);
  struct http_str b4 = {"t=0123456789abcde", 17};
  assert_int_equal(http_query_param(b4, "t", out, sizeof(out)), 15);
}

/* Decodes src whole, then in pieces of every size from 1 to 7: the result
 * (return, data, done) must not depend on how the bytes arrive. */
static long dechunk(const char *src, size_t len, char *out, size_t cap, size_t *olen) {
  struct http_chunked st = {0};
  *olen = 0;
  long whole = http_chunked_decode(&st, src, len, out, olen, cap);
  int done = st.done;
  for (size_t piece = 1; piece <= 7; piece++) {
    struct http_chunked s2 = {0};
    char buf[256];
    size_t n = 0, at = 0;
    long rc = 0;
    while (at < len && !s2.done) {
      size_t k = len - at < piece ? len - at : piece;
      rc = http_chunked_decode(&s2, src + at, k, buf, &n, cap < sizeof(buf) ? cap : sizeof(buf));
      if (rc < 0) break;
      at += (size_t)rc;
      if ((size_t)rc < k && !s2.done) break; /* full */
    }
    if (whole < 0) {
      assert_int_equal(rc, whole);
    } else {
      assert_true(rc >= 0);
      assert_int_equal(at, (size_t)whole);
      assert_int_equal(s2.done, done);
      assert_int_equal(n, *olen);
      assert_memory_equal(buf, out, n);
    }
  }
  return whole;
}

static void test_chunked(void **state) {
  (void)state;
  char out[256];
  size_t n;
  const char *a = "5\r\nhello\r\n1;ext=\"x y\"\r\n,\r\n6 \r\n world\r\n0\r\n\r\nNEXT";
  assert_int_equal(dechunk(a, strlen(a), out, sizeof(out), &n), (long)strlen(a) - 4);
  assert_int_equal(n, 12);
  assert_memory_equal(out, "hello, world", 12);
  /* hex sizes in either case, trailers skipped */
  const char *b = "A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
  assert_int_equal(dechunk(b, strlen(b), out, sizeof(out), &n), (long)strlen(b));
  assert_int_equal(n, 20);
  /* an empty body */
  assert_int_equal(dechunk("0\r\n\r\n", 5, out, sizeof(out), &n), 5);
  assert_int_equal(n, 0);
  /* incomplete: everything consumed, not done */
  struct http_chunked st = {0};
  n = 0;
  assert_int_equal(http_chunked_decode(&st, "5\r\nhel", 6, out, &n, sizeof(out)), 6);
  assert_false(st.done);
  assert_int_equal(n, 3);
  /* malformed */
  const char *bad[] = {"x\r\n",
                       "\r\n",
                       "5\nhello\r\n0\r\n\r\n",
                       "5\r\nhelloX\r\n",
                       "5\r\nhello\r\n0\r\n\rX",
                       "1000000000000000\r\n",
                       "0\r\nX-T: \x01\r\n\r\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (dechunk(bad[i], strlen(bad[i]), out, sizeof(out), &n) != HTTP_EMALFORMED) {
      print_error("accepted: %s\n", bad[i]);
      fail();
    }
  }
  /* too large for the destination: it stops where dst is full, and goes
   * on once there is room */
  memset(&st, 0, sizeof(st));
  n = 0;
  assert_int_equal(http_chunked_decode(&st, "5\r\nhello\r\n0\r\n\r\n", 15, out, &n, 4), 7);
  assert_false(st.done);
  assert_int_equal(n, 4);
  assert_int_equal(http_chunked_decode(&st, "o\r\n0\r\n\r\n", 8, out, &n, 5), 8);
  assert_true(st.done);
  assert_memory_equal(out, "hello", 5);
  /* discarding: dst NULL, only the count */
  memset(&st, 0, sizeof(st));
  n = 0;
  assert_int_equal(http_chunked_decode(&st, "3\r\nabc\r\n0\r\n\r\n", 13, NULL, &n, SIZE_MAX), 13);
  assert_true(st.done);
  assert_int_equal(n, 3);
  /* an over-long extension */
  char longext[HTTP_CHUNK_LINE_MAX + 16];
  memset(longext, 'x', sizeof(longext));
  memcpy(longext, "1;", 2);
  memset(&st, 0, sizeof(st));
  n = 0;
  assert_int_equal(http_chunked_decode(&st, longext, sizeof(longext), out, &n, sizeof(out)),
                   HTTP_EMALFORMED);
}

static void test_format_head(void **state) {
  (void)state;
  char out[256];
  int n = http_format_head(out, sizeof(out), 200, "application/json", 12, NULL, 0);
  assert_int_equal(n, (int)strlen(out));
  assert_string_equal(out,
                      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "Content-Length: 12\r\n\r\n");
  n = http_format_head(out, sizeof(out), 405, NULL, 0, "Allow: POST\r\n", 1);
  assert_string_equal(out,
                      "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nAllow: POST\r\n"
                      "Connection: close\r\n\r\n");
  assert_int_equal(http_format_head(out, 20, 200, "application/json", 12, NULL, 0), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_valid_request),
      cmocka_unit_test(test_parse_returns_head_length_only),
      cmocka_unit_test(test_parse_minimal_and_variants),
      cmocka_unit_test(test_parse_header_whitespace_and_case),
      cmocka_unit_test(test_parse_repeated_headers),
      cmocka_unit_test(test_parse_every_prefix_incomplete),
      cmocka_unit_test(test_parse_head_spanning_reads),
      cmocka_unit_test(test_parse_malformed),
      cmocka_unit_test(test_parse_header_limit),
      cmocka_unit_test(test_upgrade_valid),
      cmocka_unit_test(test_upgrade_method),
      cmocka_unit_test(test_upgrade_http10),
      cmocka_unit_test(test_upgrade_host),
      cmocka_unit_test(test_upgrade_upgrade_header),
      cmocka_unit_test(test_upgrade_connection_header),
      cmocka_unit_test(test_upgrade_version),
      cmocka_unit_test(test_upgrade_key),
      cmocka_unit_test(test_upgrade_duplicate_key),
      cmocka_unit_test(test_upgrade_check_order),
      cmocka_unit_test(test_wants_websocket),
      cmocka_unit_test(test_has_token),
      cmocka_unit_test(test_accept_key),
      cmocka_unit_test(test_format_response),
      cmocka_unit_test(test_format_response_too_small),
      cmocka_unit_test(test_reason),
      cmocka_unit_test(test_body_framing),
      cmocka_unit_test(test_keep_alive),
      cmocka_unit_test(test_media_type),
      cmocka_unit_test(test_expect),
      cmocka_unit_test(test_query_param),
      cmocka_unit_test(test_chunked),
      cmocka_unit_test(test_format_head),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
