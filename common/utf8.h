/* utf8.h - strict UTF-8 validation (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), as RFC 6455 requires of text messages. */
#ifndef TIDINGS_UTF8_H
#define TIDINGS_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Returns 1 when s[0..len) is well-formed UTF-8, else 0. */
int utf8_valid(const uint8_t *s, size_t len);

/* Length of the longest prefix of s[0..len) that ends on a character
 * boundary of valid UTF-8; stops at the first invalid byte. */
size_t utf8_valid_prefix(const uint8_t *s, size_t len);

#endif
