//! The replica's tables: created from a record's `column_types` when missing, widened when
//! a record describes a column they lack.
//!
//! Invariants: DDL runs in the transaction of the rows that need it, so a table or column
//! exists exactly when rows written to it do. What the destination remembers about the
//! tables is learned only after that transaction commits ([`Tables::learn`]). Columns are
//! never dropped or retyped; a table created by someone else gets the guard's columns
//! added with values older than any change.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio_postgres::Transaction;

use super::rows::{RecordChanges, key_columns};
use super::sql::{self, COMMIT_TIMESTAMP, RECORD_SEQUENCE, SqlType};

/// The replica tables of one schema that this destination has seen, with their columns.
#[derive(Debug)]
pub(crate) struct Tables {
    schema: String,
    known: Mutex<HashMap<String, HashSet<String>>>,
}

/// Tables and columns one transaction made sure of: known once it commits.
#[derive(Debug, Default)]
pub(crate) struct Learned(Vec<(String, HashSet<String>)>);

impl Tables {
    pub(crate) fn new(schema: &str) -> Self {
        Tables {
            schema: schema.to_owned(),
            known: Mutex::default(),
        }
    }

    /// Creates or widens, in `tx`, every table `records` write to.
    pub(crate) async fn ensure(
        &self,
        tx: &Transaction<'_>,
        records: &[RecordChanges],
    ) -> Result<Learned, tokio_postgres::Error> {
        let mut learned = Learned::default();
        for (table, wanted) in self.missing(records) {
            let columns = self.ensure_table(tx, table, &wanted).await?;
            learned.0.push((table.to_owned(), columns));
        }
        Ok(learned)
    }

    /// Keeps what a committed transaction made sure of.
    pub(crate) fn learn(&self, learned: Learned) {
        let mut known = self.known.lock().expect("not poisoned");
        for (table, columns) in learned.0 {
            known.entry(table).or_default().extend(columns);
        }
    }

    /// Forgets what it knows of the tables: the next transaction looks at them again.
    pub(crate) fn forget(&self) {
        self.known.lock().expect("not poisoned").clear();
    }

    /// Per table, the columns `records` describe, for the tables that may lack some.
    fn missing<'a>(
        &self,
        records: &'a [RecordChanges],
    ) -> Vec<(&'a str, Vec<&'a crate::record::ColumnType>)> {
        let known = self.known.lock().expect("not poisoned");
        let mut wanted: Vec<(&str, Vec<&crate::record::ColumnType>)> = Vec::new();
        for r in records {
            let have = known.get(&r.table);
            let new = r
                .columns
                .iter()
                .filter(|c| have.is_none_or(|h| !h.contains(&c.name)));
            let entry = match wanted.iter_mut().find(|(t, _)| *t == r.table) {
                Some(entry) => entry,
                None => {
                    wanted.push((&r.table, Vec::new()));
                    wanted.last_mut().expect("just pushed")
                }
            };
            for c in new {
                if !entry.1.iter().any(|w| w.name == c.name) {
                    entry.1.push(c);
                }
            }
        }
        wanted.retain(|(_, columns)| !columns.is_empty());
        wanted
    }

    /// Makes `table` hold `wanted` (and the guard's columns); returns its columns.
    async fn ensure_table(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        wanted: &[&crate::record::ColumnType],
    ) -> Result<HashSet<String>, tokio_postgres::Error> {
        let rows = tx
            .query(
                "SELECT column_name FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2",
                &[&self.schema, &table],
            )
            .await?;
        let mut have: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        if have.is_empty() {
            let columns: Vec<(String, SqlType)> = wanted
                .iter()
                .map(|c| (c.name.clone(), SqlType::of(&c.column_type)))
                .collect();
            let key: Vec<&str> = key_columns(wanted.iter().copied())
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            tx.batch_execute(&sql::create_table(&self.schema, table, &columns, &key))
                .await?;
            tracing::info!(schema = %self.schema, table, columns = columns.len(), "replica table created");
        } else {
            for c in wanted.iter().filter(|c| !have.contains(&c.name)) {
                let add =
                    sql::add_column(&self.schema, table, &c.name, SqlType::of(&c.column_type));
                tx.batch_execute(&add).await?;
                tracing::info!(schema = %self.schema, table, column = %c.name, "replica column added");
            }
            self.add_guard(tx, table, &have).await?;
        }
        have.extend(wanted.iter().map(|c| c.name.clone()));
        have.extend([COMMIT_TIMESTAMP.to_owned(), RECORD_SEQUENCE.to_owned()]);
        Ok(have)
    }

    /// The guard's columns on a table that lacks them: every row older than any change.
    async fn add_guard(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        have: &HashSet<String>,
    ) -> Result<(), tokio_postgres::Error> {
        let table = sql::qualified(&self.schema, table);
        for (column, definition) in [
            (COMMIT_TIMESTAMP, "timestamptz NOT NULL DEFAULT '-infinity'"),
            (RECORD_SEQUENCE, "bigint NOT NULL DEFAULT -1"),
        ] {
            if !have.contains(column) {
                tx.batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}"
                ))
                .await?;
            }
        }
        Ok(())
    }
}
