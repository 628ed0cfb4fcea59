/* fuzz_pmd - worker/pmd.c: permessage-deflate negotiation, bounded inflate
 * and the compressed frames of broadcasts.
 *
 * The whole input is used three ways:
 *  1. as a Sec-WebSocket-Extensions value for pmd_negotiate() (with a
 *     response buffer whose size comes from byte 0 as well as a large one);
 *  2. as a compressed message for pmd_inflate() with a small limit;
 *  3. as a payload for pmd_frame() (window bits and opcode from byte 0),
 *     whose frame is inflated again.
 * The struct pmd instances live for the whole run, as in a worker, so state
 * left over from one message would show in the next.
 *
 * Invariants checked besides the sanitizers:
 *  - an accepted offer gives 9..15 window bits and a NUL-terminated response
 *    that fits, starts with the fixed parameters, names the bits when < 15,
 *    and is itself an acceptable offer giving the same bits;
 *  - pmd_inflate() returns PMD_OK with at most max_message bytes, PMD_ETOOBIG
 *    or PMD_ECORRUPT, and a message zlib inflates to at most the limit is
 *    never ETOOBIG;
 *  - a frame from pmd_frame() is FIN + RSV1 + the opcode with a correct
 *    length header, and inflates back to the input: PMD_OK when the input
 *    fits the limit, PMD_ETOOBIG when it does not. */
#include <zlib.h>

#include "../../common/sbuf.h"
#include "../../worker/pmd.h"
#include "fuzz_common.h"

#define SMALL_MAX 1024
#define BIG_MAX (64 * 1024)
#define BASE "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

static struct pmd small, big;

static void check_negotiate(const uint8_t *data, size_t size) {
  char *offers = fuzz_dup(data, size);
  struct pmd_params p = {0};
  char resp[256];
  memset(resp, 'x', sizeof(resp));
  int ok = pmd_negotiate(offers, size, &p, resp, sizeof(resp));
  FUZZ_CHECK(ok == 0 || ok == 1);
  if (ok) {
    FUZZ_CHECK(p.server_bits >= PMD_MIN_BITS && p.server_bits <= PMD_MAX_BITS);
    FUZZ_CHECK(memchr(resp, '\0', sizeof(resp)) != NULL);
    FUZZ_CHECK(strncmp(resp, BASE, strlen(BASE)) == 0);
    if (p.server_bits == PMD_MAX_BITS) {
      FUZZ_CHECK(strcmp(resp, BASE) == 0);
    } else {
      char want[160];
      snprintf(want, sizeof(want), BASE "; server_max_window_bits=%d", p.server_bits);
      FUZZ_CHECK(strcmp(resp, want) == 0);
    }
    /* the response, offered back, is accepted with the same window */
    struct pmd_params p2 = {0};
    char resp2[256];
    size_t rl = strlen(resp);
    char *again = fuzz_dup(resp, rl);
    FUZZ_CHECK(pmd_negotiate(again, rl, &p2, resp2, sizeof(resp2)) == 1);
    FUZZ_CHECK(p2.server_bits == p.server_bits && strcmp(resp, resp2) == 0);
    free(again);
  }
  /* a response buffer of any size: never written past, NUL-terminated
   * when accepted */
  if (size > 0) {
    size_t rl = data[0] % 200;
    char *small_resp = malloc(rl ? rl : 1);
    struct pmd_params p3 = {0};
    int ok3 = pmd_negotiate(offers, size, &p3, small_resp, rl);
    FUZZ_CHECK(ok3 == 0 || ok3 == 1);
    if (ok3) {
      FUZZ_CHECK(ok && p3.server_bits == p.server_bits);
      FUZZ_CHECK(strcmp(small_resp, resp) == 0);
    }
    free(small_resp);
  }
  free(offers);
}

static void check_inflate(const uint8_t *data, size_t size) {
  uint8_t *in = fuzz_dup(data, size);
  const uint8_t *out = NULL;
  size_t outlen = 0;
  int rc = pmd_inflate(&small, in, size, &out, &outlen);
  FUZZ_CHECK(rc == PMD_OK || rc == PMD_ETOOBIG || rc == PMD_ECORRUPT);
  if (rc == PMD_OK) FUZZ_CHECK(out != NULL && outlen <= SMALL_MAX);
  /* the same message with a larger limit: the same bytes, or it was only
   * too big for the small one */
  const uint8_t *out2 = NULL;
  size_t outlen2 = 0;
  int rc2 = pmd_inflate(&big, in, size, &out2, &outlen2);
  FUZZ_CHECK(rc2 == PMD_OK || rc2 == PMD_ETOOBIG || rc2 == PMD_ECORRUPT);
  if (rc == PMD_OK) {
    FUZZ_CHECK(rc2 == PMD_OK && outlen2 == outlen);
    FUZZ_CHECK(outlen == 0 || memcmp(out, out2, outlen) == 0);
  }
  if (rc2 == PMD_OK) {
    FUZZ_CHECK(outlen2 <= BIG_MAX);
    if (outlen2 <= SMALL_MAX) FUZZ_CHECK(rc == PMD_OK);
    else FUZZ_CHECK(rc == PMD_ETOOBIG);
  }
  free(in);
}

static void check_frame(const uint8_t *data, size_t size) {
  int bits = 8 + (size ? data[0] & 7 : 7); /* 8 (out of range: 15 is used) .. 15 */
  int opcode = (size && (data[0] & 8)) ? 0x2 : 0x1;
  struct sbuf *f = pmd_frame(&big, bits, opcode, data, size);
  FUZZ_CHECK(f != NULL);
  FUZZ_CHECK(f->refs == 1 && f->len >= 2 && f->len <= f->cap);
  FUZZ_CHECK(f->data[0] == (0x80 | 0x40 | opcode));
  FUZZ_CHECK((f->data[1] & 0x80) == 0);
  size_t h, plen;
  unsigned l7 = f->data[1] & 0x7f;
  if (l7 < 126) {
    h = 2, plen = l7;
  } else if (l7 == 126) {
    FUZZ_CHECK(f->len >= 4);
    h = 4, plen = ((size_t)f->data[2] << 8) | f->data[3];
    FUZZ_CHECK(plen >= 126);
  } else {
    FUZZ_CHECK(f->len >= 10);
    h = 10, plen = 0;
    for (int i = 0; i < 8; i++) plen = (plen << 8) | f->data[2 + i];
    FUZZ_CHECK(plen > 0xffff);
  }
  FUZZ_CHECK(f->len == h + plen);

  uint8_t *payload = fuzz_dup(f->data + h, plen);
  const uint8_t *out;
  size_t outlen;
  int rc = pmd_inflate(&big, payload, plen, &out, &outlen);
  FUZZ_CHECK(rc == PMD_OK);
  FUZZ_CHECK(outlen == size && (size == 0 || memcmp(out, data, size) == 0));
  rc = pmd_inflate(&small, payload, plen, &out, &outlen);
  if (size <= SMALL_MAX) {
    FUZZ_CHECK(rc == PMD_OK);
    FUZZ_CHECK(outlen == size && (size == 0 || memcmp(out, data, size) == 0));
  } else {
    FUZZ_CHECK(rc == PMD_ETOOBIG);
  }
  free(payload);
  sbuf_unref(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!big.max_message) {
    pmd_init(&small, SMALL_MAX);
    pmd_init(&big, BIG_MAX);
  }
  check_negotiate(data, size);
  check_inflate(data, size);
  if (size <= BIG_MAX) check_frame(data, size);
  return 0;
}
