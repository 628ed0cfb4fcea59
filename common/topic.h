/* topic.h - topic names.
 *
 * A topic is 1 to TOPIC_MAX_LEN (128) bytes of ASCII letters, digits and
 * . _ - : / @ ; it cannot start with a dot or contain "..".  '*' is reserved
 * for the patterns of authorization claims and is never part of a name.
 */
#ifndef TIDINGS_TOPIC_H
#define TIDINGS_TOPIC_H

#include <stddef.h>

/* Returns 0 when name[0..len) is a valid topic, else a negative code:
 * TOPIC_EEMPTY, TOPIC_ETOOLONG or TOPIC_ECHAR. */
enum { TOPIC_EEMPTY = -1, TOPIC_ETOOLONG = -2, TOPIC_ECHAR = -3 };
int topic_validate(const char *name, size_t len);

/* 1 when topic[0..tlen) matches pattern[0..plen): the same name, or, for a
 * pattern ending in '*', a name that starts with what comes before it
 * ("news.*" matches "news.a"; "*" matches every topic).  Else 0. */
int topic_match(const char *pattern, size_t plen, const char *topic, size_t tlen);

/* 1 when topic matches any pattern of a comma-separated list ("a,b.*");
 * spaces around the patterns are ignored.  Else 0. */
int topic_match_list(const char *list, const char *topic, size_t tlen);

#endif
