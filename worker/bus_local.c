/* The local bus (bus.h): a publish reaches this worker's own subscribers
 * and no one else.  Linked by the unit tests in place of redis/bridge.c, so
 * that broadcast, topics and the publish/acknowledge path run without
 * Redis.  It keeps the contract's promises that the worker relies on: the
 * published() callback never fires inside bus_publish() (it comes from an
 * idle handle on the next loop turn), every accepted publish gets one, and
 * bus_free() answers those still pending with BUS_EUNAVAILABLE.
 *
 * Without --history-size it keeps no history: bus_history() is refused and
 * every message goes without an offset.  With it, each topic's history is
 * kept in memory the way the Redis functions of docs/history.md keep it
 * (offsets 1, 2, ... within an epoch; the last --history-size messages;
 * tidings_history's answer), and history reads are answered from the same
 * idle handle, on a later loop turn, in the order they were made;
 * bus_free() answers those still waiting (held or not) with
 * BUS_EUNAVAILABLE, as it does the publishes.
 *
 * bus_local.h lists the test controls. */
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"
#include "bus.h"
#include "bus_local.h"

struct done {
  struct done *next;
  void *req;
  int has_pos;
  struct bus_pos pos;
};

/* One stored message. */
struct lmsg {
  struct lmsg *next;
  uint64_t offset;
  int is_json;
  size_t plen;
  char payload[];
};

/* A topic the bus knows of: it has (had) history, or a test control named
 * it. */
struct ltopic {
  struct ltopic *next;
  char epoch[BUS_EPOCH_MAX + 1];      /* "" while the topic has no history */
  char next_epoch[BUS_EPOCH_MAX + 1]; /* started by the next publish when epoch is "" */
  uint64_t top;                       /* newest offset, 0 when none */
  struct lmsg *head, *tail;           /* oldest first */
  size_t count;
  unsigned drop; /* deliveries still to lose */
  size_t tlen;
  char name[];
};

/* A history read waiting for its answer. */
struct lread {
  struct lread *next;
  void *req;
  uint64_t since;
  size_t limit;
  int released; /* answered on the next turn even while holding */
  int taken;    /* the answer below is fixed */
  char epoch[BUS_EPOCH_MAX + 1];
  uint64_t top, first;
  size_t count;
  struct bus_msg *msgs; /* payloads are copies, owned */
  size_t tlen;
  char topic[];
};

struct bus {
  struct bus_env env;
  uv_idle_t idle; /* answers the publishes of the previous turn, and the reads */
  struct done *head, **tail;
  int ready;
  size_t subscribed; /* topics with local subscribers, as told by the worker */
  int closing;
  /* history */
  struct ltopic *topics;
  struct lread *reads, **reads_tail;
  int hold;
  size_t fail; /* answers still to fail */
  size_t nreads, nwaiting;
  uint64_t last_since;
  size_t last_limit;
  /* bus_channels() requests waiting for the next turn */
  struct lchan *chans, **chans_tail;
};

/* A bus_channels() request. */
struct lchan {
  struct lchan *next;
  void *req;
};

#define LOCAL_INBOX "local"

static int keeps_history(const struct bus *b) { return b->env.cfg && b->env.cfg->history_size > 0; }

struct bus *bus_new(const struct bus_env *env) {
  struct bus *b = calloc(1, sizeof(*b));
  if (!b) return NULL;
  b->env = *env;
  b->tail = &b->head;
  b->reads_tail = &b->reads;
  b->chans_tail = &b->chans;
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
    b->env.host.published(b->env.host.arg, d->req, err, d->has_pos ? &d->pos : NULL);
    free(d);
  }
}

/* ---- topics and their history ---- */

static struct ltopic *find_topic(const struct bus *b, const char *topic, size_t tlen) {
  for (struct ltopic *t = b->topics; t; t = t->next)
    if (t->tlen == tlen && memcmp(t->name, topic, tlen) == 0) return t;
  return NULL;
}

static struct ltopic *get_topic(struct bus *b, const char *topic, size_t tlen) {
  struct ltopic *t = find_topic(b, topic, tlen);
  if (t) return t;
  if (!(t = calloc(1, sizeof(*t) + tlen + 1))) return NULL;
  memcpy(t->next_epoch, BUS_LOCAL_EPOCH, sizeof(BUS_LOCAL_EPOCH));
  t->tlen = tlen;
  memcpy(t->name, topic, tlen);
  t->next = b->topics;
  b->topics = t;
  return t;
}

static void forget_msgs(struct ltopic *t) {
  while (t->head) {
    struct lmsg *m = t->head;
    t->head = m->next;
    free(m);
  }
  t->tail = NULL;
  t->count = 0;
}

/* Stores a message with the topic's next offset (tidings_publish); fills
 * pos.  Returns 0 or -1 (no memory: nothing changed). */
static int store(struct bus *b, struct ltopic *t, const char *payload, size_t plen, int is_json,
                 struct bus_pos *pos) {
  struct lmsg *m = malloc(sizeof(*m) + plen);
  if (!m) return -1;
  if (!t->epoch[0]) { /* no history: a new epoch, offsets from 1 */
    memcpy(t->epoch, t->next_epoch, sizeof(t->epoch));
    t->top = 0;
  }
  m->next = NULL;
  m->offset = ++t->top;
  m->is_json = is_json;
  m->plen = plen;
  memcpy(m->payload, payload, plen);
  if (t->tail) t->tail->next = m;
  else t->head = m;
  t->tail = m;
  t->count++;
  while (t->count > (size_t)b->env.cfg->history_size) { /* exact trimming */
    struct lmsg *old = t->head;
    t->head = old->next;
    t->count--;
    free(old);
  }
  pos->offset = m->offset;
  memcpy(pos->epoch, t->epoch, sizeof(pos->epoch));
  return 0;
}

/* Hands a message to the worker, unless a test said to lose it. */
static void deliver(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                    int is_json, const struct bus_pos *pos) {
  struct ltopic *t = find_topic(b, topic, tlen);
  if (t && t->drop) {
    t->drop--;
    return;
  }
  b->env.host.deliver(b->env.host.arg, topic, tlen, payload, plen, is_json, pos);
}

/* ---- history reads ---- */

static void free_answer(struct lread *r) {
  for (size_t i = 0; i < r->count; i++) free((char *)r->msgs[i].payload);
  free(r->msgs);
  r->msgs = NULL;
  r->count = 0;
}

/* Fixes the read's answer from what the history holds now, as
 * tidings_history does: epoch ("" if none), top, oldest held, then the
 * messages after since, at most limit of them.  Returns 0 or -1 (memory). */
static int take(struct bus *b, struct lread *r) {
  const struct ltopic *t = find_topic(b, r->topic, r->tlen);
  r->taken = 1;
  r->epoch[0] = '\0';
  r->top = r->first = 0;
  r->count = 0;
  r->msgs = NULL;
  if (!t || !t->epoch[0]) return 0;
  memcpy(r->epoch, t->epoch, sizeof(r->epoch));
  r->top = t->top;
  r->first = t->head ? t->head->offset : 0;
  if (r->limit == 0 || r->since >= t->top) return 0;
  size_t n = 0;
  for (const struct lmsg *m = t->head; m && n < r->limit; m = m->next)
    if (m->offset > r->since) n++;
  if (!n) return 0;
  if (!(r->msgs = calloc(n, sizeof(*r->msgs)))) return -1;
  for (const struct lmsg *m = t->head; m && r->count < n; m = m->next) {
    if (m->offset <= r->since) continue;
    char *p = malloc(m->plen ? m->plen : 1);
    if (!p) {
      free_answer(r);
      return -1;
    }
    memcpy(p, m->payload, m->plen);
    r->msgs[r->count++] = (struct bus_msg){m->offset, p, m->plen};
  }
  return 0;
}

static void answer_read(struct bus *b, struct lread *r, int err) {
  if (err == BUS_OK && !r->taken && take(b, r) < 0) err = BUS_EUNAVAILABLE;
  struct bus_history h = {r->epoch, r->top, r->first, r->count, r->msgs};
  b->env.host.history(b->env.host.arg, r->req, err, err == BUS_OK ? &h : NULL);
  free_answer(r);
  free(r);
}

/* Answers the reads that may be answered now, oldest first; reads the
 * answers make go to the next turn. */
static void answer_reads(struct bus *b) {
  struct lread *ready = NULL, **rtail = &ready;
  for (struct lread **p = &b->reads; *p;) {
    struct lread *r = *p;
    if (b->hold && !r->released) {
      p = &r->next;
      continue;
    }
    *p = r->next;
    r->next = NULL;
    *rtail = r;
    rtail = &r->next;
  }
  b->reads_tail = &b->reads;
  while (*b->reads_tail) b->reads_tail = &(*b->reads_tail)->next;
  while (ready) {
    struct lread *r = ready;
    ready = r->next;
    b->nwaiting--;
    int err = BUS_OK;
    if (b->fail) {
      b->fail--;
      err = BUS_EUNAVAILABLE;
    }
    answer_read(b, r, err);
  }
}

/* ---- the topics with subscribers: this worker's ---- */

struct names {
  struct bus_name *v;
  size_t n, cap;
  int failed;
};

static void add_name(void *arg, const char *topic, size_t tlen) {
  struct names *ns = arg;
  if (ns->failed) return;
  if (ns->n == ns->cap) {
    size_t cap = ns->cap ? 2 * ns->cap : 16;
    struct bus_name *v = realloc(ns->v, cap * sizeof(*v));
    if (!v) {
      ns->failed = 1;
      return;
    }
    ns->v = v;
    ns->cap = cap;
  }
  ns->v[ns->n++] = (struct bus_name){topic, tlen};
}

static void answer_channels(struct bus *b, int err) {
  while (b->chans) {
    struct lchan *c = b->chans;
    b->chans = c->next;
    if (!b->chans) b->chans_tail = &b->chans;
    struct names ns = {0};
    if (err == BUS_OK) b->env.host.each_topic(b->env.host.arg, add_name, &ns);
    if (ns.failed) err = BUS_ENOMEM;
    b->env.host.channels(b->env.host.arg, c->req, err, err == BUS_OK ? ns.v : NULL,
                         err == BUS_OK ? ns.n : 0);
    free(ns.v);
    free(c);
  }
}

static void on_idle(uv_idle_t *h) {
  struct bus *b = h->data;
  uv_idle_stop(h);
  answer_all(b, BUS_OK);
  answer_reads(b);
  answer_channels(b, b->ready ? BUS_OK : BUS_EUNAVAILABLE);
}

static void on_closed(uv_handle_t *h) { free(h->data); }

void bus_free(struct bus *b) {
  if (!b) return;
  b->closing = 1;
  answer_all(b, BUS_EUNAVAILABLE);
  answer_channels(b, BUS_EUNAVAILABLE);
  while (b->reads) {
    struct lread *r = b->reads;
    b->reads = r->next;
    b->nwaiting--;
    answer_read(b, r, BUS_EUNAVAILABLE);
  }
  b->reads_tail = &b->reads;
  while (b->topics) {
    struct ltopic *t = b->topics;
    b->topics = t->next;
    forget_msgs(t);
    free(t);
  }
  uv_close((uv_handle_t *)&b->idle, on_closed);
}

/* The acknowledgement of a publish, answered on the next turn once
 * pushed; NULL when out of memory. */
static struct done *new_done(struct bus *b, void *req) {
  /* an idle handle that runs with nothing to answer is harmless */
  if (uv_idle_start(&b->idle, on_idle) != 0) return NULL;
  struct done *d = malloc(sizeof(*d));
  if (!d) return NULL;
  d->req = req;
  d->next = NULL;
  d->has_pos = 0;
  d->pos = (struct bus_pos){0};
  return d;
}

static void push_done(struct bus *b, struct done *d) {
  *b->tail = d;
  b->tail = &d->next;
}

int bus_publish(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                int keep, void *req) {
  if (!b->ready) return BUS_EUNAVAILABLE;
  struct done *d = new_done(b, req);
  if (!d) return BUS_ENOMEM;
  if (keep && keeps_history(b)) {
    /* stored, given its offset and delivered in one step (tidings_publish) */
    struct ltopic *t = get_topic(b, topic, tlen);
    if (!t || store(b, t, payload, plen, 1, &d->pos) < 0) {
      free(d);
      return BUS_ENOMEM;
    }
    d->has_pos = 1;
  }
  struct bus_pos pos = d->pos;
  int has_pos = d->has_pos;
  push_done(b, d);
  deliver(b, topic, tlen, payload, plen, 1, has_pos ? &pos : NULL);
  return BUS_OK;
}

int bus_history(struct bus *b, const char *topic, size_t tlen, uint64_t since, size_t limit,
                void *req) {
  if (!keeps_history(b) || !b->ready || b->closing) return BUS_EUNAVAILABLE;
  if (uv_idle_start(&b->idle, on_idle) != 0) return BUS_ENOMEM;
  struct lread *r = calloc(1, sizeof(*r) + tlen + 1);
  if (!r) return BUS_ENOMEM;
  r->req = req;
  r->since = since;
  r->limit = limit;
  r->tlen = tlen;
  memcpy(r->topic, topic, tlen);
  *b->reads_tail = r;
  b->reads_tail = &r->next;
  b->nreads++;
  b->nwaiting++;
  b->last_since = since;
  b->last_limit = limit;
  return BUS_OK;
}

/* One worker on the bus: every control message is for it. */
int bus_control(struct bus *b, const char *to, const char *msg, size_t len, void *req) {
  if (!b->ready) return BUS_EUNAVAILABLE;
  if (to && strcmp(to, LOCAL_INBOX) != 0) return BUS_OK; /* nobody there: lost, as on Redis */
  struct done *d = NULL;
  if (req) {
    if (!(d = new_done(b, req))) return BUS_ENOMEM;
    push_done(b, d);
  }
  b->env.host.control(b->env.host.arg, msg, len);
  return BUS_OK;
}

const char *bus_inbox(const struct bus *b) {
  (void)b;
  return LOCAL_INBOX;
}

int bus_channels(struct bus *b, void *req) {
  if (!b->ready || b->closing) return BUS_EUNAVAILABLE;
  if (uv_idle_start(&b->idle, on_idle) != 0) return BUS_ENOMEM;
  struct lchan *c = malloc(sizeof(*c));
  if (!c) return BUS_ENOMEM;
  c->req = req;
  c->next = NULL;
  *b->chans_tail = c;
  b->chans_tail = &c->next;
  return BUS_OK;
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

/* ---- test controls ---- */

void bus_local_set_ready(struct bus *b, int ready) { b->ready = ready; }

size_t bus_local_topics(const struct bus *b) { return b->subscribed; }

void bus_local_drop(struct bus *b, const char *topic, unsigned n) {
  struct ltopic *t = get_topic(b, topic, strlen(topic));
  if (t) t->drop = n;
}

void bus_local_hold_history(struct bus *b, int hold) {
  b->hold = hold;
  if (!hold && b->reads) uv_idle_start(&b->idle, on_idle);
}

void bus_local_release_history(struct bus *b, size_t n) {
  for (struct lread *r = b->reads; r && n; r = r->next) {
    if (r->released) continue;
    r->released = 1;
    n--;
  }
  if (b->reads) uv_idle_start(&b->idle, on_idle);
}

void bus_local_fail_history(struct bus *b, size_t n) { b->fail = n; }

void bus_local_snapshot_history(struct bus *b) {
  for (struct lread *r = b->reads; r; r = r->next) {
    if (r->taken) continue;
    if (take(b, r) < 0) r->taken = 0; /* taken again when answered */
  }
}

size_t bus_local_history_reads(const struct bus *b) { return b->nreads; }

size_t bus_local_history_waiting(const struct bus *b) { return b->nwaiting; }

void bus_local_last_read(const struct bus *b, uint64_t *since, size_t *limit) {
  *since = b->last_since;
  *limit = b->last_limit;
}

static int valid_epoch(const char *e) {
  size_t n = strlen(e);
  if (n == 0 || n > BUS_EPOCH_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = e[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
      return 0;
  }
  return 1;
}

int bus_local_new_epoch(struct bus *b, const char *topic, const char *epoch) {
  if (!valid_epoch(epoch)) return -1;
  struct ltopic *t = get_topic(b, topic, strlen(topic));
  if (!t) return -1;
  forget_msgs(t);
  t->epoch[0] = '\0';
  t->top = 0;
  memcpy(t->next_epoch, epoch, strlen(epoch) + 1);
  return 0;
}

uint64_t bus_local_top(const struct bus *b, const char *topic, const char **epoch) {
  const struct ltopic *t = find_topic(b, topic, strlen(topic));
  if (epoch) *epoch = t ? t->epoch : "";
  return t ? t->top : 0;
}

int bus_local_redeliver(struct bus *b, const char *topic, uint64_t offset) {
  size_t tlen = strlen(topic);
  const struct ltopic *t = find_topic(b, topic, tlen);
  if (!t) return -1;
  for (const struct lmsg *m = t->head; m; m = m->next) {
    if (m->offset != offset) continue;
    struct bus_pos pos;
    pos.offset = m->offset;
    memcpy(pos.epoch, t->epoch, sizeof(pos.epoch));
    deliver(b, topic, tlen, m->payload, m->plen, m->is_json, &pos);
    return 0;
  }
  return -1;
}

void bus_local_resynced(struct bus *b) { b->env.host.resynced(b->env.host.arg); }

int64_t bus_local_inject(struct bus *b, const char *topic, const char *payload, int keep) {
  size_t tlen = strlen(topic), plen = strlen(payload);
  if (!keep) {
    deliver(b, topic, tlen, payload, plen, 0, NULL);
    return 0;
  }
  if (!keeps_history(b)) return -1;
  struct ltopic *t = get_topic(b, topic, tlen);
  struct bus_pos pos;
  if (!t || store(b, t, payload, plen, 0, &pos) < 0) return -1;
  deliver(b, topic, tlen, payload, plen, 0, &pos);
  return (int64_t)pos.offset;
}
