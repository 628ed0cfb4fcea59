/* admin_conn.h - one connection of the admin listener.  Internal to it:
 * shared by admin.c (accepting, reading, HTTP, writing, closing) and
 * admin_status.c (the status page's WebSocket).
 *
 * Everything runs on the master's loop.  struct admin owns its connections:
 * each is malloc'ed on accept, linked in a->conns, and freed only from its
 * uv_close callback, so admin__close() may be called from inside any
 * callback of the connection, and c stays valid until that callback
 * returns.  Bytes read land in c->buf; the first c->len are not consumed.
 */
#ifndef TIDINGS_ADMIN_CONN_H
#define TIDINGS_ADMIN_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "admin.h"

#define ADMIN_HEAD_MAX 8192 /* a request head; then the status socket's input */

/* What a connection is doing.  It only ever moves down this list. */
enum aconn_state {
  ACONN_HTTP,       /* reading a request head */
  ACONN_ANSWERED,   /* response queued: input is dropped, TCP closes once it is written */
  ACONN_WS,         /* the status page's WebSocket (admin_status.c) */
  ACONN_WS_CLOSING, /* our Close queued: input is dropped, TCP closes once it is written */
};

struct aconn {
  struct admin *a;
  uv_tcp_t tcp;
  struct aconn *prev, *next; /* in a->conns */
  enum aconn_state state;
  int closing;       /* uv_close() called: nothing more is sent or read */
  uint64_t accepted; /* uv_now() at accept: the request deadline */
  uint64_t since;    /* uv_now() on entering the state */
  uint64_t snap_at;  /* uv_now() at the last snapshot sent (ACONN_WS) */
  size_t len;
  char buf[ADMIN_HEAD_MAX];
};

struct admin {
  uv_loop_t *loop;
  const struct admin_view *view; /* the master's */
  uv_tcp_t listener;
  uv_timer_t tick;
  struct aconn *conns;
  int nconns;
  int handles;        /* open handles (listener, timer, connections): a is freed at 0 */
  int accept_pending; /* a connection waits in the backlog for memory */
};

/* Queues head then body (either may be empty) as one write; both are
 * copied.  With close_after the connection is closed once it is written.
 * Returns 0, or a negative libuv code when the write could not be queued
 * (or the connection was already closing): the connection is closing then,
 * and the caller only stops using it. */
int admin__send(struct aconn *c, const void *head, size_t hlen, const void *body, size_t blen,
                int close_after);

/* Starts closing c (again is a no-op); c is freed from the close callback. */
void admin__close(struct aconn *c);

/* Moves c to a later state and notes when.  Entering ACONN_ANSWERED or
 * ACONN_WS_CLOSING drops unconsumed input. */
void admin__set_state(struct aconn *c, enum aconn_state s);

#endif
