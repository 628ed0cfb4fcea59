/* reject.h - why a connection was refused before or at its handshake.
 *
 * Workers count refusals by reason in shared memory (metrics.h sizes its
 * counter array by REJECT__COUNT) and the master's /metrics names them, so
 * the enum lives here, shared by both.
 */
#ifndef TIDINGS_REJECT_H
#define TIDINGS_REJECT_H

enum reject_reason {
  REJECT_BAD_REQUEST, /* 400/405/426: not a valid upgrade */
  REJECT_TOO_LARGE,   /* 431 */
  REJECT_TIMEOUT,     /* head not complete within --handshake-timeout */
  REJECT_PROXY,       /* missing or bad PROXY header */
  REJECT_ORIGIN,      /* 403 */
  REJECT_AUTH,        /* 401 */
  REJECT_PER_IP,      /* 429 */
  REJECT_FULL,        /* 503: --max-connections */
  REJECT_SHUTDOWN,    /* 503: draining */
  REJECT__COUNT
};

/* The reason's label in metrics ("bad_request", ...): a static string. */
static inline const char *reject_name(enum reject_reason r) {
  static const char *const names[REJECT__COUNT] = {"bad_request", "too_large", "timeout",
                                                   "proxy",       "origin",    "auth",
                                                   "per_ip",      "full",      "shutdown"};
  return (unsigned)r < REJECT__COUNT ? names[r] : "other";
}

#endif
