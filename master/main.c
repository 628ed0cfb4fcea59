/* tidings: the entry point of the master and of every worker.  The master
 * re-executes this binary for each worker with TIDINGS_WORKER_ID set. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../common/config.h"
#include "../common/log.h"
#include "../worker/worker.h"
#include "master.h"

#define TIDINGS_VERSION "0.1.0"

int main(int argc, char **argv) {
  struct config cfg;
  char err[256];
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
  if (cfg.workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cfg.workers = n > 0 ? (n > 256 ? 256 : (int)n) : 1;
  }
  const char *wid = getenv("TIDINGS_WORKER_ID");
  if (wid && *wid) return worker_main(&cfg, atoi(wid));

  if (master_probe_listen(&cfg, err, sizeof(err)) < 0) {
    fprintf(stderr, "tidings: %s\n", err);
    return EXIT_CONFIG;
  }
  log_info("tidings %s starting", TIDINGS_VERSION);
  config_log(&cfg);
  return master_main(&cfg, argc, argv);
}
