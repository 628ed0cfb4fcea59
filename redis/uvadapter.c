#include "uvadapter.h"

#include <stdlib.h>

struct uvadapter {
  uv_poll_t poll;
  redisAsyncContext *ac; /* NULL once hiredis has let go */
  int events;
};

static void on_poll(uv_poll_t *h, int status, int events) {
  struct uvadapter *a = h->data;
  if (status < 0) {
    /* a refused connect or a broken socket: let hiredis find out which */
    if (a->ac && !(a->ac->c.flags & REDIS_CONNECTED)) redisAsyncHandleWrite(a->ac);
    else if (a->ac) redisAsyncHandleRead(a->ac);
    return;
  }
  if (a->ac && (events & UV_READABLE)) redisAsyncHandleRead(a->ac);
  if (a->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(a->ac);
}

static void update(struct uvadapter *a, int add, int del) {
  a->events = (a->events | add) & ~del;
  if (a->events) uv_poll_start(&a->poll, a->events, on_poll);
  else uv_poll_stop(&a->poll);
}

static void add_read(void *p) { update(p, UV_READABLE, 0); }
static void del_read(void *p) { update(p, 0, UV_READABLE); }
static void add_write(void *p) { update(p, UV_WRITABLE, 0); }
static void del_write(void *p) { update(p, 0, UV_WRITABLE); }

static void on_closed(uv_handle_t *h) { free(h->data); }

static void cleanup(void *p) {
  struct uvadapter *a = p;
  a->ac = NULL;
  uv_close((uv_handle_t *)&a->poll, on_closed);
}

int uvadapter_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  if (ac->ev.data != NULL) return -1;
  struct uvadapter *a = calloc(1, sizeof(*a));
  if (!a) return -1;
  if (uv_poll_init(loop, &a->poll, ac->c.fd) != 0) {
    free(a);
    return -1;
  }
  a->poll.data = a;
  a->ac = ac;
  ac->ev.data = a;
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  ac->ev.cleanup = cleanup;
  return 0;
}
