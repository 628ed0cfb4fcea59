/* bridge.h - the Redis bus' own state, shared by its files and by nothing
 * outside redis/: bridge.c (the connections, Pub/Sub, plain publishes),
 * history.c (history publishes and reads, the envelope) and control.c
 * (control messages, the channel list).
 *
 * A bus has one shard per Redis server of --redis (common/shard.h says
 * which topic lives where); each shard has its own command and subscriber
 * connections and everything that hangs off them.  Everything runs on the
 * worker's loop.  The bus owns its shards; a shard owns its hiredis
 * contexts.
 */
#ifndef TIDINGS_REDIS_BRIDGE_H
#define TIDINGS_REDIS_BRIDGE_H

#include <hiredis/async.h>
#include <stdint.h>

#include "../common/config.h"
#include "../common/redisaddr.h"
#include "../common/shard.h"
#include "../worker/bus.h"

#define CHANNEL_MAX (REDIS_PREFIX_MAX_LEN + TOPIC_MAX_LEN)
#define BUS_INBOX_LEN 16 /* hex digits */
/* <prefix>.tidings.to.<inbox> */
#define CONTROL_CHANNEL_MAX (REDIS_PREFIX_MAX_LEN + 12 + BUS_INBOX_LEN + 1)

struct shard;

struct rconn {
  struct shard *sh;
  const char *name; /* "command" or "subscriber" */
  redisAsyncContext *ac;
  int connected;
  unsigned attempts;
  uv_timer_t retry;
  uv_getaddrinfo_t gai;
  int resolving;
};

struct unsub;
struct read_wait;

/* One Redis server and this worker's two connections to it. */
struct shard {
  struct bus *b;
  unsigned index; /* in --redis, 0-based */
  struct redis_addr addr;
  char where[160];
  struct rconn cmd, sub;
  struct unsub *unsubs;
  int timers_open; /* the two retry timers not yet closed */
  /* history (history.c) */
  int lib_loaded;         /* FUNCTION LOAD succeeded on this command connection */
  uint64_t sub_sent;      /* channels sent in SUBSCRIBE since the subscriber connected */
  uint64_t sub_confirmed; /* their confirmations received */
  struct read_wait *waits, **waits_tail; /* history reads waiting for them */
};

struct bus {
  struct bus_env env;
  const char *prefix;
  size_t prefix_len;
  int closing;
  unsigned nshards;
  struct shard shards[SHARDS_MAX];
  unsigned shards_open; /* shards whose timers are not yet closed */
  char *lib;            /* the function library's text, or NULL without history */
  /* control messages (control.c) */
  char inbox[BUS_INBOX_LEN + 1];
  char ctl_all[CONTROL_CHANNEL_MAX], ctl_to[CONTROL_CHANNEL_MAX];
  size_t ctl_all_len, ctl_to_len;
};

/* The shard of a topic. */
struct shard *bridge_shard(struct bus *b, const char *topic, size_t tlen);
/* 1 when the shard takes publishes and delivers. */
int bridge_shard_ready(const struct shard *sh);
/* Writes the worker's Redis gauges after a shard changed state. */
void bridge_gauge(struct bus *b);

/* <prefix><topic> into out[CHANNEL_MAX]; returns its length. */
size_t bridge_channel(const struct bus *b, const char *topic, size_t tlen, char *out);

/* ---- control.c ---- */

/* Draws the inbox and names the two control channels.  Returns 0 or -1. */
int control_init(struct bus *b);
/* 1 when chan is one of this worker's control channels. */
int control_channel(const struct bus *b, const char *chan, size_t len);

/* ---- history.c ---- */

/* Makes the library text when --history-size is set.  Returns 0 or -1. */
int history_init(struct bus *b);
void history_free(struct bus *b);
/* A shard starts / stops: its waiting reads are answered BUS_EUNAVAILABLE. */
void history_shard_init(struct shard *sh);
void history_shard_free(struct shard *sh);
/* Queues FUNCTION LOAD on a new command connection.  Returns 0 or -1. */
int history_load(struct shard *sh, redisAsyncContext *ac);
/* The command connection went down: the library must be loaded again. */
void history_cmd_down(struct shard *sh);

/* Subscription bookkeeping, so that a history read is answered as of a
 * moment when the topic's live messages already reach this worker: n more
 * channels were sent in a SUBSCRIBE; one was confirmed; the subscriber
 * connection went down (nothing more will be confirmed: waiting reads go). */
void history_sub_sent(struct shard *sh, size_t n);
void history_sub_confirmed(struct shard *sh);
void history_sub_reset(struct shard *sh);
/* The re-subscription after a (re)connect has been sent: host.resynced
 * fires once Redis has confirmed all of it.  Returns 0 or -1 (memory). */
int history_resync_after(struct shard *sh);

/* Queues the publish of a message with history (tidings_publish).  Returns
 * BUS_OK or a negative enum bus_err (no callback then). */
int history_publish(struct shard *sh, const char *channel, size_t clen, const char *payload,
                    size_t plen, void *req);

/* Splits a message of the channel into its place in history and payload.
 * Returns 1 for the envelope of tidings_publish ("\0tdg1:<offset>:<epoch>:"
 * then the payload; pos, *payload and *plen set), 0 for a plain message
 * (left as it is), -1 for a malformed envelope. */
int history_parse_envelope(const char *msg, size_t len, struct bus_pos *pos, const char **payload,
                           size_t *plen);

#endif
