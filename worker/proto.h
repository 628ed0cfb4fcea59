/* proto.h - the JSON pub/sub protocol, without sockets.
 *
 * proto_handle() takes one complete text message, decides what it asks
 * for, and calls back into the connection through struct proto_ops.  Every
 * request gets exactly one reply: proto_handle() sends error replies and the
 * replies of synchronous operations itself; an operation that returns
 * PROTO_PENDING (publish through Redis) replies later with
 * proto_reply_status() or proto_reply_error().
 *
 * Replies are written into a caller-visible scratch buffer and handed to
 * ops->send(); the callee copies what it keeps.  Nothing here retains a
 * pointer after returning.
 */
#ifndef TIDINGS_PROTO_H
#define TIDINGS_PROTO_H

#include <stddef.h>

enum proto_err {
  PROTO_OK = 0,
  PROTO_PENDING = 1,
  PROTO_EFORMAT = -1,     /* not JSON, not an object, wrong field types */
  PROTO_ETYPE = -2,       /* unknown "type" */
  PROTO_ETOPIC = -3,      /* topic name not valid */
  PROTO_ENOTSUB = -4,     /* unsubscribe from a topic not subscribed */
  PROTO_ETOOMANY = -5,    /* --max-subscriptions reached */
  PROTO_EBUS = -6,        /* message bus (Redis) unavailable */
  PROTO_EFORBIDDEN = -7,  /* not allowed by the client's token */
  PROTO_ERATE = -8,       /* rate limit */
  PROTO_EINTERNAL = -9,   /* out of memory and the like */
};

struct proto_ops {
  /* Each returns PROTO_OK, PROTO_PENDING (publish only) or a negative
   * enum proto_err.  topic is validated before the call.  id_json is the
   * request's "id" serialized as JSON (NUL-terminated), or NULL; a
   * PENDING publish copies it for its later reply. */
  int (*subscribe)(void *ctx, const char *topic, size_t tlen);
  int (*unsubscribe)(void *ctx, const char *topic, size_t tlen);
  int (*publish)(void *ctx, const char *topic, size_t tlen, const char *payload, size_t plen,
                 const char *id_json);
  /* Sends one text message; returns 0 or -1. */
  int (*send)(void *ctx, const char *msg, size_t len);
};

/* Handles one text message.  Returns the enum proto_err of the request
 * (for logs and metrics); the reply has been sent or is pending. */
int proto_handle(const struct proto_ops *ops, void *ctx, const char *msg, size_t len);

/* Sends {"status":status,"topic":topic[,"id":id]}. */
int proto_reply_status(const struct proto_ops *ops, void *ctx, const char *status,
                       const char *topic, size_t tlen, const char *id_json);

/* Sends {"error":text,"code":code[,"topic":topic][,"id":id]}; topic may be
 * NULL.  topic is escaped, so any bytes are safe. */
int proto_reply_error(const struct proto_ops *ops, void *ctx, int err, const char *topic,
                      size_t tlen, const char *id_json);

/* The stable machine-readable code and the human text of an error. */
const char *proto_err_code(int err);
const char *proto_err_text(int err);

/* Finds the raw text of the value of top-level member key in a JSON object
 * that is already known to be valid.  Returns 0 and sets *start and *vlen,
 * or -1 when not found or the key is written with escapes. */
int proto_find_member(const char *json, size_t len, const char *key, size_t *start,
                      size_t *vlen);

#endif
