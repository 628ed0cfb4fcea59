/* control.c - see control.h. */
#include "control.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/shm.h"
#include "../common/topic.h"
#include "auth.h"
#include "bus.h"
#include "conn.h"
#include "proto.h"
#include "pubsub.h"
#include "worker.h"
#include "ws.h"

#define HOST_ID_MAX 160

/* A count this worker asked for: waits for the topic list from the bus and
 * for the answers of the workers of its host. */
struct gather {
  struct bus_call call; /* first: the bus' answer to bus_channels */
  struct control *ctl;
  struct gather *next;
  struct bus_call *caller;
  uint64_t rid;
  unsigned expect, got;
  int listed;    /* the topic list arrived */
  int timed_out; /* the answers stopped being waited for */
  int err;
  json_t *counts; /* topic -> subscriptions here */
  uv_timer_t timer;
};

struct control {
  struct worker *w;
  char host[HOST_ID_MAX]; /* the same for every worker of one master */
  uint64_t next_rid;
  struct gather *gathers;
};

int control_start(struct worker *w) {
  struct control *ctl = calloc(1, sizeof(*ctl));
  if (!ctl) return -1;
  ctl->w = w;
  char name[64] = "";
  gethostname(name, sizeof(name) - 1);
  /* workers of one master share its pid and start time */
  snprintf(ctl->host, sizeof(ctl->host), "%s/%ld/%llu", name, (long)getppid(),
           (unsigned long long)w->shm->started_unix);
  w->control = ctl;
  return 0;
}

static void on_gather_closed(uv_handle_t *h) {
  struct gather *g = h->data;
  json_decref(g->counts);
  free(g);
}

static void unlink_gather(struct gather *g) {
  for (struct gather **p = &g->ctl->gathers; *p; p = &(*p)->next) {
    if (*p == g) {
      *p = g->next;
      break;
    }
  }
  uv_close((uv_handle_t *)&g->timer, on_gather_closed);
}

static int by_name(const void *a, const void *b) {
  const struct topic_count *x = a, *y = b;
  size_t n = x->tlen < y->tlen ? x->tlen : y->tlen;
  int c = memcmp(x->topic, y->topic, n);
  return c ? c : (x->tlen > y->tlen) - (x->tlen < y->tlen);
}

/* Answers the caller and lets the gather go. */
static void finish(struct gather *g) {
  struct bus_call *caller = g->caller;
  size_t n = g->err == BUS_OK ? json_object_size(g->counts) : 0;
  struct topic_count *v = malloc((n ? n : 1) * sizeof(*v));
  int err = v ? g->err : BUS_ENOMEM;
  size_t i = 0;
  if (v && err == BUS_OK) {
    const char *k;
    json_t *val;
    json_object_foreach(g->counts, k, val) {
      v[i++] = (struct topic_count){k, strlen(k), (uint64_t)json_integer_value(val)};
    }
    qsort(v, i, sizeof(*v), by_name);
  }
  if (g->expect > g->got)
    log_warn("control_count_partial", "topic counts: %u of %u workers of this host answered",
             g->got, g->expect);
  unlink_gather(g);
  caller->topics(caller, err, v, err == BUS_OK ? i : 0);
  free(v);
}

static void maybe_finish(struct gather *g) {
  if (g->listed && (g->got >= g->expect || g->timed_out || g->err != BUS_OK)) finish(g);
}

static int add_count(json_t *counts, const char *topic, size_t tlen, uint64_t n) {
  char name[TOPIC_MAX_LEN + 1];
  if (topic_validate(topic, tlen) != 0) return 0;
  memcpy(name, topic, tlen);
  name[tlen] = '\0';
  json_t *old = json_object_get(counts, name);
  json_int_t sum = (json_int_t)n + (old ? json_integer_value(old) : 0);
  return json_object_set_new(counts, name, json_integer(sum));
}

static void on_listed(struct bus_call *call, int err, const struct bus_name *v, size_t n) {
  struct gather *g = (struct gather *)call;
  g->listed = 1;
  if (err != BUS_OK) g->err = err;
  for (size_t i = 0; err == BUS_OK && i < n; i++)
    if (add_count(g->counts, v[i].p, v[i].n, 0) < 0) g->err = BUS_ENOMEM;
  maybe_finish(g);
}

static void on_gather_timeout(uv_timer_t *t) {
  struct gather *g = t->data;
  g->timed_out = 1;
  maybe_finish(g);
}

void control_stop(struct worker *w) {
  struct control *ctl = w->control;
  if (!ctl) return;
  while (ctl->gathers) {
    struct gather *g = ctl->gathers;
    g->listed = 1;
    g->err = BUS_EUNAVAILABLE;
    finish(g); /* unlinks it */
  }
  free(ctl);
  w->control = NULL;
}

/* Workers of this host that hear the bus now, and so will answer. */
static unsigned live_workers(const struct worker *w) {
  unsigned n = 0;
  for (unsigned r = 0; r < w->shm->nrows; r++)
    if (__atomic_load_n(&w->shm->rows[r].m.g[G_REDIS_CONNECTED], __ATOMIC_RELAXED) > 0) n++;
  return n ? n : 1; /* itself: it asks, so it hears */
}

/* Sends a JSON object (consumed) as a control message. */
static int send_json(struct worker *w, const char *to, json_t *msg, void *req) {
  char *s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
  json_decref(msg);
  if (!s) return BUS_ENOMEM;
  int rc = bus_control(w->bus, to, s, strlen(s), req);
  free(s);
  return rc;
}

int control_topics(struct worker *w, struct bus_call *call) {
  struct control *ctl = w->control;
  struct gather *g = calloc(1, sizeof(*g));
  if (!g || !(g->counts = json_object())) {
    free(g);
    return BUS_ENOMEM;
  }
  g->call.channels = on_listed;
  g->ctl = ctl;
  g->caller = call;
  g->rid = ++ctl->next_rid;
  g->expect = live_workers(w);
  int rc = bus_channels(w->bus, &g->call);
  if (rc != BUS_OK) {
    json_decref(g->counts);
    free(g);
    return rc;
  }
  /* from here on the gather answers through finish() */
  uv_timer_init(w->loop, &g->timer);
  g->timer.data = g;
  g->next = ctl->gathers;
  ctl->gathers = g;
  json_t *ask = json_pack("{s:s,s:s,s:s,s:I}", "op", "count", "host", ctl->host, "to",
                          bus_inbox(w->bus), "rid", (json_int_t)g->rid);
  if (send_json(w, NULL, ask, NULL) != BUS_OK) {
    g->expect = 0; /* the list alone, without this host's counts */
    g->err = BUS_EUNAVAILABLE;
  }
  uv_timer_start(&g->timer, on_gather_timeout, CONTROL_GATHER_MS, 0);
  return BUS_OK;
}

int control_disconnect(struct worker *w, const char *sub, size_t sublen, const char *topic,
                       size_t tlen, struct bus_call *call) {
  json_t *msg = json_pack("{s:s,s:s%}", "op", "disconnect", "sub", sub, sublen);
  if (msg && topic && json_object_set_new(msg, "topic", json_stringn(topic, tlen)) < 0) {
    json_decref(msg);
    msg = NULL;
  }
  return send_json(w, NULL, msg, call);
}

/* ---- what arrives ---- */

static int sub_is(const struct conn *c, const char *sub, size_t sublen) {
  const char *s = c->grant ? auth_grant_sub(c->grant) : NULL;
  return s && strlen(s) == sublen && memcmp(s, sub, sublen) == 0;
}

static void do_disconnect(struct worker *w, json_t *msg) {
  json_t *js = json_object_get(msg, "sub"), *jt = json_object_get(msg, "topic");
  if (!json_is_string(js) || (jt && !json_is_string(jt))) {
    log_warn("control_bad_message", "a disconnect order without a valid sub or topic: dropped");
    return;
  }
  const char *sub = json_string_value(js), *topic = jt ? json_string_value(jt) : NULL;
  size_t sublen = json_string_length(js), tlen = jt ? json_string_length(jt) : 0;
  if (topic && topic_validate(topic, tlen) != 0) return;
  size_t n = 0;
  for (struct conn *c = w->open.first, *next; c; c = next) {
    next = c->next; /* closing moves c to another list */
    if (c->kind != CONN_PUBSUB || !ws_can_send(c) || !sub_is(c, sub, sublen)) continue;
    if (!topic) {
      ws_close(c, CLOSE_REVOKED, CLOSE_REVOKED_REASON);
      n++;
    } else if (ws_proto_ops.unsubscribe(c, topic, tlen) == PROTO_OK) {
      proto_reply_status_ext(&ws_proto_ops, c, "unsubscribed", topic, tlen,
                             "\"reason\":\"" CLOSE_REVOKED_REASON "\"", NULL);
      n++;
    }
  }
  if (n)
    log_info("control_disconnect", "%s %zu connection(s) of a revoked subject%s%s",
             topic ? "unsubscribed" : "closed", n, topic ? " from " : "", topic ? topic : "");
}

struct counts_out {
  json_t *list;
  int failed;
};

static void count_one(void *arg, const struct topic *t) {
  struct counts_out *o = arg;
  if (o->failed) return;
  if (json_array_append_new(o->list, json_pack("[s%,I]", t->name, t->len, (json_int_t)t->count)) <
      0)
    o->failed = 1;
}

static void do_count(struct worker *w, json_t *msg) {
  json_t *host = json_object_get(msg, "host"), *to = json_object_get(msg, "to"),
         *rid = json_object_get(msg, "rid");
  if (!json_is_string(host) || !json_is_string(to) || !json_is_integer(rid)) return;
  if (strcmp(json_string_value(host), w->control->host) != 0) return; /* another host's */
  struct counts_out o = {json_array(), 0};
  if (o.list) topics_each(&w->topics, count_one, &o);
  json_t *ans = NULL;
  if (o.list && !o.failed)
    ans = json_pack("{s:s,s:O,s:O}", "op", "counts", "rid", rid, "topics", o.list);
  json_decref(o.list);
  if (send_json(w, json_string_value(to), ans, NULL) != BUS_OK)
    log_warn("control_count_failed", "cannot answer a count of this host's topics");
}

static void do_counts(struct worker *w, json_t *msg) {
  json_t *rid = json_object_get(msg, "rid"), *list = json_object_get(msg, "topics");
  if (!json_is_integer(rid) || !json_is_array(list)) return;
  struct gather *g = w->control->gathers;
  while (g && g->rid != (uint64_t)json_integer_value(rid)) g = g->next;
  if (!g || g->timed_out) return; /* answered already */
  size_t i;
  json_t *e;
  json_array_foreach(list, i, e) {
    json_t *t = json_array_get(e, 0), *n = json_array_get(e, 1);
    if (!json_is_string(t) || !json_is_integer(n) || json_integer_value(n) < 0) continue;
    if (add_count(g->counts, json_string_value(t), json_string_length(t),
                  (uint64_t)json_integer_value(n)) < 0)
      g->err = BUS_ENOMEM;
  }
  g->got++;
  maybe_finish(g);
}

void control_on_message(struct worker *w, const char *msg, size_t len) {
  json_t *root = json_loadb(msg, len, 0, NULL);
  json_t *op = root ? json_object_get(root, "op") : NULL;
  const char *o = json_is_string(op) ? json_string_value(op) : "";
  if (!w->control) {
    /* not started: nothing to act on */
  } else if (strcmp(o, "disconnect") == 0) {
    do_disconnect(w, root);
  } else if (strcmp(o, "count") == 0) {
    do_count(w, root);
  } else if (strcmp(o, "counts") == 0) {
    do_counts(w, root);
  } else {
    log_warn("control_bad_message", "a control message that is not understood (%zu bytes): dropped",
             len);
  }
  json_decref(root);
}
