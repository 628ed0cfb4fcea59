/* pubsub.h - the worker's side of the bus (bus.h).
 *
 * pubsub_start() creates the worker's bus and hands it the worker's half of
 * the contract: deliveries go to broadcast(), finished publishes are
 * answered on the connection that asked, and the topic table's first/last
 * subscriber events become bus_topic_first/last.  pubsub_publish() is the
 * one way a client's publish reaches the bus.
 *
 * A publish in flight holds a reference on its connection (conn_ref), so a
 * client that leaves before the bus answers is freed only after the answer;
 * the reply is then dropped.
 */
#ifndef TIDINGS_PUBSUB_H
#define TIDINGS_PUBSUB_H

#include <stddef.h>

struct worker;
struct conn;

/* Creates w->bus and hooks w->topics to it.  Returns 0 or -1 (logged). */
int pubsub_start(struct worker *w);
/* Frees the bus; publishes still in flight are answered with an error. */
void pubsub_stop(struct worker *w);

/* Publishes payload (valid JSON) to topic for connection c.  Returns
 * PROTO_PENDING (the reply, with id_json, is sent when the bus answers) or
 * a negative enum proto_err for the caller to answer at once. */
int pubsub_publish(struct conn *c, const char *topic, size_t tlen, const char *payload, size_t plen,
                   const char *id_json);

#endif
