/* A JSON object's members, read in place: each name and its value's raw JSON text, with
 * nothing copied or decoded. Row fields (keys, new_values, old_values), `extra` and the
 * configuration are the text of one JSON object; this is enough to find a member, read a
 * list, or copy a value through unchanged. It checks the structure it walks
 * (quotes, brackets, commas) but does not validate numbers or escapes: the host checks
 * every field a plugin returns and refuses broken JSON.
 *
 * Part of the `screamer plugin new --lang c` template; yours to change. */
#ifndef SCREAMER_JSON_H
#define SCREAMER_JSON_H

#include <stdbool.h>
#include <stddef.h>

/* A span of text (not NUL-terminated). */
typedef struct {
  const char *ptr;
  size_t len;
} json_span;

/* A position inside an object or array being read. */
typedef struct {
  const char *p;
  const char *end;
  bool first;
  bool done;
} json_iter;

/* Starts reading the object (or, for json_array, the array) in `text`. False when the text
 * is not one (empty text counts as an empty object: the host sends "" for a missing extra). */
bool json_object(json_iter *it, const char *text, size_t len);
bool json_array(json_iter *it, const char *text, size_t len);

/* The next member: 1 with `name` (between the quotes, escapes as written) and `value` (raw
 * JSON text), 0 at the end of the object, -1 when the text is broken. */
int json_next_member(json_iter *it, json_span *name, json_span *value);

/* The next element of an array: 1, 0 at its end, -1 when the text is broken. */
int json_next_element(json_iter *it, json_span *value);

#endif
