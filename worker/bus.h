/* bus.h - the contract between a worker and the bus that carries messages
 * between workers and hosts.
 *
 * A bus is anything that takes a worker's publishes and hands back every
 * message published to a topic the worker has subscribers for: one Redis
 * (redis/bridge.c), an in-process bus for the unit tests (worker/bus_local.c),
 * later several Redis shards or a Redis Cluster.  Exactly one implementation
 * is linked into a binary.  Nothing else in the worker knows which one it is,
 * and a bus knows nothing of connections, frames or the JSON protocol: it
 * sees topics and payloads as bytes.
 *
 * Both directions, all on the worker's loop (single-threaded):
 *
 *   worker -> bus      bus_publish, bus_history, bus_topic_first,
 *                      bus_topic_last, bus_ready, bus_not_ready_reason,
 *                      bus_control, bus_inbox, bus_channels
 *   bus -> worker      struct bus_host: deliver, published, history,
 *                      each_topic, resynced, control, channels
 *
 * Besides topics, the bus carries control messages between workers (of
 * every host on the same bus): orders for all of them, and answers to one
 * worker's inbox.  The bus does not read them.
 *
 * Memory: every pointer passed in either direction is borrowed for the
 * length of the call; whoever keeps bytes copies them.  The bus_env (and the
 * config, metrics and loop it points to) must outlive the bus.
 */
#ifndef TIDINGS_BUS_H
#define TIDINGS_BUS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct config;
struct metrics;
struct bus;

/* An epoch: an opaque string that changes whenever a topic's history may
 * have been lost; at most BUS_EPOCH_MAX bytes of [A-Za-z0-9-]. */
#define BUS_EPOCH_MAX 32

/* Where a message stands in its topic's history: its offset (one more than
 * the previous message's) within the epoch. */
struct bus_pos {
  uint64_t offset; /* >= 1 */
  char epoch[BUS_EPOCH_MAX + 1];
};

struct bus_msg {
  uint64_t offset;
  const char *payload;
  size_t plen;
};

/* The answer to bus_history(): what the topic's history holds now. */
struct bus_history {
  const char *epoch; /* "" when the topic has no history */
  uint64_t top;      /* the newest offset, 0 when none */
  uint64_t first;    /* the oldest offset still held, 0 when none */
  size_t count;
  const struct bus_msg *msgs; /* the messages after `since`, oldest first */
};

/* A topic name in a list (not NUL-terminated). */
struct bus_name {
  const char *p;
  size_t n;
};

/* What a publish can fail with. */
enum bus_err {
  BUS_OK = 0,
  BUS_EUNAVAILABLE = -1, /* the bus is down or lost the message's connection */
  BUS_ENOMEM = -2,
};

/* What the bus calls back.  None of these may call bus_free(). */
struct bus_host {
  void *arg; /* handed back as the first argument of each callback */

  /* A message for topic arrived.  is_json: the bus vouches that payload is
   * valid JSON (it came from this server's own validated publish);
   * otherwise the worker checks it (an outside `redis-cli PUBLISH`).  pos:
   * its place in the topic's history, or NULL for a message that has none
   * (a topic without history, a plain PUBLISH from outside). */
  void (*deliver)(void *arg, const char *topic, size_t tlen, const char *payload, size_t plen,
                  int is_json, const struct bus_pos *pos);

  /* A publish accepted by bus_publish() (it returned 0) has finished: err
   * is BUS_OK when the bus took the message, or BUS_EUNAVAILABLE.  pos: the
   * place the message got in its topic's history (a publish with keep set),
   * else NULL.  Called exactly once per accepted publish, never from
   * inside bus_publish(), possibly after the worker's own delivery of the
   * same message. */
  void (*published)(void *arg, void *req, int err, const struct bus_pos *pos);

  /* Calls fn once for each topic that has local subscribers (a bus
   * re-subscribes them after it lost its connection).  fn may not change
   * the topic table. */
  void (*each_topic)(void *arg, void (*fn)(void *fnarg, const char *topic, size_t tlen),
                     void *fnarg);

  /* The answer to bus_history(): err is BUS_OK with h, or BUS_EUNAVAILABLE
   * with h NULL.  Exactly once per accepted request, never from inside
   * bus_history(). */
  void (*history)(void *arg, void *req, int err, const struct bus_history *h);

  /* The bus' subscriptions came back after an interruption (everything is
   * subscribed again): messages published meanwhile reached no one here,
   * and the worker may catch up from history. */
  void (*resynced)(void *arg);

  /* A control message arrived: one sent with bus_control() to every
   * worker, or to this worker's inbox. */
  void (*control)(void *arg, const char *msg, size_t len);

  /* The answer to bus_channels(): err is BUS_OK with the n topics that have
   * a subscriber on some worker of some host on the bus (in no order), or
   * BUS_EUNAVAILABLE with none.  Exactly once per accepted request, never
   * from inside bus_channels(). */
  void (*channels)(void *arg, void *req, int err, const struct bus_name *v, size_t n);
};

struct bus_env {
  uv_loop_t *loop;
  const struct config *cfg; /* --redis, --redis-prefix, --max-message-size */
  struct metrics *m;        /* the worker's shared-memory row */
  int worker_id;
  struct bus_host host;
};

/* Creates a bus that starts connecting at once.  Returns NULL (logged)
 * when the configuration cannot work or memory is short. */
struct bus *bus_new(const struct bus_env *env);

/* Stops the bus.  Every publish still pending gets its published()
 * callback with BUS_EUNAVAILABLE before this returns; the bus' memory is
 * released once the loop has run the close callbacks of its handles.
 * NULL is fine. */
void bus_free(struct bus *b);

/* Hands a message to the bus.  Returns BUS_OK when accepted (host.published
 * fires later with req), or a negative enum bus_err at once, in which case
 * the callback never fires.  payload is valid JSON.  keep: store it in the
 * topic's history (--history-size messages for --history-ttl seconds) and
 * give it an offset, in one atomic step with its delivery. */
int bus_publish(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                int keep, void *req);

/* Reads the topic's history: the messages after offset since (0: all that
 * is held), at most limit of them.  Returns BUS_OK (host.history fires
 * later with req) or a negative enum bus_err at once. */
int bus_history(struct bus *b, const char *topic, size_t tlen, uint64_t since, size_t limit,
                void *req);

/* Sends a control message to every worker of every host on the bus, this
 * one included (to NULL), or to the one worker whose bus_inbox() is to.  It
 * arrives through host.control.  Returns BUS_OK, after which, when req is
 * not NULL, host.published fires with req (pos NULL) once the bus has taken
 * the message; or a negative enum bus_err at once. */
int bus_control(struct bus *b, const char *to, const char *msg, size_t len, void *req);

/* This worker's address for bus_control(): a NUL-terminated string of
 * [A-Za-z0-9-], unique among the workers on the bus, owned by the bus. */
const char *bus_inbox(const struct bus *b);

/* Asks which topics have subscribers anywhere on the bus.  Returns BUS_OK
 * (host.channels fires later with req) or a negative enum bus_err. */
int bus_channels(struct bus *b, void *req);

/* The topic got its first local subscriber / lost its last one.  A bus
 * that cannot act on it now (disconnected) catches up when it reconnects,
 * through host.each_topic. */
void bus_topic_first(struct bus *b, const char *topic, size_t tlen);
void bus_topic_last(struct bus *b, const char *topic, size_t tlen);

/* 1 when publishes can be accepted and deliveries arrive (/readyz). */
int bus_ready(const struct bus *b);

/* What is missing when bus_ready() is 0, "ready" otherwise: a static
 * string.  NULL is fine. */
const char *bus_not_ready_reason(const struct bus *b);

#endif
