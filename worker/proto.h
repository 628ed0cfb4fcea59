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
  PROTO_ENOHISTORY = -10, /* history asked of a topic that keeps none */
};

/* Where a resuming subscriber left off: the last offset it received and
 * the epoch it belonged to. */
#define PROTO_EPOCH_MAX 32
struct proto_since {
  unsigned long long offset;
  char epoch[PROTO_EPOCH_MAX + 1];
};

/* The most messages one history request returns (a client pages on). */
#define PROTO_HISTORY_LIMIT_MAX 100

struct proto_ops {
  /* Each returns PROTO_OK, PROTO_PENDING (the operation replies later) or
   * a negative enum proto_err.  topic is validated before the call.
   * id_json is the request's "id" serialized as JSON (NUL-terminated), or
   * NULL; a PENDING operation copies it for its later reply.  since is the
   * subscribe request's "since", or NULL. */
  int (*subscribe)(void *ctx, const char *topic, size_t tlen, const struct proto_since *since,
                   const char *id_json);
  int (*unsubscribe)(void *ctx, const char *topic, size_t tlen);
  int (*publish)(void *ctx, const char *topic, size_t tlen, const char *payload, size_t plen,
                 const char *id_json);
  /* Sends one text message; returns 0 or -1. */
  int (*send)(void *ctx, const char *msg, size_t len);
  /* {"type":"history","topic":T,"since":N,"limit":L}: PROTO_PENDING or an
   * error; limit is 1..PROTO_HISTORY_LIMIT_MAX. */
  int (*history)(void *ctx, const char *topic, size_t tlen, unsigned long long since,
                 unsigned limit, const char *id_json);
};

/* Handles one text message.  Returns the enum proto_err of the request
 * (for logs and metrics); the reply has been sent or is pending. */
int proto_handle(const struct proto_ops *ops, void *ctx, const char *msg, size_t len);

/* Sends {"status":status,"topic":topic[,"id":id]}. */
int proto_reply_status(const struct proto_ops *ops, void *ctx, const char *status,
                       const char *topic, size_t tlen, const char *id_json);
/* The same with members of extra (JSON members without braces, e.g.
 * "offset":5) after the topic; extra may be NULL. */
int proto_reply_status_ext(const struct proto_ops *ops, void *ctx, const char *status,
                           const char *topic, size_t tlen, const char *extra, const char *id_json);

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
int proto_find_member(const char *json, size_t len, const char *key, size_t *start, size_t *vlen);

#endif
