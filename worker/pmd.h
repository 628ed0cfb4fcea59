/* pmd.h - permessage-deflate (RFC 7692): negotiation, and one compressor
 * and one decompressor per worker shared by every connection.
 *
 * The server always answers with server_no_context_takeover and
 * client_no_context_takeover: every message is compressed and
 * decompressed on its own, so no connection keeps a zlib stream and a
 * broadcast is compressed once per worker (once per window size a client
 * asked for, in practice once) instead of once per subscriber.
 *
 * Memory: struct pmd owns its zlib streams and one inflate output buffer
 * of max_message bytes; pmd_inflate() returns a pointer into that buffer,
 * valid until the next call.  pmd_frame() returns a new sbuf owned by the
 * caller.
 */
#ifndef TIDINGS_PMD_H
#define TIDINGS_PMD_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "../common/sbuf.h"

#define PMD_MIN_BITS 9
#define PMD_MAX_BITS 15

struct pmd_params {
  int server_bits; /* window the server may use to compress: 9..15 */
};

/* Picks the first acceptable offer of a Sec-WebSocket-Extensions value.
 * Returns 1 and fills *p and resp (the response header's value), or 0 when
 * no offer is acceptable (answer without the extension). */
int pmd_negotiate(const char *offers, size_t len, struct pmd_params *p, char *resp, size_t resplen);

struct pmd {
  z_stream def[PMD_MAX_BITS + 1]; /* by window bits, made on first use */
  int def_ready[PMD_MAX_BITS + 1];
  z_stream inf;
  int inf_ready;
  uint8_t *out; /* inflate output */
  size_t max_message;
};

void pmd_init(struct pmd *z, size_t max_message);
void pmd_free(struct pmd *z);

/* Compresses payload into a complete text frame with RSV1 set, using a
 * window of bits.  Returns the frame (refcount 1) or NULL. */
struct sbuf *pmd_frame(struct pmd *z, int bits, int opcode, const uint8_t *payload, size_t len);

enum { PMD_OK = 0, PMD_ETOOBIG = -1, PMD_ECORRUPT = -2, PMD_ENOMEM = -3 };
/* Decompresses one message; at most z->max_message bytes come out, so a
 * deflate bomb stops at the limit.  Returns PMD_OK with *out and *outlen
 * pointing into z->out, or a negative PMD_E*. */
int pmd_inflate(struct pmd *z, const uint8_t *in, size_t len, const uint8_t **out, size_t *outlen);

#endif
