#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/frame.h"
#include "../common/http.h"
#include "admin_metrics.h"

extern const char admin_status_html[];

#define ADMIN_HEAD_MAX 8192
#define ADMIN_CONNS_MAX 256                /* scrapers and status pages at once */
#define ADMIN_REQUEST_TIMEOUT_MS 10000     /* a whole request must arrive by then */
#define ADMIN_WS_QUEUE_MAX (256 * 1024)    /* a status page this far behind is dropped */
#define ADMIN_SNAPSHOT_GAP_MS 500          /* no tick snapshot this soon after the last one */

struct aconn {
  struct admin *a;
  uv_tcp_t tcp;
  struct aconn *prev, *next;
  size_t len;
  int ws;      /* a status page's WebSocket: 1 open, 2 close sent */
  int closing;
  uint64_t accepted; /* uv_now at accept, for the request deadline */
  uint64_t snap_at;  /* uv_now of the last snapshot sent */
  char buf[ADMIN_HEAD_MAX];
};

struct admin {
  uv_loop_t *loop;
  const struct admin_view *view;
  uv_tcp_t listener;
  uv_timer_t tick;
  struct aconn *conns;
  int nconns;
  int handles; /* open handles (listener, timer, connections): freed at 0 */
};

static void handle_closed(struct admin *a) {
  if (--a->handles == 0) free(a);
}

/* ---- connections ---- */

static void on_aclose(uv_handle_t *h) {
  struct aconn *c = h->data;
  struct admin *a = c->a;
  if (c->prev) c->prev->next = c->next;
  else a->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->a->nconns--;
  free(c);
  handle_closed(a);
}

static void aclose(struct aconn *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_aclose);
}

struct wreq {
  uv_write_t req;
  struct aconn *c;
  int close_after;
  size_t len;
  char data[];
};

static void on_awrite(uv_write_t *req, int status) {
  struct wreq *w = (struct wreq *)req;
  if ((status < 0 || w->close_after) && !w->c->closing) aclose(w->c);
  free(w);
}

static void asend(struct aconn *c, const char *head, size_t hlen, const char *body, size_t blen,
                  int close_after) {
  if (c->closing) return;
  struct wreq *w = malloc(sizeof(*w) + hlen + blen);
  if (!w) {
    aclose(c);
    return;
  }
  w->c = c;
  w->close_after = close_after;
  memcpy(w->data, head, hlen);
  if (blen) memcpy(w->data + hlen, body, blen);
  uv_buf_t b = uv_buf_init(w->data, (unsigned)(hlen + blen));
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_awrite) != 0) {
    free(w);
    aclose(c);
  }
}

static void respond(struct aconn *c, int status, const char *ctype, const char *body, size_t blen) {
  char head[256];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                   status, http_reason(status), ctype, blen);
  asend(c, head, (size_t)n, body, blen, 1);
}

static int path_is(struct http_str p, const char *lit) {
  return p.n == strlen(lit) && memcmp(p.p, lit, p.n) == 0;
}

static void send_snapshot(struct aconn *c) {
  size_t n;
  char *json;
  if (admin_metrics_snapshot(c->a->view, &json, &n) < 0) return;
  c->snap_at = uv_now(c->a->loop);
  uint8_t h[FRAME_HEADER_MAX];
  size_t hl = frame_header(h, FRAME_TEXT, 0, n);
  asend(c, (const char *)h, hl, json, n, 0);
  free(json);
}

static void handle(struct aconn *c, const struct http_request *req) {
  const struct admin_view *v = c->a->view;
  char why[128];
  if (req->method.n != 3 || memcmp(req->method.p, "GET", 3) != 0) {
    respond(c, 405, "text/plain", "Method not allowed\n", 19);
    return;
  }
  if (path_is(req->path, "/metrics")) {
    size_t n;
    char *text;
    if (admin_metrics_text(v, &text, &n) < 0) {
      respond(c, 500, "text/plain", "out of memory\n", 14);
      return;
    }
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, n);
    free(text);
  } else if (path_is(req->path, "/healthz")) {
    if (admin_metrics_healthy(v)) respond(c, 200, "text/plain", "ok\n", 3);
    else respond(c, 503, "text/plain", "no worker running\n", 18);
  } else if (path_is(req->path, "/readyz")) {
    int ok = admin_metrics_ready(v, why, sizeof(why));
    respond(c, ok ? 200 : 503, "text/plain", why, strlen(why));
  } else if (path_is(req->path, "/status") || path_is(req->path, "/")) {
    respond(c, 200, "text/html; charset=utf-8", admin_status_html, strlen(admin_status_html));
  } else if (path_is(req->path, "/status/ws")) {
    const char *reason;
    if (http_check_upgrade(req, &reason) != 0) {
      respond(c, 400, "text/plain", "WebSocket upgrade expected\n", 27);
      return;
    }
    char accept[29], head[256];
    http_accept_key(req->ws_key, accept);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    asend(c, head, (size_t)n, NULL, 0, 0);
    c->ws = 1;
    c->len = 0; /* the page sends nothing before it has the 101 */
    send_snapshot(c);
  } else {
    respond(c, 404, "text/plain", "Not found\n", 10);
  }
}

static void on_aalloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  struct aconn *c = h->data;
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

/* The status page only listens, but its socket still speaks RFC 6455:
 * pings are answered, a close is echoed before the TCP close, anything
 * malformed or large ends it. */
static void ws_control(struct aconn *c, int opcode, const uint8_t *payload, size_t n) {
  uint8_t h[FRAME_HEADER_MAX];
  size_t hl = frame_header(h, opcode, 0, n);
  asend(c, (const char *)h, hl, (const char *)payload, n, opcode == FRAME_CLOSE);
  if (opcode == FRAME_CLOSE) c->ws = 2; /* nothing may follow a close */
}

static void ws_fail(struct aconn *c, uint16_t code) {
  uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
  ws_control(c, FRAME_CLOSE, p, 2);
}

static void ws_input(struct aconn *c) {
  uint8_t *b = (uint8_t *)c->buf;
  size_t off = 0;
  while (!c->closing && c->len - off >= 2) {
    uint8_t b0 = b[off], b1 = b[off + 1];
    size_t h = 2;
    uint64_t n = b1 & 0x7f;
    if (!(b1 & 0x80) || (b0 & 0x70)) {
      ws_fail(c, 1002); /* unmasked, or reserved bits */
      return;
    }
    if (n == 126) {
      if (c->len - off < 4) break;
      n = ((uint64_t)b[off + 2] << 8) | b[off + 3];
      h = 4;
    } else if (n == 127) {
      ws_fail(c, 1009);
      return;
    }
    if (n > 1024) {
      ws_fail(c, 1009);
      return;
    }
    if (c->len - off < h + 4 + n) break;
    uint8_t *mask = b + off + h, *p = mask + 4;
    for (size_t i = 0; i < n; i++) p[i] ^= mask[i & 3];
    int op = b0 & 0x0f;
    if (op == FRAME_CLOSE) {
      ws_control(c, FRAME_CLOSE, p, n >= 2 ? 2 : 0);
      return;
    }
    if (op == FRAME_PING) ws_control(c, FRAME_PONG, p, n);
    off += h + 4 + (size_t)n;
  }
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
  if (c->len == sizeof(c->buf)) ws_fail(c, 1009);
}

static void on_aread(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  struct aconn *c = s->data;
  if (nread < 0) {
    aclose(c);
    return;
  }
  if (nread == 0 || c->closing) return;
  c->len += (size_t)nread;
  if (c->ws) {
    ws_input(c);
    return;
  }
  struct http_request req;
  int r = http_parse_request(c->buf, c->len, &req);
  if (r == HTTP_INCOMPLETE) {
    if (c->len == sizeof(c->buf)) respond(c, 431, "text/plain", "Too large\n", 10);
    return;
  }
  if (r < 0) {
    respond(c, 400, "text/plain", "Bad request\n", 12);
    return;
  }
  handle(c, &req);
}

static void on_aconn(uv_stream_t *server, int status) {
  struct admin *a = server->data;
  if (status < 0) return;
  struct aconn *c = calloc(1, sizeof(*c));
  if (!c) return;
  c->a = a;
  c->accepted = uv_now(a->loop);
  uv_tcp_init(a->loop, &c->tcp);
  a->handles++;
  a->nconns++;
  c->tcp.data = c;
  c->next = a->conns;
  if (a->conns) a->conns->prev = c;
  a->conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || a->nconns > ADMIN_CONNS_MAX) {
    aclose(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, on_aalloc, on_aread);
}

/* Once a second: status pages get a snapshot, unless they stopped reading
 * (then they are dropped rather than queued for); requests that have not
 * arrived within the deadline are closed. */
static void on_atick(uv_timer_t *t) {
  struct admin *a = t->data;
  uint64_t now = uv_now(a->loop);
  for (struct aconn *c = a->conns; c; c = c->next) {
    if (c->closing) continue;
    if (c->ws == 1) {
      if (c->tcp.write_queue_size > ADMIN_WS_QUEUE_MAX) aclose(c);
      else if (now - c->snap_at >= ADMIN_SNAPSHOT_GAP_MS) send_snapshot(c);
    } else if (!c->ws && now - c->accepted > ADMIN_REQUEST_TIMEOUT_MS) {
      aclose(c);
    }
  }
}

static void on_admin_handle_closed(uv_handle_t *h) { handle_closed(h->data); }

struct admin *admin_start(uv_loop_t *loop, const char *listen, const struct admin_view *view,
                          char *err, size_t errlen) {
  char host[128];
  const char *colon = strrchr(listen, ':');
  if (!colon || colon == listen) {
    snprintf(err, errlen, "--admin-listen expects host:port, got '%s'", listen);
    return NULL;
  }
  size_t hl = (size_t)(colon - listen);
  if (listen[0] == '[' && hl >= 2 && listen[hl - 1] == ']') {
    snprintf(host, sizeof(host), "%.*s", (int)(hl - 2), listen + 1);
  } else {
    snprintf(host, sizeof(host), "%.*s", (int)hl, listen);
  }
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) {
    snprintf(err, errlen, "--admin-listen: bad port in '%s'", listen);
    return NULL;
  }
  struct sockaddr_storage ss;
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) != 0) {
    snprintf(err, errlen, "--admin-listen: '%s' is not a numeric address", host);
    return NULL;
  }
  struct admin *a = calloc(1, sizeof(*a));
  if (!a) return NULL;
  a->loop = loop;
  a->view = view;
  uv_tcp_init(loop, &a->listener);
  a->handles = 1;
  a->listener.data = a;
  int rc = uv_tcp_bind(&a->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&a->listener, 128, on_aconn);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s (--admin-listen): %s", listen, uv_strerror(rc));
    uv_close((uv_handle_t *)&a->listener, on_admin_handle_closed);
    return NULL;
  }
  uv_timer_init(loop, &a->tick);
  a->handles++;
  a->tick.data = a;
  uv_timer_start(&a->tick, on_atick, 1000, 1000);
  return a;
}

void admin_stop(struct admin *a) {
  if (!a) return;
  for (struct aconn *c = a->conns; c; c = c->next) aclose(c);
  uv_close((uv_handle_t *)&a->tick, on_admin_handle_closed);
  uv_close((uv_handle_t *)&a->listener, on_admin_handle_closed);
}
