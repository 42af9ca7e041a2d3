//! The SQL the replica runs: Spanner types as PostgreSQL types, and the text of every
//! statement (create, add column, upsert, delete), built from a [`Shape`].
//!
//! Invariants: every identifier is quoted (case kept, quotes doubled), no value is ever
//! part of a statement's text: values travel as parameters, one `text[]` per column, and
//! are converted by the statement ([`SqlType::convert`]), so one prepared statement
//! serves every batch of a shape. Both writes carry the guard: an upsert changes a row
//! only when its version is newer than the row's and than the key's tombstone; a delete
//! removes only older rows and leaves a tombstone unless a newer row stands.

use std::fmt::Write as _;

use crate::record::SpannerType;

/// The guard's columns in every replica table: the version of the change that last wrote
/// the row.
pub(crate) const COMMIT_TIMESTAMP: &str = "_screamer_commit_timestamp";
pub(crate) const RECORD_SEQUENCE: &str = "_screamer_record_sequence";
/// The table, in the replica's schema, of deleted rows' versions.
pub(crate) const TOMBSTONES: &str = "_screamer_tombstones";
/// The replica's position with `--ordering transactions`: one row, the last transaction
/// applied.
pub(crate) const POSITION: &str = "_screamer_position";

/// A PostgreSQL base type a Spanner type maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PgScalar {
    Boolean,
    Bigint,
    Real,
    Double,
    Numeric,
    Text,
    Bytea,
    Date,
    Timestamptz,
    Jsonb,
    Interval,
    Uuid,
}

impl PgScalar {
    /// The type of a Spanner type code (both dialects' change streams use these codes).
    /// PROTO values are bytes (base64, as Spanner sends them), ENUM values their numbers;
    /// a code this version does not know is kept as text.
    fn of_code(code: &str) -> Self {
        match code {
            "BOOL" => Self::Boolean,
            "INT64" | "ENUM" => Self::Bigint,
            "FLOAT32" => Self::Real,
            "FLOAT64" => Self::Double,
            "NUMERIC" => Self::Numeric,
            "BYTES" | "PROTO" => Self::Bytea,
            "DATE" => Self::Date,
            "TIMESTAMP" => Self::Timestamptz,
            "JSON" => Self::Jsonb,
            "INTERVAL" => Self::Interval,
            "UUID" => Self::Uuid,
            _ => Self::Text,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Bigint => "bigint",
            Self::Real => "real",
            Self::Double => "double precision",
            Self::Numeric => "numeric",
            Self::Text => "text",
            Self::Bytea => "bytea",
            Self::Date => "date",
            Self::Timestamptz => "timestamptz",
            Self::Jsonb => "jsonb",
            Self::Interval => "interval",
            Self::Uuid => "uuid",
        }
    }

    /// SQL turning `expr` (text, as the change stream gives the value) into this type.
    fn convert(self, expr: &str) -> String {
        match self {
            // BYTES and PROTO values are base64.
            Self::Bytea => format!("decode({expr}, 'base64')"),
            other => format!("({expr})::{}", other.name()),
        }
    }
}

/// The PostgreSQL type of a replica column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SqlType {
    scalar: PgScalar,
    array: bool,
}

impl SqlType {
    pub(crate) fn of(spanner: &SpannerType) -> Self {
        match (&*spanner.code, &spanner.array_element_type) {
            ("ARRAY", Some(element)) => SqlType {
                scalar: PgScalar::of_code(element),
                array: true,
            },
            (code, _) => SqlType {
                scalar: PgScalar::of_code(code),
                array: false,
            },
        }
    }

    /// The type as DDL names it (`bigint[]`).
    pub(crate) fn ddl(self) -> String {
        let name = self.scalar.name();
        if self.array {
            format!("{name}[]")
        } else {
            name.to_owned()
        }
    }

    /// SQL turning `expr` (a value's text: an array's is its JSON) into this type. Array
    /// elements keep their order, NULL elements stay NULL, and a NULL array stays NULL.
    pub(crate) fn convert(self, expr: &str) -> String {
        if !self.array {
            return self.scalar.convert(expr);
        }
        // The emulator sends a NULL element of a non-string array as the string "NULL"
        // (Spanner sends null), which no such element can be.
        let element = match self.scalar {
            PgScalar::Text => self.scalar.convert("e.v"),
            scalar => scalar.convert("NULLIF(e.v, 'NULL')"),
        };
        format!(
            "CASE WHEN {expr} IS NULL THEN NULL ELSE ARRAY(SELECT {element} \
             FROM json_array_elements_text(({expr})::json) WITH ORDINALITY AS e(v, n) \
             ORDER BY e.n) END"
        )
    }
}

/// An identifier, quoted: case kept, inner quotes doubled.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table`, both quoted.
pub(crate) fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// Whether a statement writes rows or deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Upsert,
    Delete,
}

/// What one statement is for: a table, a kind of write, and the columns the changes carry
/// (the primary key's first, in key order; for deletes only those).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    pub(crate) table: String,
    pub(crate) kind: Kind,
    /// How many of `columns` are the primary key (they come first).
    pub(crate) key_len: usize,
    pub(crate) columns: Vec<(String, SqlType)>,
}

impl Shape {
    fn key(&self) -> &[(String, SqlType)] {
        &self.columns[..self.key_len]
    }

    /// `unnest($1::text[], ..., $n::text[], $n+1::text[], $n+2::bigint[], $n+3::text[]) AS
    /// v(c1, ..., cn, ts, seq, key)`: a column's values, then each change's commit timestamp,
    /// record sequence and key as JSON. `$n+4` is the table's name.
    fn rows(&self) -> String {
        let n = self.columns.len();
        let mut params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        params.extend([
            format!("${}::text[]", n + 1),
            format!("${}::bigint[]", n + 2),
            format!("${}::text[]", n + 3),
        ]);
        let mut names: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
        names.extend(["ts".into(), "seq".into(), "key".into()]);
        format!("unnest({}) AS v({})", params.join(", "), names.join(", "))
    }

    /// The parameter holding the table's name (for its tombstones).
    fn table_param(&self) -> String {
        format!("${}", self.columns.len() + 4)
    }

    /// `v.c{i}` converted to column `i`'s type.
    fn value(&self, i: usize) -> String {
        self.columns[i].1.convert(&format!("v.c{}", i + 1))
    }

    /// `alias."k1" = <v.c1 converted> AND ...` over the key.
    fn key_matches(&self, alias: &str, values: &str) -> String {
        self.key()
            .iter()
            .enumerate()
            .map(|(i, (name, _))| format!("{alias}.{} = {values}.c{}", ident(name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// A tombstone's version (alias `d`), comparable with a change's.
const TOMBSTONE_VERSION: &str = "(d.commit_timestamp, d.record_sequence)";

/// Row comparison of `alias`'s version with the change's (`op` is `<` or `>=`).
fn version_is(alias: &str, op: &str, change: &str) -> String {
    format!("({alias}.{COMMIT_TIMESTAMP}, {alias}.{RECORD_SEQUENCE}) {op} {change}")
}

/// The upsert of `shape`'s changes into `schema`: rows are inserted, or their carried
/// columns updated, when the change is newer than the row and than the key's tombstone.
/// Its count is the rows written.
pub(crate) fn upsert(schema: &str, shape: &Shape) -> String {
    let table = qualified(schema, &shape.table);
    let tombstones = qualified(schema, TOMBSTONES);
    let mut columns: Vec<String> = shape.columns.iter().map(|(c, _)| ident(c)).collect();
    columns.extend([COMMIT_TIMESTAMP.to_owned(), RECORD_SEQUENCE.to_owned()]);
    let mut values: Vec<String> = (0..shape.columns.len()).map(|i| shape.value(i)).collect();
    values.extend(["v.ts::timestamptz".to_owned(), "v.seq".to_owned()]);
    let mut set: Vec<String> = shape.columns[shape.key_len..]
        .iter()
        .map(|(c, _)| format!("{0} = EXCLUDED.{0}", ident(c)))
        .collect();
    set.extend([COMMIT_TIMESTAMP, RECORD_SEQUENCE].map(|c| format!("{c} = EXCLUDED.{c}")));
    let key: Vec<String> = shape.key().iter().map(|(c, _)| ident(c)).collect();
    let mut sql = String::new();
    let _ = write!(
        sql,
        "INSERT INTO {table} AS t ({columns}) SELECT {values} FROM {rows} \
         WHERE NOT EXISTS (SELECT 1 FROM {tombstones} AS d WHERE d.table_name = {name} \
         AND d.key = v.key::jsonb AND {TOMBSTONE_VERSION} >= (v.ts::timestamptz, v.seq)) \
         ON CONFLICT ({key}) DO UPDATE SET {set} WHERE {older_row}",
        columns = columns.join(", "),
        values = values.join(", "),
        rows = shape.rows(),
        name = shape.table_param(),
        key = key.join(", "),
        set = set.join(", "),
        older_row = version_is(
            "t",
            "<",
            &format!("(EXCLUDED.{COMMIT_TIMESTAMP}, EXCLUDED.{RECORD_SEQUENCE})")
        ),
    );
    sql
}

/// The delete of `shape`'s keys from `schema`: rows older than the change go, and the
/// key's tombstone takes the change's version unless a newer row stands or a newer
/// tombstone is there. Its count is the deletes that took effect.
pub(crate) fn delete(schema: &str, shape: &Shape) -> String {
    let table = qualified(schema, &shape.table);
    let tombstones = qualified(schema, TOMBSTONES);
    let converted: Vec<String> = (0..shape.key_len)
        .map(|i| format!("{} AS c{}", shape.value(i), i + 1))
        .collect();
    let change = "(v.ts, v.seq)";
    format!(
        "WITH v AS (SELECT {converted}, v.ts::timestamptz AS ts, v.seq, v.key FROM {rows}), \
         gone AS (DELETE FROM {table} AS t USING v WHERE {matches} AND {older_row}) \
         INSERT INTO {tombstones} AS d (table_name, key, commit_timestamp, record_sequence) \
         SELECT {name}, v.key::jsonb, v.ts, v.seq FROM v \
         WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {matches} AND {newer_row}) \
         ON CONFLICT (table_name, key) DO UPDATE SET commit_timestamp = EXCLUDED.commit_timestamp, \
         record_sequence = EXCLUDED.record_sequence WHERE {TOMBSTONE_VERSION} < \
         (EXCLUDED.commit_timestamp, EXCLUDED.record_sequence)",
        converted = converted.join(", "),
        rows = shape.rows(),
        matches = shape.key_matches("t", "v"),
        older_row = version_is("t", "<", change),
        name = shape.table_param(),
        newer_row = version_is("t", ">=", change),
    )
}

/// A new replica table: `columns` (name, type), the primary key `key`, the guard's columns.
pub(crate) fn create_table(
    schema: &str,
    table: &str,
    columns: &[(String, SqlType)],
    key: &[&str],
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|(name, t)| format!("{} {}", ident(name), t.ddl()))
        .collect();
    defs.push(format!("{COMMIT_TIMESTAMP} timestamptz NOT NULL"));
    defs.push(format!("{RECORD_SEQUENCE} bigint NOT NULL"));
    let key: Vec<String> = key.iter().map(|k| ident(k)).collect();
    defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        qualified(schema, table),
        defs.join(", ")
    )
}

/// Adds `column` to an existing replica table.
pub(crate) fn add_column(schema: &str, table: &str, column: &str, sql_type: SqlType) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
        qualified(schema, table),
        ident(column),
        sql_type.ddl()
    )
}

/// The tombstones of deleted rows, and the index that prunes them.
pub(crate) fn create_tombstones(schema: &str) -> [String; 2] {
    let table = qualified(schema, TOMBSTONES);
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (table_name text NOT NULL, key jsonb NOT NULL, \
             commit_timestamp timestamptz NOT NULL, record_sequence bigint NOT NULL, \
             PRIMARY KEY (table_name, key))"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} (commit_timestamp)",
            ident(&format!("{TOMBSTONES}_commit_timestamp"))
        ),
    ]
}

/// The position table and its one row (before any transaction), if missing.
pub(crate) fn create_position(schema: &str) -> [String; 2] {
    let table = qualified(schema, POSITION);
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (replica text PRIMARY KEY, \
             commit_nanos bigint NOT NULL, commit_timestamp text NOT NULL, \
             transaction_id text NOT NULL)"
        ),
        format!(
            "INSERT INTO {table} VALUES ('stream', -9223372036854775808, '', '') \
             ON CONFLICT (replica) DO NOTHING"
        ),
    ]
}

/// The position, locked until the transaction ends: a second writer (a runner that lost
/// its lease) waits, then sees what the first applied.
pub(crate) fn read_position(schema: &str) -> String {
    format!(
        "SELECT commit_nanos, transaction_id FROM {} WHERE replica = 'stream' FOR UPDATE",
        qualified(schema, POSITION)
    )
}

/// Sets the position to `$1` (nanos), `$2` (the timestamp's text) and `$3` (transaction).
pub(crate) fn write_position(schema: &str) -> String {
    format!(
        "INSERT INTO {} (replica, commit_nanos, commit_timestamp, transaction_id) \
         VALUES ('stream', $1, $2, $3) ON CONFLICT (replica) DO UPDATE SET \
         commit_nanos = EXCLUDED.commit_nanos, commit_timestamp = EXCLUDED.commit_timestamp, \
         transaction_id = EXCLUDED.transaction_id",
        qualified(schema, POSITION)
    )
}

/// Removes tombstones older than `$1` (a timestamptz).
pub(crate) fn prune_tombstones(schema: &str) -> String {
    format!(
        "DELETE FROM {} WHERE commit_timestamp < $1::timestamptz",
        qualified(schema, TOMBSTONES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(code: &str, element: Option<&str>) -> SqlType {
        SqlType::of(&SpannerType {
            code: code.into(),
            array_element_type: element.map(str::to_owned),
        })
    }

    #[test]
    fn spanner_types_map_to_the_documented_postgresql_types() {
        let cases = [
            ("BOOL", None, "boolean"),
            ("INT64", None, "bigint"),
            ("FLOAT32", None, "real"),
            ("FLOAT64", None, "double precision"),
            ("NUMERIC", None, "numeric"),
            ("STRING", None, "text"),
            ("BYTES", None, "bytea"),
            ("DATE", None, "date"),
            ("TIMESTAMP", None, "timestamptz"),
            ("JSON", None, "jsonb"),
            ("PROTO", None, "bytea"),
            ("ENUM", None, "bigint"),
            ("INTERVAL", None, "interval"),
            ("UUID", None, "uuid"),
            ("TOKENLIST", None, "text"),
            ("ARRAY", Some("INT64"), "bigint[]"),
            ("ARRAY", Some("BYTES"), "bytea[]"),
        ];
        for (code, element, want) in cases {
            assert_eq!(t(code, element).ddl(), want, "{code} {element:?}");
        }
    }

    #[test]
    fn identifiers_are_quoted_with_case_and_inner_quotes_kept() {
        assert_eq!(ident("Singers"), "\"Singers\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("my schema", "T"), "\"my schema\".\"T\"");
    }

    #[test]
    fn values_are_converted_from_text_and_arrays_keep_order_and_nulls() {
        assert_eq!(t("INT64", None).convert("v.c1"), "(v.c1)::bigint");
        assert_eq!(t("BYTES", None).convert("v.c1"), "decode(v.c1, 'base64')");
        let array = t("ARRAY", Some("FLOAT64")).convert("v.c2");
        assert!(
            array.starts_with("CASE WHEN v.c2 IS NULL THEN NULL"),
            "{array}"
        );
        assert!(
            array.contains("(NULLIF(e.v, 'NULL'))::double precision"),
            "{array}"
        );
        assert!(array.contains("ORDER BY e.n"), "{array}");
    }

    #[test]
    fn statements_name_the_guard_and_every_parameter() {
        let shape = Shape {
            table: "Items".into(),
            kind: Kind::Upsert,
            key_len: 1,
            columns: vec![
                ("Id".into(), t("INT64", None)),
                ("Seq".into(), t("INT64", None)),
            ],
        };
        let sql = upsert("public", &shape);
        assert!(sql.starts_with("INSERT INTO \"public\".\"Items\" AS t (\"Id\", \"Seq\", _screamer_commit_timestamp, _screamer_record_sequence)"), "{sql}");
        assert!(
            sql.contains("unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])"),
            "{sql}"
        );
        assert!(sql.contains("d.table_name = $6"), "{sql}");
        assert!(
            sql.contains("ON CONFLICT (\"Id\") DO UPDATE SET \"Seq\" = EXCLUDED.\"Seq\""),
            "{sql}"
        );
        assert!(sql.ends_with("WHERE (t._screamer_commit_timestamp, t._screamer_record_sequence) < (EXCLUDED._screamer_commit_timestamp, EXCLUDED._screamer_record_sequence)"), "{sql}");
        let delete_shape = Shape {
            kind: Kind::Delete,
            columns: shape.columns[..1].to_vec(),
            ..shape
        };
        let sql = delete("public", &delete_shape);
        assert!(sql.contains("(v.c1)::bigint AS c1"), "{sql}");
        assert!(
            sql.contains("unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"),
            "{sql}"
        );
        assert!(sql.contains("SELECT $5, v.key::jsonb"), "{sql}");
    }
}
