/* The local bus (bus.h): a publish reaches this worker's own subscribers
 * and no one else.  Linked by the unit tests in place of redis/bridge.c, so
 * that broadcast, topics and the publish/acknowledge path run without
 * Redis.  It keeps the contract's promises that the worker relies on: the
 * published() callback never fires inside bus_publish() (it comes from an
 * idle handle on the next loop turn), every accepted publish gets one, and
 * bus_free() answers those still pending with BUS_EUNAVAILABLE.  It keeps
 * no history: bus_history() is refused.
 *
 * bus_local_set_ready() lets a test take the bus down and up again. */
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "bus_local.h"

struct done {
  struct done *next;
  void *req;
};

struct bus {
  struct bus_env env;
  uv_idle_t idle; /* answers the publishes of the previous turn */
  struct done *head, **tail;
  int ready;
  size_t subscribed; /* topics with local subscribers, as told by the worker */
};

struct bus *bus_new(const struct bus_env *env) {
  struct bus *b = calloc(1, sizeof(*b));
  if (!b) return NULL;
  b->env = *env;
  b->tail = &b->head;
  b->ready = 1;
  if (uv_idle_init(env->loop, &b->idle) != 0) {
    free(b);
    return NULL;
  }
  b->idle.data = b;
  return b;
}

static void answer_all(struct bus *b, int err) {
  while (b->head) {
    struct done *d = b->head;
    b->head = d->next;
    if (!b->head) b->tail = &b->head;
    b->env.host.published(b->env.host.arg, d->req, err, NULL);
    free(d);
  }
}

static void on_idle(uv_idle_t *h) {
  struct bus *b = h->data;
  uv_idle_stop(h);
  answer_all(b, BUS_OK);
}

static void on_closed(uv_handle_t *h) { free(h->data); }

void bus_free(struct bus *b) {
  if (!b) return;
  answer_all(b, BUS_EUNAVAILABLE);
  uv_close((uv_handle_t *)&b->idle, on_closed);
}

int bus_publish(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                int keep, void *req) {
  (void)keep; /* no history here: every message goes without an offset */
  if (!b->ready) return BUS_EUNAVAILABLE;
  /* an idle handle that runs with nothing to answer is harmless */
  if (uv_idle_start(&b->idle, on_idle) != 0) return BUS_ENOMEM;
  struct done *d = malloc(sizeof(*d));
  if (!d) return BUS_ENOMEM;
  d->req = req;
  d->next = NULL;
  *b->tail = d;
  b->tail = &d->next;
  b->env.host.deliver(b->env.host.arg, topic, tlen, payload, plen, 1, NULL);
  return BUS_OK;
}

int bus_history(struct bus *b, const char *topic, size_t tlen, uint64_t since, size_t limit, void *req) {
  (void)b;
  (void)topic;
  (void)tlen;
  (void)since;
  (void)limit;
  (void)req;
  return BUS_EUNAVAILABLE; /* the local bus keeps no history */
}

void bus_topic_first(struct bus *b, const char *topic, size_t tlen) {
  (void)topic;
  (void)tlen;
  b->subscribed++;
}

void bus_topic_last(struct bus *b, const char *topic, size_t tlen) {
  (void)topic;
  (void)tlen;
  b->subscribed--;
}

int bus_ready(const struct bus *b) { return b && b->ready; }

const char *bus_not_ready_reason(const struct bus *b) {
  if (!b) return "no bus";
  return b->ready ? "ready" : "local bus set down";
}

void bus_local_set_ready(struct bus *b, int ready) { b->ready = ready; }

size_t bus_local_topics(const struct bus *b) { return b->subscribed; }
