/* fuzz_http - common/http.c: the request-head parser, the upgrade check,
 * token lists and Sec-WebSocket-Accept.
 *
 * Invariants checked besides the sanitizers:
 *  - the result is a length within the input, HTTP_INCOMPLETE or
 *    HTTP_EMALFORMED, and every string of the parsed request lies inside the
 *    head;
 *  - a request arriving in pieces is judged like the whole (inputs < 1 KiB):
 *    every proper prefix of a complete head is HTTP_INCOMPLETE, a prefix of
 *    a malformed one is HTTP_INCOMPLETE or HTTP_EMALFORMED, a prefix of an
 *    incomplete one is HTTP_INCOMPLETE, and bytes after a complete head do
 *    not change the result;
 *  - http_check_upgrade() answers 0, 400, 405 or 426 with a reason, and 0
 *    only for a GET with a well-formed 24-character key. */
#include <string.h>

#include "../../common/http.h"
#include "fuzz_common.h"

static const char *buf_lo, *buf_hi;

static void check_str(struct http_str s) {
  if (!s.p) {
    FUZZ_CHECK(s.n == 0);
    return;
  }
  FUZZ_CHECK(s.p >= buf_lo && s.p <= buf_hi && s.n <= (size_t)(buf_hi - s.p));
  for (size_t i = 0; i < s.n; i++) FUZZ_CHECK(s.p[i] != '\r' && s.p[i] != '\n');
}

static void check_request(const char *buf, int head, const struct http_request *req) {
  buf_lo = buf;
  buf_hi = buf + head;
  check_str(req->method);
  check_str(req->target);
  check_str(req->path);
  check_str(req->query);
  FUZZ_CHECK(req->method.n > 0 && req->target.n > 0);
  FUZZ_CHECK(req->method.p == buf);
  FUZZ_CHECK(req->path.p == req->target.p);
  if (req->query.p) {
    FUZZ_CHECK(req->path.n + 1 + req->query.n == req->target.n);
    FUZZ_CHECK(req->query.p == req->target.p + req->path.n + 1 && req->query.p[-1] == '?');
  } else {
    FUZZ_CHECK(req->path.n == req->target.n);
  }
  FUZZ_CHECK(memchr(req->path.p, '?', req->path.n) == NULL);
  FUZZ_CHECK(req->minor_version >= 0 && req->minor_version <= 9);
  FUZZ_CHECK(req->nheaders >= 0 && req->nheaders <= HTTP_MAX_HEADERS);
  const struct http_str *hs[] = {&req->host,           &req->upgrade,           &req->connection,
                                 &req->ws_key,         &req->ws_version,        &req->origin,
                                 &req->ws_protocol,    &req->ws_extensions,     &req->authorization,
                                 &req->content_length, &req->transfer_encoding, &req->content_type,
                                 &req->expect};
  int present = 0;
  for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
    check_str(*hs[i]);
    if (hs[i]->p) {
      present++;
      /* values are trimmed of optional whitespace */
      if (hs[i]->n) {
        FUZZ_CHECK(hs[i]->p[0] != ' ' && hs[i]->p[0] != '\t');
        FUZZ_CHECK(hs[i]->p[hs[i]->n - 1] != ' ' && hs[i]->p[hs[i]->n - 1] != '\t');
      }
    }
  }
  FUZZ_CHECK(present <= req->nheaders);
  if (req->dup_key) FUZZ_CHECK(req->ws_key.p != NULL);
}

static int parse_copy(const uint8_t *data, size_t len, struct http_request *req) {
  char *b = fuzz_dup(data, len);
  int rc = http_parse_request(b, len, req);
  free(b);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *buf = fuzz_dup(data, size);
  struct http_request req;
  int rc = http_parse_request(buf, size, &req);
  FUZZ_CHECK(rc == HTTP_INCOMPLETE || rc == HTTP_EMALFORMED || (rc > 0 && (size_t)rc <= size));

  if (rc > 0) {
    FUZZ_CHECK(rc >= 4 && memcmp(buf + rc - 4, "\r\n\r\n", 4) == 0);
    check_request(buf, rc, &req);

    const char *why = NULL;
    int st = http_check_upgrade(&req, &why);
    FUZZ_CHECK(st == 0 || st == 400 || st == 405 || st == 426);
    FUZZ_CHECK(why != NULL && why[0] != '\0');
    if (st == 0) {
      FUZZ_CHECK(req.method.n == 3 && memcmp(req.method.p, "GET", 3) == 0);
      FUZZ_CHECK(req.ws_key.n == 24 && !req.dup_key);
      FUZZ_CHECK(http_wants_websocket(&req));
      FUZZ_CHECK(http_has_token(req.upgrade, "websocket"));
      FUZZ_CHECK(http_has_token(req.connection, "Upgrade"));
    }
    (void)http_wants_websocket(&req);
    (void)http_has_token(req.connection, "keep-alive");
    (void)http_has_token(req.ws_protocol, "chat");
    (void)http_has_token(req.ws_extensions, "permessage-deflate");
    (void)http_has_token(req.authorization, "");
    /* a token list never contains the empty token or one with a comma */
    FUZZ_CHECK(!http_has_token(req.upgrade, ","));

    if (req.ws_key.p) {
      char out[29];
      memset(out, 'x', sizeof(out));
      http_accept_key(req.ws_key, out);
      FUZZ_CHECK(out[28] == '\0' && strlen(out) == 28);
      for (int i = 0; i < 28; i++)
        FUZZ_CHECK((out[i] >= 'A' && out[i] <= 'Z') || (out[i] >= 'a' && out[i] <= 'z') ||
                   (out[i] >= '0' && out[i] <= '9') || out[i] == '+' || out[i] == '/' ||
                   (i == 27 && out[i] == '='));
    }

    char resp[512];
    int n = http_format_response(resp, sizeof(resp), st ? st : 101, NULL, NULL, why);
    FUZZ_CHECK(n > 0 && (size_t)n < sizeof(resp) && strlen(resp) == (size_t)n);
  }

  /* The same verdict when the head arrives in pieces. */
  if (size < 1024) {
    for (size_t k = 0; k < size; k++) {
      struct http_request r2;
      int rk = parse_copy(data, k, &r2);
      if (rc > 0 && k >= (size_t)rc) {
        FUZZ_CHECK(rk == rc);
        FUZZ_CHECK(r2.nheaders == req.nheaders && r2.minor_version == req.minor_version);
      } else if (rc == HTTP_EMALFORMED) {
        FUZZ_CHECK(rk == HTTP_INCOMPLETE || rk == HTTP_EMALFORMED);
      } else {
        FUZZ_CHECK(rk == HTTP_INCOMPLETE);
      }
    }
  }
  free(buf);
  return 0;
}
