/* fuzz_api - common/http.c as the HTTP API reads a request: the head, its
 * body framing, keep-alive, media type, query parameters, and the chunked
 * body decoder.
 *
 * The input is a request head followed by whatever the client sends after
 * it (a body, more requests).  Invariants checked besides the sanitizers:
 *  - http_body_framing() answers 0 (with a length within 2^53 only for
 *    Content-Length) or HTTP_EMALFORMED, and refuses Content-Length beside
 *    Transfer-Encoding;
 *  - http_query_param() writes a NUL-terminated value that fits, and
 *    finds nothing in an empty query;
 *  - the chunked decoder consumes no more than it is given, never writes
 *    past its destination, and gives the same result (consumed bytes, data,
 *    done, or the error) whether the bytes come at once, one at a time, or
 *    in pieces of a size taken from the input, and whether the data is kept
 *    or discarded. */
#include <string.h>

#include "../../common/http.h"
#include "fuzz_common.h"

#define DCAP 4096

struct run {
  long rc; /* total consumed, or the error */
  int done;
  size_t dlen;
  char d[DCAP];
};

/* Feeds src[0..len) in pieces of `piece` bytes (0: all at once). */
static void decode(const char *src, size_t len, size_t piece, int keep, struct run *r) {
  struct http_chunked st = {0};
  size_t at = 0;
  r->dlen = 0;
  r->rc = 0;
  while (at < len && !st.done) {
    size_t k = piece && len - at > piece ? piece : len - at;
    long rc = http_chunked_decode(&st, src + at, k, keep ? r->d : NULL, &r->dlen, DCAP);
    if (rc < 0) {
      r->rc = rc;
      r->done = st.done;
      return;
    }
    FUZZ_CHECK((size_t)rc <= k);
    FUZZ_CHECK(r->dlen <= DCAP);
    at += (size_t)rc;
    if ((size_t)rc < k && !st.done) {
      FUZZ_CHECK(r->dlen == DCAP); /* stopped early only when full */
      break;
    }
  }
  r->rc = (long)at;
  r->done = st.done;
}

static void check_chunked(const char *body, size_t len, size_t piece) {
  static struct run whole, bytes, pieces, discard;
  decode(body, len, 0, 1, &whole);
  decode(body, len, 1, 1, &bytes);
  decode(body, len, piece, 1, &pieces);
  decode(body, len, 0, 0, &discard);
  const struct run *rs[] = {&bytes, &pieces, &discard};
  for (int i = 0; i < 3; i++) {
    FUZZ_CHECK(rs[i]->rc == whole.rc);
    FUZZ_CHECK(rs[i]->done == whole.done);
    FUZZ_CHECK(rs[i]->dlen == whole.dlen);
    if (rs[i] != &discard) FUZZ_CHECK(memcmp(rs[i]->d, whole.d, whole.dlen) == 0);
  }
  if (whole.done) FUZZ_CHECK(whole.rc >= 5); /* at least "0\r\n\r\n" */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t piece = data[0] % 17; /* how the chunked body arrives */
  char *buf = fuzz_dup(data + 1, size - 1);
  size -= 1;
  struct http_request req;
  int h = http_parse_request(buf, size, &req);
  if (h > 0) {
    struct http_body b;
    int fr = http_body_framing(&req, &b);
    FUZZ_CHECK(fr == 0 || fr == HTTP_EMALFORMED);
    if (fr == 0) {
      FUZZ_CHECK(!(req.content_length.p && req.transfer_encoding.p));
      if (b.kind == HTTP_BODY_LENGTH) FUZZ_CHECK(b.length <= (1ULL << 53));
      else FUZZ_CHECK(b.length == 0);
      if (b.kind == HTTP_BODY_CHUNKED) check_chunked(buf + h, size - (size_t)h, piece);
    }
    (void)http_keep_alive(&req);
    (void)http_expects_continue(&req);
    (void)http_media_type_is(req.content_type, "application/json");
    char v[130];
    const char *names[] = {"topic", "since", "limit", ""};
    for (int i = 0; i < 4; i++) {
      memset(v, 'x', sizeof(v));
      int n = http_query_param(req.query, names[i], v, sizeof(v));
      FUZZ_CHECK(n == HTTP_ENOTFOUND || n == HTTP_EMALFORMED || (n >= 0 && n < (int)sizeof(v)));
      if (n >= 0) FUZZ_CHECK(v[n] == '\0');
      if (req.query.n == 0) FUZZ_CHECK(n == HTTP_ENOTFOUND || (names[i][0] == 0 && n >= 0));
    }
    char out[256];
    int n = http_format_head(out, sizeof(out), 200, "application/json", (unsigned long long)size,
                             NULL, data[0] & 1);
    FUZZ_CHECK(n > 0 && (size_t)n < sizeof(out) && strlen(out) == (size_t)n);
  } else {
    /* not a head: the bytes as a chunked body on their own */
    check_chunked(buf, size, piece);
  }
  free(buf);
  return 0;
}
