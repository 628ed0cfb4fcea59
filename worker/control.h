/* control.h - orders for every worker of every host, and questions to the
 * workers of this host, carried by the bus' control messages (bus.h).
 *
 * The orders come from the HTTP API: close (or unsubscribe from a topic)
 * every connection of one JWT subject, wherever it is connected.  The
 * question is how many subscriptions each topic has on this host: the
 * worker that asks sends it to every worker, the workers of its host (the
 * same master) answer to its inbox, and the answers are summed.
 *
 * Messages are JSON objects with an "op":
 *   {"op":"disconnect","sub":S}              every worker closes S's connections
 *   {"op":"disconnect","sub":S,"topic":T}    ...unsubscribes them from T
 *   {"op":"count","host":H,"to":INBOX,"rid":N}
 *   {"op":"counts","rid":N,"topics":[[T,n],...]}   the answer, to INBOX
 * Messages that are not understood are logged and dropped.
 *
 * Memory: requests are the caller's struct bus_call, which must stay valid
 * until its callback has fired; the lists handed to callbacks are borrowed
 * for the length of the call.
 */
#ifndef TIDINGS_CONTROL_H
#define TIDINGS_CONTROL_H

#include <stddef.h>
#include <stdint.h>

struct worker;
struct bus_call;

/* The close code and reason of a connection closed by an operator's
 * disconnect order. */
#define CLOSE_REVOKED 4403
#define CLOSE_REVOKED_REASON "revoked"

/* How long the workers of this host have to answer a count. */
#define CONTROL_GATHER_MS 1000

/* A topic with its number of subscriptions on this host. */
struct topic_count {
  const char *topic;
  size_t tlen;
  uint64_t here;
};

/* Sets up / tears down the worker's control state (w->control).  Stopping
 * answers the questions still waiting with BUS_EUNAVAILABLE; the memory is
 * released once the loop has run the close callbacks.  start returns 0 or
 * -1. */
int control_start(struct worker *w);
void control_stop(struct worker *w);

/* A control message from the bus. */
void control_on_message(struct worker *w, const char *msg, size_t len);

/* The topics that have subscribers on any host, sorted by name, each with
 * the number of subscriptions on this host (all its workers; a worker that
 * does not answer within CONTROL_GATHER_MS is left out, and logged).
 * call->topics fires later: BUS_OK with the list, or BUS_EUNAVAILABLE.
 * Returns BUS_OK or a negative enum bus_err. */
int control_topics(struct worker *w, struct bus_call *call);

/* topic NULL: closes, on every worker of every host, every WebSocket whose
 * JWT sub is sub, with CLOSE_REVOKED; else unsubscribes those connections
 * from topic (each gets {"status":"unsubscribed","topic":T,"reason":"revoked"}).
 * call->published(call, err, NULL) fires once the order is on the bus.
 * Returns BUS_OK or a negative enum bus_err. */
int control_disconnect(struct worker *w, const char *sub, size_t sublen, const char *topic,
                       size_t tlen, struct bus_call *call);

#endif
