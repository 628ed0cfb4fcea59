/* The local bus: a publish reaches this worker's subscribers only.  Used
 * by the unit tests; the server links redis/bridge.c instead. */
#include <stdlib.h>

#include "broadcast.h"
#include "bus.h"
#include "proto.h"

struct bus {
  struct worker *w;
};

struct bus *bus_new(struct worker *w) {
  struct bus *b = malloc(sizeof(*b));
  if (b) b->w = w;
  return b;
}

void bus_free(struct bus *b) { free(b); }

int bus_publish(struct bus *b, struct conn *c, const char *topic, size_t tlen,
                const char *payload, size_t plen, const char *id_json) {
  (void)c;
  (void)id_json;
  broadcast(b->w, topic, tlen, payload, plen, 1);
  return PROTO_OK;
}

void bus_topic_first(void *bus, const struct topic *t) {
  (void)bus;
  (void)t;
}

void bus_topic_last(void *bus, const struct topic *t) {
  (void)bus;
  (void)t;
}

int bus_ready(const struct bus *b) { return b != NULL; }
