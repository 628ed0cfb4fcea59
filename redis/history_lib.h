/* history_lib.h - the text of the Redis function library "tidings" that
 * keeps each topic's history (redis/history.lua, embedded at build time).
 *
 * The server loads the text with FUNCTION LOAD REPLACE <text> each time it
 * connects to Redis; docs/history.md describes the functions, the keys and
 * the envelope that tidings_publish PUBLISHes.
 */
#ifndef TIDINGS_HISTORY_LIB_H
#define TIDINGS_HISTORY_LIB_H

#include <stddef.h>

/* The longest prefix history_lib_source() accepts (REDIS_PREFIX_MAX_LEN). */
#define HISTORY_LIB_PREFIX_MAX 64

/* Writes the library's source, NUL-terminated, to out[0..outlen): the
 * template with the prefix (informational: reported by tidings_info) and
 * the defaults of tidings_publish's maxlen (messages kept per topic) and ttl
 * (seconds the history lives after the topic's last publish) baked in, and
 * sharded set for a Redis Cluster (the envelope goes out with SPUBLISH).
 * Returns the length written (without the NUL), or -1 when out is too small
 * (history_lib_source_bound() bytes always suffice), when maxlen or ttl is 0,
 * or when prefix is longer than HISTORY_LIB_PREFIX_MAX or has a byte that is
 * not printable ASCII.  On -1, out holds "" if outlen > 0. */
int history_lib_source(char *out, size_t outlen, const char *prefix, unsigned maxlen, unsigned ttl,
                       int sharded);

/* A size of out that history_lib_source() never finds too small. */
size_t history_lib_source_bound(void);

#endif
