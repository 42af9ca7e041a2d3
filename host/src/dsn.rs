//! Database names (`projects/P/instances/I/databases/D`), checked once at the edge.

use std::fmt;
use std::str::FromStr;

/// A fully qualified Spanner database name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DatabaseName {
    project: String,
    instance: String,
    database: String,
}

/// A DSN that is not `projects/P/instances/I/databases/D`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid database name {input:?}: expected projects/PROJECT/instances/INSTANCE/databases/DATABASE"
)]
pub struct DatabaseNameError {
    input: String,
}

impl DatabaseName {
    /// Builds a name from its three ids.
    pub fn new(
        project: impl Into<String>,
        instance: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        Self {
            project: project.into(),
            instance: instance.into(),
            database: database.into(),
        }
    }

    /// The project id.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The database id.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `projects/P/instances/I`.
    pub fn instance_path(&self) -> String {
        format!("projects/{}/instances/{}", self.project, self.instance)
    }
}

/// Whether `name` is a Spanner schema object name (table, change stream): a letter, then
/// letters, digits and underscores, at most 128 in all. Names that pass can be spliced into
/// SQL text.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

impl FromStr for DatabaseName {
    type Err = DatabaseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DatabaseNameError {
            input: s.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["projects", p, "instances", i, "databases", d]
                if [p, i, d].iter().all(|id| valid_id(id)) =>
            {
                Ok(Self::new(*p, *i, *d))
            }
            _ => Err(err()),
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/instances/{}/databases/{}",
            self.project, self.instance, self.database
        )
    }
}

impl fmt::Debug for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: DatabaseName = "projects/p-1/instances/i/databases/db_1".parse().unwrap();
        assert_eq!(d.database(), "db_1");
        assert_eq!(d.to_string(), "projects/p-1/instances/i/databases/db_1");
        assert_eq!(d.instance_path(), "projects/p-1/instances/i");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "projects/p/instances/i",
            "projects/p/instances/i/databases/",
            "projects/p/instances/i/databases/d/extra",
            "project/p/instances/i/databases/d",
            "projects/p q/instances/i/databases/d",
        ] {
            let e = bad.parse::<DatabaseName>().unwrap_err();
            assert!(e.to_string().contains("expected projects/PROJECT"), "{e}");
        }
    }
}
