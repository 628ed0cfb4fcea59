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
#include <stdint.h>

struct worker;
struct topic;
struct conn;
struct sbuf;
struct bus_pos;

/* Delivers to every subscriber of t; pos (NULL: none) is the message's
 * place in the topic's history and goes into the notification as
 * "offset":N (and "epoch":E for offset 1).  A subscription waiting for its history (ext set) keeps
 * the frame for later (recovery_hold).  Returns the number of subscribers the message was queued
 * to. */
size_t broadcast(struct worker *w, struct topic *t, const char *payload, size_t plen, int is_json,
                 const struct bus_pos *pos);

/* The notification frame for one connection (compressed if it negotiated
 * permessage-deflate and the message is over the threshold), refcount 1,
 * or NULL.  For messages only c gets: a resumed subscription's history. */
struct sbuf *broadcast_frame_for(struct conn *c, const char *topic, size_t tlen,
                                 const char *payload, size_t plen, int is_json,
                                 const struct bus_pos *pos);

/* payload as a JSON value: a copy when it is JSON, else a JSON string (as
 * in notifications).  Returns a malloc'ed string and its length, or NULL. */
char *broadcast_payload_json(const char *payload, size_t plen, size_t *len);

/* Builds the notification JSON for payload (checked as above).  Returns a
 * malloc'ed string and its length in *len, or NULL.  Exposed for tests. */
char *broadcast_notification(const char *topic, size_t tlen, const char *payload, size_t plen,
                             int is_json, const struct bus_pos *pos, size_t *len);

#endif
