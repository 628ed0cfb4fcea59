#include "config.h"

#include "redisaddr.h"
#include "shard.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum opt_type { OPT_STR, OPT_INT, OPT_SIZE, OPT_BOOL, OPT_LEVEL };

struct opt {
  const char *name;
  enum opt_type type;
  size_t offset;
  long long min, max;
  const char *def;
  const char *help;
};

#define OFF(f) offsetof(struct config, f)

static const struct opt opts[] = {
    {"bind", OPT_STR, OFF(bind), 0, 0, "0.0.0.0", "address to listen on (IPv4 or IPv6)"},
    {"port", OPT_INT, OFF(port), 1, 65535, "8080", "TCP port to listen on"},
    {"workers", OPT_INT, OFF(workers), 0, 256, "0",
     "worker processes (0 = one per core the process may run on)"},
    {"ping-interval", OPT_INT, OFF(ping_interval), 1, 86400, "30",
     "seconds between server pings; a client that has not answered the previous ping is cut"},
    {"max-message-size", OPT_SIZE, OFF(max_message_size), 64, 64LL << 20, "64k",
     "largest incoming message, bytes (k/m suffixes); larger is closed with 1009"},
    {"max-subscriptions", OPT_INT, OFF(max_subscriptions), 1, 1000000, "100",
     "topics one connection may subscribe to"},
    {"echo-path", OPT_STR, OFF(echo_path), 0, 0, "",
     "path of an echo WebSocket endpoint for conformance suites (off when empty)"},
    {"log-level", OPT_LEVEL, OFF(log_level), 0, 0, "info", "debug, info, warn or error"},
    {"log-format", OPT_STR, OFF(log_format), 0, 0, "text",
     "text (one human line per event) or json (one object per line)"},
    {"shutdown-grace", OPT_INT, OFF(shutdown_grace), 0, 3600, "10",
     "seconds to wait for closing handshakes on SIGTERM/SIGINT"},
    {"drain-window", OPT_INT, OFF(drain_window), 0, 3600, "5",
     "seconds over which SIGTERM and SIGHUP close clients (spread, not all at once); "
     "at most --shutdown-grace (a longer window is cut to it)"},
    {"handshake-timeout", OPT_INT, OFF(handshake_timeout), 1, 3600, "10",
     "seconds a client has to send its complete HTTP upgrade request"},
    {"redis", OPT_STR, OFF(redis), 0, 0, "",
     "redis://[[user]:password@]host[:port][/db] (e.g. redis://user:password@10.0.0.5:6379/0; "
     "port 6379, db 0, host may be [IPv6]) or unix:/path; several, comma-separated, spread the "
     "topics over them (tidings shard TOPIC says where one lives); empty = embedded redis-server"},
    {"redis-cluster", OPT_STR, OFF(redis_cluster), 0, 0, "",
     "seed nodes of a Redis Cluster (host:port,... or redis://[[user]:password@]host:port,...): "
     "topics go to the masters of their slots with sharded Pub/Sub; instead of --redis"},
    {"redis-prefix", OPT_STR, OFF(redis_prefix), 0, 0, "",
     "prefix of the Redis channel of every topic"},
    {"history-size", OPT_INT, OFF(history_size), 0, 1000000, "0",
     "messages kept per topic in Redis so clients can resume (0 = no history)"},
    {"history-ttl", OPT_INT, OFF(history_ttl), 1, 31536000, "300",
     "seconds a topic's history lives after its last publish"},
    {"history-topics", OPT_STR, OFF(history_topics), 0, 0, "*",
     "comma-separated topics that keep history: exact names or prefixes ending in * "
     "(as in JWT claims)"},
    {"no-compression", OPT_BOOL, OFF(no_compression), 0, 1, "0",
     "never negotiate permessage-deflate"},
    {"compression-threshold", OPT_SIZE, OFF(compression_threshold), 0, 64LL << 20, "256",
     "notifications smaller than this many bytes are sent uncompressed"},
    {"max-queued-bytes", OPT_SIZE, OFF(max_queued_bytes), 4096, 1LL << 30, "1m",
     "outgoing bytes queued per connection before the slow-subscriber policy applies"},
    {"slow-policy", OPT_STR, OFF(slow_policy), 0, 0, "drop",
     "for a subscriber over --max-queued-bytes: drop (skip messages, report the count in "
     "the next notification's \"missed\") or disconnect (close 1013 after --slow-grace)"},
    {"slow-grace", OPT_INT, OFF(slow_grace), 0, 3600, "5",
     "seconds a subscriber may stay over --max-queued-bytes before the disconnect policy acts"},
    {"allowed-origins", OPT_STR, OFF(allowed_origins), 0, 0, "",
     "comma-separated origins allowed to connect, exact (https://app.example.com) or "
     "wildcard (https://*.example.com); empty = every origin"},
    {"require-origin", OPT_BOOL, OFF(require_origin), 0, 1, "0",
     "refuse handshakes without an Origin header (non-browser clients)"},
    {"max-connections", OPT_INT, OFF(max_connections), 0, 10000000, "0",
     "connections per worker; new handshakes get 503 when full (0 = no cap)"},
    {"max-connections-per-ip", OPT_INT, OFF(max_connections_per_ip), 0, 65535, "0",
     "connections from one client address over all workers; over it HTTP 429 (0 = no cap)"},
    {"rate-limit", OPT_INT, OFF(rate_limit), 0, 1000000, "1000",
     "messages per second one connection may send (token bucket; 0 = no limit); over it "
     "\"rate_limited\" errors, and close 1008 after --rate-burst of them in a row"},
    {"rate-burst", OPT_INT, OFF(rate_burst), 1, 1000000, "2000",
     "messages a connection may send at once above --rate-limit"},
    {"jwt-secret", OPT_STR, OFF(jwt_secret), 0, 0, "",
     "HS256 secret: clients must present a JWT signed with it (prefer --jwt-secret-file)"},
    {"jwt-secret-file", OPT_STR, OFF(jwt_secret_file), 0, 0, "",
     "file holding the HS256 secret (trailing newline ignored)"},
    {"jwt-public-key", OPT_STR, OFF(jwt_public_key), 0, 0, "",
     "PEM public key file: clients must present a JWT signed RS256 (RSA key) or ES256 (P-256 key)"},
    {"jwt-leeway", OPT_INT, OFF(jwt_leeway), 0, 3600, "30",
     "seconds of clock skew allowed when checking exp and nbf"},
    {"admin-listen", OPT_STR, OFF(admin_listen), 0, 0, "127.0.0.1:9090",
     "address of the admin listener (/metrics, /healthz, /readyz, /status); off = none"},
    {"api-key", OPT_STR, OFF(api_key), 0, 0, "",
     "key of the HTTP API under /api/ (at least 16 bytes; prefer --api-key-file); the API is "
     "off without a key"},
    {"api-key-file", OPT_STR, OFF(api_key_file), 0, 0, "",
     "file holding the HTTP API's key (trailing newline ignored)"},
    {"api-listen", OPT_STR, OFF(api_listen), 0, 0, "",
     "host:port of a separate (private) listener for the HTTP API; /api/ on the public port "
     "then answers 404"},
    {"proxy-protocol", OPT_BOOL, OFF(proxy_protocol), 0, 1, "0",
     "require a PROXY protocol v2 header on every connection (behind HAProxy)"},
    {"no-io-uring", OPT_BOOL, OFF(no_io_uring), 0, 1, "0",
     "write to clients one system call per connection instead of batching a loop turn's writes "
     "through io_uring"},
    {"no-client-js", OPT_BOOL, OFF(no_client_js), 0, 1, "0",
     "do not serve the JavaScript client at GET /tidings.js on the public port (404)"},
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static void env_name(const struct opt *o, char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "TIDINGS_");
  for (const char *p = o->name; *p && n + 1 < len; p++)
    buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  buf[n] = '\0';
}

static int parse_ll(const char *s, long long *out, int allow_suffix) {
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s) return -1;
  if (allow_suffix && *end) {
    long long mul = 0;
    if (strcasecmp(end, "k") == 0 || strcasecmp(end, "kb") == 0 || strcasecmp(end, "kib") == 0)
      mul = 1024;
    else if (strcasecmp(end, "m") == 0 || strcasecmp(end, "mb") == 0 || strcasecmp(end, "mib") == 0)
      mul = 1024 * 1024;
    else return -1;
    if (v > LLONG_MAX / mul || v < 0) return -1;
    v *= mul;
    end += strlen(end);
  }
  if (*end) return -1;
  *out = v;
  return 0;
}

static int set_opt(struct config *cfg, const struct opt *o, const char *val, const char *src,
                   char *err, size_t errlen) {
  void *field = (char *)cfg + o->offset;
  long long v;
  switch (o->type) {
    case OPT_STR:
      *(const char **)field = val;
      if (o->offset == OFF(jwt_secret) && strcmp(src, "default") != 0) cfg->jwt_secret_given = 1;
      if (o->offset == OFF(api_key) && strcmp(src, "default") != 0) cfg->api_key_given = 1;
      return 0;
    case OPT_BOOL:
      if (!strcmp(val, "1") || !strcasecmp(val, "true") || !strcasecmp(val, "yes") ||
          !strcasecmp(val, "on")) {
        *(int *)field = 1;
        return 0;
      }
      if (!strcmp(val, "0") || !strcasecmp(val, "false") || !strcasecmp(val, "no") ||
          !strcasecmp(val, "off")) {
        *(int *)field = 0;
        return 0;
      }
      snprintf(err, errlen, "%s: --%s expects true or false, got '%s'", src, o->name, val);
      return -1;
    case OPT_LEVEL:
      if (log_level_parse(val, (enum log_level *)field) < 0) {
        snprintf(err, errlen, "%s: --%s expects debug, info, warn or error, got '%s'", src, o->name,
                 val);
        return -1;
      }
      return 0;
    case OPT_INT:
    case OPT_SIZE:
      if (parse_ll(val, &v, o->type == OPT_SIZE) < 0 || v < o->min || v > o->max) {
        snprintf(err, errlen, "%s: --%s expects %s from %lld to %lld, got '%s'", src, o->name,
                 o->type == OPT_SIZE ? "a size in bytes" : "an integer", o->min, o->max, val);
        return -1;
      }
      if (o->type == OPT_INT) *(int *)field = (int)v;
      else *(size_t *)field = (size_t)v;
      return 0;
  }
  return -1;
}

static const struct opt *find_opt(const char *name, size_t len) {
  for (size_t i = 0; i < NOPTS; i++)
    if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0) return &opts[i];
  return NULL;
}

static int check(struct config *cfg, char *err, size_t errlen) {
  if (cfg->echo_path[0] && cfg->echo_path[0] != '/') {
    snprintf(err, errlen, "--echo-path must start with '/', got '%s'", cfg->echo_path);
    return -1;
  }
  if (cfg->echo_path[0] && strcmp(cfg->echo_path, "/") == 0) {
    snprintf(err, errlen, "--echo-path cannot be '/', which serves the pub/sub protocol");
    return -1;
  }
  if (!cfg->bind[0]) {
    snprintf(err, errlen, "--bind must not be empty");
    return -1;
  }
  if (strcmp(cfg->log_format, "text") && strcmp(cfg->log_format, "json")) {
    snprintf(err, errlen, "--log-format expects text or json, got '%s'", cfg->log_format);
    return -1;
  }
  if (strcmp(cfg->slow_policy, "drop") && strcmp(cfg->slow_policy, "disconnect")) {
    snprintf(err, errlen, "--slow-policy expects drop or disconnect, got '%s'", cfg->slow_policy);
    return -1;
  }
  cfg->slow_disconnect = strcmp(cfg->slow_policy, "disconnect") == 0;
  if (cfg->jwt_secret_given && !cfg->jwt_secret[0]) {
    snprintf(err, errlen,
             "--jwt-secret is empty: refusing to start without authentication by mistake");
    return -1;
  }
  if ((cfg->jwt_secret[0] != 0) + (cfg->jwt_secret_file[0] != 0) + (cfg->jwt_public_key[0] != 0) >
      1) {
    snprintf(err, errlen, "give only one of --jwt-secret, --jwt-secret-file and --jwt-public-key");
    return -1;
  }
  if (cfg->api_key[0] && cfg->api_key_file[0]) {
    snprintf(err, errlen, "give only one of --api-key and --api-key-file");
    return -1;
  }
  /* the key itself is never quoted in a message */
  if (cfg->api_key_given &&
      (strlen(cfg->api_key) < API_KEY_MIN_LEN || strlen(cfg->api_key) > API_KEY_MAX_LEN)) {
    snprintf(err, errlen,
             "--api-key must be %d to %d bytes long (a random key: openssl rand -hex 32)",
             API_KEY_MIN_LEN, API_KEY_MAX_LEN);
    return -1;
  }
  if (cfg->api_listen[0] && !cfg->api_key[0] && !cfg->api_key_file[0]) {
    snprintf(err, errlen, "--api-listen needs --api-key or --api-key-file");
    return -1;
  }
  if (cfg->api_listen[0]) {
    char host[256];
    int port;
    if (config_split_hostport(cfg->api_listen, host, sizeof(host), &port) < 0) {
      snprintf(err, errlen, "--api-listen expects host:port (e.g. 127.0.0.1:8081), got '%s'",
               cfg->api_listen);
      return -1;
    }
  }
  /* the drain happens within the grace period */
  if (cfg->drain_window > cfg->shutdown_grace) cfg->drain_window = cfg->shutdown_grace;
  struct shard_url urls[SHARDS_MAX];
  if (cfg->redis[0] && shard_split(cfg->redis, urls, err, errlen) < 0) return -1;
  if (cfg->redis[0] && cfg->redis_cluster[0]) {
    snprintf(err, errlen, "give --redis or --redis-cluster, not both");
    return -1;
  }
  if (strchr(cfg->redis_prefix, '{') || strchr(cfg->redis_prefix, '}')) {
    snprintf(err, errlen,
             "--redis-prefix must not contain '{' or '}' (they make Redis Cluster hash tags)");
    return -1;
  }
  if (strlen(cfg->redis_prefix) > REDIS_PREFIX_MAX_LEN) {
    snprintf(err, errlen, "--redis-prefix is longer than %d bytes", REDIS_PREFIX_MAX_LEN);
    return -1;
  }
  return 0;
}

int config_split_hostport(const char *s, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s) return -1;
  const char *h = s, *he = colon;
  if (*h == '[') { /* [IPv6]:port */
    if (he[-1] != ']') return -1;
    h++;
    he--;
  }
  if (he <= h || (size_t)(he - h) >= hostlen) return -1;
  long long p;
  if (parse_ll(colon + 1, &p, 0) < 0 || p < 1 || p > 65535) return -1;
  memcpy(host, h, (size_t)(he - h));
  host[he - h] = '\0';
  *port = (int)p;
  return 0;
}

static int parse(struct config *cfg, int argc, char **argv, char *err, size_t errlen) {
  memset(cfg, 0, sizeof(*cfg));
  for (size_t i = 0; i < NOPTS; i++)
    if (set_opt(cfg, &opts[i], opts[i].def, "default", err, errlen) < 0) return -1;
  for (size_t i = 0; i < NOPTS; i++) {
    char name[64];
    env_name(&opts[i], name, sizeof(name));
    const char *v = getenv(name);
    if (v && set_opt(cfg, &opts[i], v, name, err, errlen) < 0) return -1;
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      cfg->help = 1;
      continue;
    }
    if (!strcmp(a, "--version")) {
      cfg->version = 1;
      continue;
    }
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
      return -1;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    const struct opt *o = find_opt(name, nlen);
    if (!o) {
      snprintf(err, errlen, "unknown option '%.*s' (see --help)", (int)(nlen + 2), a);
      return -1;
    }
    const char *val;
    if (eq) val = eq + 1;
    else if (o->type == OPT_BOOL) val = "1";
    else if (i + 1 < argc) val = argv[++i];
    else {
      snprintf(err, errlen, "option --%s needs a value", o->name);
      return -1;
    }
    if (set_opt(cfg, o, val, "command line", err, errlen) < 0) return -1;
  }
  return check(cfg, err, errlen);
}

int config_parse(struct config *cfg, int argc, char **argv, char *err, size_t errlen) {
  if (parse(cfg, argc, argv, err, errlen) == 0) return 0;
  /* err is one line even when the value it quotes holds a line break */
  for (char *p = err; errlen && *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  return -1;
}

void config_usage(FILE *out, const char *prog) {
  fprintf(out,
          "Usage: %s [options]\n"
          "tidings: a WebSocket publish/subscribe server.\n\n"
          "Every option can also be set with an environment variable, shown in brackets;\n"
          "the command line wins. Write --name value or --name=value; a switch (no V)\n"
          "takes no value, or =1/0, true/false, yes/no, on/off (so does its variable).\n"
          "Sizes take a k or m suffix (KiB, MiB).\n\n",
          prog);
  for (size_t i = 0; i < NOPTS; i++) {
    char env[64], arg[48];
    env_name(&opts[i], env, sizeof(env));
    snprintf(arg, sizeof(arg), "--%s%s", opts[i].name, opts[i].type == OPT_BOOL ? "" : " V");
    fprintf(out, "  %-24s %s\n  %-24s [%s] default: %s\n", arg, opts[i].help, "", env,
            opts[i].def[0] ? opts[i].def : "(empty)");
  }
  fprintf(out, "  %-24s %s\n  %-24s %s\n", "-h, --help", "show this help", "--version",
          "print the version");
}

void config_log(const struct config *c) {
  char where[1024] = "embedded";
  struct shard_url urls[SHARDS_MAX];
  char err[256];
  int n = c->redis[0] ? shard_split(c->redis, urls, err, sizeof(err)) : 0;
  if (c->redis_cluster[0]) snprintf(where, sizeof(where), "a Redis Cluster");
  size_t len = 0;
  for (int i = 0; i < n && len < sizeof(where); i++) {
    struct redis_addr ra;
    char one[1024], d[200];
    snprintf(one, sizeof(one), "%.*s", (int)urls[i].n, urls[i].p);
    if (redis_addr_parse(one, &ra, err, sizeof(err)) < 0) continue;
    redis_addr_describe(&ra, d, sizeof(d)); /* without credentials */
    len += (size_t)snprintf(where + len, sizeof(where) - len, "%s%s", i ? "," : "", d);
  }
  log_info("options",
           "options: bind=%s port=%d workers=%d ping-interval=%ds max-message-size=%zu "
           "max-subscriptions=%d echo-path=%s log-level=%s shutdown-grace=%ds "
           "handshake-timeout=%ds redis=%s redis-prefix='%s' proxy-protocol=%s compression=%s "
           "compression-threshold=%zu max-queued-bytes=%zu slow-policy=%s slow-grace=%ds "
           "history-size=%d history-ttl=%ds history-topics='%s' drain-window=%ds api=%s "
           "api-listen=%s",
           c->bind, c->port, c->workers, c->ping_interval, c->max_message_size,
           c->max_subscriptions, c->echo_path[0] ? c->echo_path : "off",
           log_level_name(c->log_level), c->shutdown_grace, c->handshake_timeout, where,
           c->redis_prefix, c->proxy_protocol ? "on" : "off",
           c->no_compression ? "off" : "permessage-deflate", c->compression_threshold,
           c->max_queued_bytes, c->slow_policy, c->slow_grace, c->history_size, c->history_ttl,
           c->history_topics, c->drain_window, c->api_key[0] || c->api_key_file[0] ? "on" : "off",
           c->api_listen[0] ? c->api_listen : "public-port");
}
