/* The Redis bus (bus.h): joins the workers of this host and of every other
 * host through Redis Pub/Sub.
 *
 * Each worker keeps two connections on its own loop (hiredis' async API
 * bound to libuv by uvadapter.c): a command connection for PUBLISH and a
 * subscriber connection that holds one SUBSCRIBE per topic with local
 * subscribers.  Both reconnect by themselves with jittered backoff capped at
 * one second, so that publishes work again within a second of Redis coming
 * back; when one of the two comes back the other is retried at once.  The
 * subscriber re-subscribes every live topic when it comes back; if that
 * cannot be sent (memory), the connection is dropped and the whole
 * re-subscription retried, so no topic is ever left unsubscribed silently.
 *
 * While the command connection is down a publish is refused at once; a
 * publish in flight when the connection drops gets its published()
 * callback with BUS_EUNAVAILABLE from hiredis' NULL reply.  Nothing is dropped
 * silently.
 *
 * hiredis 0.14 keeps one callback per channel and deletes it when the
 * UNSUBSCRIBE confirmation arrives.  A topic that is left and joined again
 * before that confirmation would lose its callback, so a SUBSCRIBE for a
 * channel whose UNSUBSCRIBE is in flight waits for the confirmation.
 */
#include <assert.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "../common/backoff.h"
#include "../common/config.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/redisaddr.h"
#include "../worker/bus.h"
#include "bridge.h"
#include "uvadapter.h"

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 1000 /* publishes work again within a second of Redis' return */
#define CONNECT_TIMEOUT_MS 5000
#define RESUB_BATCH 500 /* channels per SUBSCRIBE when re-subscribing */

static const struct backoff reconnect_policy = {RECONNECT_MIN_MS, RECONNECT_MAX_MS, 1};

/* A channel whose UNSUBSCRIBE has not been confirmed yet. */
struct unsub {
  struct unsub *next;
  int resubscribe; /* a local client joined again meanwhile */
  size_t len;
  char channel[];
};

static void rconn_start(struct rconn *rc);
static void on_retry(uv_timer_t *t);

static void retry_later(struct rconn *rc) {
  if (rc->sh->b->closing) return;
  uint64_t d = backoff_delay(&reconnect_policy, rc->attempts, (uint32_t)rand());
  rc->attempts++;
  uv_timer_start(&rc->retry, on_retry, d, 0);
}

/* The other connection of the pair came back: Redis is there again, so a
 * connection waiting for its next try goes now. */
static void retry_now(struct rconn *rc) {
  if (rc->sh->b->closing || rc->ac || rc->resolving) return;
  uv_timer_start(&rc->retry, on_retry, 0, 0);
}

static void free_unsubs(struct shard *sh) {
  while (sh->unsubs) {
    struct unsub *u = sh->unsubs;
    sh->unsubs = u->next;
    free(u);
  }
}

/* The worker's gauges: G_REDIS_CONNECTED is 1 while at least one shard is
 * ready (its topics work), and each shard has its own. */
void bridge_gauge(struct bus *b) {
  for (unsigned i = 0; i < b->nshards; i++)
    metric_shard(b->env.m, i, bridge_shard_ready(&b->shards[i]));
  metric_gauge(b->env.m, G_REDIS_CONNECTED, bus_ready(b));
}

static void set_gauge(struct shard *sh) { bridge_gauge(sh->b); }

/* ---- subscriber side ---- */

size_t bridge_channel(const struct bus *b, const char *topic, size_t tlen, char *out) {
  assert(tlen <= TOPIC_MAX_LEN && b->prefix_len <= REDIS_PREFIX_MAX_LEN);
  memcpy(out, b->prefix, b->prefix_len);
  memcpy(out + b->prefix_len, topic, tlen);
  return b->prefix_len + tlen;
}

struct shard *bridge_shard(struct bus *b, const char *topic, size_t tlen) {
  return &b->shards[shard_of(topic, tlen, b->nshards)];
}

/* The subscriber connection cannot hold what it should (a command could not
 * be queued): drop it, so that the reconnect re-subscribes every topic. */
static void sub_reset(struct shard *sh, const char *what) {
  log_error("redis_subscribe_failed",
            "Redis subscriber connection to %s: cannot queue %s: reconnecting", sh->where, what);
  if (sh->sub.ac) redisAsyncDisconnect(sh->sub.ac);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv);

static void send_subscribe(struct shard *sh, const char *channel, size_t len) {
  const char *argv[2] = {"SUBSCRIBE", channel};
  size_t lens[2] = {9, len};
  if (redisAsyncCommandArgv(sh->sub.ac, on_sub_reply, sh, 2, argv, lens) != REDIS_OK)
    sub_reset(sh, "a SUBSCRIBE");
  else history_sub_sent(sh, 1);
}

static struct unsub *find_unsub(struct shard *sh, const char *channel, size_t len,
                                struct unsub ***pp) {
  for (struct unsub **p = &sh->unsubs; *p; p = &(*p)->next) {
    if ((*p)->len == len && memcmp((*p)->channel, channel, len) == 0) {
      if (pp) *pp = p;
      return *p;
    }
  }
  return NULL;
}

static void on_message(struct shard *sh, const redisReply *chan, const redisReply *msg) {
  if (msg->type != REDIS_REPLY_STRING || (size_t)chan->len < sh->b->prefix_len) return;
  if ((size_t)msg->len > sh->b->env.cfg->max_message_size) {
    log_warn("bus_message_dropped",
             "dropping a %zu-byte message on channel %.*s: over --max-message-size",
             (size_t)msg->len, (int)chan->len, chan->str);
    return;
  }
  if (control_channel(sh->b, chan->str, (size_t)chan->len)) {
    sh->b->env.host.control(sh->b->env.host.arg, msg->str, (size_t)msg->len);
    return;
  }
  struct bus_pos pos;
  const char *payload = msg->str;
  size_t plen = (size_t)msg->len;
  int env = history_parse_envelope(msg->str, (size_t)msg->len, &pos, &payload, &plen);
  if (env < 0) {
    log_warn("bus_message_dropped", "dropping a malformed history envelope on channel %.*s",
             (int)chan->len, chan->str);
    return;
  }
  sh->b->env.host.deliver(sh->b->env.host.arg, chan->str + sh->b->prefix_len,
                          (size_t)chan->len - sh->b->prefix_len, payload, plen, 0,
                          env ? &pos : NULL);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct shard *sh = priv;
  redisReply *reply = r;
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
  redisReply *kind = reply->element[0], *chan = reply->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING) return;
  if (strcmp(kind->str, "message") == 0) {
    on_message(sh, chan, reply->element[2]);
  } else if (strcmp(kind->str, "subscribe") == 0) {
    history_sub_confirmed(sh);
  } else if (strcmp(kind->str, "unsubscribe") == 0) {
    struct unsub **pp;
    struct unsub *u = find_unsub(sh, chan->str, (size_t)chan->len, &pp);
    if (!u) return;
    *pp = u->next;
    if (u->resubscribe && sh->sub.connected) send_subscribe(sh, u->channel, u->len);
    free(u);
  }
}

void bus_topic_first(struct bus *b, const char *topic, size_t tlen) {
  struct shard *sh = bridge_shard(b, topic, tlen);
  if (!sh->sub.connected) return; /* subscribed on (re)connect */
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  struct unsub *u = find_unsub(sh, ch, n, NULL);
  if (u) {
    u->resubscribe = 1;
    return;
  }
  send_subscribe(sh, ch, n);
}

void bus_topic_last(struct bus *b, const char *topic, size_t tlen) {
  struct shard *sh = bridge_shard(b, topic, tlen);
  if (!sh->sub.connected) return;
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  struct unsub *u = find_unsub(sh, ch, n, NULL);
  if (u) {
    u->resubscribe = 0;
    return;
  }
  u = malloc(sizeof(*u) + n);
  if (!u) {
    /* without the record a quick re-join could lose its callback: start over */
    sub_reset(sh, "an UNSUBSCRIBE");
    return;
  }
  u->resubscribe = 0;
  u->len = n;
  memcpy(u->channel, ch, n);
  u->next = sh->unsubs;
  sh->unsubs = u;
  const char *argv[2] = {"UNSUBSCRIBE", ch};
  size_t lens[2] = {11, n};
  if (redisAsyncCommandArgv(sh->sub.ac, NULL, NULL, 2, argv, lens) != REDIS_OK)
    sub_reset(sh, "an UNSUBSCRIBE");
}

/* Re-subscription in batches of RESUB_BATCH channels per SUBSCRIBE, the
 * channel names laid out in one buffer. */
struct resub {
  struct shard *sh;
  int n;
  int failed;
  size_t topics;
  const char *argv[RESUB_BATCH + 1];
  size_t lens[RESUB_BATCH + 1];
  char names[RESUB_BATCH][CHANNEL_MAX];
};

static void resub_flush(struct resub *r) {
  if (r->n == 0 || r->failed) return;
  r->argv[0] = "SUBSCRIBE";
  r->lens[0] = 9;
  if (redisAsyncCommandArgv(r->sh->sub.ac, on_sub_reply, r->sh, r->n + 1, r->argv, r->lens) !=
      REDIS_OK)
    r->failed = 1;
  else history_sub_sent(r->sh, (size_t)r->n);
  r->n = 0;
}

/* Adds a channel to the batch; returns where its name goes. */
static char *resub_add(struct resub *r, size_t len) {
  char *ch = r->names[r->n];
  r->n++;
  r->argv[r->n] = ch;
  r->lens[r->n] = len;
  return ch;
}

static void resub_one(void *arg, const char *topic, size_t tlen) {
  struct resub *r = arg;
  if (r->failed) return;
  struct bus *b = r->sh->b;
  if (bridge_shard(b, topic, tlen) != r->sh) return; /* another shard's */
  bridge_channel(b, topic, tlen, resub_add(r, b->prefix_len + tlen));
  r->topics++;
  if (r->n == RESUB_BATCH) resub_flush(r);
}

static void resubscribe_all(struct shard *sh) {
  struct resub *r = malloc(sizeof(*r));
  if (!r) {
    sub_reset(sh, "the re-subscription");
    return;
  }
  r->sh = sh;
  r->n = 0;
  r->failed = 0;
  r->topics = 0;
  /* the control channels first: they are no topic's */
  memcpy(resub_add(r, sh->b->ctl_all_len), sh->b->ctl_all, sh->b->ctl_all_len);
  memcpy(resub_add(r, sh->b->ctl_to_len), sh->b->ctl_to, sh->b->ctl_to_len);
  sh->b->env.host.each_topic(sh->b->env.host.arg, resub_one, r);
  resub_flush(r);
  if (r->failed || history_resync_after(sh) < 0) sub_reset(sh, "the re-subscription");
  else if (r->topics)
    log_info("redis_resubscribed", "re-subscribed %zu topic(s) on Redis", r->topics);
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
  log_warn("redis_connect_timeout", "Redis %s connection to %s: no answer within %d ms", rc->name,
           rc->sh->where, CONNECT_TIMEOUT_MS);
  redisAsyncContext *ac = rc->ac;
  rc->ac = NULL;
  redisAsyncFree(ac); /* not connected: no callback comes back */
  retry_later(rc);
}

static struct rconn *other(struct rconn *rc) {
  return rc == &rc->sh->cmd ? &rc->sh->sub : &rc->sh->cmd;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct rconn *rc = ac->data;
  if (status != REDIS_OK) {
    uv_timer_stop(&rc->retry);
    if (rc->attempts < 2 || rc->attempts % 10 == 0)
      log_warn("redis_connect_failed", "Redis %s connection to %s failed: %s", rc->name,
               rc->sh->where, ac->errstr);
    rc->ac = NULL; /* hiredis frees it after this callback */
    retry_later(rc);
    return;
  }
  /* up once PING is answered (see on_ping); the connect timer runs on */
}

/* The answer to the PING that ends a connection's handshake.  Only now is
 * the connection up: a Redis that is still loading its data answers
 * -LOADING to everything, and a SUBSCRIBE or FUNCTION LOAD sent then
 * would be lost, so such a connection is dropped and tried again. */
static void on_ping(redisAsyncContext *ac, void *r, void *priv) {
  struct rconn *rc = priv;
  redisReply *reply = r;
  if (!reply || rc->sh->b->closing) return; /* gone: on_disconnect retries */
  if (reply->type == REDIS_REPLY_ERROR) {
    if (strncmp(reply->str, "LOADING", 7) == 0)
      log_info("redis_loading",
               "Redis %s connection to %s: Redis is loading its data; trying again", rc->name,
               rc->sh->where);
    else
      log_warn("redis_connect_failed", "Redis %s connection to %s: PING answered %s", rc->name,
               rc->sh->where, reply->str);
    redisAsyncDisconnect(ac);
    return;
  }
  uv_timer_stop(&rc->retry);
  rc->connected = 1;
  if (rc->attempts > 0) {
    log_info("redis_restored", "Redis %s connection to %s restored", rc->name, rc->sh->where);
    metric_add(rc->sh->b->env.m, M_REDIS_RECONNECTS, 1);
  } else {
    log_info("redis_up", "Redis %s connection to %s up", rc->name, rc->sh->where);
  }
  rc->attempts = 0;
  set_gauge(rc->sh);
  retry_now(other(rc));
  if (rc == &rc->sh->sub) resubscribe_all(rc->sh);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  (void)status;
  struct rconn *rc = ac->data;
  rc->ac = NULL;
  int was = rc->connected;
  rc->connected = 0;
  if (rc == &rc->sh->sub) {
    free_unsubs(rc->sh);
    history_sub_reset(rc->sh);
  } else {
    history_cmd_down(rc->sh);
  }
  set_gauge(rc->sh);
  if (rc->sh->b->closing) return;
  if (was)
    log_warn("redis_lost", "Redis %s connection to %s lost: %s", rc->name, rc->sh->where,
             ac->errstr[0] ? ac->errstr : "closed");
  retry_later(rc);
}

/* Queues the commands that open a connection.  Returns 0 or -1. */
static int handshake(struct rconn *rc, redisAsyncContext *ac) {
  const struct redis_addr *a = &rc->sh->addr;
  int ok = REDIS_OK;
  if (a->password[0]) {
    if (a->user[0]) ok = redisAsyncCommand(ac, on_auth, rc, "AUTH %s %s", a->user, a->password);
    else ok = redisAsyncCommand(ac, on_auth, rc, "AUTH %s", a->password);
  }
  /* SELECT would not change what a subscriber hears: Pub/Sub ignores databases */
  if (ok == REDIS_OK && rc == &rc->sh->cmd && a->db)
    ok = redisAsyncCommand(ac, NULL, NULL, "SELECT %d", a->db);
  if (ok == REDIS_OK && rc == &rc->sh->cmd && history_load(rc->sh, ac) < 0) ok = REDIS_ERR;
  /* hiredis 0.14 learns that a non-blocking connect finished (or failed)
   * from the first write event, which only a queued command asks for */
  if (ok == REDIS_OK) ok = redisAsyncCommand(ac, on_ping, rc, "PING");
  return ok == REDIS_OK ? 0 : -1;
}

static void attach(struct rconn *rc, redisAsyncContext *ac) {
  if (!ac || ac->err) {
    log_warn("redis_connect_failed", "Redis %s connection to %s failed: %s", rc->name,
             rc->sh->where, ac ? ac->errstr : "out of memory");
    if (ac) redisAsyncFree(ac);
    retry_later(rc);
    return;
  }
  ac->data = rc;
  if (uvadapter_attach(ac, rc->sh->b->env.loop) != 0) {
    redisAsyncFree(ac);
    retry_later(rc);
    return;
  }
  rc->ac = ac;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  if (handshake(rc, ac) < 0) {
    log_warn("redis_connect_failed", "Redis %s connection to %s: cannot queue the handshake",
             rc->name, rc->sh->where);
    rc->ac = NULL;
    redisAsyncFree(ac); /* not connected yet: no callback comes back */
    retry_later(rc);
    return;
  }
  /* a connect that hangs (no answer to SYN) is abandoned after a while */
  uv_timer_start(&rc->retry, on_connect_timeout, CONNECT_TIMEOUT_MS, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct rconn *rc = req->data;
  rc->resolving = 0;
  if (rc->sh->b->closing) {
    uv_freeaddrinfo(res);
    return;
  }
  if (status != 0 || !res) {
    log_warn("redis_resolve_failed", "Redis host %s: %s", rc->sh->addr.host, uv_strerror(status));
    uv_freeaddrinfo(res);
    retry_later(rc);
    return;
  }
  char ip[64] = "";
  if (res->ai_family == AF_INET) uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
  else uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof(ip));
  uv_freeaddrinfo(res);
  attach(rc, redisAsyncConnect(ip, rc->sh->addr.port));
}

static void rconn_start(struct rconn *rc) {
  if (rc->sh->b->closing || rc->ac || rc->resolving) return;
  if (rc->sh->addr.is_unix) {
    attach(rc, redisAsyncConnectUnix(rc->sh->addr.path));
    return;
  }
  /* resolve on the thread pool: the loop never blocks on DNS */
  struct addrinfo hints = {0};
  hints.ai_socktype = SOCK_STREAM;
  rc->gai.data = rc;
  rc->resolving = 1;
  int err =
      uv_getaddrinfo(rc->sh->b->env.loop, &rc->gai, on_resolved, rc->sh->addr.host, NULL, &hints);
  if (err != 0) {
    rc->resolving = 0;
    log_warn("redis_resolve_failed", "Redis host %s: %s", rc->sh->addr.host, uv_strerror(err));
    retry_later(rc);
  }
}

static void on_retry(uv_timer_t *t) { rconn_start(t->data); }

/* ---- the bus interface ---- */

/* Sets up shard i for the URL u; returns 0 or -1 (logged). */
static int shard_init(struct bus *b, unsigned i, struct shard_url u) {
  struct shard *sh = &b->shards[i];
  sh->b = b;
  sh->index = i;
  char one[1024], err[256];
  snprintf(one, sizeof(one), "%.*s", (int)u.n, u.p);
  if (redis_addr_parse(one, &sh->addr, err, sizeof(err)) < 0) {
    log_error("redis_config_failed", "%s", err);
    return -1;
  }
  redis_addr_describe(&sh->addr, sh->where, sizeof(sh->where));
  history_shard_init(sh);
  struct rconn *rcs[2] = {&sh->cmd, &sh->sub};
  const char *names[2] = {"command", "subscriber"};
  for (int k = 0; k < 2; k++) {
    rcs[k]->sh = sh;
    rcs[k]->name = names[k];
    int rc = uv_timer_init(b->env.loop, &rcs[k]->retry);
    assert(rc == 0); /* cannot fail on Linux: it only links the handle into the loop */
    (void)rc;
    rcs[k]->retry.data = rcs[k];
  }
  sh->timers_open = 2;
  b->shards_open++;
  return 0;
}

struct bus *bus_new(const struct bus_env *env) {
  struct shard_url urls[SHARDS_MAX];
  char err[256];
  int n = shard_split(env->cfg->redis, urls, err, sizeof(err));
  if (n < 1) {
    log_error("redis_config_failed", "%s", err);
    return NULL;
  }
  struct bus *b = calloc(1, sizeof(*b));
  if (!b) {
    log_error("redis_config_failed", "out of memory");
    return NULL;
  }
  b->env = *env;
  b->prefix = env->cfg->redis_prefix;
  b->prefix_len = strlen(b->prefix);
  if (history_init(b) < 0 || control_init(b) < 0) {
    log_error("redis_config_failed", "cannot build the history function library or the inbox");
    history_free(b);
    free(b);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    if (shard_init(b, (unsigned)i, urls[i]) < 0) {
      bus_free(b);
      return NULL;
    }
    b->nshards++;
  }
  srand((unsigned)uv_hrtime() ^ (unsigned)env->worker_id);
  for (unsigned i = 0; i < b->nshards; i++) {
    rconn_start(&b->shards[i].cmd);
    rconn_start(&b->shards[i].sub);
  }
  return b;
}

static void on_timer_closed(uv_handle_t *h) {
  struct rconn *rc = h->data;
  struct shard *sh = rc->sh;
  struct bus *b = sh->b;
  if (--sh->timers_open == 0 && --b->shards_open == 0) free(b);
}

/* The bus' memory holds every shard's retry timers: it is freed in the last
 * timer's close callback (never from inside a callback of its own), which
 * the worker's loop runs during its teardown. */
void bus_free(struct bus *b) {
  if (!b) return;
  b->closing = 1;
  if (b->shards_open == 0) { /* no shard got its timers */
    history_free(b);
    free(b);
    return;
  }
  for (unsigned i = 0; i < SHARDS_MAX; i++) {
    struct shard *sh = &b->shards[i];
    if (!sh->timers_open) continue;
    /* pending publishes get their callbacks (NULL replies) from these */
    if (sh->cmd.ac) redisAsyncFree(sh->cmd.ac);
    if (sh->sub.ac) redisAsyncFree(sh->sub.ac);
    if (sh->cmd.resolving) uv_cancel((uv_req_t *)&sh->cmd.gai);
    if (sh->sub.resolving) uv_cancel((uv_req_t *)&sh->sub.gai);
    free_unsubs(sh);
    history_shard_free(sh);
    uv_close((uv_handle_t *)&sh->cmd.retry, on_timer_closed);
    uv_close((uv_handle_t *)&sh->sub.retry, on_timer_closed);
  }
  history_free(b);
}

int bridge_shard_ready(const struct shard *sh) {
  return sh->cmd.connected && sh->sub.connected && (!sh->b->lib || sh->lib_loaded);
}

/* Ready while at least one shard is: the others' topics answer
 * bus_unavailable, the rest work (a partial outage stays partial). */
int bus_ready(const struct bus *b) {
  if (!b) return 0;
  for (unsigned i = 0; i < b->nshards; i++)
    if (bridge_shard_ready(&b->shards[i])) return 1;
  return 0;
}

static const char *shard_reason(const struct shard *sh) {
  if (!sh->cmd.connected && !sh->sub.connected) return "Redis not connected";
  if (!sh->cmd.connected) return "Redis command connection down";
  if (!sh->sub.connected) return "Redis subscriber connection down";
  if (sh->b->lib && !sh->lib_loaded)
    return "Redis history functions not loaded (they need Redis 7)";
  return "ready";
}

const char *bus_not_ready_reason(const struct bus *b) {
  if (!b) return "no Redis bus";
  if (bus_ready(b)) return "ready";
  if (b->nshards == 1) return shard_reason(&b->shards[0]);
  return "no Redis shard connected";
}

struct pending {
  struct shard *sh;
  void *req;
};

static void on_published(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct pending *p = priv;
  redisReply *reply = r;
  int err = reply && reply->type == REDIS_REPLY_INTEGER ? BUS_OK : BUS_EUNAVAILABLE;
  p->sh->b->env.host.published(p->sh->b->env.host.arg, p->req, err, NULL);
  free(p);
}

int bus_publish(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                int keep, void *req) {
  struct shard *sh = bridge_shard(b, topic, tlen);
  if (!sh->cmd.connected) return BUS_EUNAVAILABLE;
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  if (keep && sh->b->lib) return history_publish(sh, ch, n, payload, plen, req);
  struct pending *p = malloc(sizeof(*p));
  if (!p) return BUS_ENOMEM;
  p->sh = sh;
  p->req = req;
  const char *argv[3] = {"PUBLISH", ch, payload};
  size_t lens[3] = {7, n, plen};
  if (redisAsyncCommandArgv(sh->cmd.ac, on_published, p, 3, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}
