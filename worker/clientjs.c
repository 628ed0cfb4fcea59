/* clientjs.c - serves the embedded JavaScript client as GET /tidings.js.
 *
 * The headers say why each is there:
 *   Cache-Control: public, max-age=300  a page reload within five minutes
 *     costs no request, and a new client reaches every browser within five
 *     minutes of an upgrade (after that a revalidation is a 304, no body);
 *   ETag  strong, from the bytes, so that revalidation works across
 *     workers, hosts and restarts of the same build;
 *   Access-Control-Allow-Origin: *  a module imported from a page of
 *     another origin is fetched in CORS mode and fails without it; the
 *     file is public and carries no credentials, so any origin may read it;
 *   X-Content-Type-Options: nosniff  the browser runs it only as the
 *     JavaScript it is declared to be. */
#include "clientjs.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "../common/log.h"
#include "worker.h"

extern const unsigned char embed_clients_js_tidings_js[];
extern const size_t embed_clients_js_tidings_js_len;

#define LINGER_MS 2000
#define COMMON_HEADERS                                                       \
  "Cache-Control: public, max-age=300\r\nAccess-Control-Allow-Origin: *\r\n" \
  "X-Content-Type-Options: nosniff\r\nConnection: close\r\n"

/* "\"<40 hex digits>\"", computed on first use (one process, one loop). */
static char etag[2 + 2 * SHA_DIGEST_LENGTH + 1];

static const char *the_etag(void) {
  if (!etag[0]) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(embed_clients_js_tidings_js, embed_clients_js_tidings_js_len, md);
    etag[0] = '"';
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++) snprintf(etag + 1 + 2 * i, 3, "%02x", md[i]);
    etag[1 + 2 * SHA_DIGEST_LENGTH] = '"';
  }
  return etag;
}

static int method_is(struct http_str m, const char *lit) {
  return m.n == strlen(lit) && memcmp(m.p, lit, m.n) == 0;
}

/* Queues head (and body, unless NULL) and drains; a connection whose
 * answer cannot be queued is closed.  The body is copied into the
 * connection's queue: at ~10 KiB per request on a path that browsers cache,
 * a shared buffer would save too little to be worth a process-wide one. */
static void answer(struct conn *c, int status, const char *head, int hlen, const void *body,
                   size_t blen) {
  log_debug("http_response", "conn %llu %s: HTTP %d /tidings.js", (unsigned long long)c->id,
            c->peer, status);
  if (hlen < 0 || conn_send_copy(c, head, (size_t)hlen) < 0 ||
      (body && conn_send_copy(c, body, blen) < 0)) {
    conn_close(c);
    return;
  }
  conn_drain(c, LINGER_MS);
}

int clientjs_serve(struct conn *c, const struct http_request *req) {
  if (c->w->cfg->no_client_js || req->path.n != strlen("/tidings.js") ||
      memcmp(req->path.p, "/tidings.js", req->path.n) != 0)
    return 0;
  char head[512];
  int n;
  int is_head = method_is(req->method, "HEAD");
  if (!is_head && !method_is(req->method, "GET")) {
    n = http_format_response(head, sizeof(head), 405, "text/plain; charset=utf-8",
                             "Allow: GET, HEAD\r\n", "Method not allowed\n");
    answer(c, 405, head, n, NULL, 0);
    return 1;
  }
  const char *tag = the_etag();
  if (req->if_none_match.p && http_etag_match(req->if_none_match, tag)) {
    /* RFC 9110 15.4.5: the headers a 200 would have had that describe the
     * cached copy, and no body */
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 304 Not Modified\r\nETag: %s\r\n" COMMON_HEADERS "\r\n", tag);
    answer(c, 304, head, n < (int)sizeof(head) ? n : -1, NULL, 0);
    return 1;
  }
  size_t len = embed_clients_js_tidings_js_len;
  n = snprintf(head, sizeof(head),
               "HTTP/1.1 200 OK\r\nContent-Type: application/javascript; charset=utf-8\r\n"
               "Content-Length: %zu\r\nETag: %s\r\n" COMMON_HEADERS "\r\n",
               len, tag);
  answer(c, 200, head, n < (int)sizeof(head) ? n : -1, is_head ? NULL : embed_clients_js_tidings_js,
         len);
  return 1;
}
