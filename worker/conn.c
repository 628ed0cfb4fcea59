#include "conn.h"

#include <arpa/inet.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "bus.h"
#include "../common/shm.h"
#include "auth.h"
#include "../common/http.h"
#include "origin.h"
#include "pmd.h"
#include "proxy.h"
#include "worker.h"
#include "ws.h"

/* Over --max-queued-bytes we stop reading from the client until the queue
 * drains, and broadcasts skip it (the slow-subscriber policy).  Replies and
 * control frames are always queued; the hard limit catches a client that
 * makes them pile up anyway. */
#define OUTQ_HARD_LIMIT(w) ((w)->cfg->max_queued_bytes * 4 + (1u << 20))
#define IOV_BATCH 64

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

void conn_list_move(struct conn *c, struct conn_list *list) {
  if (c->list) {
    if (c->prev) c->prev->next = c->next;
    else c->list->first = c->next;
    if (c->next) c->next->prev = c->prev;
    c->list->count--;
  }
  c->prev = c->next = NULL;
  c->list = list;
  if (list) {
    c->next = list->first;
    if (list->first) list->first->prev = c;
    list->first = c;
    list->count++;
  }
}

void conn_ref(struct conn *c) { c->refs++; }

static void conn_free(struct conn *c) {
  auth_grant_free(c->grant);
  outq_clear(&c->q);
  ws_free(c);
  free(c->hbuf);
  free(c);
}

void conn_unref(struct conn *c) {
  if (--c->refs == 0 && c->state == CONN_CLOSED && c->tcp.data == NULL) conn_free(c);
}

static void on_close(uv_handle_t *h) {
  struct conn *c = h->data;
  struct worker *w = c->w;
  h->data = NULL;
  if (c->refs == 0) conn_free(c);
  worker__conn_gone(w);
}

void conn_close(struct conn *c) {
  if (c->state == CONN_CLOSED) return;
  c->state = CONN_CLOSED;
  if (c->ip_counted) {
    c->ip_counted = 0;
    shm_ip_add(c->w->shm, c->w->shm_row, c->ip_bucket, -1);
  }
  topics_unsubscribe_all(&c->w->topics, &c->subs);
  c->nsubs = 0;
  int was_open = c->list == &c->w->open;
  conn_list_move(c, NULL);
  if (was_open) metric_gauge(c->w->m, G_CONNECTIONS, (int64_t)c->w->open.count);
  /* it may stay on the dirty list (holding a reference); the flusher skips it */
  uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  struct conn *c = h->data;
  buf->base = c->w->readbuf;
  buf->len = sizeof(c->w->readbuf);
}

static void describe_peer(struct conn *c) {
  const struct sockaddr_storage ss = c->addr;
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, ip, sizeof(ip));
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
  }
  snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
}

void conn_accept(struct worker *w) {
  struct conn *c = calloc(1, sizeof(*c));
  if (!c) {
    log_error("accept_failed", "out of memory accepting a connection");
    return;
  }
  c->w = w;
  c->id = ++w->next_conn_id;
  uv_tcp_init(w->loop, &c->tcp);
  c->tcp.data = c;
  w->nconns++;
  if (uv_accept((uv_stream_t *)&w->listener, (uv_stream_t *)&c->tcp) != 0) {
    c->state = CONN_CLOSED;
    uv_close((uv_handle_t *)&c->tcp, on_close);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  int sl = sizeof(c->addr);
  uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->addr, &sl);
  describe_peer(c);
  c->need_proxy = w->cfg->proxy_protocol;
  c->state = CONN_HTTP;
  c->deadline = uv_now(w->loop) + (uint64_t)w->cfg->handshake_timeout * 1000;
  conn_list_move(c, &w->handshaking);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

/* ---- output ---- */

void conn_mark_dirty(struct conn *c) {
  if (c->dirty || c->state == CONN_CLOSED) return;
  c->dirty = 1;
  conn_ref(c); /* dropped by the flusher */
  c->dirty_next = c->w->dirty;
  c->w->dirty = c;
}

int conn_send_copy(struct conn *c, const void *data, size_t len) {
  if (c->state == CONN_CLOSED) return -1;
  if (outq_push_copy(&c->q, data, len, c->inflight) < 0) return -1;
  conn_mark_dirty(c);
  return 0;
}

int conn_send_ref(struct conn *c, struct sbuf *b) {
  if (c->state == CONN_CLOSED) return -1;
  if (outq_push_ref(&c->q, b) < 0) return -1;
  conn_mark_dirty(c);
  return 0;
}

static void conn_flush(struct conn *c);

/* An entry has left for the kernel: a broadcast frame's latency. */
static void sent_entry(void *arg, const struct sbuf *b) {
  struct worker *w = arg;
  if (b->born_us && w->flush_now_us >= b->born_us)
    metric_latency(w->m, w->flush_now_us - b->born_us, 1);
}

/* n bytes have gone to the kernel.  The clock read here (vDSO, no system
 * call) ends the latency of every broadcast frame this write finished: the
 * last of 500 subscribers is written well after the first. */
static void consumed(struct conn *c, size_t n) {
  c->w->flush_now_us = uv_hrtime() / 1000;
  metric_add(c->w->m, M_BYTES_OUT, n);
  outq_consume_cb(&c->q, n, sent_entry, c->w);
}

int conn_over_cap(struct conn *c) {
  if (c->q.bytes < c->w->cfg->max_queued_bytes) return 0;
  if (!c->over_since) c->over_since = uv_now(c->w->loop) | 1;
  return 1;
}

void conn_slow_close(struct conn *c) {
  /* keep what the kernel has started on: the in-flight write, or a
   * partly written first entry */
  uint32_t keep = c->inflight;
  if (keep == 0 && c->q.count > 0 && c->q.ring[c->q.head & (c->q.cap - 1)].off > 0) keep = 1;
  outq_truncate(&c->q, keep);
  log_info("slow_disconnect", "conn %llu %s: slow subscriber over %zu queued bytes for %ds: disconnecting (1013)",
           (unsigned long long)c->id, c->peer, c->w->cfg->max_queued_bytes, c->w->cfg->slow_grace);
  metric_add(c->w->m, M_SLOW_DISCONNECTS, 1);
  ws_close(c, 1013, "too slow: queued data over the limit");
}

static void on_write(uv_write_t *req, int status) {
  struct conn *c = req->data;
  free(req);
  c->wreq = NULL;
  c->writing = 0;
  consumed(c, c->inflight_bytes);
  c->inflight = 0;
  c->inflight_bytes = 0;
  if (c->state == CONN_CLOSED) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  conn_flush(c);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = req->data;
  free(req);
  if (status < 0 && c->state != CONN_CLOSED) conn_close(c);
}

/* All queued output has left: finish what the drain started. */
static void drained(struct conn *c) {
  if (c->ws && ws_close_received(c)) {
    conn_close(c); /* close handshake complete: the server closes TCP first */
    return;
  }
  if (!c->shut_wr) {
    c->shut_wr = 1;
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req) {
      conn_close(c);
      return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
      free(req);
      conn_close(c);
    }
  }
}

static void conn_flush(struct conn *c) {
  struct iovec iov[IOV_BATCH];
  if (c->state == CONN_CLOSED || c->writing) return;
  if (c->q.bytes > OUTQ_HARD_LIMIT(c->w)) {
    log_warn("queue_overflow", "conn %llu %s: %zu bytes queued, over the limit: disconnecting",
             (unsigned long long)c->id, c->peer, c->q.bytes);
    conn_close(c);
    return;
  }
  while (c->q.count > 0) {
    int n = outq_iov(&c->q, 0, iov, IOV_BATCH);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    int r = uv_try_write((uv_stream_t *)&c->tcp, (const uv_buf_t *)iov, (unsigned)n);
    if (r == UV_EAGAIN) r = 0;
    if (r < 0) {
      conn_close(c);
      return;
    }
    consumed(c, (size_t)r);
    if ((size_t)r < total) {
      /* the kernel is full: hand the rest to one uv_write */
      n = outq_iov(&c->q, 0, iov, IOV_BATCH);
      c->inflight = (uint32_t)n;
      c->inflight_bytes = 0;
      for (int i = 0; i < n; i++) c->inflight_bytes += iov[i].iov_len;
      c->wreq = malloc(sizeof(*c->wreq));
      if (c->wreq) c->wreq->data = c;
      if (!c->wreq || uv_write(c->wreq, (uv_stream_t *)&c->tcp, (const uv_buf_t *)iov,
                               (unsigned)n, on_write) != 0) {
        free(c->wreq);
        c->wreq = NULL;
        c->inflight = 0;
        c->inflight_bytes = 0;
        conn_close(c);
        return;
      }
      c->writing = 1;
      break;
    }
  }
  size_t cap = c->w->cfg->max_queued_bytes;
  if (c->q.bytes < cap) c->over_since = 0;
  if (c->read_paused && c->q.bytes < cap / 2) {
    c->read_paused = 0;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
  } else if (!c->read_paused && c->q.bytes >= cap && c->state != CONN_DRAINING) {
    c->read_paused = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
  if (c->q.count == 0 && c->state == CONN_DRAINING) drained(c);
}

void conn_flush_dirty(struct worker *w) {
  while (w->dirty) {
    struct conn *c = w->dirty;
    w->dirty = c->dirty_next;
    c->dirty = 0;
    c->dirty_next = NULL;
    conn_flush(c);
    conn_unref(c);
  }
}

void conn_drain(struct conn *c, int linger_ms) {
  if (c->state == CONN_CLOSED) return;
  if (c->state != CONN_DRAINING) {
    int was_open = c->list == &c->w->open;
    c->state = CONN_DRAINING;
    c->deadline = uv_now(c->w->loop) + (uint64_t)linger_ms;
    conn_list_move(c, &c->w->handshaking);
    if (was_open) metric_gauge(c->w->m, G_CONNECTIONS, (int64_t)c->w->open.count);
    if (c->read_paused) {
      c->read_paused = 0;
      uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    }
  }
  conn_mark_dirty(c);
}

/* ---- HTTP ---- */

static void respond(struct conn *c, int status, const char *extra, const char *body) {
  char out[1024];
  int n = http_format_response(out, sizeof(out), status, "text/plain; charset=utf-8", extra, body);
  if (n > 0) conn_send_copy(c, out, (size_t)n);
  log_debug("http_response", "conn %llu %s: HTTP %d", (unsigned long long)c->id, c->peer, status);
  conn_drain(c, 2000);
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

static int upgrade(struct conn *c, const struct http_request *req, enum conn_kind kind) {
  char accept[29];
  char resp[512];
  char ext[160] = "";
  char proto[64] = "";
  if (c->proto_echo)
    snprintf(proto, sizeof(proto), "Sec-WebSocket-Protocol: %.*s\r\n", (int)c->proto_echo_len,
             c->proto_echo);
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
  c->proto_echo = NULL; /* it pointed into the request */
  c->kind = kind;
  if (ws_start(c) < 0) {
    respond(c, 500, NULL, "Internal server error\n");
    return 0;
  }
  conn_send_copy(c, resp, (size_t)n);
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
  if (req->authorization.p) rc = auth_token_from_bearer(req->authorization.p, req->authorization.n, &tok, &toklen);
  if (rc == AUTH_EMISSING && req->query.n) rc = auth_token_from_query(req->query.p, req->query.n, &tok, &toklen);
  if (rc == AUTH_EMISSING && req->ws_protocol.p)
    rc = auth_token_from_protocol(req->ws_protocol.p, req->ws_protocol.n, &tok, &toklen, echo, echolen);
  if (rc == AUTH_OK) rc = auth_verify(c->w->auth, tok, toklen, (long long)time(NULL), &c->grant);
  if (rc != AUTH_OK) {
    log_debug("auth_refused", "conn %llu %s: JWT refused: %s", (unsigned long long)c->id, c->peer, auth_strerror(rc));
    char body[128];
    snprintf(body, sizeof(body), "Unauthorized: %s\n", auth_strerror(rc));
    reject(c, REJECT_AUTH, 401, "WWW-Authenticate: Bearer\r\n", body);
    *echo = NULL;
    return -1;
  }
  return 0;
}

/* Answers one request head; returns 1 when the connection upgraded. */
static int handle_request(struct conn *c, const struct http_request *req) {
  const struct config *cfg = c->w->cfg;
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
             status == 426 ? "Sec-WebSocket-Version: 13\r\n"
                           : status == 405 ? "Allow: GET\r\n" : NULL,
             body);
      return 0;
    }
    if (req->origin.p ? !origin_allowed(cfg->allowed_origins, req->origin.p, req->origin.n)
                      : cfg->require_origin) {
      reject(c, REJECT_ORIGIN, 403, NULL, req->origin.p ? "Origin not allowed\n" : "Origin required\n");
      return 0;
    }
    if (cfg->max_connections && c->w->open.count >= (size_t)cfg->max_connections) {
      reject(c, REJECT_FULL, 503, "Retry-After: 5\r\n", "Server full\n");
      return 0;
    }
    uint32_t bucket = shm_ip_bucket(&c->addr);
    if (cfg->max_connections_per_ip &&
        shm_ip_total(c->w->shm, bucket) >= (unsigned)cfg->max_connections_per_ip) {
      reject(c, REJECT_PER_IP, 429, "Retry-After: 5\r\n", "Too many connections from this address\n");
      return 0;
    }
    const char *proto_echo = NULL;
    size_t proto_echo_len = 0;
    if (c->w->auth && !is_echo && authenticate(c, req, &proto_echo, &proto_echo_len) < 0) return 0;
    c->proto_echo = proto_echo;
    c->proto_echo_len = (uint8_t)proto_echo_len;
    if (!upgrade(c, req, is_echo ? CONN_ECHO : CONN_PUBSUB)) return 0;
    c->ip_bucket = bucket;
    c->ip_counted = 1;
    shm_ip_add(c->w->shm, c->w->shm_row, bucket, 1);
    return 1;
  }
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

static void http_input(struct conn *c, const char *data, size_t len) {
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
      log_debug("proxy_refused", "conn %llu %s: no valid PROXY v2 header, refused", (unsigned long long)c->id,
                c->peer);
      metric_add(c->w->m, M_REJECT_FIRST + REJECT_PROXY, 1);
      conn_close(c);
      return;
    }
    c->need_proxy = 0;
    if (!pi.local) {
      c->addr = pi.src;
      describe_peer(c);
    }
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
  int r = http_parse_request(buf, blen < HTTP_MAX_HEADER_BYTES ? blen : HTTP_MAX_HEADER_BYTES, &req);
  if (r == HTTP_INCOMPLETE) {
    if (blen >= HTTP_MAX_HEADER_BYTES) reject(c, REJECT_TOO_LARGE, 431, NULL, "Request header too large\n");
    else stash(c, buf, blen);
    return;
  }
  if (r == HTTP_EMALFORMED) {
    reject(c, REJECT_BAD_REQUEST, 400, NULL, "Malformed HTTP request\n");
    return;
  }
  int upgraded = handle_request(c, &req);
  char *hb = c->hbuf;
  c->hbuf = NULL;
  c->hlen = 0;
  if (upgraded) {
    /* frames sent right behind the head */
    if (blen > (size_t)r) ws_feed(c, (const uint8_t *)buf + r, blen - (size_t)r);
    if (rest_len && (c->state == CONN_WS || c->state == CONN_DRAINING))
      ws_feed(c, (const uint8_t *)rest, rest_len);
  }
  free(hb);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = s->data;
  if (nread == 0) return;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  size_t n = (size_t)nread;
  metric_add(c->w->m, M_BYTES_IN, n);
  switch (c->state) {
    case CONN_HTTP:
      http_input(c, buf->base, n);
      return;
    case CONN_WS:
      ws_feed(c, (const uint8_t *)buf->base, n);
      return;
    case CONN_DRAINING:
      if (c->upgraded) {
        ws_feed(c, (const uint8_t *)buf->base, n);
        if (c->state != CONN_CLOSED && ws_close_received(c) && c->q.count == 0 && !c->writing)
          conn_close(c);
      }
      return;
    case CONN_CLOSED:
      return;
  }
}
