#include "backoff.h"

#include <assert.h>

uint64_t backoff_delay(const struct backoff *p, unsigned attempt, uint32_t rnd) {
  assert(p->min_ms > 0 && p->min_ms <= p->max_ms);
  uint64_t d = p->min_ms;
  for (unsigned i = 0; i < attempt && d < p->max_ms; i++) d *= 2;
  if (d > p->max_ms) d = p->max_ms;
  if (p->jitter) d = d / 2 + rnd % (d / 2 + 1);
  return d;
}
