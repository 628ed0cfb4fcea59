/* slow.h - the slow-subscriber policy, in one place.
 *
 * A connection whose output queue holds --max-queued-bytes or more is "over
 * the cap".  While it is:
 *   - broadcasts skip it and count what it missed (slow_skip); the next
 *     notification it does get carries "missed":N (slow_send_missed);
 *   - the worker stops reading from it, since its requests would only add
 *     replies, until the queue is under half the cap (slow_after_flush);
 *   - with --slow-policy disconnect, once it has been over the cap for
 *     --slow-grace seconds it is sent close 1013 and drained (slow_tick).
 * Replies and control frames are always queued; a queue that grows past
 * the hard limit anyway (4 x the cap + 1 MiB) means the connection is
 * closed at once (slow_over_hard_limit).
 *
 * Everything runs on the worker's loop; nothing here allocates except
 * slow_send_missed, whose frame belongs to the connection's queue.
 */
#ifndef TIDINGS_SLOW_H
#define TIDINGS_SLOW_H

#include <stddef.h>
#include <stdint.h>

struct conn;

/* For a broadcast: 1 when c is over the cap and must be skipped (counted
 * as missed), else 0. */
int slow_skip(struct conn *c);

/* When c missed notifications: queues the notification json[0..jlen)
 * (ending in '}') with ,"missed":N added, resets the count and returns the
 * number of bytes added to the JSON; returns -1 (count kept) when it could
 * not be queued.  born_us stamps the frame for the latency histogram. */
int slow_send_missed(struct conn *c, const uint8_t *json, size_t jlen, uint64_t born_us);

/* 1 when the queue is past the hard limit: close at once. */
int slow_over_hard_limit(const struct conn *c);

/* After a flush: ends the over-cap period once the queue is under the cap,
 * and pauses or resumes reading. */
void slow_after_flush(struct conn *c);

/* Once a tick (now in loop ms): applies --slow-policy disconnect. */
void slow_tick(struct conn *c, uint64_t now);

#endif
