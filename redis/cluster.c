/* cluster.c - the Redis bus on a Redis Cluster (--redis-cluster).
 *
 * The shards are the cluster's masters.  A topic's channel <prefix><topic>
 * hashes to one of the 16384 slots (CRC16 of the name: topic names and the
 * prefix have no braces, so the channel and the history keys {<channel>}:*
 * share the slot), and the master that owns the slot carries the topic:
 * SPUBLISH, SSUBSCRIBE, and the history functions (which SPUBLISH too).
 * Sharded Pub/Sub keeps a message on the nodes of its slot instead of
 * broadcasting it over the whole cluster, which is what lets a cluster grow.
 *
 * The slot map comes from CLUSTER SLOTS, asked of any master whose command
 * connection is up (the seeds of --redis-cluster at first), at start, every
 * CLUSTER_POLL_MS, every CLUSTER_POLL_DOWN_MS while a master of the map is
 * unreachable (a failover in progress), and soon after a MOVED, a node lost
 * or a subscription the server ended (a slot moved away).  A new map moves
 * the topics whose slot changed hands: unsubscribed from the old master,
 * subscribed on the new one, then caught up from history (host.resynced).
 * Commands follow MOVED and ASK by themselves (bridge_command).
 *
 * Control messages use classic Pub/Sub, which a cluster broadcasts to every
 * node: they are published on any master and heard on one (ctl_shard).
 */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "bridge.h"

#define CLUSTER_POLL_MS 5000
#define CLUSTER_POLL_DOWN_MS 1000
#define CLUSTER_SOON_MS 50

/* ---- shards by address ---- */

static struct shard *find_shard(struct bus *b, const char *host, int port) {
  for (unsigned i = 0; i < b->nshards; i++) {
    struct shard *sh = &b->shards[i];
    if (sh->active && sh->addr.port == port && strcmp(sh->addr.host, host) == 0) return sh;
  }
  return NULL;
}

/* A shard for the master at host:port: the one in use, or a new one. */
static struct shard *shard_for(struct bus *b, const char *host, int port) {
  struct shard *sh = find_shard(b, host, port);
  if (sh) return sh;
  if (strlen(host) >= sizeof(sh->addr.host)) return NULL;
  for (unsigned i = 0; i < SHARDS_MAX; i++) {
    struct shard *s = &b->shards[i];
    /* a retired shard is reused once its connections are gone */
    if (i < b->nshards &&
        (s->active || s->cmd.ac || s->sub.ac || s->cmd.resolving || s->sub.resolving))
      continue;
    struct redis_addr a = b->seed_auth;
    snprintf(a.host, sizeof(a.host), "%s", host);
    a.port = port;
    bridge_shard_setup(b, i, &a);
    if (i >= b->nshards) b->nshards = i + 1;
    log_info("redis_cluster_node", "Redis Cluster master %s:%d joins as shard %u", host, port, i);
    bridge_shard_start(s);
    return s;
  }
  log_error("redis_cluster_full", "Redis Cluster: more than %d masters; %s:%d left out", SHARDS_MAX,
            host, port);
  return NULL;
}

/* ---- the slot map ---- */

static void on_refresh_timer(uv_timer_t *t);

static void schedule(struct bus *b, uint64_t ms) {
  if (b->closing) return;
  uint64_t due = uv_timer_get_due_in(&b->refresh);
  if (uv_is_active((uv_handle_t *)&b->refresh) && due <= ms) return;
  uv_timer_start(&b->refresh, on_refresh_timer, ms, 0);
}

void cluster_refresh_soon(struct bus *b) {
  if (b->cluster) schedule(b, CLUSTER_SOON_MS);
}

/* The masters that lose or gain a subscribed topic with a new map. */
struct moves {
  struct bus *b;
  const int16_t *old, *now;
  int changed[SHARDS_MAX];
};

static void move_one(void *arg, const char *topic, size_t tlen) {
  struct moves *m = arg;
  char ch[CHANNEL_MAX];
  unsigned slot = shard_slot(ch, bridge_channel(m->b, topic, tlen, ch));
  int o = m->old[slot], w = m->now[slot];
  if (o == w) return;
  if (o >= 0) m->changed[o] = 1;
  if (w >= 0) m->changed[w] = 1;
  log_debug("redis_cluster_moved", "topic %.*s: slot %u moved from shard %d to %d", (int)tlen,
            topic, slot, o, w);
}

static int apply_map(struct bus *b, struct shard *from, const redisReply *reply) {
  int16_t *now = malloc(CLUSTER_SLOTS * sizeof(*now));
  if (!now) return -1;
  for (unsigned s = 0; s < CLUSTER_SLOTS; s++) now[s] = -1;
  int owns[SHARDS_MAX] = {0};
  for (size_t i = 0; i < reply->elements; i++) {
    const redisReply *e = reply->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER)
      continue;
    const redisReply *node = e->element[2];
    if (node->type != REDIS_REPLY_ARRAY || node->elements < 2 ||
        node->element[0]->type != REDIS_REPLY_STRING ||
        node->element[1]->type != REDIS_REPLY_INTEGER)
      continue;
    /* an empty host: the node that answered */
    const char *host = node->element[0]->len ? node->element[0]->str : from->addr.host;
    struct shard *sh = shard_for(b, host, (int)node->element[1]->integer);
    if (!sh) continue;
    long long lo = e->element[0]->integer, hi = e->element[1]->integer;
    for (long long s = lo < 0 ? 0 : lo; s <= hi && s < CLUSTER_SLOTS; s++)
      now[s] = (int16_t)sh->index;
    owns[sh->index] = 1;
  }
  log_debug("redis_cluster_map", "Redis Cluster: slot map from %s: %zu ranges", from->where,
            reply->elements);
  struct moves m = {b, b->slot_owner, now, {0}};
  if (b->have_map) b->env.host.each_topic(b->env.host.arg, move_one, &m);
  int16_t *old = b->slot_owner;
  b->slot_owner = now;
  free(old);
  int first = !b->have_map;
  b->have_map = 1;
  for (unsigned i = 0; i < b->nshards; i++) {
    struct shard *sh = &b->shards[i];
    if (!sh->active) continue;
    if (!owns[i]) {
      log_info("redis_cluster_node", "Redis Cluster: %s owns no slot now: shard %u retired",
               sh->where, i);
      bridge_shard_retire(sh);
    } else if (first && sh->sub.connected) {
      /* subscribed before the map said which topics are its own */
      bridge_resubscribe(sh);
    } else if (m.changed[i] && sh->sub.ac) {
      /* Topics moved from or to this master: its subscriber starts over
       * (the reconnect subscribes what the new map gives it, then catches
       * up from history).  Moving single subscriptions instead would race
       * with the server, which ends a migrated slot's subscriptions itself
       * and refuses them on a node that no longer serves the slot. */
      log_info("redis_cluster_moved", "Redis Cluster: topics moved to or from %s: re-subscribing",
               sh->where);
      redisAsyncDisconnect(sh->sub.ac);
    }
  }
  bridge_gauge(b);
  return 0;
}

static void on_slots(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct shard *sh = priv;
  struct bus *b = sh->b;
  redisReply *reply = r;
  b->refreshing = 0;
  if (b->closing) return;
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
    if (reply)
      log_warn("redis_cluster_map", "Redis Cluster: CLUSTER SLOTS at %s answered %s", sh->where,
               reply->type == REDIS_REPLY_ERROR ? reply->str : "no slots");
    schedule(b, CLUSTER_POLL_DOWN_MS);
    return;
  }
  if (apply_map(b, sh, reply) < 0) log_error("redis_cluster_map", "out of memory");
  int down = 0;
  for (unsigned i = 0; i < b->nshards; i++)
    if (b->shards[i].active && !bridge_shard_ready(&b->shards[i])) down = 1;
  schedule(b, down ? CLUSTER_POLL_DOWN_MS : CLUSTER_POLL_MS);
}

static void refresh(struct bus *b) {
  if (b->refreshing || b->closing) return;
  for (unsigned i = 0; i < b->nshards; i++) {
    struct shard *sh = &b->shards[i];
    if (!sh->active || !sh->cmd.connected) continue;
    if (redisAsyncCommand(sh->cmd.ac, on_slots, sh, "CLUSTER SLOTS") == REDIS_OK) {
      b->refreshing = 1;
      return;
    }
  }
  schedule(b, CLUSTER_POLL_DOWN_MS); /* nobody to ask now */
}

static void on_refresh_timer(uv_timer_t *t) { refresh(t->data); }

void cluster_cmd_up(struct shard *sh) {
  if (sh->b->cluster && !sh->b->refreshing) schedule(sh->b, 0);
}

struct shard *cluster_redirect(struct bus *b, const char *err, int *ask) {
  /* "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>" */
  char kind[8], where[300];
  unsigned slot;
  if (sscanf(err, "%7s %u %299s", kind, &slot, where) != 3 || slot >= CLUSTER_SLOTS) return NULL;
  *ask = strcmp(kind, "ASK") == 0;
  if (!*ask && strcmp(kind, "MOVED") != 0) return NULL;
  char *colon = strrchr(where, ':');
  if (!colon) return NULL;
  *colon = '\0';
  int port = atoi(colon + 1);
  struct shard *sh = shard_for(b, where, port);
  /* The map itself changes only with a whole new map: that is when the
   * topics of the slot move their subscriptions too. */
  if (!*ask) cluster_refresh_soon(b);
  return sh;
}

/* ---- set-up ---- */

int cluster_init(struct bus *b) {
  const char *seeds = b->env.cfg->redis_cluster;
  b->cluster = 1;
  b->ctl_shard = -1;
  if (!(b->slot_owner = malloc(CLUSTER_SLOTS * sizeof(*b->slot_owner)))) return -1;
  for (unsigned s = 0; s < CLUSTER_SLOTS; s++) b->slot_owner[s] = -1;
  uv_timer_init(b->env.loop, &b->refresh);
  b->refresh.data = b;
  b->refresh_open = 1;
  /* the seeds, as provisional shards until the first map */
  char list[4096];
  snprintf(list, sizeof(list), "%s", seeds);
  for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ') tok++;
    char url[1100], err[256];
    snprintf(url, sizeof(url), "%s%s", strstr(tok, "://") ? "" : "redis://", tok);
    struct redis_addr a;
    if (redis_addr_parse(url, &a, err, sizeof(err)) < 0 || a.is_unix) {
      log_error("redis_config_failed", "--redis-cluster: %s", a.is_unix ? "no unix: seeds" : err);
      return -1;
    }
    b->seed_auth = a; /* every node takes the credentials of the seeds */
    b->seed_auth.host[0] = '\0';
    if (b->nshards == SHARDS_MAX || find_shard(b, a.host, a.port)) continue;
    bridge_shard_setup(b, b->nshards, &a);
    b->nshards++;
  }
  return b->nshards ? 0 : -1;
}

static void on_refresh_closed(uv_handle_t *h) {
  struct bus *b = h->data;
  b->refresh_open = 0;
  bridge_maybe_free(b);
}

void cluster_free(struct bus *b) {
  if (b->refresh_open) uv_close((uv_handle_t *)&b->refresh, on_refresh_closed);
}
