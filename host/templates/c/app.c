/* {{name}}: a screamer plugin in C (clang, wasi-libc, wasm-component-ld).
 *
 * Keeps the records of the configured tables (every table when none is named) and adds
 * `changed_columns`, the columns an INSERT or UPDATE writes, to each; a DELETE passes
 * unchanged. Configuration (optional): {"tables": ["Users"]}.
 *
 * Ownership, as the generated bindings (bindings/plugin.h) have it: `process` owns the
 * batch it is handed and frees what it does not return; whatever it returns (a replaced
 * record, a message) must come from malloc, and the bindings free it after the host read
 * it. A record returned with `replace` is moved, not copied. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings/plugin.h"
#include "json.h"

typedef exports_screamer_plugin_processor_change_record_t record_t;
typedef exports_screamer_plugin_processor_outcome_t outcome_t;

/* The configured table names; they point into the configuration's text, which `init`
 * owns and keeps for that. */
static json_span *tables;
static size_t table_count;

void exports_screamer_plugin_processor_info(exports_screamer_plugin_processor_plugin_info_t *ret) {
  /* Duplicated: the bindings free what `info` returns. */
  plugin_string_dup(&ret->name, "{{name}}");
  plugin_string_dup(&ret->version, "0.1.0");
}

/* Returning false refuses the configuration: screamer exits with `err`. */
bool exports_screamer_plugin_processor_init(plugin_string_t *config, plugin_string_t *err) {
  json_iter members, names;
  json_span name, value, table;
  if (!json_object(&members, (const char *)config->ptr, config->len)) {
    plugin_string_dup(err, "the configuration must be a JSON object");
    return false;
  }
  int more;
  while ((more = json_next_member(&members, &name, &value)) == 1) {
    if (name.len != 6 || memcmp(name.ptr, "tables", 6) != 0) {
      char message[160];
      snprintf(message, sizeof message, "unknown configuration field %.*s", (int)name.len,
               name.ptr);
      plugin_string_dup(err, message);
      return false;
    }
    if (!json_array(&names, value.ptr, value.len)) {
      plugin_string_dup(err, "`tables` must be a list of table names");
      return false;
    }
    while (json_next_element(&names, &table) == 1) {
      if (table.len < 3 || table.ptr[0] != '"' || memchr(table.ptr, '\\', table.len)) {
        plugin_string_dup(err, "`tables` must be a list of table names");
        return false;
      }
      tables = realloc(tables, (table_count + 1) * sizeof *tables);
      tables[table_count++] = (json_span){table.ptr + 1, table.len - 2};
    }
  }
  if (more < 0) {
    plugin_string_dup(err, "the configuration is not valid JSON");
    return false;
  }
  return true;
}

static bool wanted(const plugin_string_t *table) {
  if (table_count == 0) return true;
  for (size_t i = 0; i < table_count; i++) {
    if (tables[i].len == table->len && memcmp(tables[i].ptr, table->ptr, table->len) == 0) {
      return true;
    }
  }
  return false;
}

/* A growing text, from malloc. */
typedef struct {
  char *ptr;
  size_t len, cap;
} text_t;

static void append(text_t *t, const char *s, size_t n) {
  if (t->len + n > t->cap) {
    t->cap = (t->len + n) * 2 + 64;
    t->ptr = realloc(t->ptr, t->cap);
  }
  memcpy(t->ptr + t->len, s, n);
  t->len += n;
}

static int by_name(const void *a, const void *b) {
  const json_span *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->ptr, y->ptr, n);
  return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

/* The names of the columns the record's rows write, sorted, once each; NULL with a
 * message in `error` when a row's values are not a JSON object. */
static json_span *changed_columns(const record_t *r, size_t *count, const char **error) {
  json_span *names = NULL;
  *count = 0;
  for (size_t i = 0; i < r->mods.len; i++) {
    const plugin_string_t *values = &r->mods.ptr[i].new_values;
    json_iter it;
    json_span name, value;
    int more = json_object(&it, (const char *)values->ptr, values->len) ? 1 : -1;
    while (more == 1 && (more = json_next_member(&it, &name, &value)) == 1) {
      names = realloc(names, (*count + 1) * sizeof *names);
      names[(*count)++] = name;
    }
    if (more < 0) {
      free(names);
      *error = "new_values is not a JSON object";
      return NULL;
    }
  }
  if (*count > 1) qsort(names, *count, sizeof *names, by_name);
  size_t unique = 0;
  for (size_t i = 0; i < *count; i++) {
    if (unique == 0 || by_name(&names[unique - 1], &names[i]) != 0) names[unique++] = names[i];
  }
  *count = unique;
  return names;
}

/* The record's extra fields with `changed_columns` added: its members, if any, then ours. */
static plugin_string_t with_changed_columns(const record_t *r, const json_span *names,
                                            size_t count) {
  text_t t = {0};
  const plugin_option_string_t *extra = &r->extra;
  size_t keep = 0; /* the extra's text up to its closing brace, when it has members */
  if (extra->is_some) {
    json_iter it;
    json_span name, value;
    if (json_object(&it, (const char *)extra->val.ptr, extra->val.len) &&
        json_next_member(&it, &name, &value) == 1) {
      keep = extra->val.len;
      while (keep > 0 && extra->val.ptr[keep - 1] != '}') keep--;
      keep = keep > 0 ? keep - 1 : 0;
    }
  }
  if (keep > 0) {
    append(&t, (const char *)extra->val.ptr, keep);
    append(&t, ",", 1);
  } else {
    append(&t, "{", 1);
  }
  append(&t, "\"changed_columns\":[", 19);
  for (size_t i = 0; i < count; i++) {
    if (i > 0) append(&t, ",", 1);
    append(&t, "\"", 1);
    append(&t, names[i].ptr, names[i].len);
    append(&t, "\"", 1);
  }
  append(&t, "]}", 2);
  return (plugin_string_t){(uint8_t *)t.ptr, t.len};
}

/* What becomes of one record; `r` is moved into the outcome or freed. */
static outcome_t process_record(record_t *r) {
  outcome_t out = {0};
  if (!wanted(&r->table_name)) {
    out.tag = SCREAMER_PLUGIN_TYPES_OUTCOME_DROP;
  } else if (r->mod_type == SCREAMER_PLUGIN_TYPES_MOD_TYPE_DELETE) {
    /* A DELETE writes no columns (its old values are in old_values): pass it on. */
    out.tag = SCREAMER_PLUGIN_TYPES_OUTCOME_KEEP;
  } else {
    size_t count;
    const char *error = NULL;
    json_span *names = changed_columns(r, &count, &error);
    if (error) {
      /* Values this plugin cannot read: a dead letter says why; the stream goes on. */
      out.tag = SCREAMER_PLUGIN_TYPES_OUTCOME_FAIL;
      plugin_string_dup(&out.val.fail, error);
    } else {
      plugin_string_t extra = with_changed_columns(r, names, count);
      free(names);
      plugin_option_string_free(&r->extra);
      r->extra = (plugin_option_string_t){.is_some = true, .val = extra};
      out.tag = SCREAMER_PLUGIN_TYPES_OUTCOME_REPLACE;
      out.val.replace = *r;
      return out;
    }
  }
  exports_screamer_plugin_processor_change_record_free(r);
  return out;
}

/* One outcome per record, in order. */
void exports_screamer_plugin_processor_process(
    exports_screamer_plugin_processor_list_change_record_t *batch,
    exports_screamer_plugin_processor_list_outcome_t *ret) {
  ret->len = batch->len;
  ret->ptr = malloc(batch->len * sizeof *ret->ptr);
  for (size_t i = 0; i < batch->len; i++) {
    ret->ptr[i] = process_record(&batch->ptr[i]);
  }
  free(batch->ptr);
}
