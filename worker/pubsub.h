/* pubsub.h - the worker's side of the bus (bus.h).
 *
 * pubsub_start() creates the worker's bus and hands it the worker's half of
 * the contract: deliveries go to broadcast(), finished publishes are
 * answered on the connection that asked, and the topic table's first/last
 * subscriber events become bus_topic_first/last, and control messages go
 * to control.c.  pubsub_publish_call() is the one way a publish reaches
 * the bus, from a WebSocket client (pubsub_publish) or the HTTP API.
 *
 * Every request the worker makes of the bus (publish, history read,
 * control message, channel list) passes a struct bus_call as the bus'
 * opaque req: the requester embeds it as the first member of its own
 * struct and sets the callback that matches the request, which pubsub.c
 * calls with the bus' answer.
 *
 * A publish in flight holds a reference on its connection (conn_ref), so a
 * client that leaves before the bus answers is freed only after the answer;
 * the reply is then dropped.
 */
#ifndef TIDINGS_PUBSUB_H
#define TIDINGS_PUBSUB_H

#include <stddef.h>
#include <stdint.h>

struct worker;
struct conn;
struct bus_pos;
struct bus_history;
struct bus_name;
struct topic_count;

/* The answer to a request, called exactly once, later, never from inside
 * the call that made the request; err is an enum bus_err (bus.h). */
struct bus_call {
  /* bus_publish, bus_control: pos is NULL without history */
  void (*published)(struct bus_call *call, int err, const struct bus_pos *pos);
  /* bus_history */
  void (*history)(struct bus_call *call, int err, const struct bus_history *h);
  /* bus_channels */
  void (*channels)(struct bus_call *call, int err, const struct bus_name *v, size_t n);
  /* control_topics() (control.h) */
  void (*topics)(struct bus_call *call, int err, const struct topic_count *v, size_t n);
  unsigned is_publish : 1; /* set by pubsub_publish_call: counted in the metrics */
};

/* Creates w->bus and hooks w->topics to it.  Returns 0 or -1 (logged). */
int pubsub_start(struct worker *w);
/* Frees the bus; publishes still in flight are answered with an error. */
void pubsub_stop(struct worker *w);

/* Publishes payload (valid JSON, forwarded as it is) to topic, kept in the
 * topic's history when it has one.  Returns BUS_OK (call->published fires
 * later) or a negative enum bus_err (it never fires).  Counts the publish
 * metrics. */
int pubsub_publish_call(struct worker *w, const char *topic, size_t tlen, const char *payload,
                        size_t plen, struct bus_call *call);

/* Reads a topic's history: the messages after since, at most limit.
 * Returns BUS_OK (call->history fires later) or a negative enum bus_err.
 * The caller checks recovery_keeps() first. */
int pubsub_history_call(struct worker *w, const char *topic, size_t tlen, uint64_t since,
                        size_t limit, struct bus_call *call);

/* Publishes payload (valid JSON) to topic for connection c.  Returns
 * PROTO_PENDING (the reply, with id_json, is sent when the bus answers) or
 * a negative enum proto_err for the caller to answer at once. */
int pubsub_publish(struct conn *c, const char *topic, size_t tlen, const char *payload, size_t plen,
                   const char *id_json);

#endif
