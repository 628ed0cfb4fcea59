/* bridge.h - the Redis bus' own state, shared by its two files and by
 * nothing outside redis/: bridge.c (the connections, Pub/Sub, plain
 * publishes) and history.c (history publishes and reads, the envelope).
 *
 * Everything runs on the worker's loop.  The bus owns both hiredis contexts
 * and everything hanging off them.
 */
#ifndef TIDINGS_REDIS_BRIDGE_H
#define TIDINGS_REDIS_BRIDGE_H

#include <hiredis/async.h>
#include <stdint.h>

#include "../common/config.h"
#include "../common/redisaddr.h"
#include "../worker/bus.h"

#define CHANNEL_MAX (REDIS_PREFIX_MAX_LEN + TOPIC_MAX_LEN)
#define BUS_INBOX_LEN 16 /* hex digits */
/* <prefix>.tidings.to.<inbox> */
#define CONTROL_CHANNEL_MAX (REDIS_PREFIX_MAX_LEN + 12 + BUS_INBOX_LEN + 1)

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

struct unsub;
struct read_wait;

struct bus {
  struct bus_env env;
  struct redis_addr addr;
  char where[160];
  const char *prefix;
  size_t prefix_len;
  struct rconn cmd, sub;
  struct unsub *unsubs;
  int closing;
  /* history (history.c) */
  char *lib;              /* the function library's text, or NULL without history */
  int lib_loaded;         /* FUNCTION LOAD succeeded on this command connection */
  uint64_t sub_sent;      /* channels sent in SUBSCRIBE since the subscriber connected */
  uint64_t sub_confirmed; /* their confirmations received */
  struct read_wait *waits, **waits_tail; /* history reads waiting for them */
  /* control messages (control.c) */
  char inbox[BUS_INBOX_LEN + 1];
  char ctl_all[CONTROL_CHANNEL_MAX], ctl_to[CONTROL_CHANNEL_MAX];
  size_t ctl_all_len, ctl_to_len;
};

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
/* Queues FUNCTION LOAD on a new command connection.  Returns 0 or -1. */
int history_load(struct bus *b, redisAsyncContext *ac);
/* The command connection went down: the library must be loaded again. */
void history_cmd_down(struct bus *b);

/* Subscription bookkeeping, so that a history read is answered as of a
 * moment when the topic's live messages already reach this worker: n more
 * channels were sent in a SUBSCRIBE; one was confirmed; the subscriber
 * connection went down (nothing more will be confirmed: waiting reads go). */
void history_sub_sent(struct bus *b, size_t n);
void history_sub_confirmed(struct bus *b);
void history_sub_reset(struct bus *b);
/* The re-subscription after a (re)connect has been sent: host.resynced
 * fires once Redis has confirmed all of it.  Returns 0 or -1 (memory). */
int history_resync_after(struct bus *b);

/* Queues the publish of a message with history (tidings_publish).  Returns
 * BUS_OK or a negative enum bus_err (no callback then). */
int history_publish(struct bus *b, const char *channel, size_t clen, const char *payload,
                    size_t plen, void *req);

/* Splits a message of the channel into its place in history and payload.
 * Returns 1 for the envelope of tidings_publish ("\0tdg1:<offset>:<epoch>:"
 * then the payload; pos, *payload and *plen set), 0 for a plain message
 * (left as it is), -1 for a malformed envelope. */
int history_parse_envelope(const char *msg, size_t len, struct bus_pos *pos, const char **payload,
                           size_t *plen);

#endif
