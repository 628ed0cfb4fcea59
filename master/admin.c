#include "admin.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/http.h"
#include "../common/log.h"
#include "admin_conn.h"
#include "admin_metrics.h"
#include "admin_status.h"

#define ADMIN_CONNS_MAX 256            /* scrapers and status pages at once */
#define ADMIN_REQUEST_TIMEOUT_MS 10000 /* a whole request must arrive by then */
#define ADMIN_TICK_MS 250              /* deadlines and status snapshots: their resolution */
#define ADMIN_BACKLOG 128
#define ADMIN_RESPONSE_HEAD_MAX 256
#define ADMIN_HOST_MAX 128
#define ADMIN_WHY_MAX 128 /* the /readyz line */

static void handle_closed(struct admin *a) {
  assert(a->handles > 0);
  if (--a->handles == 0) free(a);
}

/* ---- connections ---- */

static void on_close(uv_handle_t *h) {
  struct aconn *c = h->data;
  struct admin *a = c->a;
  if (c->prev) c->prev->next = c->next;
  else a->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  a->nconns--;
  assert(a->nconns >= 0);
  free(c);
  handle_closed(a);
}

void admin__close(struct aconn *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_close);
}

void admin__set_state(struct aconn *c, enum aconn_state s) {
  assert(s > c->state);
  c->state = s;
  c->since = uv_now(c->a->loop);
  if (s == ACONN_ANSWERED || s == ACONN_WS_CLOSING) c->len = 0;
}

struct wreq {
  uv_write_t req;
  struct aconn *c;
  int close_after;
  char data[];
};

static void on_write(uv_write_t *req, int status) {
  struct wreq *w = (struct wreq *)req;
  if (status < 0 || w->close_after) admin__close(w->c);
  free(w);
}

int admin__send(struct aconn *c, const void *head, size_t hlen, const void *body, size_t blen,
                int close_after) {
  if (c->closing) return UV_ECANCELED;
  struct wreq *w = malloc(sizeof(*w) + hlen + blen);
  if (!w) {
    admin__close(c);
    return UV_ENOMEM;
  }
  w->c = c;
  w->close_after = close_after;
  if (hlen) memcpy(w->data, head, hlen);
  if (blen) memcpy(w->data + hlen, body, blen);
  uv_buf_t b = uv_buf_init(w->data, (unsigned)(hlen + blen));
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc < 0) {
    free(w);
    admin__close(c);
  }
  return rc;
}

/* ---- HTTP ---- */

/* A write failure closes the connection (admin__send), so the responders
 * return nothing. */
static void respond(struct aconn *c, int status, const char *ctype, const char *body, size_t blen) {
  char head[ADMIN_RESPONSE_HEAD_MAX];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                   status, http_reason(status), ctype, blen);
  assert(n > 0 && (size_t)n < sizeof(head));
  admin__set_state(c, ACONN_ANSWERED);
  admin__send(c, head, (size_t)n, body, blen, 1);
}

static void respond_text(struct aconn *c, int status, const char *text) {
  respond(c, status, "text/plain", text, strlen(text));
}

static int str_is(struct http_str s, const char *lit) {
  return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static void route(struct aconn *c, const struct http_request *req) {
  const struct admin_view *v = c->a->view;
  if (!str_is(req->method, "GET")) {
    respond_text(c, 405, "Method not allowed\n");
  } else if (str_is(req->path, "/metrics")) {
    size_t n;
    char *text;
    int rc = admin_metrics_text(v, &text, &n);
    if (rc < 0) {
      log_warn("admin_metrics_failed", "/metrics: %s", uv_strerror(rc));
      respond_text(c, 500, "out of memory\n");
      return;
    }
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, n);
    free(text);
  } else if (str_is(req->path, "/healthz")) {
    if (admin_metrics_healthy(v)) respond_text(c, 200, "ok\n");
    else respond_text(c, 503, "no worker running\n");
  } else if (str_is(req->path, "/readyz")) {
    char why[ADMIN_WHY_MAX];
    int ok = admin_metrics_ready(v, why, sizeof(why));
    respond_text(c, ok ? 200 : 503, why);
  } else if (str_is(req->path, "/status") || str_is(req->path, "/")) {
    respond(c, 200, "text/html; charset=utf-8", admin_status_html, strlen(admin_status_html));
  } else if (str_is(req->path, "/status/ws")) {
    const char *why;
    if (http_check_upgrade(req, &why) != 0) respond_text(c, 400, "WebSocket upgrade expected\n");
    else admin_status_open(c, req->ws_key);
  } else {
    respond_text(c, 404, "Not found\n");
  }
}

static void http_input(struct aconn *c) {
  struct http_request req;
  int r = http_parse_request(c->buf, c->len, &req);
  if (r == HTTP_INCOMPLETE) {
    if (c->len == sizeof(c->buf)) respond_text(c, 431, "Too large\n");
    return;
  }
  if (r < 0) {
    respond_text(c, 400, "Bad request\n");
    return;
  }
  route(c, &req);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  struct aconn *c = h->data;
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  struct aconn *c = s->data;
  if (nread < 0) {
    if (nread != UV_EOF && nread != UV_ECONNRESET)
      log_debug("admin_read_failed", "admin connection: %s", uv_strerror((int)nread));
    admin__close(c);
    return;
  }
  if (nread == 0 || c->closing) return;
  c->len += (size_t)nread;
  assert(c->len <= sizeof(c->buf));
  switch (c->state) {
    case ACONN_HTTP: http_input(c); break;
    case ACONN_WS: admin_status_input(c); break;
    case ACONN_ANSWERED:
    case ACONN_WS_CLOSING: c->len = 0; break;
  }
}

/* Takes one connection from the listener's backlog.  Without memory for
 * it, it stays there (libuv stops watching the listener until uv_accept()
 * is called) and the next tick tries again. */
static void accept_one(struct admin *a) {
  struct aconn *c = calloc(1, sizeof(*c));
  int rc = c ? uv_tcp_init(a->loop, &c->tcp) : UV_ENOMEM;
  if (rc < 0) {
    if (!a->accept_pending)
      log_error("admin_accept_failed", "admin connection left waiting: %s", uv_strerror(rc));
    a->accept_pending = 1;
    free(c);
    return;
  }
  a->accept_pending = 0;
  c->a = a;
  c->accepted = c->since = uv_now(a->loop);
  c->tcp.data = c;
  a->handles++;
  a->nconns++;
  c->next = a->conns;
  if (a->conns) a->conns->prev = c;
  a->conns = c;
  rc = uv_accept((uv_stream_t *)&a->listener, (uv_stream_t *)&c->tcp);
  if (rc < 0) {
    log_warn("admin_accept_failed", "admin connection: %s", uv_strerror(rc));
    admin__close(c);
    return;
  }
  if (a->nconns > ADMIN_CONNS_MAX) {
    log_debug("admin_full", "admin connection refused: %d open", ADMIN_CONNS_MAX);
    admin__close(c);
    return;
  }
  rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc < 0) {
    log_warn("admin_read_failed", "admin connection: %s", uv_strerror(rc));
    admin__close(c);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  struct admin *a = server->data;
  if (status < 0) {
    log_warn("admin_accept_failed", "admin listener: %s", uv_strerror(status));
    return;
  }
  accept_one(a);
}

/* Every ADMIN_TICK_MS: a connection left waiting for memory is accepted,
 * requests that have not arrived within the deadline are closed, and status
 * pages get what admin_status_tick() decides. */
static void on_tick(uv_timer_t *t) {
  struct admin *a = t->data;
  uint64_t now = uv_now(a->loop);
  if (a->accept_pending) accept_one(a);
  for (struct aconn *c = a->conns; c; c = c->next) {
    if (c->closing) continue;
    switch (c->state) {
      case ACONN_HTTP:
      case ACONN_ANSWERED:
        if (now - c->accepted > ADMIN_REQUEST_TIMEOUT_MS) admin__close(c);
        break;
      case ACONN_WS:
      case ACONN_WS_CLOSING: admin_status_tick(c, now); break;
    }
  }
}

static void on_admin_handle_closed(uv_handle_t *h) { handle_closed(h->data); }

/* "host:port", "[v6]:port": a numeric address only, so that starting never
 * waits on DNS.  Returns 0 or UV_EINVAL with one line in err. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, char *err, size_t errlen) {
  const char *colon = strrchr(listen, ':');
  if (!colon || colon == listen) {
    snprintf(err, errlen, "--admin-listen expects host:port, got '%s'", listen);
    return UV_EINVAL;
  }
  char host[ADMIN_HOST_MAX];
  size_t hl = (size_t)(colon - listen);
  if (listen[0] == '[' && hl >= 2 && listen[hl - 1] == ']')
    snprintf(host, sizeof(host), "%.*s", (int)(hl - 2), listen + 1);
  else snprintf(host, sizeof(host), "%.*s", (int)hl, listen);
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end || port < 0 || port > 65535) {
    snprintf(err, errlen, "--admin-listen: bad port in '%s'", listen);
    return UV_EINVAL;
  }
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) != 0 &&
      uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) != 0) {
    snprintf(err, errlen, "--admin-listen: '%s' is not a numeric address", host);
    return UV_EINVAL;
  }
  return 0;
}

int admin_start(uv_loop_t *loop, const char *listen, const struct admin_view *view,
                struct admin **out, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  int rc = parse_listen(listen, &ss, err, errlen);
  if (rc < 0) return rc;
  struct admin *a = calloc(1, sizeof(*a));
  if (!a) {
    snprintf(err, errlen, "--admin-listen: out of memory");
    return UV_ENOMEM;
  }
  a->loop = loop;
  a->view = view;
  rc = uv_tcp_init(loop, &a->listener);
  if (rc < 0) {
    snprintf(err, errlen, "--admin-listen: %s", uv_strerror(rc));
    free(a); /* a handle whose init failed is not in the loop */
    return rc;
  }
  a->handles = 1;
  a->listener.data = a;
  rc = uv_tcp_bind(&a->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&a->listener, ADMIN_BACKLOG, on_connection);
  if (rc == 0) rc = uv_timer_init(loop, &a->tick);
  if (rc < 0) {
    snprintf(err, errlen, "cannot listen on %s (--admin-listen): %s", listen, uv_strerror(rc));
    uv_close((uv_handle_t *)&a->listener, on_admin_handle_closed);
    return rc;
  }
  a->handles++;
  a->tick.data = a;
  rc = uv_timer_start(&a->tick, on_tick, ADMIN_TICK_MS, ADMIN_TICK_MS);
  if (rc < 0) {
    snprintf(err, errlen, "--admin-listen: %s", uv_strerror(rc));
    admin_stop(a);
    return rc;
  }
  *out = a;
  return 0;
}

void admin_stop(struct admin *a) {
  if (!a) return;
  assert(a->handles >= 2); /* the listener and the timer are still open */
  for (struct aconn *c = a->conns; c; c = c->next) admin__close(c);
  uv_close((uv_handle_t *)&a->tick, on_admin_handle_closed);
  uv_close((uv_handle_t *)&a->listener, on_admin_handle_closed);
}
