#include "auth_load.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char *read_file(const char *path, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
    return NULL;
  }
  unsigned char *buf = malloc(AUTH_MAX_KEY + 1);
  size_t n = buf ? fread(buf, 1, AUTH_MAX_KEY + 1, f) : 0;
  fclose(f);
  if (!buf || n == 0 || n > AUTH_MAX_KEY) {
    snprintf(err, errlen, "%s: empty or larger than %d bytes", path, AUTH_MAX_KEY);
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

int auth_load(const struct config *cfg, struct auth **out, const char **alg_name, char *err,
              size_t errlen) {
  *out = NULL;
  *alg_name = "none";
  unsigned char *key = NULL;
  size_t klen = 0;
  enum auth_alg alg;
  if (cfg->jwt_secret[0]) {
    alg = AUTH_HS256;
    klen = strlen(cfg->jwt_secret);
    key = malloc(klen);
    if (!key) return -1;
    memcpy(key, cfg->jwt_secret, klen);
  } else if (cfg->jwt_secret_file[0]) {
    alg = AUTH_HS256;
    if (!(key = read_file(cfg->jwt_secret_file, &klen, err, errlen))) return -1;
    while (klen && (key[klen - 1] == '\n' || key[klen - 1] == '\r')) klen--;
  } else if (cfg->jwt_public_key[0]) {
    if (!(key = read_file(cfg->jwt_public_key, &klen, err, errlen))) return -1;
    BIO *bio = BIO_new_mem_buf(key, (int)klen);
    EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    int type = pk ? EVP_PKEY_get_base_id(pk) : 0;
    EVP_PKEY_free(pk);
    if (type == EVP_PKEY_RSA) {
      alg = AUTH_RS256;
    } else if (type == EVP_PKEY_EC) {
      alg = AUTH_ES256;
    } else {
      snprintf(err, errlen, "%s: not a PEM RSA or EC public key", cfg->jwt_public_key);
      free(key);
      return -1;
    }
  } else {
    return 0; /* anonymous */
  }
  int rc = auth_new(out, alg, key, klen, cfg->jwt_leeway, err, errlen);
  /* the secret is not needed in this buffer any more */
  memset(key, 0, klen);
  free(key);
  *alg_name = alg == AUTH_HS256 ? "HS256" : alg == AUTH_RS256 ? "RS256" : "ES256";
  return rc;
}

int api_key_load(const struct config *cfg, char **key, size_t *len, char *err, size_t errlen) {
  *key = NULL;
  *len = 0;
  size_t n;
  char *k;
  if (cfg->api_key[0]) {
    n = strlen(cfg->api_key);
    if (!(k = malloc(n))) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    memcpy(k, cfg->api_key, n);
  } else if (cfg->api_key_file[0]) {
    if (!(k = (char *)read_file(cfg->api_key_file, &n, err, errlen))) return -1;
    while (n && (k[n - 1] == '\n' || k[n - 1] == '\r')) n--;
  } else {
    return 0;
  }
  if (n < API_KEY_MIN_LEN || n > API_KEY_MAX_LEN) {
    snprintf(err, errlen, "the API key%s%s must be %d to %d bytes long",
             cfg->api_key[0] ? "" : " in ", cfg->api_key[0] ? "" : cfg->api_key_file,
             API_KEY_MIN_LEN, API_KEY_MAX_LEN);
    memset(k, 0, n);
    free(k);
    return -1;
  }
  *key = k;
  *len = n;
  return 0;
}
