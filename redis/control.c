/* control.c - control messages between workers and the list of topics
 * with subscribers, on Redis.
 *
 * Every worker's subscriber connection also subscribes to two channels no
 * topic can name (a topic cannot start with '.'):
 *
 *   <prefix>.tidings.all            orders for every worker of every host
 *   <prefix>.tidings.to.<inbox>     answers for this worker alone
 *
 * The inbox is 16 random hex digits drawn when the bus starts.  The list of
 * topics with subscribers anywhere is Redis' own: PUBSUB CHANNELS
 * <prefix>*, since every worker holds one SUBSCRIBE per topic its clients
 * subscribe to; names that are not topics (the control channels, another
 * application's channels without --redis-prefix) are left out. */
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

static void on_sent(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct pending_ctl *p = priv;
  redisReply *reply = r;
  int err = reply && reply->type == REDIS_REPLY_INTEGER ? BUS_OK : BUS_EUNAVAILABLE;
  if (p->req) p->b->env.host.published(p->b->env.host.arg, p->req, err, NULL);
  free(p);
}

int bus_control(struct bus *b, const char *to, const char *msg, size_t len, void *req) {
  if (!b->cmd.connected) return BUS_EUNAVAILABLE;
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
  if (redisAsyncCommandArgv(b->cmd.ac, on_sent, p, 3, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}

static void on_channels(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct pending_ctl *p = priv;
  struct bus *b = p->b;
  redisReply *reply = r;
  struct bus_name *v = NULL;
  size_t n = 0;
  int err = BUS_EUNAVAILABLE;
  if (reply && reply->type == REDIS_REPLY_ARRAY) {
    v = malloc((reply->elements ? reply->elements : 1) * sizeof(*v));
    if (v) {
      err = BUS_OK;
      for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || (size_t)e->len <= b->prefix_len) continue;
        const char *t = e->str + b->prefix_len;
        size_t tlen = (size_t)e->len - b->prefix_len;
        if (topic_validate(t, tlen) != 0) continue;
        v[n++] = (struct bus_name){t, tlen};
      }
    }
  }
  b->env.host.channels(b->env.host.arg, p->req, err, v, n);
  free(v);
  free(p);
}

int bus_channels(struct bus *b, void *req) {
  if (!b->cmd.connected) return BUS_EUNAVAILABLE;
  /* the prefix as a glob pattern: its special characters escaped */
  char pat[2 * REDIS_PREFIX_MAX_LEN + 2];
  size_t n = 0;
  for (size_t i = 0; i < b->prefix_len; i++) {
    if (strchr("*?[]\\", b->prefix[i])) pat[n++] = '\\';
    pat[n++] = b->prefix[i];
  }
  pat[n++] = '*';
  struct pending_ctl *p = malloc(sizeof(*p));
  if (!p) return BUS_ENOMEM;
  p->b = b;
  p->req = req;
  const char *argv[3] = {"PUBSUB", "CHANNELS", pat};
  size_t lens[3] = {6, 8, n};
  if (redisAsyncCommandArgv(b->cmd.ac, on_channels, p, 3, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}
