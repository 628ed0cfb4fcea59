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
  int active;      /* in use: always with --redis; with --redis-cluster, a master
                      of the slot map (or a seed before the first map) */
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
  /* Redis Cluster (cluster.c): shards are the masters of the slot map */
  int cluster;                 /* --redis-cluster */
  int have_map;                /* a slot map arrived */
  int16_t *slot_owner;         /* CLUSTER_SLOTS entries: a shard index, or -1 */
  int ctl_shard;               /* the shard whose subscriber holds the control channels, or -1 */
  struct redis_addr seed_auth; /* user and password for every node */
  uv_timer_t refresh;          /* polls the slot map */
  int refreshing;              /* a CLUSTER SLOTS is out */
  int refresh_open;            /* the refresh timer is not yet closed */
  /* control messages (control.c) */
  char inbox[BUS_INBOX_LEN + 1];
  char ctl_all[CONTROL_CHANNEL_MAX], ctl_to[CONTROL_CHANNEL_MAX];
  size_t ctl_all_len, ctl_to_len;
};

/* The shard of a topic, or NULL (--redis-cluster: no node owns its slot
 * yet). */
struct shard *bridge_shard(struct bus *b, const char *topic, size_t tlen);
/* Queues a command for a topic on the shard's command connection; with
 * --redis-cluster a MOVED or ASK answer is followed (twice at most) before
 * fn sees the reply.  Returns REDIS_OK or REDIS_ERR (fn never called). */
int bridge_command(struct shard *sh, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                   const size_t *lens);
/* Starts connecting shard i (after shard_setup). */
void bridge_shard_start(struct shard *sh);
/* Sets shard i up for addr (its timers initialised); returns 0. */
void bridge_shard_setup(struct bus *b, unsigned i, const struct redis_addr *addr);
/* Frees the bus once every timer is closed. */
void bridge_maybe_free(struct bus *b);
/* Subscribes the shard's own topics (after the first slot map). */
void bridge_resubscribe(struct shard *sh);
/* Takes a shard out of use: its connections close and are not retried. */
void bridge_shard_retire(struct shard *sh);

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

/* ---- cluster.c ---- */

#define CLUSTER_SLOTS SHARD_SLOTS
/* Sets up the bus for --redis-cluster: the seeds as provisional shards and
 * the map's timer.  Returns 0 or -1 (logged). */
int cluster_init(struct bus *b);
void cluster_free(struct bus *b);
/* Asks for the slot map again soon (a MOVED, a node lost, a slot gone). */
void cluster_refresh_soon(struct bus *b);
/* A shard's command connection came up. */
void cluster_cmd_up(struct shard *sh);
/* A MOVED or ASK error: where the slot is.  Returns the shard (added when
 * new) or NULL; *ask is set for ASK. */
struct shard *cluster_redirect(struct bus *b, const char *err, int *ask);

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
