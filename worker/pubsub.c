#include "pubsub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "broadcast.h"
#include "bus.h"
#include "conn.h"
#include "control.h"
#include "proto.h"
#include "recovery.h"
#include "worker.h"
#include "ws.h"

#define OFFSET_EXTRA_MAX 32 /* "offset":<20 digits> */

/* A client's publish the bus has accepted and not yet answered. */
struct pub_req {
  struct bus_call call; /* first */
  struct conn *c;       /* holds a reference */
  char *id_json;        /* the request's "id", or NULL */
  size_t tlen;
  char topic[];
};

static void on_deliver(void *arg, const char *topic, size_t tlen, const char *payload, size_t plen,
                       int is_json, const struct bus_pos *pos) {
  struct worker *w = arg;
  metric_add(w->m, M_BUS_MESSAGES, 1);
  recovery_deliver(w, topic, tlen, payload, plen, is_json, pos);
}

static int proto_err_of(int bus_err) {
  return bus_err == BUS_ENOMEM ? PROTO_EINTERNAL : PROTO_EBUS;
}

static void on_published(void *arg, void *req, int err, const struct bus_pos *pos) {
  struct worker *w = arg;
  struct bus_call *call = req;
  if (call->is_publish) metric_add(w->m, err == 0 ? M_PUBLISHES : M_PUBLISH_ERRORS, 1);
  call->published(call, err, pos);
}

/* The answer to a client's publish. */
static void on_client_published(struct bus_call *call, int err, const struct bus_pos *pos) {
  struct pub_req *p = (struct pub_req *)call;
  struct conn *c = p->c;
  if (ws_can_send(c)) {
    char extra[OFFSET_EXTRA_MAX];
    if (pos) snprintf(extra, sizeof(extra), "\"offset\":%llu", (unsigned long long)pos->offset);
    if (err == 0)
      proto_reply_status_ext(&ws_proto_ops, c, "published", p->topic, p->tlen, pos ? extra : NULL,
                             p->id_json);
    else proto_reply_error(&ws_proto_ops, c, proto_err_of(err), p->topic, p->tlen, p->id_json);
  }
  conn_unref(c);
  free(p->id_json);
  free(p);
}

struct each_ctx {
  void (*fn)(void *fnarg, const char *topic, size_t tlen);
  void *fnarg;
};

static void each_one(void *arg, const struct topic *t) {
  struct each_ctx *e = arg;
  e->fn(e->fnarg, t->name, t->len);
}

static void on_each_topic(void *arg, void (*fn)(void *fnarg, const char *topic, size_t tlen),
                          void *fnarg) {
  struct worker *w = arg;
  struct each_ctx e = {fn, fnarg};
  topics_each(&w->topics, each_one, &e);
}

static void on_history(void *arg, void *req, int err, const struct bus_history *h) {
  (void)arg;
  struct bus_call *call = req;
  call->history(call, err, h);
}

static void on_channels(void *arg, void *req, int err, const struct bus_name *v, size_t n) {
  (void)arg;
  struct bus_call *call = req;
  call->channels(call, err, v, n);
}

static void on_control(void *arg, const char *msg, size_t len) {
  control_on_message(arg, msg, len);
}

static void on_resynced(void *arg) { recovery_resynced(arg); }

static void on_topic_first(void *arg, struct topic *t) {
  struct worker *w = arg;
  if (recovery_topic_start(w, t) < 0)
    log_warn("history_unavailable", "topic %s: out of memory: delivered without offset tracking",
             t->name);
  bus_topic_first(w->bus, t->name, t->len);
}

static void on_topic_last(void *arg, struct topic *t) {
  struct worker *w = arg;
  bus_topic_last(w->bus, t->name, t->len);
  recovery_topic_end(t);
}

static void on_sub_gone(void *arg, struct sub *s) {
  (void)arg;
  recovery_sub_gone(s);
}

int pubsub_start(struct worker *w) {
  struct bus_env env = {
      .loop = w->loop,
      .cfg = w->cfg,
      .m = w->m,
      .worker_id = w->id,
      .host = {.arg = w,
               .deliver = on_deliver,
               .published = on_published,
               .each_topic = on_each_topic,
               .history = on_history,
               .resynced = on_resynced,
               .control = on_control,
               .channels = on_channels},
  };
  if (control_start(w) < 0) return -1;
  w->bus = bus_new(&env);
  if (!w->bus) {
    control_stop(w);
    return -1;
  }
  w->topics.on_first = on_topic_first;
  w->topics.on_last = on_topic_last;
  w->topics.on_sub_gone = on_sub_gone;
  w->topics.cb_arg = w;
  return 0;
}

void pubsub_stop(struct worker *w) {
  w->topics.on_first = NULL;
  w->topics.on_last = NULL;
  w->topics.on_sub_gone = NULL;
  bus_free(w->bus); /* answers what the bus still held, control.c's lists among them */
  w->bus = NULL;
  control_stop(w);
}

int pubsub_publish_call(struct worker *w, const char *topic, size_t tlen, const char *payload,
                        size_t plen, struct bus_call *call) {
  call->is_publish = 1;
  int rc = bus_publish(w->bus, topic, tlen, payload, plen, recovery_keeps(w, topic, tlen), call);
  if (rc < 0) metric_add(w->m, M_PUBLISH_ERRORS, 1);
  return rc;
}

int pubsub_history_call(struct worker *w, const char *topic, size_t tlen, uint64_t since,
                        size_t limit, struct bus_call *call) {
  return bus_history(w->bus, topic, tlen, since, limit, call);
}

int pubsub_publish(struct conn *c, const char *topic, size_t tlen, const char *payload, size_t plen,
                   const char *id_json) {
  struct pub_req *p = malloc(sizeof(*p) + tlen);
  if (!p) return PROTO_EINTERNAL;
  p->call = (struct bus_call){.published = on_client_published};
  p->c = c;
  p->tlen = tlen;
  memcpy(p->topic, topic, tlen);
  p->id_json = NULL;
  if (id_json && !(p->id_json = strdup(id_json))) {
    free(p);
    return PROTO_EINTERNAL;
  }
  conn_ref(c);
  int rc = pubsub_publish_call(c->w, topic, tlen, payload, plen, &p->call);
  if (rc < 0) {
    conn_unref(c);
    free(p->id_json);
    free(p);
    return proto_err_of(rc);
  }
  return PROTO_PENDING;
}
