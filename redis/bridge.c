/* The Redis bus: joins the workers of this host and of every other host
 * through Redis Pub/Sub.
 *
 * Each worker keeps two connections on its own loop (hiredis' async API
 * bound to libuv by uvadapter.c): a command connection for PUBLISH and a
 * subscriber connection that holds one SUBSCRIBE per topic with local
 * subscribers.  Both reconnect by themselves with capped, jittered backoff;
 * the subscriber re-subscribes every live topic when it comes back.  While
 * the command connection is down a publish is answered with an error at
 * once; a publish in flight when the connection drops is answered with an
 * error by hiredis' callback with a NULL reply.  Nothing is dropped
 * silently.
 *
 * hiredis 0.14 keeps one callback per channel and deletes it when the
 * UNSUBSCRIBE confirmation arrives.  A topic that is left and joined again
 * before that confirmation would lose its callback, so a SUBSCRIBE for a
 * channel whose UNSUBSCRIBE is in flight waits for the confirmation.
 */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/redisaddr.h"
#include "../worker/broadcast.h"
#include "../worker/bus.h"
#include "../worker/conn.h"
#include "../worker/proto.h"
#include "../worker/worker.h"
#include "../worker/ws.h"
#include "uvadapter.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define RESUB_BATCH 500
#define CHANNEL_MAX 256
#define CONNECT_TIMEOUT_MS 5000

struct bus;

struct rconn {
  struct bus *b;
  const char *name; /* "command" or "subscriber" */
  redisAsyncContext *ac;
  int connected;
  unsigned attempts;
  uv_timer_t retry;
  uv_getaddrinfo_t gai;
  int resolving;
};

/* A channel whose UNSUBSCRIBE has not been confirmed yet. */
struct unsub {
  struct unsub *next;
  int resubscribe; /* a local client joined again meanwhile */
  size_t len;
  char channel[];
};

struct bus {
  struct worker *w;
  struct redis_addr addr;
  char where[160];
  const char *prefix;
  size_t prefix_len;
  struct rconn cmd, sub;
  struct unsub *unsubs;
  int closing;
};

struct pending_pub {
  struct conn *c;
  char *id_json;
  size_t tlen;
  char topic[];
};

static void rconn_start(struct rconn *rc);
static void on_retry(uv_timer_t *t);

static void retry_later(struct rconn *rc) {
  if (rc->b->closing) return;
  uint64_t d = BACKOFF_MIN_MS;
  for (unsigned i = 0; i < rc->attempts && d < BACKOFF_MAX_MS; i++) d *= 2;
  if (d > BACKOFF_MAX_MS) d = BACKOFF_MAX_MS;
  d = d / 2 + (uint64_t)rand() % (d / 2 + 1); /* jitter: [d/2, d] */
  rc->attempts++;
  uv_timer_start(&rc->retry, on_retry, d, 0);
}

static void free_unsubs(struct bus *b) {
  while (b->unsubs) {
    struct unsub *u = b->unsubs;
    b->unsubs = u->next;
    free(u);
  }
}

/* ---- subscriber side ---- */

static size_t channel_of(const struct bus *b, const char *topic, size_t tlen, char *out) {
  memcpy(out, b->prefix, b->prefix_len);
  memcpy(out + b->prefix_len, topic, tlen);
  return b->prefix_len + tlen;
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv);

static void send_subscribe(struct bus *b, const char *channel, size_t len) {
  const char *argv[2] = {"SUBSCRIBE", channel};
  size_t lens[2] = {9, len};
  redisAsyncCommandArgv(b->sub.ac, on_sub_reply, b, 2, argv, lens);
}

static struct unsub *find_unsub(struct bus *b, const char *channel, size_t len, struct unsub ***pp) {
  for (struct unsub **p = &b->unsubs; *p; p = &(*p)->next) {
    if ((*p)->len == len && memcmp((*p)->channel, channel, len) == 0) {
      if (pp) *pp = p;
      return *p;
    }
  }
  return NULL;
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct bus *b = priv;
  redisReply *reply = r;
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
  redisReply *kind = reply->element[0], *chan = reply->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING) return;
  if (strcmp(kind->str, "message") == 0) {
    redisReply *msg = reply->element[2];
    if (msg->type != REDIS_REPLY_STRING || (size_t)chan->len < b->prefix_len) return;
    if ((size_t)msg->len > b->w->cfg->max_message_size) {
      log_warn("bus_message_dropped", "dropping a %zu-byte message on channel %.*s: over --max-message-size",
               (size_t)msg->len, (int)chan->len, chan->str);
      return;
    }
    metric_add(b->w->m, M_BUS_MESSAGES, 1);
    broadcast(b->w, chan->str + b->prefix_len, (size_t)chan->len - b->prefix_len, msg->str,
              (size_t)msg->len, 0);
  } else if (strcmp(kind->str, "unsubscribe") == 0) {
    struct unsub **pp;
    struct unsub *u = find_unsub(b, chan->str, (size_t)chan->len, &pp);
    if (!u) return;
    *pp = u->next;
    if (u->resubscribe && b->sub.connected) send_subscribe(b, u->channel, u->len);
    free(u);
  }
}

void bus_topic_first(void *arg, const struct topic *t) {
  struct bus *b = arg;
  if (!b->sub.connected) return; /* subscribed on (re)connect */
  char ch[CHANNEL_MAX];
  size_t n = channel_of(b, t->name, t->len, ch);
  struct unsub *u = find_unsub(b, ch, n, NULL);
  if (u) {
    u->resubscribe = 1;
    return;
  }
  send_subscribe(b, ch, n);
}

void bus_topic_last(void *arg, const struct topic *t) {
  struct bus *b = arg;
  if (!b->sub.connected) return;
  char ch[CHANNEL_MAX];
  size_t n = channel_of(b, t->name, t->len, ch);
  struct unsub *u = find_unsub(b, ch, n, NULL);
  if (u) {
    u->resubscribe = 0;
    return;
  }
  u = malloc(sizeof(*u) + n);
  if (!u) return;
  u->resubscribe = 0;
  u->len = n;
  memcpy(u->channel, ch, n);
  u->next = b->unsubs;
  b->unsubs = u;
  const char *argv[2] = {"UNSUBSCRIBE", ch};
  size_t lens[2] = {11, n};
  redisAsyncCommandArgv(b->sub.ac, NULL, NULL, 2, argv, lens);
}

struct resub {
  struct bus *b;
  const char *argv[RESUB_BATCH + 1];
  size_t lens[RESUB_BATCH + 1];
  char *bufs[RESUB_BATCH + 1];
  int n;
};

static void resub_flush(struct resub *r) {
  if (r->n == 0) return;
  r->argv[0] = "SUBSCRIBE";
  r->lens[0] = 9;
  redisAsyncCommandArgv(r->b->sub.ac, on_sub_reply, r->b, r->n + 1, r->argv, r->lens);
  for (int i = 1; i <= r->n; i++) free(r->bufs[i]);
  r->n = 0;
}

static void resub_one(void *arg, const struct topic *t) {
  struct resub *r = arg;
  char *ch = malloc(r->b->prefix_len + t->len);
  if (!ch) return;
  size_t n = channel_of(r->b, t->name, t->len, ch);
  r->n++;
  r->argv[r->n] = ch;
  r->lens[r->n] = n;
  r->bufs[r->n] = ch;
  if (r->n == RESUB_BATCH) resub_flush(r);
}

static void resubscribe_all(struct bus *b) {
  struct resub *r = calloc(1, sizeof(*r));
  if (!r) return;
  r->b = b;
  topics_each(&b->w->topics, resub_one, r);
  resub_flush(r);
  if (b->w->topics.ntopics)
    log_info("redis_resubscribed", "re-subscribed %zu topic(s) on Redis", b->w->topics.ntopics);
  free(r);
}

/* ---- connections ---- */

static void on_auth(redisAsyncContext *ac, void *r, void *priv) {
  redisReply *reply = r;
  struct rconn *rc = priv;
  if (reply && reply->type == REDIS_REPLY_ERROR) {
    log_error("redis_auth_failed", "Redis %s connection: AUTH failed: %s", rc->name, reply->str);
    redisAsyncDisconnect(ac);
  }
}

static void on_connect_timeout(uv_timer_t *t) {
  struct rconn *rc = t->data;
  if (rc->connected || !rc->ac) return;
  log_warn("redis_connect_timeout", "Redis %s connection to %s: no answer within %d ms", rc->name, rc->b->where,
           CONNECT_TIMEOUT_MS);
  redisAsyncContext *ac = rc->ac;
  rc->ac = NULL;
  redisAsyncFree(ac); /* not connected: no callback comes back */
  retry_later(rc);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct rconn *rc = ac->data;
  uv_timer_stop(&rc->retry);
  if (status != REDIS_OK) {
    if (rc->attempts < 2 || rc->attempts % 10 == 0)
      log_warn("redis_connect_failed", "Redis %s connection to %s failed: %s", rc->name, rc->b->where, ac->errstr);
    rc->ac = NULL; /* hiredis frees it after this callback */
    retry_later(rc);
    return;
  }
  rc->connected = 1;
  if (rc->attempts > 0) {
    log_info("redis_restored", "Redis %s connection to %s restored", rc->name, rc->b->where);
    metric_add(rc->b->w->m, M_REDIS_RECONNECTS, 1);
  }
  else log_info("redis_up", "Redis %s connection to %s up", rc->name, rc->b->where);
  rc->attempts = 0;
  metric_gauge(rc->b->w->m, G_REDIS_CONNECTED, bus_ready(rc->b));
  if (rc == &rc->b->sub) resubscribe_all(rc->b);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  struct rconn *rc = ac->data;
  (void)status;
  rc->ac = NULL;
  int was = rc->connected;
  rc->connected = 0;
  if (rc->b->w->m) metric_gauge(rc->b->w->m, G_REDIS_CONNECTED, 0);
  if (rc == &rc->b->sub) free_unsubs(rc->b);
  if (rc->b->closing) return;
  if (was) log_warn("redis_lost", "Redis %s connection to %s lost: %s", rc->name, rc->b->where,
                    ac->errstr[0] ? ac->errstr : "closed");
  retry_later(rc);
}

static void attach(struct rconn *rc, redisAsyncContext *ac) {
  if (!ac || ac->err) {
    log_warn("redis_connect_failed", "Redis %s connection to %s failed: %s", rc->name, rc->b->where,
             ac ? ac->errstr : "out of memory");
    if (ac) redisAsyncFree(ac);
    retry_later(rc);
    return;
  }
  ac->data = rc;
  if (uvadapter_attach(ac, rc->b->w->loop) != 0) {
    redisAsyncFree(ac);
    retry_later(rc);
    return;
  }
  rc->ac = ac;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  const struct redis_addr *a = &rc->b->addr;
  if (a->password[0]) {
    if (a->user[0]) redisAsyncCommand(ac, on_auth, rc, "AUTH %s %s", a->user, a->password);
    else redisAsyncCommand(ac, on_auth, rc, "AUTH %s", a->password);
  }
  if (rc == &rc->b->cmd && a->db) redisAsyncCommand(ac, NULL, NULL, "SELECT %d", a->db);
  /* hiredis 0.14 learns that a non-blocking connect finished (or failed)
   * from the first write event, which only a queued command asks for */
  redisAsyncCommand(ac, NULL, NULL, "PING");
  /* a connect that hangs (no answer to SYN) is abandoned after a while */
  uv_timer_start(&rc->retry, on_connect_timeout, CONNECT_TIMEOUT_MS, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct rconn *rc = req->data;
  rc->resolving = 0;
  if (rc->b->closing) {
    uv_freeaddrinfo(res);
    return;
  }
  if (status != 0 || !res) {
    log_warn("redis_resolve_failed", "Redis host %s: %s", rc->b->addr.host, uv_strerror(status));
    uv_freeaddrinfo(res);
    retry_later(rc);
    return;
  }
  char ip[64] = "";
  if (res->ai_family == AF_INET) uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
  else uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof(ip));
  uv_freeaddrinfo(res);
  attach(rc, redisAsyncConnect(ip, rc->b->addr.port));
}

static void rconn_start(struct rconn *rc) {
  if (rc->b->closing || rc->ac || rc->resolving) return;
  if (rc->b->addr.is_unix) {
    attach(rc, redisAsyncConnectUnix(rc->b->addr.path));
    return;
  }
  /* resolve on the thread pool: the loop never blocks on DNS */
  struct addrinfo hints = {0};
  hints.ai_socktype = SOCK_STREAM;
  rc->gai.data = rc;
  rc->resolving = 1;
  if (uv_getaddrinfo(rc->b->w->loop, &rc->gai, on_resolved, rc->b->addr.host, NULL, &hints) != 0) {
    rc->resolving = 0;
    retry_later(rc);
  }
}

static void on_retry(uv_timer_t *t) { rconn_start(t->data); }

/* ---- the bus interface ---- */

struct bus *bus_new(struct worker *w) {
  struct bus *b = calloc(1, sizeof(*b));
  if (!b) return NULL;
  b->w = w;
  char err[256];
  if (redis_addr_parse(w->cfg->redis, &b->addr, err, sizeof(err)) < 0) {
    log_error("redis_config_failed", "%s", err);
    free(b);
    return NULL;
  }
  redis_addr_describe(&b->addr, b->where, sizeof(b->where));
  b->prefix = w->cfg->redis_prefix;
  b->prefix_len = strlen(b->prefix);
  struct rconn *rcs[2] = {&b->cmd, &b->sub};
  const char *names[2] = {"command", "subscriber"};
  for (int i = 0; i < 2; i++) {
    rcs[i]->b = b;
    rcs[i]->name = names[i];
    uv_timer_init(w->loop, &rcs[i]->retry);
    rcs[i]->retry.data = rcs[i];
  }
  srand((unsigned)uv_hrtime() ^ (unsigned)w->id);
  rconn_start(&b->cmd);
  rconn_start(&b->sub);
  return b;
}

void bus_free(struct bus *b) {
  if (!b) return;
  b->closing = 1;
  if (b->cmd.ac) redisAsyncFree(b->cmd.ac);
  if (b->sub.ac) redisAsyncFree(b->sub.ac);
  if (b->cmd.resolving) uv_cancel((uv_req_t *)&b->cmd.gai);
  if (b->sub.resolving) uv_cancel((uv_req_t *)&b->sub.gai);
  uv_close((uv_handle_t *)&b->cmd.retry, NULL);
  uv_close((uv_handle_t *)&b->sub.retry, NULL);
  free_unsubs(b);
  /* the timers' memory is in b: let their close callbacks run first */
  uv_run(b->w->loop, UV_RUN_NOWAIT);
  free(b);
}

int bus_ready(const struct bus *b) { return b && b->cmd.connected && b->sub.connected; }

const char *bus_not_ready_reason(const struct bus *b) {
  if (!b) return "no Redis bus";
  if (!b->cmd.connected && !b->sub.connected) return "Redis not connected";
  if (!b->cmd.connected) return "Redis command connection down";
  if (!b->sub.connected) return "Redis subscriber connection down";
  return "ready";
}

static void on_published(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct pending_pub *p = priv;
  redisReply *reply = r;
  struct conn *c = p->c;
  if (ws_can_send(c)) {
    if (reply && reply->type == REDIS_REPLY_INTEGER)
      proto_reply_status(&ws_proto_ops, c, "published", p->topic, p->tlen, p->id_json);
    else
      proto_reply_error(&ws_proto_ops, c, PROTO_EBUS, p->topic, p->tlen, p->id_json);
  }
  metric_add(c->w->m, reply && reply->type == REDIS_REPLY_INTEGER ? M_PUBLISHES : M_PUBLISH_ERRORS, 1);
  conn_unref(c);
  free(p->id_json);
  free(p);
}

int bus_publish(struct bus *b, struct conn *c, const char *topic, size_t tlen,
                const char *payload, size_t plen, const char *id_json) {
  if (!b->cmd.connected) {
    metric_add(b->w->m, M_PUBLISH_ERRORS, 1);
    return PROTO_EBUS;
  }
  struct pending_pub *p = malloc(sizeof(*p) + tlen);
  if (!p) return PROTO_EINTERNAL;
  p->c = c;
  p->tlen = tlen;
  memcpy(p->topic, topic, tlen);
  p->id_json = id_json ? strdup(id_json) : NULL;
  char ch[CHANNEL_MAX];
  size_t n = channel_of(b, topic, tlen, ch);
  const char *argv[3] = {"PUBLISH", ch, payload};
  size_t lens[3] = {7, n, plen};
  conn_ref(c);
  if (redisAsyncCommandArgv(b->cmd.ac, on_published, p, 3, argv, lens) != REDIS_OK) {
    conn_unref(c);
    free(p->id_json);
    free(p);
    return PROTO_EBUS;
  }
  return PROTO_PENDING;
}
