/* backoff.h - how long to wait before trying again.
 *
 * One policy serves every retry loop: the master restarting a worker or the
 * embedded redis-server, and a worker reconnecting to Redis.  The delay
 * doubles from min_ms with each failed attempt up to max_ms; with jitter it
 * is drawn from [d/2, d], so that many workers (or hosts) that lost the same
 * Redis at the same moment do not come back in step.  Pure arithmetic, no
 * state beyond the caller's attempt counter.
 */
#ifndef TIDINGS_BACKOFF_H
#define TIDINGS_BACKOFF_H

#include <stdint.h>

struct backoff {
  uint32_t min_ms;
  uint32_t max_ms; /* >= min_ms */
  int jitter;      /* draw from [d/2, d] */
};

/* The delay in ms before retry number `attempt` (0 for the first retry).
 * `rnd` is any random value (only used with jitter). */
uint64_t backoff_delay(const struct backoff *p, unsigned attempt, uint32_t rnd);

#endif
