/* See json.h. */
#include "json.h"

#include <string.h>

static const char *skip_space(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Past the string starting at its opening quote `p`; NULL when unterminated. */
static const char *skip_string(const char *p, const char *end) {
  for (p++; p < end; p++) {
    if (*p == '\\') p++;
    else if (*p == '"') return p + 1;
  }
  return NULL;
}

/* Past the value at `p` (objects and arrays whole); NULL when broken. */
static const char *skip_value(const char *p, const char *end) {
  if (p >= end) return NULL;
  if (*p == '"') return skip_string(p, end);
  if (*p != '{' && *p != '[') {
    while (p < end && !strchr(",}] \t\n\r", *p)) p++;
    return p;
  }
  int depth = 0;
  while (p < end) {
    if (*p == '"') {
      p = skip_string(p, end);
      if (!p) return NULL;
      continue;
    }
    if (*p == '{' || *p == '[') depth++;
    if (*p == '}' || *p == ']') {
      if (--depth == 0) return p + 1;
    }
    p++;
  }
  return NULL;
}

static bool begin(json_iter *it, const char *text, size_t len, char bracket) {
  it->end = text + len;
  it->p = skip_space(text, it->end);
  it->first = true;
  it->done = it->p == it->end && bracket == '{'; /* "" is an empty object */
  if (it->done) return true;
  if (it->p == it->end || *it->p != bracket) return false;
  it->p++;
  return true;
}

bool json_object(json_iter *it, const char *text, size_t len) { return begin(it, text, len, '{'); }

bool json_array(json_iter *it, const char *text, size_t len) { return begin(it, text, len, '['); }

/* Past the separator before the next item: 1 when there is one, 0 at `close`, -1 when broken. */
static int next_item(json_iter *it, char close) {
  if (it->done) return 0;
  it->p = skip_space(it->p, it->end);
  if (it->p == it->end) return -1;
  if (*it->p == close) {
    it->p++;
    it->done = true;
    return 0;
  }
  if (!it->first) {
    if (*it->p != ',') return -1;
    it->p = skip_space(it->p + 1, it->end);
  }
  it->first = false;
  return 1;
}

/* The value at the iterator into `value`, and the iterator past it: 1, or -1 when broken. */
static int take_value(json_iter *it, json_span *value) {
  const char *value_end = skip_value(it->p, it->end);
  if (!value_end || value_end == it->p) return -1;
  value->ptr = it->p;
  value->len = (size_t)(value_end - it->p);
  it->p = value_end;
  return 1;
}

int json_next_member(json_iter *it, json_span *name, json_span *value) {
  int more = next_item(it, '}');
  if (more <= 0) return more;
  if (it->p == it->end || *it->p != '"') return -1;
  const char *after = skip_string(it->p, it->end);
  if (!after) return -1;
  name->ptr = it->p + 1;
  name->len = (size_t)(after - it->p - 2);
  it->p = skip_space(after, it->end);
  if (it->p == it->end || *it->p != ':') return -1;
  it->p = skip_space(it->p + 1, it->end);
  return take_value(it, value);
}

int json_next_element(json_iter *it, json_span *value) {
  int more = next_item(it, ']');
  if (more <= 0) return more;
  return take_value(it, value);
}
