/* handshake.c - the HTTP phase of a public connection: the PROXY v2
 * header, the request head, and what the server answers to it.
 *
 * Policy lives here: routing (/, the echo path, /healthz, /readyz, and
 * /api/ handed to api.c when the HTTP API is on this port), the
 * WebSocket upgrade checks of RFC 6455, Origin, JWT, the connection caps
 * (--max-connections, --max-connections-per-ip) and permessage-deflate
 * negotiation.  conn.c owns the connection's lifetime and output. */
#include "handshake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/http.h"
#include "../common/log.h"
#include "../common/reject.h"
#include "../common/shm.h"
#include "api.h"
#include "auth.h"
#include "bus.h"
#include "clientjs.h"
#include "conn.h"
#include "origin.h"
#include "pmd.h"
#include "proxy.h"
#include "worker.h"
#include "ws.h"

/* How long a refused or answered client may take to read the answer and
 * close before the server closes. */
#define RESPONSE_LINGER_MS 2000
#define RESPONSE_MAX 1024

/* Answers and drains; a connection whose answer cannot be queued is closed. */
static void respond(struct conn *c, int status, const char *extra, const char *body) {
  char out[RESPONSE_MAX];
  int n = http_format_response(out, sizeof(out), status, "text/plain; charset=utf-8", extra, body);
  log_debug("http_response", "conn %llu %s: HTTP %d", (unsigned long long)c->id, c->peer, status);
  if (n < 0 || conn_send_copy(c, out, (size_t)n) < 0) {
    conn_close(c);
    return;
  }
  conn_drain(c, RESPONSE_LINGER_MS);
}

/* A refused connection: counted by reason, answered, closed. */
static void reject(struct conn *c, enum reject_reason why, int status, const char *extra,
                   const char *body) {
  metric_add(c->w->m, M_REJECT_FIRST + why, 1);
  respond(c, status, extra, body);
}

static int path_is(struct http_str p, const char *lit) {
  return p.n == strlen(lit) && memcmp(p.p, lit, p.n) == 0;
}

/* Answers 101; proto_echo (in the request) is the subprotocol to echo, or NULL. */
static int upgrade(struct conn *c, const struct http_request *req, enum conn_kind kind,
                   const char *proto_echo, size_t proto_echo_len) {
  char accept[29];
  char resp[512];
  char ext[160] = "";
  char proto[64] = "";
  if (proto_echo)
    snprintf(proto, sizeof(proto), "Sec-WebSocket-Protocol: %.*s\r\n", (int)proto_echo_len,
             proto_echo);
  http_accept_key(req->ws_key, accept);
  struct pmd_params pp;
  char pmd_resp[128];
  if (!c->w->cfg->no_compression && req->ws_extensions.p &&
      pmd_negotiate(req->ws_extensions.p, req->ws_extensions.n, &pp, pmd_resp, sizeof(pmd_resp))) {
    c->pmd = 1;
    c->pmd_bits = (unsigned)pp.server_bits;
    snprintf(ext, sizeof(ext), "Sec-WebSocket-Extensions: %s\r\n", pmd_resp);
  }
  int n = snprintf(resp, sizeof(resp),
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s\r\n",
                   accept, ext, proto);
  c->kind = kind;
  if (ws_start(c) < 0) {
    respond(c, 500, NULL, "Internal server error\n");
    return 0;
  }
  if (n < 0 || (size_t)n >= sizeof(resp) || conn_send_copy(c, resp, (size_t)n) < 0) {
    conn_close(c);
    return 0;
  }
  c->state = CONN_WS;
  c->deadline = 0;
  conn_list_move(c, &c->w->open);
  metric_add(c->w->m, M_CONNECTIONS_TOTAL, 1);
  metric_gauge(c->w->m, G_CONNECTIONS, (int64_t)c->w->open.count);
  log_debug("ws_open", "conn %llu %s: WebSocket open on %s%s%s", (unsigned long long)c->id, c->peer,
            kind == CONN_ECHO ? "echo" : "pub/sub", c->grant ? " as " : "",
            c->grant ? auth_grant_sub(c->grant) : "");
  return 1;
}

/* Checks the client's JWT: from "Authorization: Bearer", the "token" query
 * parameter, or the Sec-WebSocket-Protocol pair (browsers cannot set
 * headers).  Refuses with 401 when it is missing or not valid. */
static int authenticate(struct conn *c, const struct http_request *req, const char **echo,
                        size_t *echolen) {
  const char *tok = NULL;
  size_t toklen = 0;
  int rc = AUTH_EMISSING;
  if (req->authorization.p)
    rc = auth_token_from_bearer(req->authorization.p, req->authorization.n, &tok, &toklen);
  if (rc == AUTH_EMISSING && req->query.n)
    rc = auth_token_from_query(req->query.p, req->query.n, &tok, &toklen);
  if (rc == AUTH_EMISSING && req->ws_protocol.p)
    rc = auth_token_from_protocol(req->ws_protocol.p, req->ws_protocol.n, &tok, &toklen, echo,
                                  echolen);
  if (rc == AUTH_OK) rc = auth_verify(c->w->auth, tok, toklen, (long long)time(NULL), &c->grant);
  if (rc != AUTH_OK) {
    log_debug("auth_refused", "conn %llu %s: JWT refused: %s", (unsigned long long)c->id, c->peer,
              auth_strerror(rc));
    char body[128];
    snprintf(body, sizeof(body), "Unauthorized: %s\n", auth_strerror(rc));
    reject(c, REJECT_AUTH, 401, "WWW-Authenticate: Bearer\r\n", body);
    *echo = NULL;
    return -1;
  }
  return 0;
}

#define HANDLED_UPGRADED 1
#define HANDLED_API 2

/* Answers one request head; returns HANDLED_UPGRADED when the connection
 * upgraded, HANDLED_API when the HTTP API takes it over, else 0. */
static int handle_request(struct conn *c, const struct http_request *req) {
  const struct config *cfg = c->w->cfg;
  if (api_is_path(req->path.p, req->path.n)) {
    if (api_on_public_port(c->w)) return HANDLED_API;
    /* the API is off, or served on --api-listen only */
    respond(c, 404, NULL, "Not found\n");
    return 0;
  }
  int is_ws_path = path_is(req->path, "/");
  int is_echo = cfg->echo_path[0] && path_is(req->path, cfg->echo_path);
  if (c->w->shutting_down) {
    reject(c, REJECT_SHUTDOWN, 503, NULL, "Shutting down\n");
    return 0;
  }
  if ((is_ws_path || is_echo) && http_wants_websocket(req)) {
    const char *why;
    int status = http_check_upgrade(req, &why);
    if (status != 0) {
      char body[128];
      snprintf(body, sizeof(body), "Bad WebSocket handshake: %s\n", why);
      reject(c, REJECT_BAD_REQUEST, status,
             status == 426   ? "Sec-WebSocket-Version: 13\r\n"
             : status == 405 ? "Allow: GET\r\n"
                             : NULL,
             body);
      return 0;
    }
    if (req->origin.p ? !origin_allowed(cfg->allowed_origins, req->origin.p, req->origin.n)
                      : cfg->require_origin) {
      reject(c, REJECT_ORIGIN, 403, NULL,
             req->origin.p ? "Origin not allowed\n" : "Origin required\n");
      return 0;
    }
    if (cfg->max_connections && c->w->open.count >= (size_t)cfg->max_connections) {
      reject(c, REJECT_FULL, 503, "Retry-After: 5\r\n", "Server full\n");
      return 0;
    }
    if (cfg->max_connections_per_ip &&
        shm_ip_total(c->w->shm, c->ip_bucket) >= (unsigned)cfg->max_connections_per_ip) {
      reject(c, REJECT_PER_IP, 429, "Retry-After: 5\r\n",
             "Too many connections from this address\n");
      return 0;
    }
    const char *proto_echo = NULL;
    size_t proto_echo_len = 0;
    if (c->w->auth && !is_echo && authenticate(c, req, &proto_echo, &proto_echo_len) < 0) return 0;
    if (!upgrade(c, req, is_echo ? CONN_ECHO : CONN_PUBSUB, proto_echo, proto_echo_len)) return 0;
    c->ip_counted = 1;
    shm_ip_add(c->w->shm, c->w->shm_row, c->ip_bucket, 1);
    return 1;
  }
  if (clientjs_serve(c, req)) return 0; /* GET/HEAD /tidings.js */
  if (req->method.n != 3 || memcmp(req->method.p, "GET", 3) != 0) {
    respond(c, 405, "Allow: GET\r\n", "Method not allowed\n");
    return 0;
  }
  if (is_ws_path) {
    respond(c, 200, NULL, "WebSocket server is running");
    return 0;
  }
  if (path_is(req->path, "/healthz") || path_is(req->path, "/readyz")) {
    /* on the public port both speak for this worker: it answers, and it
     * can take clients (its Redis connections are up) */
    if (bus_ready(c->w->bus)) {
      respond(c, 200, NULL, "ok\n");
    } else {
      char body[80];
      snprintf(body, sizeof(body), "not ready: %s\n", bus_not_ready_reason(c->w->bus));
      respond(c, 503, NULL, body);
    }
    return 0;
  }
  if (is_echo) {
    respond(c, 426, "Sec-WebSocket-Version: 13\r\n", "This endpoint speaks WebSocket only\n");
    return 0;
  }
  respond(c, 404, NULL, "Not found\n");
  return 0;
}

/* Keeps an incomplete request head for the next read.  The head is parsed
 * straight from the worker's read buffer when it arrives whole, which is
 * nearly always; only a head split over reads is copied, up to 8 KiB. */
static int stash(struct conn *c, const char *p, size_t n) {
  if (n > HTTP_MAX_HEADER_BYTES) {
    reject(c, REJECT_TOO_LARGE, 431, NULL, "Request header too large\n");
    return -1;
  }
  if (!c->hbuf && !(c->hbuf = malloc(HTTP_MAX_HEADER_BYTES))) {
    conn_close(c);
    return -1;
  }
  memmove(c->hbuf, p, n);
  c->hlen = n;
  return 0;
}

void handshake_input(struct conn *c, const char *data, size_t len) {
  const char *buf = data, *rest = NULL;
  size_t blen = len, rest_len = 0;
  if (c->hbuf) {
    size_t room = HTTP_MAX_HEADER_BYTES - c->hlen;
    size_t take = len < room ? len : room;
    memcpy(c->hbuf + c->hlen, data, take);
    c->hlen += take;
    buf = c->hbuf;
    blen = c->hlen;
    rest = data + take; /* what did not fit: only frames can follow a head this long */
    rest_len = len - take;
  }
  if (c->need_proxy) {
    /* behind HAProxy: the PROXY v2 header comes first and is required */
    struct proxy_info pi;
    int pr = proxy_parse((const uint8_t *)buf, blen, &pi);
    if (pr == PROXY_INCOMPLETE) {
      stash(c, buf, blen);
      return;
    }
    if (pr < 0) {
      log_debug("proxy_refused", "conn %llu %s: no valid PROXY v2 header, refused",
                (unsigned long long)c->id, c->peer);
      metric_add(c->w->m, M_REJECT_FIRST + REJECT_PROXY, 1);
      conn_close(c);
      return;
    }
    c->need_proxy = 0;
    if (!pi.local) conn_set_peer(c, &pi.src);
    buf += pr;
    blen -= (size_t)pr;
    if (blen == 0) {
      free(c->hbuf);
      c->hbuf = NULL;
      c->hlen = 0;
      return;
    }
  }
  struct http_request req;
  /* the head must end within the first 8 KiB */
  int r =
      http_parse_request(buf, blen < HTTP_MAX_HEADER_BYTES ? blen : HTTP_MAX_HEADER_BYTES, &req);
  if (r == HTTP_INCOMPLETE) {
    if (blen >= HTTP_MAX_HEADER_BYTES)
      reject(c, REJECT_TOO_LARGE, 431, NULL, "Request header too large\n");
    else stash(c, buf, blen);
    return;
  }
  if (r == HTTP_EMALFORMED) {
    reject(c, REJECT_BAD_REQUEST, 400, NULL, "Malformed HTTP request\n");
    return;
  }
  int handled = handle_request(c, &req);
  char *hb = c->hbuf;
  c->hbuf = NULL;
  c->hlen = 0;
  if (handled == HANDLED_API) {
    /* api.c reads the request again, from its first byte */
    api_start(c, buf, blen);
    if (rest_len) api_input(c, rest, rest_len);
  } else if (handled == HANDLED_UPGRADED) {
    /* frames sent right behind the head */
    if (blen > (size_t)r) ws_feed(c, (const uint8_t *)buf + r, blen - (size_t)r);
    if (rest_len && (c->state == CONN_WS || c->state == CONN_DRAINING))
      ws_feed(c, (const uint8_t *)rest, rest_len);
  }
  free(hb);
}
