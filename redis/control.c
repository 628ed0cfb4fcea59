/* control.c - control messages between workers and the list of topics
 * with subscribers, on Redis.
 *
 * Every worker's subscriber connection also subscribes to two channels no
 * topic can name (a topic cannot start with '.'):
 *
 *   <prefix>.tidings.all            orders for every worker of every host
 *   <prefix>.tidings.to.<inbox>     answers for this worker alone
 *
 * on every shard, and a control message goes out on the first shard whose
 * command connection is up: it reaches every worker once, and while any
 * shard is up.  The inbox is 16 random hex digits drawn when the bus
 * starts.  The list of topics with subscribers anywhere is Redis' own:
 * PUBSUB CHANNELS <prefix>* on every shard, merged, since every worker
 * holds one SUBSCRIBE per topic its clients subscribe to; names that are
 * not topics (the control channels, another application's channels without
 * --redis-prefix) are left out. */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/topic.h"
#include "bridge.h"

#define CONTROL_ALL ".tidings.all"
#define CONTROL_TO ".tidings.to."

int control_init(struct bus *b) {
  unsigned char rnd[BUS_INBOX_LEN / 2];
  if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0) return -1;
  for (size_t i = 0; i < sizeof(rnd); i++) snprintf(b->inbox + 2 * i, 3, "%02x", rnd[i]);
  b->ctl_all_len = (size_t)snprintf(b->ctl_all, sizeof(b->ctl_all), "%s" CONTROL_ALL, b->prefix);
  b->ctl_to_len =
      (size_t)snprintf(b->ctl_to, sizeof(b->ctl_to), "%s" CONTROL_TO "%s", b->prefix, b->inbox);
  return 0;
}

int control_channel(const struct bus *b, const char *chan, size_t len) {
  return (len == b->ctl_all_len && memcmp(chan, b->ctl_all, len) == 0) ||
         (len == b->ctl_to_len && memcmp(chan, b->ctl_to, len) == 0);
}

const char *bus_inbox(const struct bus *b) { return b->inbox; }

struct pending_ctl {
  struct bus *b;
  void *req;
};

/* The first shard that takes commands, or NULL. */
static struct shard *any_shard(struct bus *b) {
  for (unsigned i = 0; i < b->nshards; i++)
    if (b->shards[i].cmd.connected) return &b->shards[i];
  return NULL;
}

static void on_sent(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct pending_ctl *p = priv;
  redisReply *reply = r;
  int err = reply && reply->type == REDIS_REPLY_INTEGER ? BUS_OK : BUS_EUNAVAILABLE;
  if (p->req) p->b->env.host.published(p->b->env.host.arg, p->req, err, NULL);
  free(p);
}

int bus_control(struct bus *b, const char *to, const char *msg, size_t len, void *req) {
  struct shard *sh = any_shard(b);
  if (!sh) return BUS_EUNAVAILABLE;
  char ch[sizeof(b->ctl_to)];
  size_t n;
  if (!to) {
    memcpy(ch, b->ctl_all, b->ctl_all_len);
    n = b->ctl_all_len;
  } else {
    int m = snprintf(ch, sizeof(ch), "%s" CONTROL_TO "%s", b->prefix, to);
    if (m < 0 || (size_t)m >= sizeof(ch)) return BUS_EUNAVAILABLE; /* no such inbox */
    n = (size_t)m;
  }
  struct pending_ctl *p = malloc(sizeof(*p));
  if (!p) return BUS_ENOMEM;
  p->b = b;
  p->req = req;
  const char *argv[3] = {"PUBLISH", ch, msg};
  size_t lens[3] = {7, n, len};
  if (redisAsyncCommandArgv(sh->cmd.ac, on_sent, p, 3, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}

/* A channel list asked of every shard that is up, merged once all have
 * answered: the topic names are copied into one buffer as they come. */
struct listing {
  struct bus *b;
  void *req;
  unsigned waiting; /* shards yet to answer */
  int answered;     /* shards that answered with a list */
  int failed;       /* out of memory */
  char *names;      /* the names, one after the other */
  size_t used, cap;
  struct bus_name *v; /* .p is an offset into names until the end */
  size_t n, vcap;
};

static int keep_name(struct listing *l, const char *t, size_t tlen) {
  if (l->used + tlen > l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 4096;
    while (cap < l->used + tlen) cap *= 2;
    char *names = realloc(l->names, cap);
    if (!names) return -1;
    l->names = names;
    l->cap = cap;
  }
  if (l->n == l->vcap) {
    size_t vcap = l->vcap ? 2 * l->vcap : 64;
    struct bus_name *v = realloc(l->v, vcap * sizeof(*v));
    if (!v) return -1;
    l->v = v;
    l->vcap = vcap;
  }
  memcpy(l->names + l->used, t, tlen);
  l->v[l->n++] = (struct bus_name){(const char *)(uintptr_t)l->used, tlen};
  l->used += tlen;
  return 0;
}

static void listing_done(struct listing *l) {
  struct bus *b = l->b;
  int err = l->failed ? BUS_ENOMEM : l->answered ? BUS_OK : BUS_EUNAVAILABLE;
  for (size_t i = 0; i < l->n; i++) l->v[i].p = l->names + (uintptr_t)l->v[i].p;
  b->env.host.channels(b->env.host.arg, l->req, err, err == BUS_OK ? l->v : NULL,
                       err == BUS_OK ? l->n : 0);
  free(l->names);
  free(l->v);
  free(l);
}

static void on_channels(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct listing *l = priv;
  struct bus *b = l->b;
  redisReply *reply = r;
  if (reply && reply->type == REDIS_REPLY_ARRAY) {
    l->answered++;
    for (size_t i = 0; i < reply->elements && !l->failed; i++) {
      const redisReply *e = reply->element[i];
      if (e->type != REDIS_REPLY_STRING || (size_t)e->len <= b->prefix_len) continue;
      const char *t = e->str + b->prefix_len;
      size_t tlen = (size_t)e->len - b->prefix_len;
      if (topic_validate(t, tlen) == 0 && keep_name(l, t, tlen) < 0) l->failed = 1;
    }
  }
  if (--l->waiting == 0) listing_done(l);
}

int bus_channels(struct bus *b, void *req) {
  /* the prefix as a glob pattern: its special characters escaped */
  char pat[2 * REDIS_PREFIX_MAX_LEN + 2];
  size_t n = 0;
  for (size_t i = 0; i < b->prefix_len; i++) {
    if (strchr("*?[]\\", b->prefix[i])) pat[n++] = '\\';
    pat[n++] = b->prefix[i];
  }
  pat[n++] = '*';
  struct listing *l = calloc(1, sizeof(*l));
  if (!l) return BUS_ENOMEM;
  l->b = b;
  l->req = req;
  for (unsigned i = 0; i < b->nshards; i++) {
    struct shard *sh = &b->shards[i];
    if (!sh->cmd.connected) continue;
    /* a cluster's topics are sharded channels, each on its slot's master */
    const char *argv[3] = {"PUBSUB", b->cluster ? "SHARDCHANNELS" : "CHANNELS", pat};
    size_t lens[3] = {6, strlen(argv[1]), n};
    if (redisAsyncCommandArgv(sh->cmd.ac, on_channels, l, 3, argv, lens) == REDIS_OK) l->waiting++;
  }
  if (!l->waiting) {
    free(l);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}
