#include "proto.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/topic.h"
#include "../common/utf8.h"

const char *proto_err_code(int err) {
  switch (err) {
    case PROTO_EFORMAT: return "invalid_format";
    case PROTO_ETYPE: return "unknown_type";
    case PROTO_ETOPIC: return "invalid_topic";
    case PROTO_ENOTSUB: return "not_subscribed";
    case PROTO_ETOOMANY: return "too_many_subscriptions";
    case PROTO_EBUS: return "bus_unavailable";
    case PROTO_EFORBIDDEN: return "forbidden";
    case PROTO_ERATE: return "rate_limited";
    case PROTO_ENOHISTORY: return "no_history";
    default: return "internal_error";
  }
}

const char *proto_err_text(int err) {
  switch (err) {
    case PROTO_EFORMAT: return "Invalid message format";
    case PROTO_ETYPE: return "Unknown message type";
    case PROTO_ETOPIC: return "Invalid topic name";
    case PROTO_ENOTSUB: return "Not subscribed to this topic";
    case PROTO_ETOOMANY: return "Too many subscriptions";
    case PROTO_EBUS: return "Message bus unavailable, message not published";
    case PROTO_EFORBIDDEN: return "Not allowed for this topic";
    case PROTO_ERATE: return "Rate limit exceeded";
    case PROTO_ENOHISTORY: return "This topic keeps no history";
    default: return "Internal server error";
  }
}

/* Replies are small: topic <= 128 bytes, id bounded by the message size.
 * A large id falls back to the heap. */
static int send_parts(const struct proto_ops *ops, void *ctx, const char *head, size_t hlen,
                      const char *id_json) {
  char stack[512];
  size_t idlen = id_json ? strlen(id_json) : 0;
  size_t need = hlen + (id_json ? 6 + idlen : 0) + 1;
  char *out = need <= sizeof(stack) ? stack : malloc(need);
  if (!out) return -1;
  memcpy(out, head, hlen);
  size_t n = hlen;
  if (id_json) {
    memcpy(out + n, ",\"id\":", 6);
    memcpy(out + n + 6, id_json, idlen);
    n += 6 + idlen;
  }
  out[n++] = '}';
  int rc = ops->send(ctx, out, n);
  if (out != stack) free(out);
  return rc;
}

int proto_reply_status(const struct proto_ops *ops, void *ctx, const char *status,
                       const char *topic, size_t tlen, const char *id_json) {
  return proto_reply_status_ext(ops, ctx, status, topic, tlen, NULL, id_json);
}

int proto_reply_status_ext(const struct proto_ops *ops, void *ctx, const char *status,
                           const char *topic, size_t tlen, const char *extra, const char *id_json) {
  char head[384];
  /* topic is a validated name: no character needs escaping */
  int n = snprintf(head, sizeof(head), "{\"status\":\"%s\",\"topic\":\"%.*s\"%s%s", status,
                   (int)tlen, topic, extra ? "," : "", extra ? extra : "");
  if (n < 0 || (size_t)n >= sizeof(head)) return -1;
  return send_parts(ops, ctx, head, (size_t)n, id_json);
}

int proto_reply_error(const struct proto_ops *ops, void *ctx, int err, const char *topic,
                      size_t tlen, const char *id_json) {
  char head[1536];
  int n = snprintf(head, sizeof(head), "{\"error\":\"%s\",\"code\":\"%s\"", proto_err_text(err),
                   proto_err_code(err));
  if (n < 0) return -1;
  if (topic) {
    /* echo at most 200 bytes, cut on a character boundary so it stays UTF-8 */
    size_t cut = utf8_valid_prefix((const uint8_t *)topic, tlen > 200 ? 200 : tlen);
    json_t *s = json_stringn(topic, cut);
    char *esc = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
    if (esc) {
      int m = snprintf(head + n, sizeof(head) - (size_t)n, ",\"topic\":%s", esc);
      if (m > 0 && (size_t)(n + m) < sizeof(head)) n += m;
      free(esc);
    }
  }
  return send_parts(ops, ctx, head, (size_t)n, id_json);
}

/* Skips a JSON string starting at s[i] == '"'; returns the index after it. */
static size_t skip_string(const char *s, size_t len, size_t i) {
  for (i++; i < len; i++) {
    if (s[i] == '\\') i++;
    else if (s[i] == '"') return i + 1;
  }
  return len;
}

static size_t skip_ws(const char *s, size_t len, size_t i) {
  while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i;
}

/* Skips one valid JSON value starting at s[i]. */
static size_t skip_value(const char *s, size_t len, size_t i) {
  int depth = 0;
  while (i < len) {
    char c = s[i];
    if (c == '"') {
      i = skip_string(s, len, i);
      if (depth == 0) return i;
      continue;
    }
    if (c == '{' || c == '[') depth++;
    else if (c == '}' || c == ']') {
      if (depth == 0) return i; /* end of the enclosing container */
      if (--depth == 0) return i + 1;
    } else if (depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
      return i;
    }
    i++;
  }
  return i;
}

int proto_find_member(const char *s, size_t len, const char *key, size_t *start, size_t *vlen) {
  size_t klen = strlen(key);
  size_t i = skip_ws(s, len, 0);
  if (i >= len || s[i] != '{') return -1;
  i++;
  for (;;) {
    i = skip_ws(s, len, i);
    if (i >= len || s[i] != '"') return -1;
    size_t ks = i + 1;
    i = skip_string(s, len, i);
    size_t ke = i - 1;
    int match = ke - ks == klen && memcmp(s + ks, key, klen) == 0;
    i = skip_ws(s, len, i);
    if (i >= len || s[i] != ':') return -1;
    i = skip_ws(s, len, i + 1);
    size_t vs = i;
    i = skip_value(s, len, i);
    if (match) {
      *start = vs;
      *vlen = i - vs;
      return 0;
    }
    i = skip_ws(s, len, i);
    if (i >= len || s[i] != ',') return -1;
    i++;
  }
}

/* An epoch as servers hand them out: up to PROTO_EPOCH_MAX of
 * [A-Za-z0-9-]; "" is the epoch of a topic that had no message yet. */
static int valid_epoch(const char *e, size_t n) {
  if (n > PROTO_EPOCH_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = e[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
      return 0;
  }
  return 1;
}

/* A non-negative JSON integer member, or dflt when absent.  Returns 0 or
 * PROTO_EFORMAT. */
static int get_count(json_t *obj, const char *key, unsigned long long dflt,
                     unsigned long long *out) {
  json_t *v = json_object_get(obj, key);
  if (!v) {
    *out = dflt;
    return PROTO_OK;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0) return PROTO_EFORMAT;
  *out = (unsigned long long)json_integer_value(v);
  return PROTO_OK;
}

/* "since":{"offset":N,"epoch":"E"} of a subscribe; *has is 0 without it. */
static int get_since(json_t *root, struct proto_since *since, int *has) {
  json_t *s = json_object_get(root, "since");
  *has = s != NULL;
  if (!s) return PROTO_OK;
  json_t *o = json_object_get(s, "offset"), *e = json_object_get(s, "epoch");
  if (!json_is_object(s) || !json_is_integer(o) || json_integer_value(o) < 0 ||
      !json_is_string(e) || !valid_epoch(json_string_value(e), json_string_length(e)))
    return PROTO_EFORMAT;
  since->offset = (unsigned long long)json_integer_value(o);
  memcpy(since->epoch, json_string_value(e), json_string_length(e) + 1);
  return PROTO_OK;
}

static int get_topic(json_t *root, const char **topic, size_t *tlen) {
  json_t *t = json_object_get(root, "topic");
  if (!json_is_string(t)) return PROTO_EFORMAT;
  *topic = json_string_value(t);
  *tlen = json_string_length(t);
  return topic_validate(*topic, *tlen) == 0 ? PROTO_OK : PROTO_ETOPIC;
}

int proto_handle(const struct proto_ops *ops, void *ctx, const char *msg, size_t len) {
  json_error_t jerr;
  json_t *root = json_loadb(msg, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  char *id_json = NULL;
  const char *topic = NULL;
  size_t tlen = 0;
  int rc;

  if (!root || !json_is_object(root)) {
    rc = PROTO_EFORMAT;
    goto reply_error;
  }
  json_t *id = json_object_get(root, "id");
  if (id) {
    id_json = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!id_json) {
      rc = PROTO_EINTERNAL;
      goto reply_error;
    }
  }
  json_t *type = json_object_get(root, "type");
  if (!json_is_string(type)) {
    rc = PROTO_EFORMAT;
    goto reply_error;
  }
  const char *tv = json_string_value(type);
  if (strlen(tv) != json_string_length(type)) { /* "ping\u0000x" is not "ping" */
    rc = PROTO_ETYPE;
    goto reply_error;
  }

  if (strcmp(tv, "ping") == 0) {
    char head[] = "{\"type\":\"pong\"";
    rc = send_parts(ops, ctx, head, sizeof(head) - 1, id_json) == 0 ? PROTO_OK : PROTO_EINTERNAL;
    goto done;
  }
  int is_sub = strcmp(tv, "subscribe") == 0, is_unsub = strcmp(tv, "unsubscribe") == 0,
      is_pub = strcmp(tv, "publish") == 0, is_hist = strcmp(tv, "history") == 0;
  if (!is_sub && !is_unsub && !is_pub && !is_hist) {
    rc = PROTO_ETYPE;
    goto reply_error;
  }
  rc = get_topic(root, &topic, &tlen);
  if (rc != PROTO_OK) {
    if (rc == PROTO_EFORMAT) topic = NULL;
    goto reply_error;
  }
  if (is_sub) {
    struct proto_since since;
    int has_since;
    if ((rc = get_since(root, &since, &has_since)) != PROTO_OK) goto reply_error;
    rc = ops->subscribe(ctx, topic, tlen, has_since ? &since : NULL, id_json);
    if (rc < 0) goto reply_error;
    if (rc == PROTO_OK) proto_reply_status(ops, ctx, "subscribed", topic, tlen, id_json);
    goto done;
  }
  if (is_unsub) {
    rc = ops->unsubscribe(ctx, topic, tlen);
    if (rc < 0) goto reply_error;
    proto_reply_status(ops, ctx, "unsubscribed", topic, tlen, id_json);
    goto done;
  }
  if (is_hist) {
    unsigned long long since, limit;
    if ((rc = get_count(root, "since", 0, &since)) != PROTO_OK ||
        (rc = get_count(root, "limit", PROTO_HISTORY_LIMIT_MAX, &limit)) != PROTO_OK)
      goto reply_error;
    if (limit == 0 || limit > PROTO_HISTORY_LIMIT_MAX) {
      rc = PROTO_EFORMAT;
      goto reply_error;
    }
    rc = ops->history(ctx, topic, tlen, since, (unsigned)limit, id_json);
    if (rc < 0) goto reply_error;
    goto done;
  }
  /* publish: forward the payload's own bytes, never a re-encoding */
  size_t ps, pl;
  json_t *payload = json_object_get(root, "payload");
  if (!payload) {
    rc = PROTO_EFORMAT;
    goto reply_error;
  }
  if (proto_find_member(msg, len, "payload", &ps, &pl) == 0) {
    rc = ops->publish(ctx, topic, tlen, msg + ps, pl, id_json);
  } else {
    /* the key was spelled with escapes: fall back to an encoding */
    char *enc = json_dumps(payload, JSON_ENCODE_ANY | JSON_COMPACT);
    rc = enc ? ops->publish(ctx, topic, tlen, enc, strlen(enc), id_json) : PROTO_EINTERNAL;
    free(enc);
  }
  if (rc < 0) goto reply_error;
  if (rc == PROTO_OK) proto_reply_status(ops, ctx, "published", topic, tlen, id_json);
  goto done;

reply_error:
  proto_reply_error(ops, ctx, rc, topic, tlen, id_json);
done:
  free(id_json);
  json_decref(root);
  return rc;
}
