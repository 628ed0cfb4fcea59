#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

int proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *info) {
  memset(info, 0, sizeof(*info));
  size_t cmp = len < 12 ? len : 12;
  if (memcmp(buf, sig, cmp) != 0) return PROXY_EINVALID;
  if (len < 16) return PROXY_INCOMPLETE;
  uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0f;
  uint8_t fam = buf[13] >> 4, proto = buf[13] & 0x0f;
  size_t alen = ((size_t)buf[14] << 8) | buf[15];
  if (ver != 2 || cmd > 1) return PROXY_EINVALID;
  if (16 + alen > PROXY_MAX_HEADER) return PROXY_EINVALID;
  if (len < 16 + alen) return PROXY_INCOMPLETE;
  const uint8_t *a = buf + 16;
  if (cmd == 0 || fam == 0) { /* LOCAL, or PROXY with UNSPEC: keep the real peer */
    info->local = 1;
    return (int)(16 + alen);
  }
  if (proto != 1) return PROXY_EINVALID; /* only STREAM makes sense here */
  if (fam == 1) {
    if (alen < 12) return PROXY_EINVALID;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&info->src;
    s4->sin_family = AF_INET;
    memcpy(&s4->sin_addr, a, 4);
    memcpy(&s4->sin_port, a + 8, 2);
  } else if (fam == 2) {
    if (alen < 36) return PROXY_EINVALID;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&info->src;
    s6->sin6_family = AF_INET6;
    memcpy(&s6->sin6_addr, a, 16);
    memcpy(&s6->sin6_port, a + 32, 2);
  } else if (fam == 3) {
    info->local = 1; /* AF_UNIX: no address worth keeping */
  } else {
    return PROXY_EINVALID;
  }
  return (int)(16 + alen);
}
