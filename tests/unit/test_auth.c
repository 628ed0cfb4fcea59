/* Unit tests for worker/auth.c: JWT verification, topic patterns and the
 * handshake token helpers.  Keys are generated at start-up with OpenSSL;
 * tokens are made with libjwt and, where libjwt would refuse to make them
 * (alg none, wrong types, tampering), by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "../../worker/auth.h"

#define NOW 1700000000LL
#define LEEWAY 30
#define SECRET "0123456789abcdef0123456789abcdef"

/* ---- keys ---- */

static EVP_PKEY *rsa_key, *rsa_key2, *ec_key, *ec_key2;
static char *rsa_pub, *rsa_priv, *rsa2_pub, *ec_pub, *ec_priv, *ec2_pub;

static char *bio_string(BIO *b) {
  char *p;
  long n = BIO_get_mem_data(b, &p);
  char *s = malloc((size_t)n + 1);
  if (!s) abort();
  memcpy(s, p, (size_t)n);
  s[n] = 0;
  BIO_free(b);
  return s;
}

static char *pem_pub(EVP_PKEY *k) {
  BIO *b = BIO_new(BIO_s_mem());
  if (!b || !PEM_write_bio_PUBKEY(b, k)) abort();
  return bio_string(b);
}

static char *pem_priv(EVP_PKEY *k) {
  BIO *b = BIO_new(BIO_s_mem());
  if (!b || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL)) abort();
  return bio_string(b);
}

static int setup_keys(void **state) {
  (void)state;
  rsa_key = EVP_RSA_gen(2048);
  rsa_key2 = EVP_RSA_gen(2048);
  ec_key = EVP_EC_gen("P-256");
  ec_key2 = EVP_EC_gen("P-256");
  if (!rsa_key || !rsa_key2 || !ec_key || !ec_key2) return -1;
  rsa_pub = pem_pub(rsa_key);
  rsa_priv = pem_priv(rsa_key);
  rsa2_pub = pem_pub(rsa_key2);
  ec_pub = pem_pub(ec_key);
  ec_priv = pem_priv(ec_key);
  ec2_pub = pem_pub(ec_key2);
  return 0;
}

static int teardown_keys(void **state) {
  (void)state;
  EVP_PKEY_free(rsa_key);
  EVP_PKEY_free(rsa_key2);
  EVP_PKEY_free(ec_key);
  EVP_PKEY_free(ec_key2);
  free(rsa_pub);
  free(rsa_priv);
  free(rsa2_pub);
  free(ec_pub);
  free(ec_priv);
  free(ec2_pub);
  return 0;
}

/* ---- hand-made tokens ---- */

static char *b64url(const unsigned char *p, size_t n) {
  static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  char *s = malloc(n * 4 / 3 + 4), *o = s;
  if (!s) abort();
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    *o++ = A[v >> 18], *o++ = A[(v >> 12) & 63], *o++ = A[(v >> 6) & 63], *o++ = A[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)p[i] << 16;
    *o++ = A[v >> 18], *o++ = A[(v >> 12) & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
    *o++ = A[v >> 18], *o++ = A[(v >> 12) & 63], *o++ = A[(v >> 6) & 63];
  }
  *o = 0;
  return s;
}

static char *b64s(const char *s) { return b64url((const unsigned char *)s, strlen(s)); }

static char *join3(const char *a, const char *b, const char *c) {
  size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
  char *s = malloc(n);
  if (!s) abort();
  snprintf(s, n, "%s.%s.%s", a, b, c);
  return s;
}

enum signer { SIGN_NONE, SIGN_HS, SIGN_RS, SIGN_ES, SIGN_ES_DER };

/* header.payload signed with the algorithm named by how (the header is
 * taken as given, whatever its alg says).  hs_key is the HMAC key for
 * SIGN_HS; pk the private key otherwise. */
static char *make_token_key(const char *header, const char *payload, enum signer how,
                            const void *hs_key, size_t hs_len, EVP_PKEY *pk) {
  char *h = b64s(header), *p = b64s(payload);
  size_t in_len = strlen(h) + 1 + strlen(p);
  char *in = malloc(in_len + 1);
  if (!in) abort();
  snprintf(in, in_len + 1, "%s.%s", h, p);
  unsigned char sig[1024];
  size_t sl = 0;
  if (how == SIGN_HS) {
    unsigned int ml = 0;
    if (!HMAC(EVP_sha256(), hs_key, (int)hs_len, (const unsigned char *)in, in_len, sig, &ml))
      abort();
    sl = ml;
  } else if (how != SIGN_NONE) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    sl = sizeof(sig);
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
        EVP_DigestSign(md, sig, &sl, (const unsigned char *)in, in_len) != 1)
      abort();
    EVP_MD_CTX_free(md);
    if (how == SIGN_ES) { /* DER to JOSE R || S */
      const unsigned char *q = sig;
      ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sl);
      if (!es) abort();
      const BIGNUM *r, *s;
      ECDSA_SIG_get0(es, &r, &s);
      if (BN_bn2binpad(r, sig, 32) != 32 || BN_bn2binpad(s, sig + 32, 32) != 32) abort();
      ECDSA_SIG_free(es);
      sl = 64;
    }
  }
  char *sg = b64url(sig, sl);
  char *t = join3(h, p, sg);
  free(h);
  free(p);
  free(in);
  free(sg);
  return t;
}

static char *make_token(const char *header, const char *payload, enum signer how) {
  switch (how) {
    case SIGN_HS: return make_token_key(header, payload, how, SECRET, strlen(SECRET), NULL);
    case SIGN_RS: return make_token_key(header, payload, how, NULL, 0, rsa_key);
    case SIGN_ES:
    case SIGN_ES_DER: return make_token_key(header, payload, how, NULL, 0, ec_key);
    default: return make_token_key(header, payload, how, NULL, 0, NULL);
  }
}

#define HS "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define RS "{\"alg\":\"RS256\",\"typ\":\"JWT\"}"
#define ES "{\"alg\":\"ES256\",\"typ\":\"JWT\"}"

/* ---- verifiers ---- */

static struct auth *new_auth(enum auth_alg alg) {
  struct auth *a = NULL;
  char err[128] = "";
  int r;
  if (alg == AUTH_HS256)
    r = auth_new(&a, alg, (const unsigned char *)SECRET, strlen(SECRET), LEEWAY, err, sizeof(err));
  else if (alg == AUTH_RS256)
    r = auth_new(&a, alg, (const unsigned char *)rsa_pub, strlen(rsa_pub), LEEWAY, err,
                 sizeof(err));
  else
    r = auth_new(&a, alg, (const unsigned char *)ec_pub, strlen(ec_pub), LEEWAY, err, sizeof(err));
  if (r != 0) fprintf(stderr, "auth_new: %s\n", err);
  assert_int_equal(r, 0);
  assert_non_null(a);
  return a;
}

/* auth_verify() on a heap copy of exactly strlen(tok) bytes (no NUL), so
 * that AddressSanitizer catches a read past the end. */
static int verify_at(const struct auth *a, const char *tok, long long now, struct auth_grant **g) {
  size_t n = strlen(tok);
  char *copy = malloc(n ? n : 1);
  assert_non_null(copy);
  memcpy(copy, tok, n);
  int r = auth_verify(a, copy, n, now, g);
  free(copy);
  if (r != AUTH_OK) assert_null(*g);
  else assert_non_null(*g);
  return r;
}

/* Verifies tok with a fresh verifier for alg at NOW; frees everything;
 * returns the code. */
static int check(enum auth_alg alg, const char *tok) {
  struct auth *a = new_auth(alg);
  struct auth_grant *g = NULL;
  int r = verify_at(a, tok, NOW, &g);
  auth_grant_free(g);
  auth_free(a);
  return r;
}

/* Same with a hand-made token, freed afterwards. */
static int check_made(enum auth_alg alg, const char *header, const char *payload, enum signer how) {
  char *t = make_token(header, payload, how);
  int r = check(alg, t);
  free(t);
  return r;
}

/* A HS256 grant from a payload; the caller frees it. */
static struct auth_grant *grant_of(const char *payload) {
  struct auth *a = new_auth(AUTH_HS256);
  char *t = make_token(HS, payload, SIGN_HS);
  struct auth_grant *g = NULL;
  int r = verify_at(a, t, NOW, &g);
  if (r != AUTH_OK) fprintf(stderr, "grant_of(%s): %s\n", payload, auth_strerror(r));
  assert_int_equal(r, AUTH_OK);
  free(t);
  auth_free(a);
  return g;
}

static int allows(const struct auth_grant *g, enum auth_action act, const char *topic) {
  size_t n = strlen(topic);
  char *copy = malloc(n ? n : 1);
  assert_non_null(copy);
  memcpy(copy, topic, n);
  int r = auth_allows(g, act, copy, n);
  free(copy);
  return r;
}

/* ---- configuration ---- */

static void test_new_errors(void **state) {
  (void)state;
  struct auth *a = (struct auth *)1;
  char err[128];
  const unsigned char *k = (const unsigned char *)SECRET;

  assert_int_equal(auth_new(&a, AUTH_NONE_CONFIGURED, k, 4, 0, err, sizeof(err)), -1);
  assert_null(a);
  assert_true(strlen(err) > 0);
  assert_int_equal(auth_new(&a, AUTH_HS256, k, 0, 0, err, sizeof(err)), -1);
  assert_int_equal(auth_new(&a, AUTH_HS256, NULL, 0, 0, err, sizeof(err)), -1);
  assert_int_equal(auth_new(&a, AUTH_HS256, k, 4, -1, err, sizeof(err)), -1);
  assert_int_equal(auth_new(&a, AUTH_HS256, k, 4, AUTH_MAX_LEEWAY + 1, err, sizeof(err)), -1);
  assert_int_equal(auth_new(&a, AUTH_HS256, k, 4, 0, NULL, 0), 0); /* err optional */
  auth_free(a);
  auth_free(NULL);

  /* RS256/ES256: the key must be a public key of the right kind */
  const char *junk = "not a pem";
  assert_int_equal(
      auth_new(&a, AUTH_RS256, (const unsigned char *)junk, strlen(junk), 0, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "PEM"));
  assert_int_equal(auth_new(&a, AUTH_RS256, (const unsigned char *)rsa_priv, strlen(rsa_priv), 0,
                            err, sizeof(err)),
                   -1);
  assert_int_equal(
      auth_new(&a, AUTH_RS256, (const unsigned char *)ec_pub, strlen(ec_pub), 0, err, sizeof(err)),
      -1);
  assert_int_equal(auth_new(&a, AUTH_ES256, (const unsigned char *)rsa_pub, strlen(rsa_pub), 0, err,
                            sizeof(err)),
                   -1);
  assert_int_equal(auth_new(&a, AUTH_ES256, (const unsigned char *)ec_priv, strlen(ec_priv), 0, err,
                            sizeof(err)),
                   -1);

  EVP_PKEY *small = EVP_RSA_gen(1024), *p384 = EVP_EC_gen("P-384");
  assert_non_null(small);
  assert_non_null(p384);
  char *sp = pem_pub(small), *pp = pem_pub(p384);
  assert_int_equal(
      auth_new(&a, AUTH_RS256, (const unsigned char *)sp, strlen(sp), 0, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "2048"));
  assert_int_equal(
      auth_new(&a, AUTH_ES256, (const unsigned char *)pp, strlen(pp), 0, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "P-256"));
  free(sp);
  free(pp);
  EVP_PKEY_free(small);
  EVP_PKEY_free(p384);
  assert_null(a);
  assert_int_equal(ERR_peek_error(), 0); /* no errors left on OpenSSL's queue */

  /* the PEM need not be NUL-terminated */
  size_t n = strlen(rsa_pub);
  unsigned char *exact = malloc(n);
  assert_non_null(exact);
  memcpy(exact, rsa_pub, n);
  assert_int_equal(auth_new(&a, AUTH_RS256, exact, n, 0, err, sizeof(err)), 0);
  free(exact);
  auth_free(a);
}

static void test_strerror(void **state) {
  (void)state;
  for (int rc = AUTH_ENOMEM; rc <= AUTH_OK; rc++) assert_non_null(auth_strerror(rc));
  assert_string_equal(auth_strerror(AUTH_EEXPIRED), "token expired");
  assert_string_equal(auth_strerror(42), "unknown error");
}

/* ---- HS256 ---- */

static void test_hs256_libjwt_token(void **state) {
  (void)state;
  jwt_t *j = NULL;
  assert_int_equal(jwt_new(&j), 0);
  assert_int_equal(jwt_add_grant(j, "sub", "alice"), 0);
  assert_int_equal(jwt_add_grant_int(j, "exp", (long)(NOW + 60)), 0);
  assert_int_equal(jwt_add_grant_int(j, "iat", (long)(NOW + 99999)), 0); /* ignored */
  assert_int_equal(jwt_add_grants_json(j,
                                       "{\"subscribe\":[\"news.*\",\"weather\"],"
                                       "\"publish\":[\"chat.room1\"]}"),
                   0);
  assert_int_equal(jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)SECRET, strlen(SECRET)), 0);
  char *t = jwt_encode_str(j);
  assert_non_null(t);
  jwt_free(j);

  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = NULL;
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  assert_string_equal(auth_grant_sub(g), "alice");
  assert_true(allows(g, AUTH_SUBSCRIBE, "news.world"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "weather"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "chat.room1"));
  assert_true(allows(g, AUTH_PUBLISH, "chat.room1"));
  assert_false(allows(g, AUTH_PUBLISH, "news.world"));
  auth_grant_free(g);

  /* the same verifier serves many tokens */
  assert_int_equal(verify_at(a, t, NOW + 1, &g), AUTH_OK);
  auth_grant_free(g);
  free(t);
  auth_free(a);
}

static void test_hs256_handmade(void **state) {
  (void)state;
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"sub\":\"x\"}", SIGN_HS), AUTH_OK);
  /* typ is optional, any case of "JWT" */
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS256\"}", "{}", SIGN_HS), AUTH_OK);
  assert_int_equal(check_made(AUTH_HS256, "{\"typ\":\"jwt\",\"alg\":\"HS256\"}", "{}", SIGN_HS),
                   AUTH_OK);
  /* unknown header fields (kid) are ignored */
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{}", SIGN_HS),
                   AUTH_OK);
}

static void test_missing(void **state) {
  (void)state;
  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = (struct auth_grant *)1;
  assert_int_equal(auth_verify(a, NULL, 0, NOW, &g), AUTH_EMISSING);
  assert_null(g);
  assert_int_equal(auth_verify(a, "abc", 0, NOW, &g), AUTH_EMISSING);
  assert_null(g);
  auth_free(a);
}

static void test_too_long(void **state) {
  (void)state;
  /* a valid token padded past 8 KiB with a long sub claim */
  char payload[AUTH_MAX_TOKEN];
  memset(payload, 0, sizeof(payload));
  strcpy(payload, "{\"sub\":\"");
  memset(payload + 8, 'a', 6100);
  strcpy(payload + 6108, "\"}");
  char *t = make_token(HS, payload, SIGN_HS);
  assert_true(strlen(t) > AUTH_MAX_TOKEN);
  assert_int_equal(check(AUTH_HS256, t), AUTH_EMALFORMED);
  free(t);
  /* just under the cap is fine, and sub is cut to 128 bytes */
  payload[8 + 5900] = 0;
  strcat(payload, "\"}");
  t = make_token(HS, payload, SIGN_HS);
  assert_true(strlen(t) <= AUTH_MAX_TOKEN);
  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = NULL;
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  assert_int_equal(strlen(auth_grant_sub(g)), AUTH_MAX_SUB);
  auth_grant_free(g);
  auth_free(a);
  free(t);
}

static void test_exp(void **state) {
  (void)state;
  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = NULL;
  char p[128];
  char *t;
  snprintf(p, sizeof(p), "{\"exp\":%lld}", NOW);
  t = make_token(HS, p, SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW - 1, &g), AUTH_OK); /* before exp */
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK); /* expired, within leeway */
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + LEEWAY - 1, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + LEEWAY, &g), AUTH_EEXPIRED); /* the boundary */
  assert_int_equal(verify_at(a, t, NOW + 3600, &g), AUTH_EEXPIRED);
  free(t);

  /* a fractional NumericDate */
  snprintf(p, sizeof(p), "{\"exp\":%lld.5}", NOW);
  t = make_token(HS, p, SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW + LEEWAY, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + LEEWAY + 1, &g), AUTH_EEXPIRED);
  free(t);

  /* without exp a token does not expire */
  t = make_token(HS, "{\"sub\":\"forever\"}", SIGN_HS);
  assert_int_equal(verify_at(a, t, 4000000000LL, &g), AUTH_OK);
  auth_grant_free(g);
  free(t);

  /* extreme values do not overflow */
  t = make_token(HS, "{\"exp\":9223372036854775807}", SIGN_HS);
  assert_int_equal(verify_at(a, t, 9223372036854775807LL, &g), AUTH_OK);
  auth_grant_free(g);
  free(t);
  t = make_token(HS, "{\"exp\":-9223372036854775807}", SIGN_HS);
  assert_int_equal(verify_at(a, t, -9223372036854775807LL, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_EEXPIRED);
  free(t);
  t = make_token(HS, "{\"exp\":1e300}", SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  auth_grant_free(g);
  free(t);

  /* wrong types are malformed */
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"exp\":\"1700000000\"}", SIGN_HS),
                   AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"exp\":null}", SIGN_HS), AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"exp\":true}", SIGN_HS), AUTH_EMALFORMED);
  auth_free(a);
}

static void test_nbf(void **state) {
  (void)state;
  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = NULL;
  char p[128];
  snprintf(p, sizeof(p), "{\"nbf\":%lld,\"exp\":%lld}", NOW + 100, NOW + 1000);
  char *t = make_token(HS, p, SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_ENOTYET);
  assert_int_equal(verify_at(a, t, NOW + 100 - LEEWAY - 1, &g), AUTH_ENOTYET);
  assert_int_equal(verify_at(a, t, NOW + 100 - LEEWAY, &g), AUTH_OK); /* within leeway */
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + 100, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + 2000, &g), AUTH_EEXPIRED);
  free(t);
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"nbf\":[1]}", SIGN_HS), AUTH_EMALFORMED);
  /* iat is ignored, even in the future or of the wrong type */
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"iat\":99999999999}", SIGN_HS), AUTH_OK);
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"iat\":\"x\"}", SIGN_HS), AUTH_OK);
  auth_free(a);
}

static void test_zero_leeway(void **state) {
  (void)state;
  struct auth *a = NULL;
  assert_int_equal(
      auth_new(&a, AUTH_HS256, (const unsigned char *)SECRET, strlen(SECRET), 0, NULL, 0), 0);
  char p[128];
  snprintf(p, sizeof(p), "{\"nbf\":%lld,\"exp\":%lld}", NOW, NOW + 10);
  char *t = make_token(HS, p, SIGN_HS);
  struct auth_grant *g = NULL;
  assert_int_equal(verify_at(a, t, NOW - 1, &g), AUTH_ENOTYET);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + 9, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + 10, &g), AUTH_EEXPIRED);
  free(t);
  auth_free(a);
}

static void test_bad_signature(void **state) {
  (void)state;
  char *t = make_token(HS, "{\"sub\":\"x\",\"publish\":[\"*\"]}", SIGN_HS);
  size_t n = strlen(t);
  /* flip one character of the signature (not the last, whose low bits
   * are padding) */
  char *bad = strdup(t);
  assert_non_null(bad);
  bad[n - 5] = bad[n - 5] == 'A' ? 'B' : 'A';
  assert_int_equal(check(AUTH_HS256, bad), AUTH_ESIGNATURE);
  free(bad);

  /* signature cut short, or gone */
  bad = strdup(t);
  assert_non_null(bad);
  bad[n - 3] = 0; /* 40 characters: no padding bits to get wrong */
  assert_int_equal(check(AUTH_HS256, bad), AUTH_ESIGNATURE);
  char *dot = strrchr(bad, '.');
  dot[1] = 0;
  assert_int_equal(check(AUTH_HS256, bad), AUTH_ESIGNATURE);
  free(bad);

  /* payload swapped for another one, signature kept */
  char *other = make_token(HS, "{\"sub\":\"x\",\"publish\":[\"a\"]}", SIGN_HS);
  char *h = strdup(t);
  assert_non_null(h);
  *strchr(h, '.') = 0;
  char *p = strchr(t, '.') + 1;
  *strchr(p, '.') = 0;
  char *s = strrchr(other, '.') + 1;
  char *mix = join3(h, p, s);
  assert_int_equal(check(AUTH_HS256, mix), AUTH_ESIGNATURE);
  free(mix);
  free(h);
  free(other);
  free(t);

  /* signed with another secret */
  const char *wrong = "0123456789abcdef0123456789abcdeF";
  t = make_token_key(HS, "{}", SIGN_HS, wrong, strlen(wrong), NULL);
  assert_int_equal(check(AUTH_HS256, t), AUTH_ESIGNATURE);
  free(t);
  /* secret a prefix of the real one */
  t = make_token_key(HS, "{}", SIGN_HS, SECRET, 16, NULL);
  assert_int_equal(check(AUTH_HS256, t), AUTH_ESIGNATURE);
  free(t);
}

static void test_binary_secret(void **state) {
  (void)state;
  const unsigned char key[] = {0x00, 0xff, 0x10, 0x00, 0x42};
  struct auth *a = NULL;
  assert_int_equal(auth_new(&a, AUTH_HS256, key, sizeof(key), 0, NULL, 0), 0);
  char *t = make_token_key(HS, "{}", SIGN_HS, key, sizeof(key), NULL);
  struct auth_grant *g = NULL;
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  auth_grant_free(g);
  free(t);
  /* only the bytes before the NUL would not do */
  t = make_token_key(HS, "{}", SIGN_HS, key, 1, NULL);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_ESIGNATURE);
  free(t);
  auth_free(a);
}

/* ---- algorithms ---- */

static void test_alg_none(void **state) {
  (void)state;
  static const char *const headers[] = {
      "{\"alg\":\"none\"}", "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"alg\":\"None\"}",
      "{\"alg\":\"NONE\"}", "{\"alg\":\"nOnE\",\"typ\":\"JWT\"}", "{\"alg\":\"\"}",
  };
  static const enum auth_alg algs[] = {AUTH_HS256, AUTH_RS256, AUTH_ES256};
  for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
    for (size_t k = 0; k < 3; k++) {
      /* without a signature part's content */
      assert_int_equal(check_made(algs[k], headers[i], "{\"publish\":[\"*\"]}", SIGN_NONE),
                       AUTH_EALG);
      /* with a signature (HMAC of the configured secret, even) */
      assert_int_equal(check_made(algs[k], headers[i], "{\"publish\":[\"*\"]}", SIGN_HS),
                       AUTH_EALG);
    }
  }
  /* two parts only (no trailing dot) */
  char *h = b64s("{\"alg\":\"none\"}"), *p = b64s("{}");
  char two[256];
  snprintf(two, sizeof(two), "%s.%s", h, p);
  assert_int_equal(check(AUTH_HS256, two), AUTH_EMALFORMED);
  free(h);
  free(p);

  /* a second "alg" must not override the first */
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS256\",\"alg\":\"none\"}", "{}", SIGN_NONE),
                   AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"none\",\"alg\":\"HS256\"}", "{}", SIGN_HS),
                   AUTH_EMALFORMED);

  /* what libjwt 1.10 itself does with alg none when handed a key: refuse */
  char *t = make_token("{\"alg\":\"none\"}", "{}", SIGN_NONE);
  jwt_t *j = NULL;
  assert_int_not_equal(jwt_decode(&j, t, (const unsigned char *)SECRET, (int)strlen(SECRET)), 0);
  assert_null(j);
  free(t);
}

static void test_alg_confusion(void **state) {
  (void)state;
  /* the classic: RS256 configured, token HS256 with the public key PEM as
   * the HMAC secret */
  char *t = make_token_key(HS, "{\"publish\":[\"*\"]}", SIGN_HS, rsa_pub, strlen(rsa_pub), NULL);
  assert_int_equal(check(AUTH_RS256, t), AUTH_EALG);
  free(t);
  t = make_token_key(HS, "{\"publish\":[\"*\"]}", SIGN_HS, ec_pub, strlen(ec_pub), NULL);
  assert_int_equal(check(AUTH_ES256, t), AUTH_EALG);
  free(t);

  /* asymmetric tokens where HS256 is configured, and across RS/ES */
  assert_int_equal(check_made(AUTH_HS256, RS, "{}", SIGN_RS), AUTH_EALG);
  assert_int_equal(check_made(AUTH_HS256, ES, "{}", SIGN_ES), AUTH_EALG);
  assert_int_equal(check_made(AUTH_RS256, ES, "{}", SIGN_ES), AUTH_EALG);
  assert_int_equal(check_made(AUTH_ES256, RS, "{}", SIGN_RS), AUTH_EALG);
  /* other members of the families */
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS512\"}", "{}", SIGN_HS), AUTH_EALG);
  assert_int_equal(check_made(AUTH_RS256, "{\"alg\":\"PS256\"}", "{}", SIGN_RS), AUTH_EALG);
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"hs256\"}", "{}", SIGN_HS), AUTH_EALG);
  /* a missing or non-string alg is malformed */
  assert_int_equal(check_made(AUTH_HS256, "{\"typ\":\"JWT\"}", "{}", SIGN_HS), AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":256}", "{}", SIGN_HS), AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":null}", "{}", SIGN_HS), AUTH_EMALFORMED);
}

static void test_rs256(void **state) {
  (void)state;
  /* made with libjwt from the private key PEM */
  jwt_t *j = NULL;
  assert_int_equal(jwt_new(&j), 0);
  assert_int_equal(jwt_add_grant(j, "sub", "rsa-user"), 0);
  assert_int_equal(jwt_add_grants_json(j, "{\"subscribe\":[\"*\"]}"), 0);
  assert_int_equal(
      jwt_set_alg(j, JWT_ALG_RS256, (const unsigned char *)rsa_priv, (int)strlen(rsa_priv)), 0);
  char *t = jwt_encode_str(j);
  assert_non_null(t);
  jwt_free(j);

  struct auth *a = new_auth(AUTH_RS256);
  struct auth_grant *g = NULL;
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  assert_string_equal(auth_grant_sub(g), "rsa-user");
  assert_true(allows(g, AUTH_SUBSCRIBE, "anything"));
  assert_false(allows(g, AUTH_PUBLISH, "anything"));
  auth_grant_free(g);
  free(t);

  /* made by hand with OpenSSL */
  t = make_token(RS, "{\"exp\":1700000010}", SIGN_RS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  auth_grant_free(g);
  assert_int_equal(verify_at(a, t, NOW + 40, &g), AUTH_EEXPIRED);
  free(t);
  auth_free(a);

  /* signed by another key */
  t = make_token_key(RS, "{}", SIGN_RS, NULL, 0, rsa_key2);
  assert_int_equal(check(AUTH_RS256, t), AUTH_ESIGNATURE);
  free(t);
  /* verified against another key */
  assert_int_equal(
      auth_new(&a, AUTH_RS256, (const unsigned char *)rsa2_pub, strlen(rsa2_pub), 0, NULL, 0), 0);
  t = make_token(RS, "{}", SIGN_RS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_ESIGNATURE);
  free(t);
  auth_free(a);
  assert_int_equal(ERR_peek_error(), 0);
}

static void test_es256(void **state) {
  (void)state;
  jwt_t *j = NULL;
  assert_int_equal(jwt_new(&j), 0);
  assert_int_equal(jwt_add_grant(j, "sub", "ec-user"), 0);
  assert_int_equal(jwt_add_grants_json(j, "{\"publish\":[\"a.*\"]}"), 0);
  assert_int_equal(
      jwt_set_alg(j, JWT_ALG_ES256, (const unsigned char *)ec_priv, (int)strlen(ec_priv)), 0);
  char *t = jwt_encode_str(j);
  assert_non_null(t);
  jwt_free(j);

  struct auth *a = new_auth(AUTH_ES256);
  struct auth_grant *g = NULL;
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  assert_string_equal(auth_grant_sub(g), "ec-user");
  assert_true(allows(g, AUTH_PUBLISH, "a.b"));
  auth_grant_free(g);
  free(t);

  /* by hand, in the JOSE R || S format other issuers produce */
  t = make_token(ES, "{\"sub\":\"jose\"}", SIGN_ES);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  assert_string_equal(auth_grant_sub(g), "jose");
  auth_grant_free(g);
  free(t);
  /* a DER signature is not JWS */
  t = make_token(ES, "{}", SIGN_ES_DER);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_ESIGNATURE);
  free(t);
  /* another key */
  t = make_token_key(ES, "{}", SIGN_ES, NULL, 0, ec_key2);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_ESIGNATURE);
  free(t);
  auth_free(a);

  assert_int_equal(
      auth_new(&a, AUTH_ES256, (const unsigned char *)ec2_pub, strlen(ec2_pub), 0, NULL, 0), 0);
  t = make_token(ES, "{}", SIGN_ES);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_ESIGNATURE);
  free(t);
  auth_free(a);
  assert_int_equal(ERR_peek_error(), 0);
}

/* ---- malformed tokens ---- */

static void test_malformed(void **state) {
  (void)state;
  static const char *const bad[] = {
      "a",
      "a.b",
      "a.b.c.d",
      ".eyJ9.abc",
      "eyJhbGciOiJIUzI1NiJ9..abc",
      "eyJhbGciOiJIUzI1NiJ9.e30.abc.",
      "...",
      "eyJhbGciOiJIUzI1NiJ9.e30.ab+c", /* base64, not base64url */
      "eyJhbGciOiJIUzI1NiJ9.e30.abc=", /* padding */
      "eyJhbGciOiJIUzI1NiJ9=.e30.abc",
      "eyJhbGciOiJIUzI1NiJ9.e30.a",   /* impossible length */
      "eyJhbGciOiJIUzI1NiJ9.e31.abc", /* non-canonical trailing bits */
      "eyJhbGciOiJIUzI1NiJ9.e30.abd", /* same in the signature */
      "eyJhbGciOiJIUzI1NiJ9 .e30.abc",
      "eyJhbGciOiJIUzI1NiJ9.e30.ab\001c",
      "bm90IGpzb24.e30.abc",                  /* header not JSON */
      "WzFd.e30.abc",                         /* header [1] */
      "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.abc", /* payload not JSON */
      "eyJhbGciOiJIUzI1NiJ9.WzFd.abc",        /* payload [1] */
      "eyJhbGciOiJIUzI1NiJ9.MQ.abc",          /* payload 1 */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int r = check(AUTH_HS256, bad[i]);
    if (r != AUTH_EMALFORMED) fprintf(stderr, "token %zu: %s\n", i, auth_strerror(r));
    assert_int_equal(r, AUTH_EMALFORMED);
  }
  /* an embedded NUL */
  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = NULL;
  char *t = make_token(HS, "{}", SIGN_HS);
  size_t n = strlen(t);
  t[n - 3] = 0;
  assert_int_equal(auth_verify(a, t, n, NOW, &g), AUTH_EMALFORMED);
  free(t);
  auth_free(a);

  /* header problems, properly signed */
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", "{}", SIGN_HS),
                   AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS256\",\"typ\":1}", "{}", SIGN_HS),
                   AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{}", SIGN_HS),
                   AUTH_EMALFORMED);
  /* payload with a duplicate claim or a NUL escape */
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"exp\":1,\"exp\":9999999999}", SIGN_HS),
                   AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, HS, "{\"sub\":\"a\\u0000b\"}", SIGN_HS), AUTH_EMALFORMED);
  assert_int_equal(check_made(AUTH_HS256, HS, "{}  ", SIGN_HS), AUTH_OK);
  assert_int_equal(check_made(AUTH_HS256, HS, "{} x", SIGN_HS), AUTH_EMALFORMED);
}

/* ---- claims and patterns ---- */

static void test_patterns(void **state) {
  (void)state;
  struct auth_grant *g = grant_of(
      "{\"subscribe\":[\"news.*\",\"weather\",\"a*\"],\"publish\":[\"chat.room1\",\"x.*\"]}");
  assert_true(allows(g, AUTH_SUBSCRIBE, "news.a"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "news.a.b"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "news."));
  assert_false(allows(g, AUTH_SUBSCRIBE, "news"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "newsX"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "new"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "weather"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "weather2"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "weathe"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "Weather"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "a"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "abc"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "chat.room1"));
  assert_true(allows(g, AUTH_PUBLISH, "chat.room1"));
  assert_false(allows(g, AUTH_PUBLISH, "chat.room10"));
  assert_true(allows(g, AUTH_PUBLISH, "x.y"));
  assert_false(allows(g, AUTH_PUBLISH, "news.a"));
  assert_false(allows(g, AUTH_SUBSCRIBE, ""));
  assert_false(auth_allows(g, AUTH_SUBSCRIBE, NULL, 0));
  assert_false(auth_allows(g, (enum auth_action)7, "weather", 7));
  /* the length given counts, not a NUL */
  assert_true(auth_allows(g, AUTH_SUBSCRIBE, "weatherXYZ", 7));
  assert_false(auth_allows(g, AUTH_SUBSCRIBE, "news.a", 4));
  auth_grant_free(g);

  /* "*" alone: everything, whatever else is listed */
  g = grant_of("{\"subscribe\":[\"a\",\"*\",\"b\"],\"publish\":[\"*\"]}");
  assert_true(allows(g, AUTH_SUBSCRIBE, "x"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "a.b.c"));
  assert_true(allows(g, AUTH_PUBLISH, "z"));
  auth_grant_free(g);

  /* no claims, empty arrays: nothing */
  g = grant_of("{\"sub\":\"nobody\"}");
  assert_false(allows(g, AUTH_SUBSCRIBE, "a"));
  assert_false(allows(g, AUTH_PUBLISH, "a"));
  auth_grant_free(g);
  g = grant_of("{\"subscribe\":[],\"publish\":[]}");
  assert_false(allows(g, AUTH_SUBSCRIBE, "a"));
  assert_false(allows(g, AUTH_PUBLISH, "a"));
  auth_grant_free(g);
  /* one claim does not imply the other */
  g = grant_of("{\"subscribe\":[\"*\"]}");
  assert_true(allows(g, AUTH_SUBSCRIBE, "a"));
  assert_false(allows(g, AUTH_PUBLISH, "a"));
  auth_grant_free(g);

  assert_false(auth_allows(NULL, AUTH_SUBSCRIBE, "a", 1));
  auth_grant_free(NULL);
}

static void test_patterns_malformed(void **state) {
  (void)state;
  static const char *const bad[] = {
      "{\"subscribe\":\"news.*\"}",  "{\"subscribe\":null}",
      "{\"subscribe\":{\"a\":1}}",   "{\"publish\":true}",
      "{\"subscribe\":[\"a\",1]}",   "{\"publish\":[null]}",
      "{\"publish\":[[\"a\"]]}",     "{\"subscribe\":[\"\"]}",
      "{\"subscribe\":[\"a*b\"]}",   "{\"subscribe\":[\"**\"]}",
      "{\"subscribe\":[\"a b\"]}",   "{\"subscribe\":[\"caf\\u00e9\"]}",
      "{\"subscribe\":[\"a\\tb\"]}", "{\"sub\":42}",
      "{\"sub\":[\"x\"]}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int r = check_made(AUTH_HS256, HS, bad[i], SIGN_HS);
    if (r != AUTH_EMALFORMED) fprintf(stderr, "payload %s: %s\n", bad[i], auth_strerror(r));
    assert_int_equal(r, AUTH_EMALFORMED);
  }
}

/* {"subscribe":[n patterns of len bytes, the last ending in '*' if star]} */
static char *many_patterns(size_t n, size_t len) {
  size_t cap = 32 + n * (len + 3);
  char *s = malloc(cap), *o = s;
  assert_non_null(s);
  o += sprintf(o, "{\"subscribe\":[");
  for (size_t i = 0; i < n; i++) {
    *o++ = '"';
    memset(o, 'a', len);
    snprintf(o, 4, "%03zu", i % 1000); /* distinct prefixes */
    o[3] = len > 3 ? 'a' : o[3];
    o += len;
    *o++ = '"';
    if (i + 1 < n) *o++ = ',';
  }
  strcpy(o, "]}");
  return s;
}

static void test_pattern_caps(void **state) {
  (void)state;
  struct auth *a = new_auth(AUTH_HS256);
  struct auth_grant *g = NULL;
  /* 256 patterns: allowed (the token stays under 8 KiB with short ones) */
  char *p = many_patterns(AUTH_MAX_PATTERNS, 5);
  char *t = make_token(HS, p, SIGN_HS);
  assert_true(strlen(t) <= AUTH_MAX_TOKEN);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  assert_true(allows(g, AUTH_SUBSCRIBE, "000aa"));
  assert_true(allows(g, AUTH_SUBSCRIBE, "255aa"));
  assert_false(allows(g, AUTH_SUBSCRIBE, "256aa"));
  auth_grant_free(g);
  free(t);
  free(p);
  /* 257: malformed */
  p = many_patterns(AUTH_MAX_PATTERNS + 1, 5);
  t = make_token(HS, p, SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_EMALFORMED);
  free(t);
  free(p);
  /* a pattern of 200 bytes is allowed, 201 is not */
  p = many_patterns(2, AUTH_MAX_PATTERN);
  t = make_token(HS, p, SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_OK);
  char topic[AUTH_MAX_PATTERN + 1];
  memset(topic, 'a', sizeof(topic));
  memcpy(topic, "001a", 4);
  assert_true(auth_allows(g, AUTH_SUBSCRIBE, topic, AUTH_MAX_PATTERN));
  assert_false(auth_allows(g, AUTH_SUBSCRIBE, topic, AUTH_MAX_PATTERN - 1));
  assert_false(auth_allows(g, AUTH_SUBSCRIBE, topic, AUTH_MAX_PATTERN + 1));
  auth_grant_free(g);
  free(t);
  free(p);
  p = many_patterns(1, AUTH_MAX_PATTERN + 1);
  t = make_token(HS, p, SIGN_HS);
  assert_int_equal(verify_at(a, t, NOW, &g), AUTH_EMALFORMED);
  free(t);
  free(p);
  /* a 200-byte prefix pattern */
  char pay[512];
  char pat[AUTH_MAX_PATTERN + 1];
  memset(pat, 'p', AUTH_MAX_PATTERN - 1);
  pat[AUTH_MAX_PATTERN - 1] = '*';
  pat[AUTH_MAX_PATTERN] = 0;
  snprintf(pay, sizeof(pay), "{\"publish\":[\"%s\"]}", pat);
  g = grant_of(pay);
  char long_topic[AUTH_MAX_PATTERN + 10];
  memset(long_topic, 'p', sizeof(long_topic));
  assert_true(auth_allows(g, AUTH_PUBLISH, long_topic, AUTH_MAX_PATTERN - 1));
  assert_true(auth_allows(g, AUTH_PUBLISH, long_topic, sizeof(long_topic)));
  assert_false(auth_allows(g, AUTH_PUBLISH, long_topic, AUTH_MAX_PATTERN - 2));
  auth_grant_free(g);
  auth_free(a);
}

static void test_sub(void **state) {
  (void)state;
  struct auth_grant *g = grant_of("{\"sub\":\"user-42@example.com\"}");
  assert_string_equal(auth_grant_sub(g), "user-42@example.com");
  auth_grant_free(g);
  g = grant_of("{}");
  assert_string_equal(auth_grant_sub(g), "");
  auth_grant_free(g);
  g = grant_of("{\"sub\":\"\"}");
  assert_string_equal(auth_grant_sub(g), "");
  auth_grant_free(g);
  /* control characters, DEL and UTF-8 become '?' byte for byte */
  g = grant_of("{\"sub\":\"a\\nb\\r\\u001b[31m\\u007fz caf\\u00e9\"}");
  assert_string_equal(auth_grant_sub(g), "a?b??[31m?z caf??");
  auth_grant_free(g);
  /* at most 128 bytes */
  char p[400], want[AUTH_MAX_SUB + 1];
  memset(want, 'q', AUTH_MAX_SUB);
  want[AUTH_MAX_SUB] = 0;
  snprintf(p, sizeof(p), "{\"sub\":\"%sTAIL\"}", want);
  g = grant_of(p);
  assert_string_equal(auth_grant_sub(g), want);
  auth_grant_free(g);
  assert_string_equal(auth_grant_sub(NULL), "");
}

/* ---- token extraction ---- */

static int bearer(const char *h, const char **tok, size_t *tl) {
  return auth_token_from_bearer(h, h ? strlen(h) : 0, tok, tl);
}

static void test_token_from_bearer(void **state) {
  (void)state;
  const char *tok = NULL;
  size_t tl = 0;
  assert_int_equal(bearer("Bearer abc.def-_.g", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 11);
  assert_memory_equal(tok, "abc.def-_.g", 11);
  assert_int_equal(bearer("bearer x", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 1);
  assert_int_equal(bearer("BEARER \t  y.z  ", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 3);
  assert_memory_equal(tok, "y.z", 3);
  assert_int_equal(bearer("  Bearer q", &tok, &tl), AUTH_OK);

  tok = NULL;
  assert_int_equal(bearer(NULL, &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("Basic dXNlcjpwYXNz", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("Bearer", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("Bearer   ", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("Bearerabc", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("Bear abc", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(bearer("Bearer a b", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(bearer("Bearer a%2Eb", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(bearer("Bearer abc=", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(bearer("Bearer a,b", &tok, &tl), AUTH_EMALFORMED);
  assert_null(tok); /* untouched on failure */

  /* the length given counts */
  assert_int_equal(auth_token_from_bearer("Bearer abcdef", 10, &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 3);

  /* cap */
  char *big = malloc(8 + AUTH_MAX_TOKEN + 2);
  assert_non_null(big);
  memcpy(big, "Bearer ", 7);
  memset(big + 7, 'a', AUTH_MAX_TOKEN + 1);
  assert_int_equal(auth_token_from_bearer(big, 7 + AUTH_MAX_TOKEN, &tok, &tl), AUTH_OK);
  assert_int_equal(auth_token_from_bearer(big, 7 + AUTH_MAX_TOKEN + 1, &tok, &tl), AUTH_EMALFORMED);
  free(big);
}

static int query(const char *q, const char **tok, size_t *tl) {
  return auth_token_from_query(q, q ? strlen(q) : 0, tok, tl);
}

static void test_token_from_query(void **state) {
  (void)state;
  const char *tok = NULL;
  size_t tl = 0;
  assert_int_equal(query("token=abc.def", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 7);
  assert_memory_equal(tok, "abc.def", 7);
  assert_int_equal(query("a=1&token=x.y&b=2", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 3);
  assert_memory_equal(tok, "x.y", 3);
  assert_int_equal(query("a=1&b=2&token=zz", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 2);
  assert_memory_equal(tok, "zz", 2);
  assert_int_equal(query("&&token=q&", &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 1);

  tok = NULL;
  assert_int_equal(query(NULL, &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("a=1&b=2", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("xtoken=abc", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("tokens=abc", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("Token=abc", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("token=", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("token", &tok, &tl), AUTH_EMISSING);
  assert_int_equal(query("token=a%2Eb", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(query("token=a+b", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(query("token=a=b", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(query("token=a#frag", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(query("token=a&token=b", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(query("token=a&token=a", &tok, &tl), AUTH_EMALFORMED);
  assert_int_equal(query("token=&token=b", &tok, &tl), AUTH_EMALFORMED);
  assert_null(tok);
  /* the length given counts */
  assert_int_equal(auth_token_from_query("token=abc&token=d", 9, &tok, &tl), AUTH_OK);
  assert_int_equal(tl, 3);
}

static int proto(const char *h, const char **tok, size_t *tl, const char **echo, size_t *el) {
  return auth_token_from_protocol(h, h ? strlen(h) : 0, tok, tl, echo, el);
}

static void test_token_from_protocol(void **state) {
  (void)state;
  const char *tok = NULL, *echo = NULL;
  size_t tl = 0, el = 0;
  assert_int_equal(proto("tidings.jwt, tidings.jwt.abc.def.ghi", &tok, &tl, &echo, &el), AUTH_OK);
  assert_int_equal(tl, 11);
  assert_memory_equal(tok, "abc.def.ghi", 11);
  assert_int_equal(el, strlen(AUTH_PROTOCOL));
  assert_memory_equal(echo, "tidings.jwt", el);

  /* any order, with other protocols and odd spacing */
  echo = NULL;
  assert_int_equal(proto("chat,tidings.jwt.x-y_z ,\ttidings.jwt\t, v2", &tok, &tl, &echo, &el),
                   AUTH_OK);
  assert_int_equal(tl, 5);
  assert_memory_equal(tok, "x-y_z", 5);
  assert_string_equal(echo, "tidings.jwt");

  tok = echo = NULL;
  assert_int_equal(proto(NULL, &tok, &tl, &echo, &el), AUTH_EMISSING);
  assert_int_equal(proto("", &tok, &tl, &echo, &el), AUTH_EMISSING);
  assert_int_equal(proto("chat, v2", &tok, &tl, &echo, &el), AUTH_EMISSING);
  assert_int_equal(proto("tidings.jwt", &tok, &tl, &echo, &el), AUTH_EMISSING);
  assert_int_equal(proto("tidings.jwt, tidings.jwt.", &tok, &tl, &echo, &el), AUTH_EMISSING);
  assert_int_equal(proto("tidings.jwtabc, tidings.jwt", &tok, &tl, &echo, &el), AUTH_EMISSING);
  assert_int_equal(proto("Tidings.JWT, Tidings.JWT.abc", &tok, &tl, &echo, &el), AUTH_EMISSING);
  /* the token item without the marker: the server would have to echo it */
  assert_int_equal(proto("tidings.jwt.abc", &tok, &tl, &echo, &el), AUTH_EMALFORMED);
  assert_int_equal(proto("tidings.jwt, tidings.jwt.a, tidings.jwt.b", &tok, &tl, &echo, &el),
                   AUTH_EMALFORMED);
  assert_int_equal(proto("tidings.jwt, tidings.jwt.a b", &tok, &tl, &echo, &el), AUTH_EMALFORMED);
  assert_int_equal(proto("tidings.jwt, tidings.jwt.a%2e", &tok, &tl, &echo, &el), AUTH_EMALFORMED);
  assert_null(tok);
  assert_null(echo);
}

/* From the handshake to a grant, every route. */
static void test_end_to_end(void **state) {
  (void)state;
  char *t = make_token(ES, "{\"sub\":\"browser\",\"subscribe\":[\"live.*\"]}", SIGN_ES);
  size_t n = strlen(t);
  char *hdr = malloc(n + 64);
  assert_non_null(hdr);
  int hl = snprintf(hdr, n + 64, "tidings.jwt, tidings.jwt.%s", t);
  const char *tok, *echo;
  size_t tl, el;
  assert_int_equal(auth_token_from_protocol(hdr, (size_t)hl, &tok, &tl, &echo, &el), AUTH_OK);
  struct auth *a = new_auth(AUTH_ES256);
  struct auth_grant *g = NULL;
  assert_int_equal(auth_verify(a, tok, tl, NOW, &g), AUTH_OK);
  assert_string_equal(auth_grant_sub(g), "browser");
  assert_true(allows(g, AUTH_SUBSCRIBE, "live.scores"));
  auth_grant_free(g);

  hl = snprintf(hdr, n + 64, "Bearer %s", t);
  assert_int_equal(auth_token_from_bearer(hdr, (size_t)hl, &tok, &tl), AUTH_OK);
  assert_int_equal(auth_verify(a, tok, tl, NOW, &g), AUTH_OK);
  auth_grant_free(g);

  hl = snprintf(hdr, n + 64, "v=1&token=%s", t);
  assert_int_equal(auth_token_from_query(hdr, (size_t)hl, &tok, &tl), AUTH_OK);
  assert_int_equal(auth_verify(a, tok, tl, NOW, &g), AUTH_OK);
  auth_grant_free(g);
  auth_free(a);
  free(hdr);
  free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_errors),
      cmocka_unit_test(test_strerror),
      cmocka_unit_test(test_hs256_libjwt_token),
      cmocka_unit_test(test_hs256_handmade),
      cmocka_unit_test(test_missing),
      cmocka_unit_test(test_too_long),
      cmocka_unit_test(test_exp),
      cmocka_unit_test(test_nbf),
      cmocka_unit_test(test_zero_leeway),
      cmocka_unit_test(test_bad_signature),
      cmocka_unit_test(test_binary_secret),
      cmocka_unit_test(test_alg_none),
      cmocka_unit_test(test_alg_confusion),
      cmocka_unit_test(test_rs256),
      cmocka_unit_test(test_es256),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_patterns),
      cmocka_unit_test(test_patterns_malformed),
      cmocka_unit_test(test_pattern_caps),
      cmocka_unit_test(test_sub),
      cmocka_unit_test(test_token_from_bearer),
      cmocka_unit_test(test_token_from_query),
      cmocka_unit_test(test_token_from_protocol),
      cmocka_unit_test(test_end_to_end),
  };
  return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
