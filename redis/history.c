/* The history half of the Redis bus: publishes that keep history (the
 * function tidings_publish of redis/history.lua), history reads
 * (tidings_history), and the envelope in which tidings_publish delivers a
 * message with its offset and epoch.
 *
 * The library is loaded with FUNCTION LOAD REPLACE on every new command
 * connection, before anything else is sent on it, so every FCALL finds it.
 *
 * A history read must not leave a gap before the live messages: when a
 * topic gets its first subscriber here, its SUBSCRIBE goes out on the
 * subscriber connection while the read goes on the command connection, and
 * a message published between the read and the moment the subscription
 * takes effect would reach neither.  So a read is held back until every
 * channel sent in a SUBSCRIBE before it has been confirmed (confirmations
 * come in order: counting them is enough).  The same count tells when a
 * re-subscription after a reconnect is complete (host.resynced).
 */
#include <assert.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/metrics.h"
#include "bridge.h"
#include "history_lib.h"

static const char ENVELOPE_TAG[] = "\0tdg1:";
#define ENVELOPE_TAG_LEN (sizeof(ENVELOPE_TAG) - 1)
#define OFFSET_DIGITS_MAX 19 /* below 2^63 */
/* The largest number the library's arguments take (15 digits: a Lua
 * double holds it exactly).  No topic gets this far; a larger "since" asks
 * for the same nothing. */
#define LUA_UINT_MAX 999999999999999ULL

/* A history read, or the end of a re-subscription, waiting for
 * subscription confirmations. */
struct read_wait {
  struct read_wait *next;
  uint64_t need;   /* sub_confirmed must reach this */
  struct hread *r; /* the read to send, or NULL: call host.resynced */
};

struct hread {
  struct shard *sh;
  void *req;
  uint64_t since;
  size_t limit;
  size_t clen;
  char channel[CHANNEL_MAX];
};

struct hpub {
  struct shard *sh;
  void *req;
};

int history_init(struct bus *b) {
  const struct config *cfg = b->env.cfg;
  if (cfg->history_size <= 0) return 0;
  size_t cap = history_lib_source_bound();
  if (!(b->lib = malloc(cap))) return -1;
  if (history_lib_source(b->lib, cap, cfg->redis_prefix, (unsigned)cfg->history_size,
                         (unsigned)cfg->history_ttl) < 0) {
    free(b->lib);
    b->lib = NULL;
    return -1;
  }
  return 0;
}

void history_free(struct bus *b) {
  free(b->lib);
  b->lib = NULL;
}

static void answer_read(struct hread *r, int err, const struct bus_history *h) {
  r->sh->b->env.host.history(r->sh->b->env.host.arg, r->req, err, h);
  free(r);
}

void history_shard_init(struct shard *sh) { sh->waits_tail = &sh->waits; }

void history_shard_free(struct shard *sh) {
  while (sh->waits) {
    struct read_wait *w = sh->waits;
    sh->waits = w->next;
    if (w->r) answer_read(w->r, BUS_EUNAVAILABLE, NULL);
    free(w);
  }
  sh->waits_tail = &sh->waits;
}

/* ---- loading the library ---- */

static void on_loaded(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct shard *sh = priv;
  redisReply *reply = r;
  if (!reply) return; /* the connection went: loaded again on the next */
  if (reply->type == REDIS_REPLY_ERROR) {
    if (strncmp(reply->str, "LOADING", 7) == 0) return; /* the PING after it drops the connection */
    log_error("redis_history_unavailable",
              "Redis at %s refused the history functions (FUNCTION LOAD needs Redis 7): %s",
              sh->where, reply->str);
    return;
  }
  sh->lib_loaded = 1;
  bridge_gauge(sh->b);
}

int history_load(struct shard *sh, redisAsyncContext *ac) {
  if (!sh->b->lib) return 0;
  const char *argv[4] = {"FUNCTION", "LOAD", "REPLACE", sh->b->lib};
  size_t lens[4] = {8, 4, 7, strlen(sh->b->lib)};
  return redisAsyncCommandArgv(ac, on_loaded, sh, 4, argv, lens) == REDIS_OK ? 0 : -1;
}

void history_cmd_down(struct shard *sh) { sh->lib_loaded = 0; }

/* ---- the envelope ---- */

static int epoch_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

int history_parse_envelope(const char *msg, size_t len, struct bus_pos *pos, const char **payload,
                           size_t *plen) {
  if (len < ENVELOPE_TAG_LEN || memcmp(msg, ENVELOPE_TAG, ENVELOPE_TAG_LEN) != 0) return 0;
  size_t i = ENVELOPE_TAG_LEN, start = i;
  uint64_t off = 0;
  while (i < len && msg[i] >= '0' && msg[i] <= '9' && i - start < OFFSET_DIGITS_MAX)
    off = off * 10 + (uint64_t)(msg[i++] - '0');
  if (i == start || i >= len || msg[i] != ':' || off == 0) return -1;
  start = ++i;
  while (i < len && epoch_char(msg[i]) && i - start < BUS_EPOCH_MAX) i++;
  if (i == start || i >= len || msg[i] != ':') return -1;
  pos->offset = off;
  memcpy(pos->epoch, msg + start, i - start);
  pos->epoch[i - start] = '\0';
  *payload = msg + i + 1;
  *plen = len - i - 1;
  return 1;
}

/* An epoch as Redis returned it: the charset and length of the envelope's. */
static int copy_epoch(char out[BUS_EPOCH_MAX + 1], const redisReply *e, int allow_empty) {
  if (e->type != REDIS_REPLY_STRING || e->len > BUS_EPOCH_MAX || (!allow_empty && e->len == 0))
    return -1;
  for (size_t i = 0; i < e->len; i++)
    if (!epoch_char(e->str[i])) return -1;
  memcpy(out, e->str, e->len);
  out[e->len] = '\0';
  return 0;
}

/* ---- publishing with history ---- */

static void on_hpublished(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct hpub *p = priv;
  redisReply *reply = r;
  struct bus_pos pos;
  int ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
           reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[0]->integer > 0 &&
           copy_epoch(pos.epoch, reply->element[1], 0) == 0;
  if (ok) {
    pos.offset = (uint64_t)reply->element[0]->integer;
  } else if (reply && reply->type == REDIS_REPLY_ERROR) {
    log_warn("redis_history_publish_failed", "tidings_publish failed: %s", reply->str);
  }
  p->sh->b->env.host.published(p->sh->b->env.host.arg, p->req, ok ? BUS_OK : BUS_EUNAVAILABLE,
                               ok ? &pos : NULL);
  free(p);
}

int history_publish(struct shard *sh, const char *channel, size_t clen, const char *payload,
                    size_t plen, void *req) {
  if (!sh->lib_loaded) return BUS_EUNAVAILABLE;
  struct hpub *p = malloc(sizeof(*p));
  if (!p) return BUS_ENOMEM;
  p->sh = sh;
  p->req = req;
  char maxlen[24], ttl[24];
  int ml = snprintf(maxlen, sizeof(maxlen), "%d", sh->b->env.cfg->history_size);
  int tl = snprintf(ttl, sizeof(ttl), "%d", sh->b->env.cfg->history_ttl);
  const char *argv[7] = {"FCALL", "tidings_publish", "1", channel, payload, maxlen, ttl};
  size_t lens[7] = {5, 15, 1, clen, plen, (size_t)ml, (size_t)tl};
  if (redisAsyncCommandArgv(sh->cmd.ac, on_hpublished, p, 7, argv, lens) != REDIS_OK) {
    free(p);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}

/* ---- reading history ---- */

/* Builds the answer from [epoch, top, first, offset, payload, ...]. */
static int parse_history(const redisReply *reply, char epoch[BUS_EPOCH_MAX + 1],
                         struct bus_history *h, struct bus_msg **msgs) {
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
      (reply->elements - 3) % 2)
    return -1;
  const redisReply *top = reply->element[1], *first = reply->element[2];
  if (copy_epoch(epoch, reply->element[0], 1) < 0 || top->type != REDIS_REPLY_INTEGER ||
      top->integer < 0 || first->type != REDIS_REPLY_INTEGER || first->integer < 0)
    return -1;
  h->epoch = epoch;
  h->top = (uint64_t)top->integer;
  h->first = (uint64_t)first->integer;
  h->count = (reply->elements - 3) / 2;
  *msgs = NULL;
  if (h->count && !(*msgs = malloc(h->count * sizeof(**msgs)))) return -1;
  uint64_t prev = 0;
  for (size_t i = 0; i < h->count; i++) {
    const redisReply *o = reply->element[3 + 2 * i], *p = reply->element[4 + 2 * i];
    /* offsets come oldest first, each above the one before */
    if (o->type != REDIS_REPLY_INTEGER || o->integer <= 0 || (uint64_t)o->integer <= prev ||
        p->type != REDIS_REPLY_STRING) {
      free(*msgs);
      *msgs = NULL;
      return -1;
    }
    prev = (uint64_t)o->integer;
    (*msgs)[i] = (struct bus_msg){prev, p->str, p->len};
  }
  h->msgs = *msgs;
  return 0;
}

static void on_read(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  struct hread *rd = priv;
  redisReply *reply = r;
  char epoch[BUS_EPOCH_MAX + 1];
  struct bus_history h;
  struct bus_msg *msgs = NULL;
  if (parse_history(reply, epoch, &h, &msgs) < 0) {
    if (reply && reply->type == REDIS_REPLY_ERROR)
      log_warn("redis_history_read_failed", "tidings_history failed: %s", reply->str);
    answer_read(rd, BUS_EUNAVAILABLE, NULL);
    return;
  }
  answer_read(rd, BUS_OK, &h);
  free(msgs);
}

/* Sends the read; returns 0 or -1 (not sent: the caller answers it). */
static int send_read(struct hread *r) {
  struct shard *sh = r->sh;
  if (!sh->cmd.connected || !sh->lib_loaded) return -1;
  char since[24], limit[24];
  unsigned long long from = r->since > LUA_UINT_MAX ? LUA_UINT_MAX : (unsigned long long)r->since;
  int sl = snprintf(since, sizeof(since), "%llu", from);
  int ll = snprintf(limit, sizeof(limit), "%zu", r->limit);
  const char *argv[6] = {"FCALL_RO", "tidings_history", "1", r->channel, since, limit};
  size_t lens[6] = {8, 15, 1, r->clen, (size_t)sl, (size_t)ll};
  return redisAsyncCommandArgv(sh->cmd.ac, on_read, r, 6, argv, lens) == REDIS_OK ? 0 : -1;
}

static int enqueue(struct shard *sh, struct hread *r) {
  struct read_wait *w = malloc(sizeof(*w));
  if (!w) return -1;
  w->next = NULL;
  w->need = sh->sub_sent;
  w->r = r;
  *sh->waits_tail = w;
  sh->waits_tail = &w->next;
  return 0;
}

int bus_history(struct bus *b, const char *topic, size_t tlen, uint64_t since, size_t limit,
                void *req) {
  struct shard *sh = bridge_shard(b, topic, tlen);
  if (!b->lib || !sh->cmd.connected || !sh->lib_loaded) return BUS_EUNAVAILABLE;
  struct hread *r = malloc(sizeof(*r));
  if (!r) return BUS_ENOMEM;
  r->sh = sh;
  r->req = req;
  r->since = since;
  r->limit = limit;
  r->clen = bridge_channel(b, topic, tlen, r->channel);
  if (sh->sub.connected && sh->sub_confirmed < sh->sub_sent) {
    if (enqueue(sh, r) < 0) {
      free(r);
      return BUS_ENOMEM;
    }
    return BUS_OK;
  }
  if (send_read(r) < 0) {
    free(r);
    return BUS_EUNAVAILABLE;
  }
  return BUS_OK;
}

/* Runs the waits whose confirmations have all arrived; with all set, every
 * wait (the subscriber connection went: none will come). */
static void release(struct shard *sh, int all) {
  while (sh->waits && (all || sh->waits->need <= sh->sub_confirmed)) {
    struct read_wait *w = sh->waits;
    sh->waits = w->next;
    if (!sh->waits) sh->waits_tail = &sh->waits;
    if (w->r) {
      if (send_read(w->r) < 0) answer_read(w->r, BUS_EUNAVAILABLE, NULL);
    } else if (!all) {
      sh->b->env.host.resynced(sh->b->env.host.arg);
    }
    free(w);
  }
}

void history_sub_sent(struct shard *sh, size_t n) { sh->sub_sent += n; }

void history_sub_confirmed(struct shard *sh) {
  sh->sub_confirmed++;
  release(sh, 0);
}

void history_sub_reset(struct shard *sh) {
  sh->sub_sent = sh->sub_confirmed = 0;
  release(sh, 1);
}

/* The re-subscription after a (re)connect has been sent: host.resynced
 * fires once Redis has confirmed all of it. */
int history_resync_after(struct shard *sh) {
  if (sh->sub_confirmed >= sh->sub_sent) {
    sh->b->env.host.resynced(sh->b->env.host.arg);
    return 0;
  }
  return enqueue(sh, NULL);
}
