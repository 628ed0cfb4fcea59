/* config.h - the server's options: command line, environment, defaults.
 *
 * Every option --foo-bar is also read from TIDINGS_FOO_BAR; the command line
 * wins over the environment, which wins over the built-in default.  The
 * master parses and checks everything before it forks; a worker parses the
 * same argv and environment again, so both always agree.
 *
 * Strings in struct config point either into argv/environ or to static
 * defaults: they are never freed and live as long as the process.
 */
#ifndef TIDINGS_CONFIG_H
#define TIDINGS_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "log.h"

#define TOPIC_MAX_LEN 128
#define REDIS_PREFIX_MAX_LEN 64 /* --redis-prefix */
#define HTTP_MAX_HEADER_BYTES 8192
#define API_KEY_MIN_LEN 16 /* bytes of --api-key */
#define API_KEY_MAX_LEN 4096

struct config {
  const char *bind;
  int port;
  int workers;             /* 0 until resolved to the number of cores */
  int ping_interval;       /* seconds */
  size_t max_message_size; /* bytes */
  int max_subscriptions;   /* per connection */
  const char *echo_path;   /* "" = off */
  enum log_level log_level;
  const char *log_format; /* "text" or "json" */
  int shutdown_grace;     /* seconds */
  int handshake_timeout;  /* seconds */
  const char *redis;      /* "" = embedded redis-server */
  const char *redis_prefix;
  const char *redis_cluster;   /* seed nodes of a Redis Cluster, or "" */
  int proxy_protocol;          /* bool */
  const char *allowed_origins; /* comma-separated; "" = every origin */
  int require_origin;          /* bool: refuse handshakes without Origin */
  int max_connections;         /* per worker; 0 = no cap */
  int max_connections_per_ip;  /* over all workers; 0 = no cap */
  int rate_limit;              /* messages/s per connection; 0 = off */
  int rate_burst;
  const char *jwt_secret; /* HS256 secret, or "" */
  int jwt_secret_given;   /* --jwt-secret was set, maybe to "" */
  const char *jwt_secret_file;
  const char *jwt_public_key;   /* PEM file for RS256/ES256, or "" */
  int jwt_leeway;               /* seconds of clock skew allowed for exp/nbf */
  const char *admin_listen;     /* host:port of the admin listener, "off" = none */
  int no_compression;           /* bool: never negotiate permessage-deflate */
  int no_io_uring;              /* bool: write without io_uring (sendbatch.h) */
  size_t compression_threshold; /* smaller messages go uncompressed */
  size_t max_queued_bytes;      /* per connection, before the slow policy applies */
  const char *slow_policy;      /* "drop" or "disconnect" */
  int slow_disconnect;          /* slow_policy == "disconnect" */
  int slow_grace;               /* seconds over the cap before disconnecting */
  int history_size;             /* messages kept per topic; 0 = no history */
  int history_ttl;              /* seconds a topic's history lives after its last publish */
  const char *history_topics;   /* comma-separated patterns of topics with history */
  int drain_window;             /* seconds over which a drain closes clients */
  const char *api_key;          /* the HTTP API's key, or "": the API is off */
  int api_key_given;            /* --api-key was set, maybe to "" */
  const char *api_key_file;     /* file holding the key, or "" */
  const char *api_listen;       /* host:port of a listener for the API alone, or "" */
  int no_client_js;             /* bool: no GET /tidings.js on the public port */
  int help;
  int version;
};

/* Fills cfg from defaults, the environment and argv.  Returns 0 on success;
 * on error writes one line (no newline) to err and returns -1. */
int config_parse(struct config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Splits "host:port" or "[v6]:port" into host (NUL-terminated) and port
 * 1..65535.  Returns 0 or -1. */
int config_split_hostport(const char *s, char *host, size_t hostlen, int *port);

/* Prints --help text. */
void config_usage(FILE *out, const char *prog);

/* Logs the effective options, one line. */
void config_log(const struct config *cfg);

#endif
