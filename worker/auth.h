/* auth.h - JWT authentication and topic authorization (libjwt 1.10 for the
 * signature, jansson for the claims).
 *
 * Algorithms.  The algorithm is fixed by configuration and never taken
 * from the token: a token whose header "alg" is not exactly the configured
 * one ("none" included, whatever key is configured) is refused with
 * AUTH_EALG before its signature is looked at, and the algorithm libjwt
 * reports after verifying is checked again.  HS256 takes a secret; RS256
 * (RSA >= 2048 bits) and ES256 (P-256) take the PEM text of a public key
 * ("-----BEGIN PUBLIC KEY-----", SubjectPublicKeyInfo), checked once by
 * auth_new() so that a wrong key fails at start-up, not at every token.
 *
 * Tokens.  JWS compact serialization only, at most AUTH_MAX_TOKEN bytes:
 * three strict base64url parts (no padding, no other characters).  The
 * header must be a JSON object without duplicate keys, "typ" if present
 * must be "JWT" (libjwt 1.10 demands it), "crit" must be absent.  Claims:
 *   exp  optional; if present a number, and the token is refused once
 *        now >= exp + leeway.  A token without exp never expires: issuers
 *        that want short-lived tokens must set it.
 *   nbf  optional; if present a number, and the token is refused while
 *        now + leeway < nbf.
 *   iat  ignored.
 *   sub  optional string, kept for logs: its first AUTH_MAX_SUB bytes,
 *        every byte outside printable ASCII (0x20..0x7e) replaced by '?'.
 *   subscribe, publish
 *        optional arrays of at most AUTH_MAX_PATTERNS patterns of 1 to
 *        AUTH_MAX_PATTERN bytes of printable non-space ASCII.  A pattern is
 *        an exact topic name, or a prefix followed by a final '*' that
 *        matches any topic starting with the prefix ("news.*" matches
 *        "news.a", "news.a.b" and "news." but not "news"; "*" matches every
 *        topic).  '*' anywhere else is malformed.  An absent claim or an
 *        empty array allows nothing.
 * Any other claim is ignored.  A wrong type anywhere (non-array claim,
 * non-string element, string exp) is AUTH_EMALFORMED: the caller answers
 * 401 to every negative code (AUTH_ENOMEM: 500).
 *
 * Memory.  struct auth owns a copy of the key; it is created once per
 * worker and is not shared between threads.  auth_verify() allocates
 * nothing that outlives it except *out, one block holding the sub and the
 * packed patterns (a few bytes over the claims' own size), owned by the
 * caller (the connection) and released with auth_grant_free().  Nothing
 * keeps a pointer to the token.  The token extraction helpers allocate
 * nothing: their results point into the caller's header or into static
 * storage.
 */
#ifndef TIDINGS_AUTH_H
#define TIDINGS_AUTH_H

#include <stddef.h>

#define AUTH_MAX_TOKEN 8192   /* bytes of a token */
#define AUTH_MAX_PATTERNS 256 /* per claim */
#define AUTH_MAX_PATTERN 200  /* bytes of one pattern */
#define AUTH_MAX_SUB 128      /* bytes of sub kept */
#define AUTH_MAX_LEEWAY 86400 /* seconds */
#define AUTH_MAX_KEY 65536    /* bytes of a secret or PEM text */

enum auth_alg { AUTH_NONE_CONFIGURED, AUTH_HS256, AUTH_RS256, AUTH_ES256 };

enum {
  AUTH_OK = 0,
  AUTH_EMISSING = -1,   /* no token */
  AUTH_EMALFORMED = -2, /* not a well-formed token, or claims of the wrong type */
  AUTH_EALG = -3,       /* header alg is not the configured one (e.g. "none") */
  AUTH_ESIGNATURE = -4, /* signature does not verify with the configured key */
  AUTH_EEXPIRED = -5,   /* exp passed (beyond the leeway) */
  AUTH_ENOTYET = -6,    /* nbf in the future (beyond the leeway) */
  AUTH_ENOMEM = -7,
};

struct auth;

/* Configures a verifier.  key is the HS256 secret (keylen >= 1 bytes, any
 * bytes) or the PEM text of the public key (need not be NUL-terminated);
 * it is copied.  leeway_s: 0..AUTH_MAX_LEEWAY seconds of clock skew allowed
 * on exp and nbf.  Returns 0 with *out set, or -1 with a NUL-terminated
 * reason in err (when errlen > 0) and *out NULL. */
int auth_new(struct auth **out, enum auth_alg alg, const unsigned char *key, size_t keylen,
             int leeway_s, char *err, size_t errlen);
void auth_free(struct auth *a); /* NULL is a no-op */

struct auth_grant;

/* Verifies token[0..len) at time now (seconds since the epoch).  Returns
 * AUTH_OK with *out set to a new grant, or a negative AUTH_E* code with
 * *out NULL.  A NULL or empty token is AUTH_EMISSING. */
int auth_verify(const struct auth *a, const char *token, size_t len, long long now,
                struct auth_grant **out);

/* A short static description of an AUTH_* code, for logs. */
const char *auth_strerror(int rc);

enum auth_action { AUTH_SUBSCRIBE, AUTH_PUBLISH };

/* 1 when g allows act on topic[0..len), else 0 (also for a NULL grant or
 * an empty topic). */
int auth_allows(const struct auth_grant *g, enum auth_action act, const char *topic, size_t len);

/* The sanitized sub claim, NUL-terminated, "" when none (or g is NULL).
 * Valid until auth_grant_free(g). */
const char *auth_grant_sub(const struct auth_grant *g);

void auth_grant_free(struct auth_grant *g); /* NULL is a no-op */

/* ---- where the token comes from at the handshake ----
 *
 * Each helper returns AUTH_OK with *tok / *toklen pointing into the given
 * value, AUTH_EMISSING when the value carries no token, or AUTH_EMALFORMED
 * when it carries one that cannot be right (characters outside the JWS
 * compact alphabet A-Z a-z 0-9 - _ . , longer than AUTH_MAX_TOKEN, given
 * twice).  hdr/query may be NULL when len is 0.  On failure the outputs
 * are untouched. */

/* Authorization header value: "Bearer" (any case), one or more spaces or
 * tabs, the token.  Another scheme (Basic ...) is AUTH_EMISSING. */
int auth_token_from_bearer(const char *hdr, size_t len, const char **tok, size_t *toklen);

/* The query string (after '?'): the value of the pair named exactly
 * "token" among '&'-separated pairs.  Tokens are base64url, so the value is
 * not percent-decoded and a '%' in it is AUTH_EMALFORMED; so is a second
 * "token" pair.  "token=" is AUTH_EMISSING. */
int auth_token_from_query(const char *query, size_t len, const char **tok, size_t *toklen);

/* Sec-WebSocket-Protocol, for browsers, which cannot set headers on a
 * WebSocket: the client offers two subprotocols, the marker AUTH_PROTOCOL
 * and AUTH_PROTOCOL "." <token>, in any order among any others:
 *
 *   new WebSocket(url, ["tidings.jwt", "tidings.jwt." + token])
 *
 * (the same scheme as Kubernetes' "base64url.bearer.authorization.k8s.io."
 * items: JWS compact characters are all valid subprotocol characters).  On
 * AUTH_OK *echo / *echolen are set to the marker "tidings.jwt" (static
 * storage), the value the server must answer in Sec-WebSocket-Protocol:
 * RFC 6455 requires echoing one offered value, and browsers fail the
 * connection without it; the token item itself is never echoed.  The token
 * item without the marker, or two token items, is AUTH_EMALFORMED; no
 * token item is AUTH_EMISSING.  Names are compared case-sensitively. */
#define AUTH_PROTOCOL "tidings.jwt"
int auth_token_from_protocol(const char *hdr, size_t len, const char **tok, size_t *toklen,
                             const char **echo, size_t *echolen);

#endif
