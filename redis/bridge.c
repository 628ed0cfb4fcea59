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
  if (rc->b->closing) return;
  uint64_t d = backoff_delay(&reconnect_policy, rc->attempts, (uint32_t)rand());
  rc->attempts++;
  uv_timer_start(&rc->retry, on_retry, d, 0);
}

/* The other connection of the pair came back: Redis is there again, so a
 * connection waiting for its next try goes now. */
static void retry_now(struct rconn *rc) {
  if (rc->b->closing || rc->ac || rc->resolving) return;
  uv_timer_start(&rc->retry, on_retry, 0, 0);
}

static void free_unsubs(struct bus *b) {
  while (b->unsubs) {
    struct unsub *u = b->unsubs;
    b->unsubs = u->next;
    free(u);
  }
}

static void set_gauge(struct bus *b) { metric_gauge(b->env.m, G_REDIS_CONNECTED, bus_ready(b)); }

/* ---- subscriber side ---- */

size_t bridge_channel(const struct bus *b, const char *topic, size_t tlen, char *out) {
  assert(tlen <= TOPIC_MAX_LEN && b->prefix_len <= REDIS_PREFIX_MAX_LEN);
  memcpy(out, b->prefix, b->prefix_len);
  memcpy(out + b->prefix_len, topic, tlen);
  return b->prefix_len + tlen;
}

/* The subscriber connection cannot hold what it should (a command could not
 * be queued): drop it, so that the reconnect re-subscribes every topic. */
static void sub_reset(struct bus *b, const char *what) {
  log_error("redis_subscribe_failed",
            "Redis subscriber connection to %s: cannot queue %s: reconnecting", b->where, what);
  if (b->sub.ac) redisAsyncDisconnect(b->sub.ac);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv);

static void send_subscribe(struct bus *b, const char *channel, size_t len) {
  const char *argv[2] = {"SUBSCRIBE", channel};
  size_t lens[2] = {9, len};
  if (redisAsyncCommandArgv(b->sub.ac, on_sub_reply, b, 2, argv, lens) != REDIS_OK)
    sub_reset(b, "a SUBSCRIBE");
  else history_sub_sent(b, 1);
}

static struct unsub *find_unsub(struct bus *b, const char *channel, size_t len,
                                struct unsub ***pp) {
  for (struct unsub **p = &b->unsubs; *p; p = &(*p)->next) {
    if ((*p)->len == len && memcmp((*p)->channel, channel, len) == 0) {
      if (pp) *pp = p;
      return *p;
    }
  }
  return NULL;
}

static void on_message(struct bus *b, const redisReply *chan, const redisReply *msg) {
  if (msg->type != REDIS_REPLY_STRING || (size_t)chan->len < b->prefix_len) return;
  if ((size_t)msg->len > b->env.cfg->max_message_size) {
    log_warn("bus_message_dropped",
             "dropping a %zu-byte message on channel %.*s: over --max-message-size",
             (size_t)msg->len, (int)chan->len, chan->str);
    return;
  }
  if (control_channel(b, chan->str, (size_t)chan->len)) {
    b->env.host.control(b->env.host.arg, msg->str, (size_t)msg->len);
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
  b->env.host.deliver(b->env.host.arg, chan->str + b->prefix_len, (size_t)chan->len - b->prefix_len,
                      payload, plen, 0, env ? &pos : NULL);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct bus *b = priv;
  redisReply *reply = r;
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
  redisReply *kind = reply->element[0], *chan = reply->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING) return;
  if (strcmp(kind->str, "message") == 0) {
    on_message(b, chan, reply->element[2]);
  } else if (strcmp(kind->str, "subscribe") == 0) {
    history_sub_confirmed(b);
  } else if (strcmp(kind->str, "unsubscribe") == 0) {
    struct unsub **pp;
    struct unsub *u = find_unsub(b, chan->str, (size_t)chan->len, &pp);
    if (!u) return;
    *pp = u->next;
    if (u->resubscribe && b->sub.connected) send_subscribe(b, u->channel, u->len);
    free(u);
  }
}

void bus_topic_first(struct bus *b, const char *topic, size_t tlen) {
  if (!b->sub.connected) return; /* subscribed on (re)connect */
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  struct unsub *u = find_unsub(b, ch, n, NULL);
  if (u) {
    u->resubscribe = 1;
    return;
  }
  send_subscribe(b, ch, n);
}

void bus_topic_last(struct bus *b, const char *topic, size_t tlen) {
  if (!b->sub.connected) return;
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  struct unsub *u = find_unsub(b, ch, n, NULL);
  if (u) {
    u->resubscribe = 0;
    return;
  }
  u = malloc(sizeof(*u) + n);
  if (!u) {
    /* without the record a quick re-join could lose its callback: start over */
    sub_reset(b, "an UNSUBSCRIBE");
    return;
  }
  u->resubscribe = 0;
  u->len = n;
  memcpy(u->channel, ch, n);
  u->next = b->unsubs;
  b->unsubs = u;
  const char *argv[2] = {"UNSUBSCRIBE", ch};
  size_t lens[2] = {11, n};
  if (redisAsyncCommandArgv(b->sub.ac, NULL, NULL, 2, argv, lens) != REDIS_OK)
    sub_reset(b, "an UNSUBSCRIBE");
}

/* Re-subscription in batches of RESUB_BATCH channels per SUBSCRIBE, the
 * channel names laid out in one buffer. */
struct resub {
  struct bus *b;
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
  if (redisAsyncCommandArgv(r->b->sub.ac, on_sub_reply, r->b, r->n + 1, r->argv, r->lens) !=
      REDIS_OK)
    r->failed = 1;
  else history_sub_sent(r->b, (size_t)r->n);
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
  bridge_channel(r->b, topic, tlen, resub_add(r, r->b->prefix_len + tlen));
  r->topics++;
  if (r->n == RESUB_BATCH) resub_flush(r);
}

static void resubscribe_all(struct bus *b) {
  struct resub *r = malloc(sizeof(*r));
  if (!r) {
    sub_reset(b, "the re-subscription");
    return;
  }
  r->b = b;
  r->n = 0;
  r->failed = 0;
  r->topics = 0;
  /* the control channels first: they are no topic's */
  memcpy(resub_add(r, b->ctl_all_len), b->ctl_all, b->ctl_all_len);
  memcpy(resub_add(r, b->ctl_to_len), b->ctl_to, b->ctl_to_len);
  b->env.host.each_topic(b->env.host.arg, resub_one, r);
  resub_flush(r);
  if (r->failed || history_resync_after(b) < 0) sub_reset(b, "the re-subscription");
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
           rc->b->where, CONNECT_TIMEOUT_MS);
  redisAsyncContext *ac = rc->ac;
  rc->ac = NULL;
  redisAsyncFree(ac); /* not connected: no callback comes back */
  retry_later(rc);
}

static struct rconn *other(struct rconn *rc) {
  return rc == &rc->b->cmd ? &rc->b->sub : &rc->b->cmd;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct rconn *rc = ac->data;
  if (status != REDIS_OK) {
    uv_timer_stop(&rc->retry);
    if (rc->attempts < 2 || rc->attempts % 10 == 0)
      log_warn("redis_connect_failed", "Redis %s connection to %s failed: %s", rc->name,
               rc->b->where, ac->errstr);
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
  if (!reply || rc->b->closing) return; /* gone: on_disconnect retries */
  if (reply->type == REDIS_REPLY_ERROR) {
    if (strncmp(reply->str, "LOADING", 7) == 0)
      log_info("redis_loading",
               "Redis %s connection to %s: Redis is loading its data; trying again", rc->name,
               rc->b->where);
    else
      log_warn("redis_connect_failed", "Redis %s connection to %s: PING answered %s", rc->name,
               rc->b->where, reply->str);
    redisAsyncDisconnect(ac);
    return;
  }
  uv_timer_stop(&rc->retry);
  rc->connected = 1;
  if (rc->attempts > 0) {
    log_info("redis_restored", "Redis %s connection to %s restored", rc->name, rc->b->where);
    metric_add(rc->b->env.m, M_REDIS_RECONNECTS, 1);
  } else {
    log_info("redis_up", "Redis %s connection to %s up", rc->name, rc->b->where);
  }
  rc->attempts = 0;
  set_gauge(rc->b);
  retry_now(other(rc));
  if (rc == &rc->b->sub) resubscribe_all(rc->b);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  (void)status;
  struct rconn *rc = ac->data;
  rc->ac = NULL;
  int was = rc->connected;
  rc->connected = 0;
  if (rc == &rc->b->sub) {
    free_unsubs(rc->b);
    history_sub_reset(rc->b);
  } else {
    history_cmd_down(rc->b);
  }
  set_gauge(rc->b);
  if (rc->b->closing) return;
  if (was)
    log_warn("redis_lost", "Redis %s connection to %s lost: %s", rc->name, rc->b->where,
             ac->errstr[0] ? ac->errstr : "closed");
  retry_later(rc);
}

/* Queues the commands that open a connection.  Returns 0 or -1. */
static int handshake(struct rconn *rc, redisAsyncContext *ac) {
  const struct redis_addr *a = &rc->b->addr;
  int ok = REDIS_OK;
  if (a->password[0]) {
    if (a->user[0]) ok = redisAsyncCommand(ac, on_auth, rc, "AUTH %s %s", a->user, a->password);
    else ok = redisAsyncCommand(ac, on_auth, rc, "AUTH %s", a->password);
  }
  /* SELECT would not change what a subscriber hears: Pub/Sub ignores databases */
  if (ok == REDIS_OK && rc == &rc->b->cmd && a->db)
    ok = redisAsyncCommand(ac, NULL, NULL, "SELECT %d", a->db);
  if (ok == REDIS_OK && rc == &rc->b->cmd && history_load(rc->b, ac) < 0) ok = REDIS_ERR;
  /* hiredis 0.14 learns that a non-blocking connect finished (or failed)
   * from the first write event, which only a queued command asks for */
  if (ok == REDIS_OK) ok = redisAsyncCommand(ac, on_ping, rc, "PING");
  return ok == REDIS_OK ? 0 : -1;
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
  if (uvadapter_attach(ac, rc->b->env.loop) != 0) {
    redisAsyncFree(ac);
    retry_later(rc);
    return;
  }
  rc->ac = ac;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  if (handshake(rc, ac) < 0) {
    log_warn("redis_connect_failed", "Redis %s connection to %s: cannot queue the handshake",
             rc->name, rc->b->where);
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
  int err = uv_getaddrinfo(rc->b->env.loop, &rc->gai, on_resolved, rc->b->addr.host, NULL, &hints);
  if (err != 0) {
    rc->resolving = 0;
    log_warn("redis_resolve_failed", "Redis host %s: %s", rc->b->addr.host, uv_strerror(err));
    retry_later(rc);
  }
}

static void on_retry(uv_timer_t *t) { rconn_start(t->data); }

/* ---- the bus interface ---- */

struct bus *bus_new(const struct bus_env *env) {
  struct bus *b = calloc(1, sizeof(*b));
  if (!b) {
    log_error("redis_config_failed", "out of memory");
    return NULL;
  }
  b->env = *env;
  char err[256];
  if (redis_addr_parse(env->cfg->redis, &b->addr, err, sizeof(err)) < 0) {
    log_error("redis_config_failed", "%s", err);
    free(b);
    return NULL;
  }
  redis_addr_describe(&b->addr, b->where, sizeof(b->where));
  if (history_init(b) < 0) {
    log_error("redis_config_failed", "cannot build the history function library");
    free(b);
    return NULL;
  }
  b->prefix = env->cfg->redis_prefix;
  b->prefix_len = strlen(b->prefix);
  if (control_init(b) < 0) {
    log_error("redis_config_failed", "cannot draw the worker's inbox name");
    history_free(b);
    free(b);
    return NULL;
  }
  struct rconn *rcs[2] = {&b->cmd, &b->sub};
  const char *names[2] = {"command", "subscriber"};
  for (int i = 0; i < 2; i++) {
    rcs[i]->b = b;
    rcs[i]->name = names[i];
    int rc = uv_timer_init(env->loop, &rcs[i]->retry);
    assert(rc == 0); /* cannot fail on Linux: it only links the handle into the loop */
    (void)rc;
    rcs[i]->retry.data = rcs[i];
  }
  srand((unsigned)uv_hrtime() ^ (unsigned)env->worker_id);
  rconn_start(&b->cmd);
  rconn_start(&b->sub);
  return b;
}

static void on_timer_closed(uv_handle_t *h) {
  struct rconn *rc = h->data;
  struct bus *b = rc->b;
  rc->b = NULL;
  if (!b->cmd.b && !b->sub.b) free(b);
}

/* The bus' memory holds the two retry timers: it is freed in the second
 * timer's close callback (never from inside a callback of its own), which
 * the worker's loop runs during its teardown. */
void bus_free(struct bus *b) {
  if (!b) return;
  b->closing = 1;
  /* pending publishes get their callbacks (NULL replies) from these */
  if (b->cmd.ac) redisAsyncFree(b->cmd.ac);
  if (b->sub.ac) redisAsyncFree(b->sub.ac);
  if (b->cmd.resolving) uv_cancel((uv_req_t *)&b->cmd.gai);
  if (b->sub.resolving) uv_cancel((uv_req_t *)&b->sub.gai);
  free_unsubs(b);
  history_free(b);
  uv_close((uv_handle_t *)&b->cmd.retry, on_timer_closed);
  uv_close((uv_handle_t *)&b->sub.retry, on_timer_closed);
}

int bus_ready(const struct bus *b) {
  return b && b->cmd.connected && b->sub.connected && (!b->lib || b->lib_loaded);
}

const char *bus_not_ready_reason(const struct bus *b) {
  if (!b) return "no Redis bus";
  if (!b->cmd.connected && !b->sub.connected) return "Redis not connected";
  if (!b->cmd.connected) return "Redis command connection down";
  if (!b->sub.connected) return "Redis subscriber connection down";
  if (b->lib && !b->lib_loaded) return "Redis history functions not loaded (they need Redis 7)";
  return "ready";
}

struct pending {
  struct bus *b;
  void *req;
};

static void on_published(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct pending *p = priv;
  redisReply *reply = r;
  int err = reply && reply->type == REDIS_REPLY_INTEGER ? BUS_OK : BUS_EUNAVAILABLE;
  p->b->env.host.published(p->b->env.host.arg, p->req, err, NULL);
  free(p);
}

int bus_publish(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                int keep, void *req) {
  if (!b->cmd.connected) return BUS_EUNAVAILABLE;
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  if (keep && b->lib) return history_publish(b, ch, n, payload, plen, req);
  struct pending *p = malloc(sizeof(*p));
  if (!p) return BUS_ENOMEM;
  p->b = b;
  p->req = req;
  const char *argv[3] = {"PUBLISH", ch, payload};
  size_t lens[3] = {7, n, plen};
  if (redisAsyncCommandArgv(b->cmd.ac, on_published, p, 3, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}
