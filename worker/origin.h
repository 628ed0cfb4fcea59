// origin.h - the Origin allowlist (--allowed-origins).
//
// A list is comma-separated entries: exact origins ("https://app.example.com",
// "http://localhost:3000") or wildcards whose host starts with "*."
// ("https://*.example.com" matches https://a.example.com and
// https://a.b.example.com, not https://example.com).  Comparison is
// case-insensitive, as for scheme and host in RFC 6454.  No allocation.
#ifndef TIDINGS_ORIGIN_H
#define TIDINGS_ORIGIN_H

#include <stddef.h>

/* 1 when origin[0..len) is allowed by list; an empty list allows all. */
int origin_allowed(const char *list, const char *origin, size_t len);

#endif
