#include "recovery.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/sbuf.h"
#include "../common/topic.h"
#include "broadcast.h"
#include "bus.h"
#include "conn.h"
#include "proto.h"
#include "pubsub.h"
#include "topics.h"
#include "worker.h"
#include "ws.h"

_Static_assert(PROTO_EPOCH_MAX == BUS_EPOCH_MAX,
               "epochs of the protocol and of the bus have one size");

/* Live messages a topic keeps while it catches up; past this the catch-up
 * gives up waiting and delivers them (the gap stays, visible in offsets). */
#define HELD_MAX 10000
#define EXTRA_MAX 128 /* "recovered":false,"epoch":"<32>","offset":<20> */

/* A live message that arrived while its topic was catching up. */
struct held_msg {
  struct held_msg *next;
  struct bus_pos pos;
  int is_json;
  size_t plen;
  char payload[];
};

struct catchup;

/* t->ext of a topic with history. */
struct topic_hist {
  struct worker *w;
  struct topic *t;
  uint64_t last;                 /* offset of the newest message delivered here */
  char epoch[BUS_EPOCH_MAX + 1]; /* "" until the first message or read */
  struct catchup *reading;       /* the catch-up read in flight, or NULL */
  int stalled;                   /* a catch-up could not be read: retried each tick */
  struct held_msg *held, **held_tail;
  size_t nheld;
};

/* A live frame a resuming subscription keeps until its history is out. */
struct held_frame {
  struct held_frame *next;
  struct sbuf *f;
  uint64_t offset;
  char epoch[BUS_EPOCH_MAX + 1]; /* the topic's epoch when it came */
};

struct catchup {
  struct bus_call call;  /* first: the bus hands it back */
  struct topic_hist *th; /* NULL once the topic is gone */
};

/* A subscribe waiting for the topic's history (s->ext while it waits). */
struct resume {
  struct bus_call call; /* first: the bus hands it back */
  struct conn *c;       /* holds a reference */
  struct sub *s;        /* NULL once the subscription is gone */
  int existing;         /* a subscribe to a topic already subscribed: reply only */
  size_t tlen;
  char topic[TOPIC_MAX_LEN + 1];
  int has_since;
  struct proto_since since;
  char *id_json;
  struct held_frame *frames, **frames_tail;
  size_t held_bytes;
};

/* A history request of a client. */
struct query {
  struct bus_call call; /* first: the bus hands it back */
  struct conn *c;       /* holds a reference */
  char *id_json;
  size_t tlen;
  char topic[];
};

static void on_catchup(struct bus_call *call, int err, const struct bus_history *h);
static void on_subscribe_read(struct bus_call *call, int err, const struct bus_history *h);
static void on_query(struct bus_call *call, int err, const struct bus_history *h);

int recovery_keeps(const struct worker *w, const char *topic, size_t tlen) {
  return w->cfg->history_size > 0 && topic_match_list(w->cfg->history_topics, topic, tlen);
}

/* ---- topic level ---- */

static void drop_held(struct topic_hist *th) {
  while (th->held) {
    struct held_msg *m = th->held;
    th->held = m->next;
    free(m);
  }
  th->held_tail = &th->held;
  th->nheld = 0;
}

int recovery_topic_start(struct worker *w, struct topic *t) {
  if (!recovery_keeps(w, t->name, t->len)) return 0;
  struct topic_hist *th = calloc(1, sizeof(*th));
  if (!th) return -1;
  th->w = w;
  th->t = t;
  th->held_tail = &th->held;
  t->ext = th;
  return 0;
}

void recovery_topic_end(struct topic *t) {
  struct topic_hist *th = t->ext;
  if (!th) return;
  if (th->reading) th->reading->th = NULL; /* the answer finds no one */
  if (th->stalled) th->w->history_stalled--;
  drop_held(th);
  free(th);
  t->ext = NULL;
}

/* Subscriptions that were sent history up to some offset skip frames at or
 * below it; in a new epoch offsets start again. */
static void forget_seen(struct topic *t) {
  for (struct sub *s = t->subs; s; s = s->tnext) s->seen = 0;
}

static void start_catchup(struct topic_hist *th, uint64_t upto);

/* 1 when the message is ahead of the next offset: some are missing here. */
static int is_gap(const struct topic_hist *th, const struct bus_pos *pos) {
  return th->epoch[0] && strcmp(th->epoch, pos->epoch) == 0 && pos->offset > th->last + 1;
}

/* Delivers a message whose turn it is (or whose gap cannot be filled). */
static void deliver_now(struct topic_hist *th, const char *payload, size_t plen, int is_json,
                        const struct bus_pos *pos) {
  if (strcmp(th->epoch, pos->epoch) != 0) {
    /* a new epoch (or the first message seen here): what came before is
     * not comparable; history of the old epoch is gone */
    if (th->epoch[0])
      log_info("history_epoch_changed", "topic %s: history epoch %s -> %s", th->t->name, th->epoch,
               pos->epoch);
    memcpy(th->epoch, pos->epoch, sizeof(th->epoch));
    forget_seen(th->t);
  } else if (pos->offset <= th->last) {
    metric_add(th->w->m, M_HISTORY_DUPLICATES, 1);
    return;
  } else if (pos->offset > th->last + 1) {
    log_warn("history_gap", "topic %s: offsets %llu..%llu could not be read from history",
             th->t->name, (unsigned long long)th->last + 1, (unsigned long long)pos->offset - 1);
  }
  th->last = pos->offset;
  broadcast(th->w, th->t, payload, plen, is_json, pos);
}

static int hold(struct topic_hist *th, const char *payload, size_t plen, int is_json,
                const struct bus_pos *pos) {
  if (th->nheld >= HELD_MAX) return -1;
  struct held_msg *m = malloc(sizeof(*m) + plen);
  if (!m) return -1;
  m->next = NULL;
  m->pos = *pos;
  m->is_json = is_json;
  m->plen = plen;
  memcpy(m->payload, payload, plen);
  *th->held_tail = m;
  th->held_tail = &m->next;
  th->nheld++;
  return 0;
}

static struct held_msg *pop_held(struct topic_hist *th) {
  struct held_msg *m = th->held;
  th->held = m->next;
  if (!th->held) th->held_tail = &th->held;
  th->nheld--;
  return m;
}

/* Delivers what waits, in arrival order, until a gap starts a read. */
static void release_held(struct topic_hist *th) {
  while (th->held && !th->reading && !th->stalled) {
    if (is_gap(th, &th->held->pos)) {
      start_catchup(th, th->held->pos.offset);
      if (th->reading || th->stalled) return;
    }
    struct held_msg *m = pop_held(th);
    deliver_now(th, m->payload, m->plen, m->is_json, &m->pos);
    free(m);
  }
}

static void stall(struct topic_hist *th) {
  if (th->stalled) return;
  th->stalled = 1;
  th->w->history_stalled++;
}

/* Reads what is missing before offset upto; sets th->reading when the
 * read went out, or th->stalled when it could not (the bus is down): the
 * messages wait, and the worker's tick tries again. */
static void start_catchup(struct topic_hist *th, uint64_t upto) {
  if (th->reading) return;
  struct catchup *r = malloc(sizeof(*r));
  if (!r) {
    stall(th);
    return;
  }
  r->call.history = on_catchup;
  r->th = th;
  uint64_t missing = upto - th->last - 1;
  size_t limit = missing < (uint64_t)th->w->cfg->history_size ? (size_t)missing
                                                              : (size_t)th->w->cfg->history_size;
  if (bus_history(th->w->bus, th->t->name, th->t->len, th->last, limit, &r->call) != BUS_OK) {
    free(r);
    stall(th);
    return;
  }
  metric_add(th->w->m, M_HISTORY_CATCHUPS, 1);
  th->reading = r;
}

static void on_catchup(struct bus_call *call, int err, const struct bus_history *h) {
  struct catchup *r = (struct catchup *)call;
  struct topic_hist *th = r->th;
  free(r);
  if (!th) return;
  th->reading = NULL;
  if (err != BUS_OK) { /* Redis is not there now: wait, and try again */
    stall(th);
    return;
  }
  if (strcmp(h->epoch, th->epoch) == 0) {
    for (size_t i = 0; i < h->count; i++) {
      const struct bus_msg *m = &h->msgs[i];
      if (m->offset <= th->last) continue;
      th->last = m->offset;
      struct bus_pos mp = {.offset = m->offset};
      memcpy(mp.epoch, th->epoch, sizeof(mp.epoch));
      broadcast(th->w, th->t, m->payload, m->plen, 0, &mp);
    }
  }
  /* What the history no longer holds (trimmed, another epoch) is lost for
   * the live subscribers here: the jump in offsets shows it; go on. */
  if (th->held && is_gap(th, &th->held->pos)) {
    struct held_msg *m = pop_held(th);
    deliver_now(th, m->payload, m->plen, m->is_json, &m->pos);
    free(m);
  }
  release_held(th);
}

void recovery_deliver(struct worker *w, const char *topic, size_t tlen, const char *payload,
                      size_t plen, int is_json, const struct bus_pos *pos) {
  struct topic *t = topics_find(&w->topics, topic, tlen);
  if (!t) return;
  struct topic_hist *th = t->ext;
  if (!pos || !th) {
    broadcast(w, t, payload, plen, is_json, pos);
    return;
  }
  if (!th->reading && !th->stalled && !is_gap(th, pos)) {
    deliver_now(th, payload, plen, is_json, pos);
    return;
  }
  if (hold(th, payload, plen, is_json, pos) == 0) {
    release_held(th); /* starts the read when none is out */
    return;
  }
  /* too much waits (or no memory): stop waiting, deliver with the gap */
  log_warn("history_catchup_overflow", "topic %s: too much arrived while catching up", th->t->name);
  if (th->reading) th->reading->th = NULL;
  th->reading = NULL;
  if (th->stalled) {
    th->stalled = 0;
    w->history_stalled--;
  }
  while (th->held) {
    struct held_msg *m = pop_held(th);
    deliver_now(th, m->payload, m->plen, m->is_json, &m->pos);
    free(m);
  }
  deliver_now(th, payload, plen, is_json, pos);
}

static void catchup_one(void *arg, const struct topic *t) {
  (void)arg;
  struct topic_hist *th = t->ext;
  if (!th || !th->epoch[0] || th->reading || th->stalled) return;
  /* everything after the last offset delivered here, up to the window */
  start_catchup(th, th->last + (uint64_t)th->w->cfg->history_size + 1);
}

void recovery_resynced(struct worker *w) {
  if (w->cfg->history_size > 0) topics_each(&w->topics, catchup_one, NULL);
}

static void retry_one(void *arg, const struct topic *t) {
  (void)arg;
  struct topic_hist *th = t->ext;
  if (!th || !th->stalled) return;
  th->stalled = 0;
  th->w->history_stalled--;
  uint64_t upto =
      th->held ? th->held->pos.offset : th->last + (uint64_t)th->w->cfg->history_size + 1;
  start_catchup(th, upto);
  if (!th->stalled) release_held(th);
}

void recovery_tick(struct worker *w) {
  if (w->history_stalled) topics_each(&w->topics, retry_one, NULL);
}

/* ---- subscription level ---- */

void recovery_hold(struct sub *s, struct sbuf *f, uint64_t offset) {
  struct resume *r = s->ext;
  if (r->held_bytes > r->c->w->cfg->max_queued_bytes) return; /* closed when answered */
  struct held_frame *h = malloc(sizeof(*h));
  if (!h) {
    r->held_bytes = SIZE_MAX;
    return;
  }
  h->next = NULL;
  h->f = sbuf_ref(f);
  h->offset = offset;
  const struct topic_hist *th = s->topic->ext;
  if (th) memcpy(h->epoch, th->epoch, sizeof(h->epoch));
  else h->epoch[0] = '\0';
  *r->frames_tail = h;
  r->frames_tail = &h->next;
  r->held_bytes += f->len;
}

static void drop_frames(struct resume *r) {
  while (r->frames) {
    struct held_frame *h = r->frames;
    r->frames = h->next;
    sbuf_unref(h->f);
    free(h);
  }
  r->frames_tail = &r->frames;
}

void recovery_sub_gone(struct sub *s) {
  struct resume *r = s->ext;
  s->ext = NULL;
  r->s = NULL;
  drop_frames(r);
}

int recovery_subscribe(struct conn *c, struct sub *s, const struct proto_since *since,
                       const char *id_json, int existing) {
  if (existing && s->ext) return PROTO_OK; /* its first answer is still coming */
  struct resume *r = calloc(1, sizeof(*r));
  if (!r) return PROTO_EINTERNAL;
  r->call.history = on_subscribe_read;
  r->existing = existing;
  r->c = c;
  r->s = s;
  r->tlen = s->topic->len;
  memcpy(r->topic, s->topic->name, s->topic->len + 1);
  r->frames_tail = &r->frames;
  if (since) {
    r->has_since = 1;
    r->since = *since;
  }
  if (id_json && !(r->id_json = strdup(id_json))) {
    free(r);
    return PROTO_EINTERNAL;
  }
  /* a plain subscribe only needs the epoch and the newest offset; a live
   * subscription has had (or is being sent) everything since: no replay */
  size_t limit = since && !existing ? (size_t)c->w->cfg->history_size : 0;
  int rc = bus_history(c->w->bus, s->topic->name, s->topic->len, since ? since->offset : 0, limit,
                       &r->call);
  if (rc != BUS_OK) {
    free(r->id_json);
    free(r);
    return rc == BUS_ENOMEM ? PROTO_EINTERNAL : PROTO_EBUS;
  }
  conn_ref(c);
  if (!existing) s->ext = r; /* it holds its live frames until the answer */
  else r->s = NULL;
  return PROTO_PENDING;
}

static void send_frame_to(struct conn *c, struct sub *s, struct sbuf *f, uint64_t offset) {
  if (offset && offset > s->seen) s->seen = offset;
  if (conn_send_ref(c, f) == 0) metric_add(c->w->m, M_DELIVERIES, 1);
}

/* Whether a resume from r->since can be served by h, and the reply's
 * members ("recovered" only for a resume). */
static int describe(const struct resume *r, const struct bus_history *h, char extra[EXTRA_MAX]) {
  int recovered = 0;
  if (r->has_since) {
    const struct proto_since *sn = &r->since;
    recovered = strcmp(sn->epoch, h->epoch) == 0 && sn->offset <= h->top &&
                (r->existing || sn->offset == h->top || (h->first && h->first <= sn->offset + 1));
  }
  snprintf(extra, EXTRA_MAX, "%s\"epoch\":\"%s\",\"offset\":%llu",
           !r->has_since ? ""
           : recovered   ? "\"recovered\":true,"
                         : "\"recovered\":false,",
           h->epoch, (unsigned long long)h->top);
  return recovered;
}

/* The answer for a subscription that was already live: a reply, nothing else. */
static void reply_existing(struct resume *r, int err, const struct bus_history *h) {
  struct conn *c = r->c;
  if (!ws_can_send(c)) return;
  if (err != BUS_OK) {
    proto_reply_error(&ws_proto_ops, c, PROTO_EBUS, r->topic, r->tlen, r->id_json);
    return;
  }
  char extra[EXTRA_MAX];
  describe(r, h, extra);
  proto_reply_status_ext(&ws_proto_ops, c, "subscribed", r->topic, r->tlen, extra, r->id_json);
}

static void on_subscribe_read(struct bus_call *call, int err, const struct bus_history *h) {
  struct resume *r = (struct resume *)call;
  if (r->existing) reply_existing(r, err, h);
  struct conn *c = r->c;
  struct sub *s = r->s;
  if (s) { /* detach first: the subscription may outlive this answer */
    s->ext = NULL;
    r->s = NULL;
  }
  if (s && ws_can_send(c)) {
    struct topic *t = s->topic;
    if (err != BUS_OK || r->held_bytes > c->w->cfg->max_queued_bytes) {
      int overflow = err == BUS_OK;
      if (topics_unsubscribe(&c->w->topics, &c->subs, r->topic, r->tlen)) c->nsubs--;
      if (overflow)
        ws_close(c, CLOSE_TRY_AGAIN_LATER, "too much arrived while the history was read");
      else proto_reply_error(&ws_proto_ops, c, PROTO_EBUS, r->topic, r->tlen, r->id_json);
    } else {
      char extra[EXTRA_MAX];
      int recovered = describe(r, h, extra);
      proto_reply_status_ext(&ws_proto_ops, c, "subscribed", t->name, t->len, extra, r->id_json);
      metric_add(c->w->m, recovered ? M_RESUMES : M_RESUMES_FAILED, r->has_since ? 1 : 0);
      if (recovered) {
        for (size_t i = 0; i < h->count; i++) {
          const struct bus_msg *m = &h->msgs[i];
          if (m->offset <= r->since.offset) continue;
          struct bus_pos mp = {.offset = m->offset};
          snprintf(mp.epoch, sizeof(mp.epoch), "%s", h->epoch);
          struct sbuf *f = broadcast_frame_for(c, t->name, t->len, m->payload, m->plen, 0, &mp);
          if (f) send_frame_to(c, s, f, m->offset);
          sbuf_unref(f);
        }
      }
      if (h->top > s->seen) s->seen = h->top;
      /* what the topic delivered meanwhile, past what the reply covers;
       * offsets of another epoch are not comparable with the reply's */
      for (struct held_frame *hf = r->frames; hf; hf = hf->next)
        if (!hf->offset || strcmp(hf->epoch, h->epoch) != 0 || hf->offset > s->seen)
          send_frame_to(c, s, hf->f, hf->offset);
      struct topic_hist *th = t->ext;
      if (th && !th->epoch[0] && !th->reading && h->epoch[0]) {
        memcpy(th->epoch, h->epoch, sizeof(th->epoch));
        th->last = h->top;
      }
      /* broadcast() skips offsets up to s->seen: those of the topic's epoch */
      if (th && strcmp(th->epoch, h->epoch) != 0) s->seen = 0;
    }
  }
  drop_frames(r);
  conn_unref(c);
  free(r->id_json);
  free(r);
}

/* ---- history requests ---- */

int recovery_query(struct conn *c, const char *topic, size_t tlen, unsigned long long since,
                   unsigned limit, const char *id_json) {
  if (!recovery_keeps(c->w, topic, tlen)) return PROTO_ENOHISTORY;
  struct query *q = malloc(sizeof(*q) + tlen + 1);
  if (!q) return PROTO_EINTERNAL;
  q->call.history = on_query;
  q->c = c;
  q->tlen = tlen;
  memcpy(q->topic, topic, tlen);
  q->topic[tlen] = '\0';
  q->id_json = NULL;
  if (id_json && !(q->id_json = strdup(id_json))) {
    free(q);
    return PROTO_EINTERNAL;
  }
  int rc = bus_history(c->w->bus, topic, tlen, since, limit, &q->call);
  if (rc != BUS_OK) {
    free(q->id_json);
    free(q);
    return rc == BUS_ENOMEM ? PROTO_EINTERNAL : PROTO_EBUS;
  }
  conn_ref(c);
  return PROTO_PENDING;
}

char *recovery_history_json(const char *topic, size_t tlen, const struct bus_history *h,
                            const char *id_json, size_t *len) {
  size_t cap = 128 + tlen + (id_json ? strlen(id_json) : 0);
  char **payloads = calloc(h->count ? h->count : 1, sizeof(*payloads));
  size_t *plens = calloc(h->count ? h->count : 1, sizeof(*plens));
  char *out = NULL;
  if (!payloads || !plens) goto done;
  for (size_t i = 0; i < h->count; i++) {
    if (!(payloads[i] = broadcast_payload_json(h->msgs[i].payload, h->msgs[i].plen, &plens[i])))
      goto done;
    cap += plens[i] + 48;
  }
  if (!(out = malloc(cap))) goto done;
  size_t n =
      (size_t)snprintf(out, cap,
                       "{\"type\":\"history\",\"topic\":\"%.*s\",\"epoch\":\"%s\",\"offset\":%llu,"
                       "\"messages\":[",
                       (int)tlen, topic, h->epoch, (unsigned long long)h->top);
  for (size_t i = 0; i < h->count; i++) {
    n += (size_t)snprintf(out + n, cap - n, "%s{\"offset\":%llu,\"payload\":", i ? "," : "",
                          (unsigned long long)h->msgs[i].offset);
    memcpy(out + n, payloads[i], plens[i]);
    n += plens[i];
    out[n++] = '}';
  }
  out[n++] = ']';
  if (id_json) n += (size_t)snprintf(out + n, cap - n, ",\"id\":%s", id_json);
  out[n++] = '}';
  assert(n <= cap);
  *len = n;
done:
  for (size_t i = 0; payloads && i < h->count; i++) free(payloads[i]);
  free(payloads);
  free(plens);
  return out;
}

static void on_query(struct bus_call *call, int err, const struct bus_history *h) {
  struct query *q = (struct query *)call;
  struct conn *c = q->c;
  if (ws_can_send(c)) {
    size_t len;
    char *json =
        err == BUS_OK ? recovery_history_json(q->topic, q->tlen, h, q->id_json, &len) : NULL;
    if (json) ws_proto_ops.send(c, json, len);
    else
      proto_reply_error(&ws_proto_ops, c, err == BUS_OK ? PROTO_EINTERNAL : PROTO_EBUS, q->topic,
                        q->tlen, q->id_json);
    free(json);
  }
  conn_unref(c);
  free(q->id_json);
  free(q);
}
