/* tidings: the entry point of the master and of every worker.  The master
 * re-executes this binary for each worker with TIDINGS_WORKER_ID set. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include "../common/config.h"
#include "../common/log.h"
#include "../common/shard.h"
#include "../common/topic.h"
#include "../worker/auth_load.h"
#include "../worker/worker.h"
#include "embedded_redis.h"
#include "master.h"

#define TIDINGS_VERSION "0.1.0"
#define EXIT_SHIM_FAILED 127 /* as a shell reports a command it cannot run */
#define ERR_MAX 256

/* The embedded redis-server is started through this binary so that it is
 * killed with the master even if the master is killed outright: the
 * parent-death signal survives execve. */
static int exec_shim(char **argv) {
  const char *mp = getenv("TIDINGS_MASTER_PID");
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0) {
    fprintf(stderr, "tidings: cannot tie %s to the master: %s\n", argv[1], strerror(errno));
    return EXIT_SHIM_FAILED;
  }
  /* the master died between fork and here: the signal would never come */
  if (mp && getppid() != (pid_t)atoi(mp)) return EXIT_FAILURE;
  unsetenv("TIDINGS_EXEC_SHIM");
  execv(argv[1], argv + 1);
  fprintf(stderr, "tidings: cannot run %s: %s\n", argv[1], strerror(errno));
  return EXIT_SHIM_FAILED;
}

/* tidings shard TOPIC --redis URL1,URL2,...: prints the URL, as given, of
 * the server the topic lives on (common/shard.h). */
static int shard_command(int argc, char **argv) {
  char err[ERR_MAX];
  struct config cfg;
  if (argc < 3 || argv[2][0] == '-') {
    fprintf(stderr, "usage: tidings shard TOPIC --redis URL1,URL2,... [--redis-prefix P]\n");
    return EXIT_CONFIG;
  }
  const char *topic = argv[2];
  if (topic_validate(topic, strlen(topic)) != 0) {
    fprintf(stderr, "tidings: '%s' is not a valid topic name\n", topic);
    return EXIT_CONFIG;
  }
  argv[2] = argv[0]; /* the options after TOPIC, as a command line of their own */
  if (config_parse(&cfg, argc - 2, argv + 2, err, sizeof(err)) < 0) {
    fprintf(stderr, "tidings: %s\n", err);
    return EXIT_CONFIG;
  }
  struct shard_url urls[SHARDS_MAX];
  int n = cfg.redis[0] ? shard_split(cfg.redis, urls, err, sizeof(err)) : 0;
  if (n < 1) {
    fprintf(stderr, "tidings shard: give the servers with --redis URL1,URL2,...\n");
    return EXIT_CONFIG;
  }
  unsigned i = shard_of(topic, strlen(topic), (unsigned)n);
  printf("%.*s\n", (int)urls[i].n, urls[i].p);
  return 0;
}

int main(int argc, char **argv) {
  struct config cfg;
  char err[ERR_MAX];
  if (getenv("TIDINGS_EXEC_SHIM") && argc > 1) return exec_shim(argv);
  if (argc > 1 && strcmp(argv[1], "shard") == 0) return shard_command(argc, argv);
  if (config_parse(&cfg, argc, argv, err, sizeof(err)) < 0) {
    fprintf(stderr, "tidings: %s\n", err);
    return EXIT_CONFIG;
  }
  if (cfg.help) {
    config_usage(stdout, "tidings");
    return 0;
  }
  if (cfg.version) {
    printf("tidings %s\n", TIDINGS_VERSION);
    return 0;
  }
  log_set_level(cfg.log_level);
  log_set_json(strcmp(cfg.log_format, "json") == 0);
  if (cfg.workers == 0) {
    /* the cores this process may run on (its affinity: taskset, a
     * container's cpuset), not every core of the machine */
    unsigned n = uv_available_parallelism();
    cfg.workers = n > MASTER_MAX_WORKERS ? MASTER_MAX_WORKERS : n > 0 ? (int)n : 1;
  }
  const char *wid = getenv("TIDINGS_WORKER_ID");
  if (wid && *wid) return worker_main(&cfg, atoi(wid));

  const char *redis_server = NULL;
  if (!cfg.redis[0] && !cfg.redis_cluster[0] && !(redis_server = embedded_redis_find())) {
    fprintf(stderr,
            "tidings: redis-server not found: install Debian's redis-server package "
            "(apt-get install redis-server) or pass --redis redis://host:port\n");
    return EXIT_CONFIG;
  }
  if (master_probe_listen(&cfg, err, sizeof(err)) < 0) {
    fprintf(stderr, "tidings: %s\n", err);
    return EXIT_CONFIG;
  }
  struct auth *auth;
  const char *alg;
  if (auth_load(&cfg, &auth, &alg, err, sizeof(err)) < 0) {
    fprintf(stderr, "tidings: %s\n", err);
    return EXIT_CONFIG;
  }
  auth_free(auth);
  char *api_key;
  size_t api_key_len;
  if (api_key_load(&cfg, &api_key, &api_key_len, err, sizeof(err)) < 0) {
    fprintf(stderr, "tidings: %s\n", err);
    return EXIT_CONFIG;
  }
  if (api_key) {
    memset(api_key, 0, api_key_len);
    free(api_key);
  }
  log_info("start", "tidings %s starting", TIDINGS_VERSION);
  config_log(&cfg);
  if (cfg.jwt_secret[0] || cfg.jwt_secret_file[0] || cfg.jwt_public_key[0])
    log_info("auth_mode", "JWT authentication on (%s): clients need a token", alg);
  else
    log_info("auth_mode",
             "no JWT key configured: anonymous access, every client may subscribe and publish");
  if (cfg.api_key[0] || cfg.api_key_file[0])
    log_info("api_mode", "HTTP API on under /api/ on %s",
             cfg.api_listen[0] ? cfg.api_listen : "the public port");
  if (!cfg.allowed_origins[0])
    log_info("origin_mode",
             "--allowed-origins is not set: WebSocket handshakes from every origin are allowed");
  return master_main(&cfg, argc, argv, redis_server);
}
