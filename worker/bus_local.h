/* bus_local.h - test controls of the local bus (bus_local.c), which
 * implements bus.h for the unit tests. */
#ifndef TIDINGS_BUS_LOCAL_H
#define TIDINGS_BUS_LOCAL_H

#include <stddef.h>

struct bus;

/* Takes the bus down (publishes are refused with PROTO_EBUS) or up. */
void bus_local_set_ready(struct bus *b, int ready);
/* The number of topics the worker has said have local subscribers. */
size_t bus_local_topics(const struct bus *b);

#endif
