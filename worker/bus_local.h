/* bus_local.h - test controls of the local bus (bus_local.c), which
 * implements bus.h for the unit tests.
 *
 * With --history-size > 0 the local bus keeps each topic's history in
 * memory, as the Redis functions of docs/history.md do: a publish with keep
 * set gets the topic's next offset in its epoch (BUS_LOCAL_EPOCH at first),
 * the last --history-size messages are kept, and bus_history() answers as
 * tidings_history would, on a later loop turn.  The controls below make the
 * situations the worker must survive: lost deliveries, late history
 * answers, a lost history, duplicates, a re-subscription, messages from
 * outside.  Topics are NUL-terminated strings here. */
#ifndef TIDINGS_BUS_LOCAL_H
#define TIDINGS_BUS_LOCAL_H

#include <stddef.h>
#include <stdint.h>

struct bus;

/* The epoch of every topic's first history. */
#define BUS_LOCAL_EPOCH "local-1"

/* Takes the bus down (publishes are refused with PROTO_EBUS) or up. */
void bus_local_set_ready(struct bus *b, int ready);
/* The number of topics the worker has said have local subscribers. */
size_t bus_local_topics(const struct bus *b);

/* ---- history (--history-size > 0) ---- */

/* The next n deliveries of topic to the worker are lost (a Redis
 * output-buffer cut): the messages are still stored and acknowledged. */
void bus_local_drop(struct bus *b, const char *topic, unsigned n);

/* hold 1: answers to history reads wait until released (live messages go
 * on meanwhile); hold 0: stop holding, every waiting read is answered on
 * the next loop turn. */
void bus_local_hold_history(struct bus *b, int hold);
/* While holding: the n oldest waiting reads are answered on the next loop
 * turn. */
void bus_local_release_history(struct bus *b, size_t n);
/* The next n answers to history reads are BUS_EUNAVAILABLE (Redis went
 * away with the reads on its connection). */
void bus_local_fail_history(struct bus *b, size_t n);
/* Every waiting read takes its answer now, as if Redis ran it at this
 * moment; otherwise a read takes it when it is answered. */
void bus_local_snapshot_history(struct bus *b);
/* Reads the worker made so far / that wait for their answer. */
size_t bus_local_history_reads(const struct bus *b);
size_t bus_local_history_waiting(const struct bus *b);
/* The since and limit of the worker's last read (0 when none yet). */
void bus_local_last_read(const struct bus *b, uint64_t *since, size_t *limit);

/* The topic's history is lost (expired, evicted, a Redis restart): it holds
 * nothing and has no epoch until the next publish, which starts epoch
 * (1..BUS_EPOCH_MAX of [A-Za-z0-9-]) at offset 1.  Returns 0 or -1. */
int bus_local_new_epoch(struct bus *b, const char *topic, const char *epoch);
/* The topic's newest offset and its epoch ("" when none). */
uint64_t bus_local_top(const struct bus *b, const char *topic, const char **epoch);

/* Delivers the stored message at offset again (a duplicate).  Returns 0, or
 * -1 when the history does not hold it. */
int bus_local_redeliver(struct bus *b, const char *topic, uint64_t offset);

/* Calls host.resynced(), as a bus does when its subscriptions are back
 * after an interruption. */
void bus_local_resynced(struct bus *b);

/* A message from outside the server (payload checked by the worker).  keep
 * 1: as `FCALL tidings_publish` from redis-cli: stored with the next
 * offset, delivered with its position (needs --history-size > 0); keep 0:
 * as a plain `PUBLISH`: no position, not stored.  Returns the offset it
 * got, 0 for none, or -1 (no memory, or no history kept). */
int64_t bus_local_inject(struct bus *b, const char *topic, const char *payload, int keep);

#endif
