/* redisaddr.h - parsing of --redis: redis://[[user]:password@]host[:port][/db]
 * or unix:/path/to/socket.  No allocation; strings are copied into the
 * struct. */
#ifndef TIDINGS_REDISADDR_H
#define TIDINGS_REDISADDR_H

#include <stddef.h>

struct redis_addr {
  int is_unix;
  char host[256];
  int port;
  char path[108];
  char user[128];
  char password[256];
  int db;
};

/* Returns 0, or -1 with one line in err. */
int redis_addr_parse(const char *s, struct redis_addr *a, char *err, size_t errlen);

/* "host:port/db" or "unix:/path", without credentials, for logs. */
void redis_addr_describe(const struct redis_addr *a, char *out, size_t outlen);

#endif
