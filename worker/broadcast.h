/* broadcast.h - deliver one message to a worker's subscribers of a topic.
 *
 * The notification {"type":"notification","topic":T,"payload":P} is framed
 * once into a shared buffer and every subscriber's queue takes a reference:
 * no per-subscriber copy or encoding.  payload is used as is when is_json
 * is set (the caller vouches that it is valid JSON); otherwise it is
 * checked and, if not JSON, sent as a JSON string.  The bytes are copied,
 * the caller keeps ownership of its arguments.
 */
#ifndef TIDINGS_BROADCAST_H
#define TIDINGS_BROADCAST_H

#include <stddef.h>

struct worker;

/* Returns the number of subscribers the message was queued to. */
size_t broadcast(struct worker *w, const char *topic, size_t tlen, const char *payload,
                 size_t plen, int is_json);

/* Builds the notification JSON for payload (checked as above).  Returns a
 * malloc'ed string and its length in *len, or NULL.  Exposed for tests. */
char *broadcast_notification(const char *topic, size_t tlen, const char *payload, size_t plen,
                             int is_json, size_t *len);

#endif
