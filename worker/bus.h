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
 *   worker -> bus      bus_publish, bus_topic_first, bus_topic_last,
 *                      bus_ready, bus_not_ready_reason
 *   bus -> worker      struct bus_host: deliver, published, each_topic
 *
 * Memory: every pointer passed in either direction is borrowed for the
 * length of the call; whoever keeps bytes copies them.  The bus_env (and the
 * config, metrics and loop it points to) must outlive the bus.
 */
#ifndef TIDINGS_BUS_H
#define TIDINGS_BUS_H

#include <stddef.h>
#include <uv.h>

struct config;
struct metrics;
struct bus;

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
   * otherwise the worker checks it (an outside `redis-cli PUBLISH`). */
  void (*deliver)(void *arg, const char *topic, size_t tlen, const char *payload, size_t plen,
                  int is_json);

  /* A publish accepted by bus_publish() (it returned 0) has finished: err
   * is BUS_OK when the bus took the message, or BUS_EUNAVAILABLE.  Called exactly once per accepted publish, never from
   * inside bus_publish(), possibly after the worker's own delivery of the
   * same message. */
  void (*published)(void *arg, void *req, int err);

  /* Calls fn once for each topic that has local subscribers (a bus
   * re-subscribes them after it lost its connection).  fn may not change
   * the topic table. */
  void (*each_topic)(void *arg, void (*fn)(void *fnarg, const char *topic, size_t tlen),
                     void *fnarg);
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
 * the callback never fires.  payload is valid JSON. */
int bus_publish(struct bus *b, const char *topic, size_t tlen, const char *payload, size_t plen,
                void *req);

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
