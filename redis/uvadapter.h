/* uvadapter.h - binds a hiredis async context to a libuv loop.
 *
 * Debian's hiredis 0.14 ships a libuv adapter that ignores poll errors:
 * when a non-blocking connect is refused, libuv reports the error through
 * the poll callback's status, the adapter returns, and the context waits
 * forever.  This adapter hands such errors to hiredis (which then reports
 * the failed connect or the lost connection through its callbacks).
 *
 * The adapter's memory is owned by the context: hiredis calls the cleanup
 * hook when the context is freed, and the poll handle is freed in its
 * close callback.
 */
#ifndef TIDINGS_UVADAPTER_H
#define TIDINGS_UVADAPTER_H

#include <hiredis/async.h>
#include <uv.h>

/* Returns 0, or -1 when the context cannot be attached (the caller frees it). */
int uvadapter_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
