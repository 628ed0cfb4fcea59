/* auth_load.h - builds the JWT verifier from the options.
 *
 * Reads --jwt-secret-file or --jwt-public-key (start-up only: the files are
 * read with blocking I/O) and fixes the algorithm from the configuration,
 * never from tokens: a secret means HS256, an RSA public key RS256, a P-256
 * public key ES256.  Returns 0 with *out NULL when no key is configured
 * (anonymous access), 0 with a verifier the caller frees with auth_free(),
 * or -1 with one line in err.
 */
#ifndef TIDINGS_AUTH_LOAD_H
#define TIDINGS_AUTH_LOAD_H

#include <stddef.h>

#include "../common/config.h"
#include "auth.h"

int auth_load(const struct config *cfg, struct auth **out, const char **alg_name, char *err,
              size_t errlen);

/* The HTTP API's key: --api-key, or the contents of --api-key-file less a
 * trailing newline (start-up only: blocking I/O).  Returns 0 with *key
 * NULL when the API is off, 0 with a malloc'd key of *len bytes (at least
 * API_KEY_MIN_LEN), or -1 with one line in err that never quotes the key. */
int api_key_load(const struct config *cfg, char **key, size_t *len, char *err, size_t errlen);

#endif
