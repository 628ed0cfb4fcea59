/* Unit tests for what an idle subscribed connection costs a worker
 * (docs/architecture.md, "Memory per connection").
 *
 * It prints the parts of struct conn and the glibc chunk of each
 * allocation an idle subscribed connection keeps, and holds them to a
 * budget: a field that pushes struct conn into the next malloc size class
 * fails here, to be weighed and the table in docs/architecture.md
 * updated. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "../../worker/conn.h"
#include "../../worker/topics.h"

/* The chunk glibc's malloc takes for a request of n bytes on x86-64: the
 * request plus the 8-byte size word, rounded up to 16, at least 32.  This
 * is malloc_usable_size(p) + 8 in a release build; the sanitized build
 * this test runs in has another allocator, so it is computed. */
static size_t chunk(size_t n) {
  size_t c = (n + 8 + 15) & ~(size_t)15;
  return c < 32 ? 32 : c;
}

/* The malloc chunks struct conn and struct sub may take.  Raise them only
 * for a reason worth the memory, and update the table. */
#define CONN_CHUNK_BUDGET 544
#define SUB_CHUNK_BUDGET 64

#define PART(name, member)                                                     \
  printf("  %-30s %4zu  (at %zu)\n", name, sizeof(((struct conn *)0)->member), \
         offsetof(struct conn, member))

static void conn_breakdown(void **state) {
  (void)state;
  size_t conn = sizeof(struct conn), sub = sizeof(struct sub);
  size_t named = sizeof(uv_tcp_t) + sizeof(((struct conn *)0)->peer) + sizeof(struct outq) +
                 sizeof(struct frame_tracker);
  printf("struct conn: %zu bytes\n", conn);
  PART("uv_tcp_t (libuv handle)", tcp);
  PART("peer (\"ip:port\" for logs)", peer);
  PART("struct outq (output queue)", q);
  PART("struct frame_tracker", frames);
  printf("  %-30s %4zu\n", "other fields and padding", conn - named);
  printf("malloc chunk of struct conn:    %4zu  (%zu of it allocator overhead)\n", chunk(conn),
         chunk(conn) - conn);
  printf("struct sub (one subscription): %4zu, malloc chunk %zu\n", sub, chunk(sub));
  printf("idle subscribed connection, one topic: %zu bytes in malloc chunks\n",
         chunk(conn) + chunk(sub));
  assert_true(chunk(conn) <= CONN_CHUNK_BUDGET);
  assert_true(chunk(sub) <= SUB_CHUNK_BUDGET);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(conn_breakdown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
