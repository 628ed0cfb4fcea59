/* proxy.h - the PROXY protocol v2 header (HAProxy's binary format), parsed
 * from a byte buffer without sockets.
 *
 * proxy_parse() returns the header length (> 0) when buf starts with a
 * complete valid header, PROXY_INCOMPLETE when more bytes could still make
 * one, or PROXY_EINVALID.  For the PROXY command the source address is
 * written into info->src (AF_INET or AF_INET6); for LOCAL (health checks)
 * or an unspecified family info->local is set and the connection's own
 * address stands.
 */
#ifndef TIDINGS_PROXY_H
#define TIDINGS_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PROXY_INCOMPLETE (-2)
#define PROXY_EINVALID (-1)
#define PROXY_MAX_HEADER 2048

struct proxy_info {
  int local;
  struct sockaddr_storage src;
};

int proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *info);

#endif
