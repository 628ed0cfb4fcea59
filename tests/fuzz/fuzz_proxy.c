/* fuzz_proxy - worker/proxy.c: the PROXY protocol v2 header parser.
 *
 * Invariants checked besides the sanitizers:
 *  - the result is a length of 16..PROXY_MAX_HEADER within the input,
 *    PROXY_INCOMPLETE or PROXY_EINVALID;
 *  - for a PROXY TCP4/TCP6 header the source address and port are the bytes
 *    of the header, otherwise info->local is set;
 *  - a header arriving in pieces is judged like the whole: a proper prefix
 *    of a complete header is PROXY_INCOMPLETE, a prefix of an invalid one
 *    PROXY_INCOMPLETE or PROXY_EINVALID, a prefix of an incomplete one
 *    PROXY_INCOMPLETE, and bytes after a complete header change nothing. */
#include <netinet/in.h>
#include <string.h>

#include "../../worker/proxy.h"
#include "fuzz_common.h"

static int parse_copy(const uint8_t *data, size_t len, struct proxy_info *info) {
  uint8_t *b = fuzz_dup(data, len);
  int rc = proxy_parse(b, len, info);
  free(b);
  return rc;
}

static void check_prefix(const uint8_t *data, size_t k, int rc) {
  struct proxy_info pi;
  int rk = parse_copy(data, k, &pi);
  if (rc > 0 && k >= (size_t)rc) FUZZ_CHECK(rk == rc);
  else if (rc == PROXY_EINVALID) FUZZ_CHECK(rk == PROXY_INCOMPLETE || rk == PROXY_EINVALID);
  else FUZZ_CHECK(rk == PROXY_INCOMPLETE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *buf = fuzz_dup(data, size);
  struct proxy_info info;
  memset(&info, 0xa5, sizeof(info));
  int rc = proxy_parse(buf, size, &info);
  FUZZ_CHECK(rc == PROXY_INCOMPLETE || rc == PROXY_EINVALID ||
             (rc >= 16 && rc <= PROXY_MAX_HEADER && (size_t)rc <= size));
  if (rc > 0) {
    size_t alen = ((size_t)buf[14] << 8) | buf[15];
    FUZZ_CHECK((size_t)rc == 16 + alen);
    FUZZ_CHECK((buf[12] >> 4) == 2);
    if (info.local) {
      FUZZ_CHECK(info.src.ss_family == 0);
    } else {
      FUZZ_CHECK((buf[12] & 0x0f) == 1 && (buf[13] & 0x0f) == 1);
      if (info.src.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&info.src;
        FUZZ_CHECK((buf[13] >> 4) == 1 && alen >= 12);
        FUZZ_CHECK(memcmp(&s4->sin_addr, buf + 16, 4) == 0);
        FUZZ_CHECK(memcmp(&s4->sin_port, buf + 24, 2) == 0);
      } else {
        FUZZ_CHECK(info.src.ss_family == AF_INET6);
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&info.src;
        FUZZ_CHECK((buf[13] >> 4) == 2 && alen >= 36);
        FUZZ_CHECK(memcmp(&s6->sin6_addr, buf + 16, 16) == 0);
        FUZZ_CHECK(memcmp(&s6->sin6_port, buf + 48, 2) == 0);
      }
    }
  }
  /* Every prefix up to 64 bytes (the signature and any address block),
   * then a few around the end of the header and of the input. */
  for (size_t k = 0; k < size && k <= 64; k++) check_prefix(data, k, rc);
  if (rc > 1) check_prefix(data, (size_t)rc - 1, rc);
  if (rc > 0) check_prefix(data, (size_t)rc, rc);
  if (size > 0) check_prefix(data, size - 1, rc);
  free(buf);
  return 0;
}
