/* clientjs.h - GET /tidings.js on the public port: the JavaScript client
 * (clients/js/tidings.js), built into the binary by the Makefile.
 *
 * Worker loop only.  The bytes are served as embedded, never re-read from
 * disk; their strong ETag (the SHA-1 of the bytes) is computed once per
 * process, on the first request.  Off with --no-client-js. */
#ifndef TIDINGS_CLIENTJS_H
#define TIDINGS_CLIENTJS_H

#include "../common/http.h"
#include "conn.h"

/* Answers req when its path is /tidings.js and the client is served: GET
 * and HEAD get 200 (or 304 when If-None-Match names the ETag), any other
 * method 405 with "Allow: GET, HEAD"; the connection then drains and
 * closes.  Returns 1 when it answered, 0 when the caller must route the
 * request on (another path, or --no-client-js). */
int clientjs_serve(struct conn *c, const struct http_request *req);

#endif
