#include "conn.h"

#include <assert.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/shm.h"
#include "api.h"
#include "auth.h"
#include "handshake.h"
#include "sendbatch.h"
#include "slow.h"
#include "worker.h"
#include "ws.h"

#define IOV_BATCH SENDBATCH_IOV

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

void conn_list_move(struct conn *c, struct conn_list *list) {
  if (c->list) {
    assert(c->list->count > 0);
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
  api_conn_free(c);
  free(c);
}

void conn_unref(struct conn *c) {
  assert(c->refs > 0);
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

void conn_read_pause(struct conn *c, int pause) {
  if (pause == (int)c->read_paused || c->state == CONN_CLOSED) return;
  int rc = pause ? uv_read_stop((uv_stream_t *)&c->tcp)
                 : uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
  if (rc != 0) {
    log_warn("read_failed", "conn %llu %s: cannot %s reading: %s", (unsigned long long)c->id,
             c->peer, pause ? "stop" : "resume", uv_strerror(rc));
    conn_close(c);
    return;
  }
  c->read_paused = pause ? 1 : 0;
}

void conn_set_peer(struct conn *c, const struct sockaddr_storage *addr) {
  char ip[CONN_PEER_MAX - 6] = "?"; /* then ":65535" */
  int port = 0;
  if (addr && addr->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
    uv_ip4_name(a, ip, sizeof(ip));
    port = ntohs(a->sin_port);
  } else if (addr && addr->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
    uv_ip6_name(a, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
  }
  snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
  c->ip_bucket = addr ? shm_ip_bucket(addr) : 0;
}

void conn_accept(struct worker *w, int api) {
  struct conn *c = calloc(1, sizeof(*c));
  if (!c) {
    log_error("accept_failed", "out of memory accepting a connection");
    return;
  }
  c->w = w;
  c->id = ++w->next_conn_id;
  int rc = uv_tcp_init(w->loop, &c->tcp);
  if (rc != 0) {
    log_error("accept_failed", "cannot set up a connection: %s", uv_strerror(rc));
    free(c);
    return;
  }
  c->tcp.data = c;
  w->nconns++;
  uv_stream_t *server = (uv_stream_t *)(api ? &w->api_listener : &w->listener);
  if ((rc = uv_accept(server, (uv_stream_t *)&c->tcp)) != 0) {
    log_warn("accept_failed", "accept failed: %s", uv_strerror(rc));
    c->state = CONN_CLOSED;
    uv_close((uv_handle_t *)&c->tcp, on_close);
    return;
  }
  /* latency over segment count: frames are whole when written */
  if ((rc = uv_tcp_nodelay(&c->tcp, 1)) != 0)
    log_debug("nodelay_failed", "conn %llu: TCP_NODELAY: %s", (unsigned long long)c->id,
              uv_strerror(rc));
  /* the address is kept only as c->peer and c->ip_bucket */
  struct sockaddr_storage addr;
  int sl = sizeof(addr);
  int known = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&addr, &sl) == 0;
  conn_set_peer(c, known ? &addr : NULL);
  c->need_proxy = api ? 0 : w->cfg->proxy_protocol; /* the API's listener is private */
  c->state = CONN_HTTP;
  c->deadline = uv_now(w->loop) + (uint64_t)w->cfg->handshake_timeout * 1000;
  conn_list_move(c, &w->handshaking);
  if (api) api_start(c, NULL, 0);
  if (c->state == CONN_CLOSED) return;
  if ((rc = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read)) != 0) {
    log_warn("accept_failed", "conn %llu %s: cannot read: %s", (unsigned long long)c->id, c->peer,
             uv_strerror(rc));
    conn_close(c);
  }
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

static void on_write(uv_write_t *req, int status) {
  struct conn *c = req->data;
  assert(c->writing && c->inflight <= c->q.count);
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
  if (slow_over_hard_limit(c)) {
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
      if (!c->wreq || uv_write(c->wreq, (uv_stream_t *)&c->tcp, (const uv_buf_t *)iov, (unsigned)n,
                               on_write) != 0) {
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
  slow_after_flush(c);
  if (c->q.count == 0 && c->state == CONN_DRAINING) drained(c);
}

/* A batched send has been done: account for what left and write the rest
 * (or the whole, after -EAGAIN) the ordinary way, which also polls for
 * room, applies the slow-subscriber policy and finishes a drain. */
static void batch_sent(void *owner, int result) {
  struct conn *c = owner;
  c->writing = 0;
  c->inflight = 0;
  if (result > 0) consumed(c, (size_t)result);
  if (result < 0 && result != -EAGAIN && c->state != CONN_CLOSED) conn_close(c);
  conn_flush(c);
  conn_unref(c); /* the flusher's */
}

/* Puts c's queued output into the worker's send batch; returns 0, or -1
 * when c is not for the batch (nothing queued, a write in flight, closed,
 * over its limit: conn_flush handles those). */
static int batch_add(struct worker *w, struct conn *c) {
  uv_os_fd_t fd;
  if (c->state == CONN_CLOSED || c->writing || c->q.count == 0 || slow_over_hard_limit(c) ||
      uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0)
    return -1;
  struct iovec *iov = sendbatch_slot(w->batch, fd, c);
  int n = outq_iov(&c->q, 0, iov, SENDBATCH_IOV);
  sendbatch_commit(w->batch, n);
  /* until batch_sent, as for a uv_write: nothing else writes to c, and the
   * entries the batch points at stay as they are */
  c->writing = 1;
  c->inflight = (uint32_t)n;
  return 0;
}

void conn_flush_dirty(struct worker *w) {
  for (;;) {
    while (w->dirty) {
      struct conn *c = w->dirty;
      w->dirty = c->dirty_next;
      c->dirty = 0;
      c->dirty_next = NULL;
      /* alive is asked each time: a failed submit may have lost the ring */
      if (w->batch && sendbatch_alive(w->batch) && batch_add(w, c) == 0) {
        if (sendbatch_full(w->batch)) sendbatch_run(w->batch, batch_sent);
        continue; /* batch_sent drops the reference */
      }
      conn_flush(c);
      conn_unref(c);
    }
    /* what batch_sent marks dirty again is flushed in this turn too */
    if (!w->batch || sendbatch_run(w->batch, batch_sent) == 0) break;
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
    conn_read_pause(c, 0); /* the peer's close frame must be read */
  }
  conn_mark_dirty(c);
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
    case CONN_HTTP: handshake_input(c, buf->base, n); return;
    case CONN_WS: ws_feed(c, (const uint8_t *)buf->base, n); return;
    case CONN_API: api_input(c, buf->base, n); return;
    case CONN_DRAINING:
      if (c->upgraded) {
        ws_feed(c, (const uint8_t *)buf->base, n);
        if (c->state != CONN_CLOSED && ws_close_received(c) && c->q.count == 0 && !c->writing)
          conn_close(c);
      }
      return;
    case CONN_CLOSED: return;
  }
}
