/* bus.h - where a publish goes and where deliveries come from.
 *
 * bus_publish() is the one function every publish passes through.  The
 * local bus delivers to this worker's subscribers at once; the Redis bus
 * (redis/) sends the payload to Redis and answers the client when Redis
 * has acknowledged it, and calls bus_deliver() for every message Redis
 * hands back.  bus_topic_first/last are the topic table's callbacks.
 */
#ifndef TIDINGS_BUS_H
#define TIDINGS_BUS_H

#include <stddef.h>

struct bus;
struct conn;
struct worker;
struct topic;

struct bus *bus_new(struct worker *w);
void bus_free(struct bus *b);

/* Returns PROTO_OK (replied by the caller), PROTO_PENDING (the bus replies
 * later through proto_reply_*) or a negative enum proto_err. */
int bus_publish(struct bus *b, struct conn *c, const char *topic, size_t tlen,
                const char *payload, size_t plen, const char *id_json);

void bus_topic_first(void *bus, const struct topic *t);
void bus_topic_last(void *bus, const struct topic *t);

/* 1 when publishes can be accepted and deliveries arrive (for /healthz
 * and /readyz). */
int bus_ready(const struct bus *b);

/* What is missing when bus_ready() is 0: a static string. */
const char *bus_not_ready_reason(const struct bus *b);

#endif
