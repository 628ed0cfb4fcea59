#include "auth.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "../common/topic.h"

struct auth {
  enum auth_alg alg;
  jwt_alg_t jalg;
  const char *name; /* "HS256", ... as in the header */
  int leeway;
  size_t keylen;
  unsigned char key[]; /* keylen bytes and a NUL */
};

/* One block: data holds the sub (NUL-terminated) at offset 0, then for each
 * action its patterns one after the other, each a length byte and the
 * bytes (AUTH_MAX_PATTERN fits in a byte). */
struct auth_grant {
  uint16_t n[2];     /* patterns per action */
  uint32_t start[2]; /* offset of each action's first pattern in data */
  char data[];
};

_Static_assert(AUTH_MAX_PATTERN <= UINT8_MAX, "pattern length is stored in one byte");
_Static_assert(AUTH_MAX_PATTERNS <= UINT16_MAX, "pattern count is stored in 16 bits");

static void set_err(char *err, size_t errlen, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
}

/* ---- configuration ---- */

/* Checks that key[0..len) is a PEM public key that fits alg.  Returns NULL
 * or the reason. */
static const char *check_pem(enum auth_alg alg, const unsigned char *key, size_t len) {
  const char *why = NULL;
  BIO *bio = BIO_new_mem_buf(key, (int)len);
  if (!bio) return "out of memory";
  EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
  BIO_free(bio);
  if (!pk) {
    why = "key is not a PEM public key (-----BEGIN PUBLIC KEY-----)";
  } else if (alg == AUTH_RS256) {
    if (EVP_PKEY_base_id(pk) != EVP_PKEY_RSA) why = "RS256 needs an RSA public key";
    else if (EVP_PKEY_bits(pk) < 2048) why = "RS256 key is shorter than 2048 bits";
  } else {
    char group[64];
    size_t glen = 0;
    if (EVP_PKEY_base_id(pk) != EVP_PKEY_EC) why = "ES256 needs an EC public key";
    else if (!EVP_PKEY_get_group_name(pk, group, sizeof(group), &glen) ||
             strcmp(group, "prime256v1") != 0)
      why = "ES256 needs a P-256 (prime256v1) key";
  }
  EVP_PKEY_free(pk);
  ERR_clear_error();
  return why;
}

int auth_new(struct auth **out, enum auth_alg alg, const unsigned char *key, size_t keylen,
             int leeway_s, char *err, size_t errlen) {
  *out = NULL;
  jwt_alg_t jalg;
  const char *name;
  switch (alg) {
    case AUTH_HS256: jalg = JWT_ALG_HS256, name = "HS256"; break;
    case AUTH_RS256: jalg = JWT_ALG_RS256, name = "RS256"; break;
    case AUTH_ES256: jalg = JWT_ALG_ES256, name = "ES256"; break;
    default: set_err(err, errlen, "no JWT algorithm configured"); return -1;
  }
  if (!key || keylen == 0) {
    set_err(err, errlen, alg == AUTH_HS256 ? "HS256 secret is empty" : "public key is empty");
    return -1;
  }
  if (keylen > AUTH_MAX_KEY) {
    set_err(err, errlen, "key is too long");
    return -1;
  }
  if (leeway_s < 0 || leeway_s > AUTH_MAX_LEEWAY) {
    set_err(err, errlen, "leeway out of range");
    return -1;
  }
  if (alg != AUTH_HS256) {
    const char *why = check_pem(alg, key, keylen);
    if (why) {
      set_err(err, errlen, why);
      return -1;
    }
  }
  struct auth *a = malloc(sizeof(*a) + keylen + 1);
  if (!a) {
    set_err(err, errlen, "out of memory");
    return -1;
  }
  a->alg = alg;
  a->jalg = jalg;
  a->name = name;
  a->leeway = leeway_s;
  a->keylen = keylen;
  memcpy(a->key, key, keylen);
  a->key[keylen] = 0;
  *out = a;
  return 0;
}

void auth_free(struct auth *a) {
  if (!a) return;
  /* the secret should not linger in freed memory */
  volatile unsigned char *p = a->key;
  for (size_t i = 0; i < a->keylen; i++) p[i] = 0;
  free(a);
}

const char *auth_strerror(int rc) {
  switch (rc) {
    case AUTH_OK: return "ok";
    case AUTH_EMISSING: return "no token";
    case AUTH_EMALFORMED: return "malformed token";
    case AUTH_EALG: return "token algorithm not accepted";
    case AUTH_ESIGNATURE: return "bad token signature";
    case AUTH_EEXPIRED: return "token expired";
    case AUTH_ENOTYET: return "token not yet valid";
    case AUTH_ENOMEM: return "out of memory";
    default: return "unknown error";
  }
}

/* ---- base64url ---- */

static int b64url_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Decodes s[0..n) (unpadded base64url, unused trailing bits zero) into out,
 * which has room for n * 3 / 4 bytes.  Returns the length, or -1. */
static long b64url_decode(const char *s, size_t n, unsigned char *out) {
  if (n % 4 == 1) return -1;
  uint32_t acc = 0;
  int bits = 0;
  long o = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64url_val((unsigned char)s[i]);
    if (v < 0) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) return -1; /* non-canonical: leftover bits set */
  return o;
}

static int valid_b64url(const char *s, size_t n) {
  if (n % 4 == 1) return 0;
  for (size_t i = 0; i < n; i++)
    if (b64url_val((unsigned char)s[i]) < 0) return 0;
  if (n % 4) { /* the last character's unused bits must be zero */
    int v = b64url_val((unsigned char)s[n - 1]);
    if (v & (n % 4 == 2 ? 0x0f : 0x03)) return 0;
  }
  return 1;
}

/* Decodes one part into scratch and parses it as a JSON object. */
static json_t *decode_object(const char *s, size_t n, unsigned char *scratch) {
  long dl = b64url_decode(s, n, scratch);
  if (dl <= 0) return NULL;
  json_t *j = json_loadb((const char *)scratch, (size_t)dl, JSON_REJECT_DUPLICATES, NULL);
  if (j && !json_is_object(j)) {
    json_decref(j);
    j = NULL;
  }
  return j;
}

/* ---- claims ---- */

/* Compares the NumericDate claim name with t.  Returns 0 when absent, -1
 * when not a number, else 1 with *cmp < 0, 0 or > 0 as claim < t, == t or
 * > t (integers compared exactly, reals as doubles). */
static int cmp_time(json_t *claims, const char *name, long long t, int *cmp) {
  json_t *v = json_object_get(claims, name);
  if (!v) return 0;
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    *cmp = (x > t) - (x < t);
  } else if (json_is_real(v)) {
    double x = json_real_value(v), y = (double)t;
    *cmp = (x > y) - (x < y);
  } else {
    return -1;
  }
  return 1;
}

static int check_times(const struct auth *a, json_t *claims, long long now) {
  long long lw = a->leeway; /* now -+ leeway, saturated */
  long long lo = now >= LLONG_MIN + lw ? now - lw : LLONG_MIN;
  long long hi = now <= LLONG_MAX - lw ? now + lw : LLONG_MAX;
  int ce = 0, cn = 0;
  int re = cmp_time(claims, "exp", lo, &ce), rn = cmp_time(claims, "nbf", hi, &cn);
  if (re < 0 || rn < 0) return AUTH_EMALFORMED;
  if (re && ce <= 0) return AUTH_EEXPIRED; /* exp <= now - leeway */
  if (rn && cn > 0) return AUTH_ENOTYET;   /* nbf > now + leeway */
  return AUTH_OK;
}

static int valid_pattern(const char *p, size_t n) {
  if (n == 0 || n > AUTH_MAX_PATTERN) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c <= 0x20 || c >= 0x7f) return 0;
    if (c == '*' && i != n - 1) return 0;
  }
  return 1;
}

/* Checks one pattern claim.  Returns the bytes its patterns need packed (0
 * for none), or -1 when malformed.  *n gets the number kept and *all is set
 * when the list contains "*", which is then the only pattern kept. */
static long scan_patterns(json_t *claims, const char *name, size_t *n, int *all) {
  *n = 0;
  *all = 0;
  json_t *arr = json_object_get(claims, name);
  if (!arr) return 0;
  if (!json_is_array(arr) || json_array_size(arr) > AUTH_MAX_PATTERNS) return -1;
  long bytes = 0;
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    if (!json_is_string(v)) return -1;
    const char *s = json_string_value(v);
    size_t sl = json_string_length(v);
    if (!valid_pattern(s, sl)) return -1;
    if (sl == 1 && s[0] == '*') *all = 1;
    bytes += 1 + (long)sl;
  }
  *n = json_array_size(arr);
  if (*all) {
    *n = 1;
    bytes = 2;
  }
  return bytes;
}

static char *pack_patterns(char *p, json_t *claims, const char *name, int all) {
  if (all) {
    *p++ = 1;
    *p++ = '*';
    return p;
  }
  json_t *arr = json_object_get(claims, name);
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    size_t sl = json_string_length(v);
    *p++ = (char)(unsigned char)sl;
    memcpy(p, json_string_value(v), sl);
    p += sl;
  }
  return p;
}

static int make_grant(json_t *claims, struct auth_grant **out) {
  static const char *const names[2] = {"subscribe", "publish"};
  size_t n[2];
  int all[2];
  long bytes[2];
  for (int k = 0; k < 2; k++) {
    bytes[k] = scan_patterns(claims, names[k], &n[k], &all[k]);
    if (bytes[k] < 0) return AUTH_EMALFORMED;
  }
  const char *sub = "";
  size_t sublen = 0;
  json_t *js = json_object_get(claims, "sub");
  if (js) {
    if (!json_is_string(js)) return AUTH_EMALFORMED;
    sub = json_string_value(js);
    sublen = json_string_length(js);
    if (sublen > AUTH_MAX_SUB) sublen = AUTH_MAX_SUB;
  }
  size_t size = sublen + 1 + (size_t)bytes[0] + (size_t)bytes[1];
  struct auth_grant *g = malloc(sizeof(*g) + size);
  if (!g) return AUTH_ENOMEM;
  for (size_t i = 0; i < sublen; i++) {
    unsigned char c = (unsigned char)sub[i];
    g->data[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  g->data[sublen] = 0;
  char *p = g->data + sublen + 1;
  for (int k = 0; k < 2; k++) {
    g->n[k] = (uint16_t)n[k];
    g->start[k] = (uint32_t)(p - g->data);
    p = pack_patterns(p, claims, names[k], all[k]);
  }
  *out = g;
  return AUTH_OK;
}

/* ---- verification ---- */

int auth_verify(const struct auth *a, const char *token, size_t len, long long now,
                struct auth_grant **out) {
  *out = NULL;
  if (!token || len == 0) return AUTH_EMISSING;
  if (len > AUTH_MAX_TOKEN) return AUTH_EMALFORMED;

  /* exactly three parts: header.payload.signature */
  const char *d1 = memchr(token, '.', len);
  if (!d1) return AUTH_EMALFORMED;
  const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
  if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token))) return AUTH_EMALFORMED;
  size_t hl = (size_t)(d1 - token), pl = (size_t)(d2 - d1 - 1);
  size_t sl = len - (size_t)(d2 + 1 - token);
  if (hl == 0 || pl == 0) return AUTH_EMALFORMED;
  if (!valid_b64url(d2 + 1, sl)) return AUTH_EMALFORMED;

  /* scratch: decoded parts, then the NUL-terminated copy libjwt wants */
  char *scratch = malloc(len + 1);
  if (!scratch) return AUTH_ENOMEM;
  unsigned char *dec = (unsigned char *)scratch;
  json_t *header = NULL, *claims = NULL;
  jwt_t *jwt = NULL;
  int rc = AUTH_EMALFORMED;

  /* The header first: the algorithm is the configured one or nothing. */
  header = decode_object(token, hl, dec);
  if (!header) goto done;
  const char *alg = json_string_value(json_object_get(header, "alg"));
  if (!alg) goto done;
  if (strcmp(alg, a->name) != 0) {
    rc = AUTH_EALG;
    goto done;
  }
  json_t *typ = json_object_get(header, "typ");
  if (typ && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0)) goto done;
  if (json_object_get(header, "crit")) goto done;

  claims = decode_object(d1 + 1, pl, dec);
  if (!claims) goto done;

  if (sl == 0) {
    rc = AUTH_ESIGNATURE;
    goto done;
  }
  memcpy(scratch, token, len);
  scratch[len] = 0;
  int jr = jwt_decode(&jwt, scratch, a->key, (int)a->keylen);
  if (jr != 0 || !jwt) {
    rc = (jr == ENOMEM) ? AUTH_ENOMEM : AUTH_ESIGNATURE;
    ERR_clear_error();
    goto done;
  }
  if (jwt_get_alg(jwt) != a->jalg) { /* cannot happen after the check above */
    rc = AUTH_EALG;
    goto done;
  }

  /* The signature covers exactly the payload bytes parsed into claims. */
  rc = check_times(a, claims, now);
  if (rc == AUTH_OK) rc = make_grant(claims, out);

done:
  if (jwt) jwt_free(jwt);
  json_decref(claims);
  json_decref(header);
  free(scratch);
  return rc;
}

/* ---- grants ---- */

int auth_allows(const struct auth_grant *g, enum auth_action act, const char *topic, size_t len) {
  if (!g || !topic || len == 0) return 0;
  if (act != AUTH_SUBSCRIBE && act != AUTH_PUBLISH) return 0;
  int k = act == AUTH_SUBSCRIBE ? 0 : 1;
  const unsigned char *p = (const unsigned char *)g->data + g->start[k];
  for (unsigned i = 0; i < g->n[k]; i++) {
    size_t pl = *p++;
    const char *pat = (const char *)p;
    p += pl;
    if (topic_match(pat, pl, topic, len)) return 1;
  }
  return 0;
}

const char *auth_grant_sub(const struct auth_grant *g) { return g ? g->data : ""; }

void auth_grant_free(struct auth_grant *g) { free(g); }

/* ---- token extraction ---- */

static int is_tokchar(unsigned char c) { return b64url_val(c) >= 0 || c == '.'; }

/* AUTH_OK when s[0..n) could be a token, AUTH_EMISSING when empty, else
 * AUTH_EMALFORMED. */
static int check_token(const char *s, size_t n) {
  if (n == 0) return AUTH_EMISSING;
  if (n > AUTH_MAX_TOKEN) return AUTH_EMALFORMED;
  for (size_t i = 0; i < n; i++)
    if (!is_tokchar((unsigned char)s[i])) return AUTH_EMALFORMED;
  return AUTH_OK;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

int auth_token_from_bearer(const char *hdr, size_t len, const char **tok, size_t *toklen) {
  if (!hdr) return AUTH_EMISSING;
  while (len && is_ows(*hdr)) hdr++, len--;
  while (len && is_ows(hdr[len - 1])) len--;
  if (len < 6 || strncasecmp(hdr, "bearer", 6) != 0) return AUTH_EMISSING;
  if (len == 6) return AUTH_EMISSING;        /* "Bearer" and nothing */
  if (!is_ows(hdr[6])) return AUTH_EMISSING; /* "Bearerx": another scheme */
  size_t i = 6;
  while (i < len && is_ows(hdr[i])) i++;
  int r = check_token(hdr + i, len - i);
  if (r != AUTH_OK) return r;
  *tok = hdr + i;
  *toklen = len - i;
  return AUTH_OK;
}

int auth_token_from_query(const char *query, size_t len, const char **tok, size_t *toklen) {
  if (!query) return AUTH_EMISSING;
  const char *found = NULL;
  size_t flen = 0;
  int seen = 0;
  size_t i = 0;
  while (i <= len) {
    size_t st = i;
    while (i < len && query[i] != '&') i++;
    /* pair query[st..i) */
    if (i - st >= 6 && memcmp(query + st, "token=", 6) == 0) {
      if (seen) return AUTH_EMALFORMED;
      seen = 1;
      found = query + st + 6;
      flen = i - st - 6;
    } else if (i - st == 5 && memcmp(query + st, "token", 5) == 0) {
      if (seen) return AUTH_EMALFORMED;
      seen = 1;
      found = query + st + 5;
      flen = 0;
    }
    i++;
  }
  if (!seen) return AUTH_EMISSING;
  int r = check_token(found, flen);
  if (r != AUTH_OK) return r;
  *tok = found;
  *toklen = flen;
  return AUTH_OK;
}

int auth_token_from_protocol(const char *hdr, size_t len, const char **tok, size_t *toklen,
                             const char **echo, size_t *echolen) {
  static const char marker[] = AUTH_PROTOCOL;
  const size_t ml = sizeof(marker) - 1;
  if (!hdr) return AUTH_EMISSING;
  int have_marker = 0, seen = 0;
  const char *found = NULL;
  size_t flen = 0;
  size_t i = 0;
  while (i <= len) {
    size_t st = i;
    while (i < len && hdr[i] != ',') i++;
    size_t en = i;
    while (st < en && is_ows(hdr[st])) st++;
    while (en > st && is_ows(hdr[en - 1])) en--;
    const char *item = hdr + st;
    size_t il = en - st;
    if (il == ml && memcmp(item, marker, ml) == 0) {
      have_marker = 1;
    } else if (il > ml && memcmp(item, marker, ml) == 0 && item[ml] == '.') {
      if (seen) return AUTH_EMALFORMED;
      seen = 1;
      found = item + ml + 1;
      flen = il - ml - 1;
    }
    i++;
  }
  if (!seen) return AUTH_EMISSING;
  if (!have_marker) return AUTH_EMALFORMED;
  int r = check_token(found, flen);
  if (r != AUTH_OK) return r;
  *tok = found;
  *toklen = flen;
  *echo = marker;
  *echolen = ml;
  return AUTH_OK;
}
