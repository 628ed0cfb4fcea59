/* The Redis bus (bus.h): joins the workers of this host and of every other
 * host through Redis Pub/Sub.
 *
 * The topics are spread over shards: the servers of --redis (common/shard.h
 * says which topic lives where), or the masters of a Redis Cluster
 * (cluster.c).  For each shard a worker keeps two connections on its own
 * loop (hiredis' async API bound to libuv by uvadapter.c): a command
 * connection for PUBLISH and a subscriber connection that holds one
 * SUBSCRIBE per topic of the shard with local subscribers.  A shard that is
 * down takes only its own topics down.  Both reconnect by themselves with jittered backoff capped
 * at one second, so that publishes work again within a second of Redis coming back; when one of the
 * two comes back the other is retried at once.  The subscriber re-subscribes every live topic when
 * it comes back; if that cannot be sent (memory), the connection is dropped and the whole
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
static void resubscribe_control(struct shard *sh);
static void bridge_unsubscribe(struct shard *sh, const char *ch, size_t n);
static void on_retry(uv_timer_t *t);

static void retry_later(struct rconn *rc) {
  if (rc->sh->b->closing || !rc->sh->active) return;
  uint64_t d = backoff_delay(&reconnect_policy, rc->attempts, (uint32_t)rand());
  rc->attempts++;
  uv_timer_start(&rc->retry, on_retry, d, 0);
}

/* The other connection of the pair came back: Redis is there again, so a
 * connection waiting for its next try goes now. */
static void retry_now(struct rconn *rc) {
  if (rc->sh->b->closing || !rc->sh->active || rc->ac || rc->resolving) return;
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
    if (b->shards[i].active) metric_shard(b->env.m, i, bridge_shard_ready(&b->shards[i]));
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
  if (!b->cluster) return &b->shards[shard_of(topic, tlen, b->nshards)];
  char ch[CHANNEL_MAX];
  int i = b->slot_owner[shard_slot(ch, bridge_channel(b, topic, tlen, ch))];
  return i >= 0 && b->shards[i].active ? &b->shards[i] : NULL;
}

/* ---- commands that follow MOVED and ASK (--redis-cluster) ---- */

#define REDIRECT_ARGS 8
#define REDIRECT_HOPS 2

struct redirect {
  struct bus *b;
  redisCallbackFn *fn;
  void *priv;
  int argc, hops;
  const char *argv[REDIRECT_ARGS];
  size_t lens[REDIRECT_ARGS];
  char data[]; /* the arguments' bytes */
};

static void on_redirectable(redisAsyncContext *ac, void *r, void *priv) {
  struct redirect *rd = priv;
  redisReply *reply = r;
  int ask;
  struct shard *to;
  if (reply && reply->type == REDIS_REPLY_ERROR && !rd->b->closing && rd->hops < REDIRECT_HOPS &&
      (to = cluster_redirect(rd->b, reply->str, &ask)) && to->cmd.connected) {
    rd->hops++;
    if ((!ask || redisAsyncCommand(to->cmd.ac, NULL, NULL, "ASKING") == REDIS_OK) &&
        redisAsyncCommandArgv(to->cmd.ac, on_redirectable, rd, rd->argc, rd->argv, rd->lens) ==
            REDIS_OK)
      return;
  }
  rd->fn(ac, r, rd->priv);
  free(rd);
}

int bridge_command(struct shard *sh, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                   const size_t *lens) {
  if (!sh->b->cluster) return redisAsyncCommandArgv(sh->cmd.ac, fn, priv, argc, argv, lens);
  assert(argc <= REDIRECT_ARGS);
  size_t total = 0;
  for (int i = 0; i < argc; i++) total += lens[i];
  struct redirect *rd = malloc(sizeof(*rd) + total);
  if (!rd) return REDIS_ERR;
  *rd = (struct redirect){.b = sh->b, .fn = fn, .priv = priv, .argc = argc};
  char *p = rd->data;
  for (int i = 0; i < argc; i++) {
    memcpy(p, argv[i], lens[i]);
    rd->argv[i] = p;
    rd->lens[i] = lens[i];
    p += lens[i];
  }
  if (redisAsyncCommandArgv(sh->cmd.ac, on_redirectable, rd, argc, rd->argv, rd->lens) !=
      REDIS_OK) {
    free(rd);
    return REDIS_ERR;
  }
  return REDIS_OK;
}

/* The subscriber connection cannot hold what it should (a command could not
 * be queued): drop it, so that the reconnect re-subscribes every topic. */
static void sub_reset(struct shard *sh, const char *what) {
  log_error("redis_subscribe_failed",
            "Redis subscriber connection to %s: cannot queue %s: reconnecting", sh->where, what);
  if (sh->sub.ac) redisAsyncDisconnect(sh->sub.ac);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv);

/* Sends one subscribing command (SUBSCRIBE, SSUBSCRIBE, SUNSUBSCRIBE) for
 * channels; with count set, its confirmations are counted (history.c).
 *
 * With --redis-cluster a topic is subscribed twice: SSUBSCRIBE, which is
 * what carries its messages, and SUBSCRIBE, which hiredis 0.14 needs to
 * route them.  hiredis knows nothing of sharded Pub/Sub: it hands a
 * message in subscribed mode to the callback registered for its channel
 * name by a SUBSCRIBE (or to a pending command's callback), whatever its
 * kind, and drops it otherwise.  Every command on this connection has
 * on_sub_reply as its callback, which reads each reply by its kind, so a
 * reply handed to another command's callback is still read right.  A
 * classic PUBLISH on the channel (an outside redis-cli) is heard too. */
static int sub_command(struct shard *sh, const char *cmd, int n, const char **argv, size_t *lens,
                       int count) {
  argv[0] = cmd;
  lens[0] = strlen(cmd);
  if (redisAsyncCommandArgv(sh->sub.ac, on_sub_reply, sh, n + 1, argv, lens) != REDIS_OK) return -1;
  if (count) history_sub_sent(sh, (size_t)n);
  return 0;
}

static void bridge_subscribe(struct shard *sh, const char *channel, size_t len) {
  const char *argv[2] = {NULL, channel};
  size_t lens[2] = {0, len};
  if ((sh->b->cluster && sub_command(sh, "SSUBSCRIBE", 1, argv, lens, 1) < 0) ||
      sub_command(sh, "SUBSCRIBE", 1, argv, lens, 1) < 0)
    sub_reset(sh, "a SUBSCRIBE");
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
  if (reply && reply->type == REDIS_REPLY_ERROR) {
    /* a subscription refused: with --redis-cluster a MOVED (the map is
     * stale: it is asked again, and the topic moves with it); it is an
     * answer all the same */
    log_warn("redis_subscribe_refused", "Redis %s refused a subscription: %s", sh->where,
             reply->str);
    history_sub_confirmed(sh);
    cluster_refresh_soon(sh->b);
    return;
  }
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
  redisReply *kind = reply->element[0], *chan = reply->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING) return;
  if (strcmp(kind->str, "message") == 0 || strcmp(kind->str, "smessage") == 0) {
    on_message(sh, chan, reply->element[2]);
  } else if (strcmp(kind->str, "subscribe") == 0 || strcmp(kind->str, "ssubscribe") == 0) {
    history_sub_confirmed(sh);
  } else if (strcmp(kind->str, "sunsubscribe") == 0) {
    /* ours, or the server's when the channel's slot moved to another node */
    if (!find_unsub(sh, chan->str, (size_t)chan->len, NULL)) cluster_refresh_soon(sh->b);
  } else if (strcmp(kind->str, "unsubscribe") == 0) {
    struct unsub **pp;
    struct unsub *u = find_unsub(sh, chan->str, (size_t)chan->len, &pp);
    if (!u) return;
    *pp = u->next;
    if (u->resubscribe && sh->sub.connected) bridge_subscribe(sh, u->channel, u->len);
    free(u);
  }
}

void bus_topic_first(struct bus *b, const char *topic, size_t tlen) {
  struct shard *sh = bridge_shard(b, topic, tlen);
  if (!sh || !sh->sub.connected) return; /* subscribed on (re)connect, or with the slot map */
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  struct unsub *u = find_unsub(sh, ch, n, NULL);
  if (u) {
    u->resubscribe = 1;
    return;
  }
  bridge_subscribe(sh, ch, n);
}

void bus_topic_last(struct bus *b, const char *topic, size_t tlen) {
  struct shard *sh = bridge_shard(b, topic, tlen);
  if (!sh || !sh->sub.connected) return;
  char ch[CHANNEL_MAX];
  bridge_unsubscribe(sh, ch, bridge_channel(b, topic, tlen, ch));
}

static void bridge_unsubscribe(struct shard *sh, const char *ch, size_t n) {
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
  const char *argv[2] = {NULL, ch};
  size_t lens[2] = {0, n};
  if (sh->b->cluster && sub_command(sh, "SUNSUBSCRIBE", 1, argv, lens, 0) < 0) {
    sub_reset(sh, "an SUNSUBSCRIBE");
    return;
  }
  /* hiredis expects no reply of its own for UNSUBSCRIBE: no callback */
  argv[0] = "UNSUBSCRIBE";
  lens[0] = 11;
  if (redisAsyncCommandArgv(sh->sub.ac, NULL, NULL, 2, argv, lens) != REDIS_OK)
    sub_reset(sh, "an UNSUBSCRIBE");
}

/* Re-subscription in batches of RESUB_BATCH channels per SUBSCRIBE, the
 * channel names laid out in one buffer. */
struct resub {
  struct shard *sh;
  int n;
  int failed;
  int topics_batch; /* the batch holds topics, not control channels */
  size_t topics;
  const char *argv[RESUB_BATCH + 1];
  size_t lens[RESUB_BATCH + 1];
  char names[RESUB_BATCH][CHANNEL_MAX];
};

/* The batch goes out as one SUBSCRIBE; with --redis-cluster also one
 * SSUBSCRIBE per channel (a sharded subscription names one slot). */
static void resub_flush(struct resub *r) {
  if (r->n == 0 || r->failed) return;
  for (int i = 1; r->sh->b->cluster && r->topics_batch && i <= r->n && !r->failed; i++) {
    const char *argv[2] = {NULL, r->argv[i]};
    size_t lens[2] = {0, r->lens[i]};
    if (sub_command(r->sh, "SSUBSCRIBE", 1, argv, lens, 1) < 0) r->failed = 1;
  }
  if (!r->failed && sub_command(r->sh, "SUBSCRIBE", r->n, r->argv, r->lens, 1) < 0) r->failed = 1;
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

/* Subscribes the control channels on the shard (every shard with --redis;
 * one with --redis-cluster, which broadcasts classic Pub/Sub to all
 * nodes). */
static int subscribe_control(struct resub *r) {
  struct bus *b = r->sh->b;
  if (b->cluster) {
    if (b->ctl_shard >= 0) return 0;
    b->ctl_shard = (int)r->sh->index;
  }
  memcpy(resub_add(r, b->ctl_all_len), b->ctl_all, b->ctl_all_len);
  memcpy(resub_add(r, b->ctl_to_len), b->ctl_to, b->ctl_to_len);
  resub_flush(r);
  return r->failed ? -1 : 0;
}

/* Subscribes what the shard's subscriber connection should hold: with
 * control set the control channels too.  Then catches up from history. */
static void resubscribe(struct shard *sh, int control) {
  struct resub *r = malloc(sizeof(*r));
  if (!r) {
    sub_reset(sh, "the re-subscription");
    return;
  }
  r->sh = sh;
  r->n = 0;
  r->failed = 0;
  r->topics = 0;
  r->topics_batch = 0;
  if (!control || subscribe_control(r) == 0) {
    r->topics_batch = 1;
    sh->b->env.host.each_topic(sh->b->env.host.arg, resub_one, r);
    resub_flush(r);
  }
  if (r->failed || history_resync_after(sh) < 0) sub_reset(sh, "the re-subscription");
  else if (r->topics)
    log_info("redis_resubscribed", "re-subscribed %zu topic(s) on Redis %s", r->topics, sh->where);
  free(r);
}

static void resubscribe_all(struct shard *sh) { resubscribe(sh, 1); }

/* --redis-cluster: the control channels move to this shard's subscriber. */
static void resubscribe_control(struct shard *sh) {
  struct resub *r = calloc(1, sizeof(*r));
  if (r) r->sh = sh;
  if (!r || subscribe_control(r) < 0) sub_reset(sh, "the control channels");
  free(r);
}

void bridge_resubscribe(struct shard *sh) { resubscribe(sh, 0); }

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
  else cluster_cmd_up(rc->sh);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  (void)status;
  struct rconn *rc = ac->data;
  rc->ac = NULL;
  int was = rc->connected;
  rc->connected = 0;
  if (rc == &rc->sh->sub) {
    struct bus *b = rc->sh->b;
    free_unsubs(rc->sh);
    history_sub_reset(rc->sh);
    if (b->cluster && b->ctl_shard == (int)rc->sh->index && !b->closing) {
      /* the control channels go to another node's subscriber */
      b->ctl_shard = -1;
      for (unsigned i = 0; i < b->nshards && b->ctl_shard < 0; i++)
        if (b->shards[i].active && b->shards[i].sub.connected) resubscribe_control(&b->shards[i]);
    }
    cluster_refresh_soon(b);
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
  if (rc->sh->b->closing || !rc->sh->active || rc->ac || rc->resolving) return;
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

void bridge_shard_setup(struct bus *b, unsigned i, const struct redis_addr *addr) {
  struct shard *sh = &b->shards[i];
  int had_timers = sh->timers_open;
  if (!had_timers) *sh = (struct shard){0};
  sh->b = b;
  sh->index = i;
  sh->addr = *addr;
  sh->active = 1;
  sh->lib_loaded = 0;
  sh->sub_sent = sh->sub_confirmed = 0;
  redis_addr_describe(&sh->addr, sh->where, sizeof(sh->where));
  history_shard_init(sh);
  if (had_timers) return; /* a retired shard taken again: its timers are there */
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
}

void bridge_shard_start(struct shard *sh) {
  sh->cmd.attempts = sh->sub.attempts = 0;
  rconn_start(&sh->cmd);
  rconn_start(&sh->sub);
}

void bridge_shard_retire(struct shard *sh) {
  struct bus *b = sh->b;
  sh->active = 0;
  uv_timer_stop(&sh->cmd.retry);
  uv_timer_stop(&sh->sub.retry);
  /* pending commands get their callbacks (NULL replies) when these go */
  if (sh->cmd.ac) redisAsyncDisconnect(sh->cmd.ac);
  if (sh->sub.ac) redisAsyncDisconnect(sh->sub.ac);
  history_shard_free(sh);
  metric_shard(b->env.m, sh->index, -1);
  if (b->ctl_shard == (int)sh->index) {
    b->ctl_shard = -1;
    for (unsigned i = 0; i < b->nshards && b->ctl_shard < 0; i++)
      if (b->shards[i].active && b->shards[i].sub.connected) resubscribe_control(&b->shards[i]);
  }
}

struct bus *bus_new(const struct bus_env *env) {
  struct shard_url urls[SHARDS_MAX];
  char err[256];
  int cluster = env->cfg->redis_cluster[0] != 0;
  int n = cluster ? 0 : shard_split(env->cfg->redis, urls, err, sizeof(err));
  if (n < 0 || (!cluster && n == 0)) {
    log_error("redis_config_failed", "%s", n < 0 ? err : "no Redis server given");
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
  b->ctl_shard = -1;
  if (history_init(b) < 0 || control_init(b) < 0) {
    log_error("redis_config_failed", "cannot build the history function library or the inbox");
    bus_free(b);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    char one[1024];
    struct redis_addr a;
    snprintf(one, sizeof(one), "%.*s", (int)urls[i].n, urls[i].p);
    if (redis_addr_parse(one, &a, err, sizeof(err)) < 0) { /* shard_split checked it */
      log_error("redis_config_failed", "%s", err);
      bus_free(b);
      return NULL;
    }
    bridge_shard_setup(b, (unsigned)i, &a);
    b->nshards++;
  }
  if (cluster && cluster_init(b) < 0) {
    bus_free(b);
    return NULL;
  }
  srand((unsigned)uv_hrtime() ^ (unsigned)env->worker_id);
  for (unsigned i = 0; i < b->nshards; i++) bridge_shard_start(&b->shards[i]);
  return b;
}

void bridge_maybe_free(struct bus *b) {
  if (b->shards_open == 0 && !b->refresh_open) {
    free(b->slot_owner);
    free(b);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  struct rconn *rc = h->data;
  struct shard *sh = rc->sh;
  struct bus *b = sh->b;
  if (--sh->timers_open == 0) {
    b->shards_open--;
    bridge_maybe_free(b);
  }
}

/* The bus' memory holds every shard's retry timers (and the slot map's):
 * it is freed in the last timer's close callback (never from inside a
 * callback of its own), which the worker's loop runs during its teardown. */
void bus_free(struct bus *b) {
  if (!b) return;
  b->closing = 1;
  history_free(b);
  if (b->shards_open == 0 && !b->refresh_open) { /* nothing was started */
    bridge_maybe_free(b);
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
  cluster_free(b);
}

int bridge_shard_ready(const struct shard *sh) {
  return sh->active && sh->cmd.connected && sh->sub.connected && (!sh->b->lib || sh->lib_loaded);
}

/* Ready while at least one shard is: the others' topics answer
 * bus_unavailable, the rest work (a partial outage stays partial).  A
 * cluster is ready once its slot map has come. */
int bus_ready(const struct bus *b) {
  if (!b || (b->cluster && !b->have_map)) return 0;
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
  if (b->cluster && !b->have_map) return "no Redis Cluster slot map yet";
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
  if (!sh || !sh->cmd.connected) return BUS_EUNAVAILABLE;
  char ch[CHANNEL_MAX];
  size_t n = bridge_channel(b, topic, tlen, ch);
  if (keep && sh->b->lib) return history_publish(sh, ch, n, payload, plen, req);
  struct pending *p = malloc(sizeof(*p));
  if (!p) return BUS_ENOMEM;
  p->sh = sh;
  p->req = req;
  const char *argv[3] = {b->cluster ? "SPUBLISH" : "PUBLISH", ch, payload};
  size_t lens[3] = {b->cluster ? 8u : 7u, n, plen};
  if (bridge_command(sh, on_published, p, 3, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}
