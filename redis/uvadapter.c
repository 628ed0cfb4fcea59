#include "uvadapter.h"

#include <stdlib.h>
#include <sys/ioctl.h>

/* hiredis reads at most 16 KiB per redisAsyncHandleRead, while a worker
 * reads its WebSocket clients 64 KiB at a time: a worker whose clients
 * publish large messages at full speed would take publishes in faster than
 * it reads them back from its subscription, and Redis' output buffer for
 * that subscriber would grow until Redis cut it off.  So one readable event
 * drains what the kernel holds, up to this many bytes. */
#define READ_BUDGET (1024 * 1024)
#define HIREDIS_READ_CHUNK (16 * 1024)

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
  if (a->ac && (events & UV_READABLE)) {
    size_t budget = READ_BUDGET;
    for (;;) {
      redisAsyncHandleRead(a->ac);
      /* a callback may have freed the context (cleanup clears a->ac) or
       * stopped reading */
      if (!a->ac || !(a->events & UV_READABLE) || budget <= HIREDIS_READ_CHUNK) break;
      budget -= HIREDIS_READ_CHUNK;
      int pending = 0;
      if (ioctl(a->ac->c.fd, FIONREAD, &pending) != 0 || pending <= 0) break;
    }
  }
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
