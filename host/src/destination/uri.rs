//! Naming a destination: the one grammar of `--output`, `--side-output NAME=URI`,
//! `--dead-letter` and the pipeline file.
//!
//! `-` is stdout; `file:PATH` or a plain path is an NDJSON file (appended); `http://…` and
//! `https://…` are POST endpoints (the whole URI, query included, is the URL);
//! `pubsub://projects/P/topics/T`, `kafka://HOST:PORT[,HOST:PORT…]/TOPIC` and
//! `nats://HOST:PORT/SUBJECT` name message systems. Their topic or subject may be a
//! [`Template`] over the record's table (`cdc.{table_name}`), and their options are query
//! parameters ([`MessageOptions`]). `postgres://…` (or `postgresql://…`) names a PostgreSQL
//! replica ([`PostgresUri`]). Parsing checks the shape only; whether this build can
//! send there, and whether the destination exists, is decided when it opens. A URI
//! displays without its query: options may hold credentials, and the display goes to logs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::envelope::{Mods, Transactions};

/// Where one output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationUri {
    /// `-`: standard output.
    Stdout,
    /// `file:PATH`: lines appended to a file.
    File(PathBuf),
    /// `http://` or `https://`: a POST per batch.
    Http(String),
    /// `pubsub://PROJECT/TOPIC`: Google Cloud Pub/Sub.
    PubSub {
        /// The project.
        project: String,
        /// The topic (may name the table).
        topic: Template,
        /// How records become messages.
        options: MessageOptions,
    },
    /// `kafka://BROKERS/TOPIC`: a Kafka-protocol broker.
    Kafka {
        /// The bootstrap brokers.
        brokers: Vec<String>,
        /// The topic (may name the table).
        topic: Template,
        /// How records become messages.
        options: MessageOptions,
    },
    /// `nats://SERVER/SUBJECT`: NATS JetStream.
    Nats {
        /// The server.
        server: String,
        /// The subject (may name the table).
        subject: Template,
        /// How records become messages.
        options: MessageOptions,
    },
    /// `postgres://`: a PostgreSQL replica.
    Postgres(PostgresUri),
}

/// A PostgreSQL replica: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?OPTIONS]`, with
/// libpq's names for what it shares with libpq (`sslmode`, `sslrootcert`,
/// `application_name`, `connect_timeout`; `PGPASSWORD` when the URI has no password) and
/// `schema` (default `public`) for where the replica's tables go.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUri {
    /// The user to connect as.
    pub user: String,
    /// From the URI; `None` leaves it to `PGPASSWORD`.
    pub password: Option<String>,
    /// The server's host.
    pub host: String,
    /// The server's port (default 5432).
    pub port: u16,
    /// The database.
    pub database: String,
    /// Where the replica's tables go (default `public`).
    pub schema: String,
    /// Whether and how the connection is encrypted.
    pub sslmode: SslMode,
    /// A PEM file of the certificate authorities that may sign the server's certificate.
    pub sslrootcert: Option<PathBuf>,
    /// The name the server shows for the connection.
    pub application_name: Option<String>,
    /// Seconds a connection attempt may take.
    pub connect_timeout: Option<u64>,
}

/// libpq's `sslmode`: whether the connection is encrypted, and what of the server's
/// certificate is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (libpq's default).
    #[default]
    Prefer,
    /// TLS, without checking the certificate (unless `sslrootcert` is given).
    Require,
    /// TLS, with a certificate signed by a trusted authority.
    VerifyCa,
    /// TLS, with a trusted certificate for the host's name.
    VerifyFull,
}

impl SslMode {
    /// The mode as libpq names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "prefer" | "allow" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Debug for PostgresUri {
    /// Without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUri")
            .field("uri", &self.to_string())
            .field("schema", &self.schema)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PostgresUri {
    /// Without the password or the query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgres://{}@{host}:{}/{}",
            self.user, self.port, self.database
        )
    }
}

const POSTGRES_SHAPE: &str =
    "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=S&...]";
const POSTGRES_OPTIONS: &str = "schema, sslmode, sslrootcert, application_name, connect_timeout";

/// `rest` of a `postgres:` or `postgresql:` URI (after the colon).
fn postgres(rest: &str) -> Result<DestinationUri, String> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = location
        .strip_prefix("//")
        .and_then(|l| l.split_once('/'))
        .ok_or(POSTGRES_SHAPE)?;
    let (userinfo, hostport) = authority.rsplit_once('@').ok_or(POSTGRES_SHAPE)?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let decode = |part: &str, what: &str| {
        percent_decode(part).ok_or_else(|| format!("{what}: bad %-escape"))
    };
    let (host, port) = host_and_port(hostport).ok_or(POSTGRES_SHAPE)?;
    if user.is_empty() || database.is_empty() {
        return Err(POSTGRES_SHAPE.to_owned());
    }
    let mut uri = PostgresUri {
        user: decode(user, "user")?,
        password: password.map(|p| decode(p, "password")).transpose()?,
        host,
        port,
        database: decode(database, "database")?,
        schema: "public".to_owned(),
        sslmode: SslMode::default(),
        sslrootcert: None,
        application_name: None,
        connect_timeout: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("option {pair:?}: expected NAME=VALUE"))?;
        let value = decode(value, key)?;
        match key {
            "schema" if !value.is_empty() => uri.schema = value,
            "sslmode" => {
                uri.sslmode = SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "option sslmode={value}: expected disable, prefer, require, verify-ca \
                         or verify-full"
                    )
                })?
            }
            "sslrootcert" => uri.sslrootcert = Some(PathBuf::from(value)),
            "application_name" => uri.application_name = Some(value),
            "connect_timeout" => {
                uri.connect_timeout = Some(value.parse().map_err(|_| {
                    format!("option connect_timeout={value}: expected whole seconds")
                })?)
            }
            _ => {
                return Err(format!(
                    "unknown option {key:?} (or an empty value); expected {POSTGRES_OPTIONS}"
                ));
            }
        }
    }
    Ok(DestinationUri::Postgres(uri))
}

/// `HOST[:PORT]` or `[V6]:PORT`; the port defaults to 5432.
fn host_and_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest.strip_prefix(':'))
        }
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0)?,
        None => 5432,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Options of a message destination: `?mods=split&...` in a URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageOptions {
    /// `mods=whole` (default) or `mods=split`.
    pub mods: Mods,
    /// `transactions=records` (default) or `transactions=grouped` (with `--ordering
    /// transactions`, one message per transaction).
    pub transactions: Transactions,
    /// Client properties: for Kafka passed through to librdkafka as given (any key with a
    /// dot: `compression.type=zstd`, `security.protocol=SASL_SSL`, `sasl.username=…`); for
    /// NATS its authentication and TLS (`user`, `password`, `token`, `nkey`, `creds`, `tls`,
    /// `tls_ca`, `tls_cert`, `tls_key`).
    pub properties: BTreeMap<String, String>,
}

/// A topic or subject name, possibly naming the record's table: `cdc.{table_name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    const TABLE: &'static str = "{table_name}";

    fn parse(text: &str) -> Result<Self, &'static str> {
        let rest = text.replace(Self::TABLE, "");
        if rest.contains(['{', '}']) {
            return Err("the only placeholder a name may hold is {table_name}");
        }
        Ok(Template(text.to_owned()))
    }

    /// The name for a record of `table`.
    pub fn render(&self, table: &str) -> Cow<'_, str> {
        if self.is_fixed() {
            Cow::Borrowed(&self.0)
        } else {
            Cow::Owned(self.0.replace(Self::TABLE, table))
        }
    }

    /// Whether the name is the same for every record.
    pub fn is_fixed(&self) -> bool {
        !self.0.contains(Self::TABLE)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A destination URI that does not parse, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?}: {reason}")]
pub struct UriError {
    uri: String,
    reason: String,
}

impl DestinationUri {
    /// A file path relative to `base` (the pipeline file's directory) becomes absolute
    /// there; everything else is unchanged.
    pub fn relative_to(self, base: &Path) -> Self {
        match self {
            DestinationUri::File(path) => DestinationUri::File(base.join(path)),
            other => other,
        }
    }
}

impl DestinationUri {
    /// Whether the destination asks for one message per transaction
    /// (`transactions=grouped`).
    pub fn groups_transactions(&self) -> bool {
        match self {
            DestinationUri::PubSub { options, .. }
            | DestinationUri::Kafka { options, .. }
            | DestinationUri::Nats { options, .. } => options.transactions == Transactions::Grouped,
            _ => false,
        }
    }
}

impl FromStr for DestinationUri {
    type Err = UriError;

    fn from_str(text: &str) -> Result<Self, UriError> {
        let err = |reason: &str| UriError {
            uri: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text == "-" {
            return Ok(DestinationUri::Stdout);
        }
        let Some((scheme, rest)) = text.split_once(':') else {
            return file(text).ok_or_else(|| err("expected -, a file path or a URI"));
        };
        match scheme {
            "file" => file(rest).ok_or_else(|| err("expected file:PATH")),
            "http" | "https" => {
                let host = rest.strip_prefix("//").unwrap_or_default();
                if host.is_empty() || host.starts_with('/') {
                    return Err(err("expected http://HOST[:PORT]/PATH"));
                }
                Ok(DestinationUri::Http(text.to_owned()))
            }
            "pubsub" | "kafka" | "nats" => message_system(scheme, rest).map_err(|r| err(&r)),
            "postgres" | "postgresql" => postgres(rest).map_err(|r| err(&r)),
            // A Windows-style or odd path with a colon is still a path when it has a slash
            // before the colon (`./a:b`).
            _ if scheme.contains('/') => file(text).ok_or_else(|| err("expected a file path")),
            _ => Err(err(
                "unknown scheme; expected -, file:PATH, a path, http(s)://, pubsub://, \
                 kafka://, nats:// or postgres://",
            )),
        }
    }
}

/// `rest` of a `pubsub:`, `kafka:` or `nats:` URI (after the colon).
fn message_system(scheme: &str, rest: &str) -> Result<DestinationUri, String> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let shape = match scheme {
        "pubsub" => "expected pubsub://projects/PROJECT/topics/TOPIC",
        "kafka" => "expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC",
        _ => "expected nats://HOST:PORT/SUBJECT",
    };
    let (server, name) = server_and_path(location).ok_or(shape)?;
    let options = options(query, scheme)?;
    let template = |name: &str| {
        let t = Template::parse(name).map_err(str::to_owned)?;
        if options.transactions == Transactions::Grouped && !t.is_fixed() {
            return Err(
                "transactions=grouped needs a fixed topic or subject: a transaction \
                        spans tables"
                    .to_owned(),
            );
        }
        Ok(t)
    };
    match scheme {
        "pubsub" => match (server, &name.split('/').collect::<Vec<_>>()[..]) {
            ("projects", [project, "topics", topic])
                if !project.is_empty() && !topic.is_empty() =>
            {
                Ok(DestinationUri::PubSub {
                    project: (*project).to_owned(),
                    topic: template(topic)?,
                    options,
                })
            }
            _ => Err(shape.to_owned()),
        },
        "kafka" => {
            let brokers: Vec<String> = server.split(',').map(str::to_owned).collect();
            if !brokers.iter().all(|b| is_host_port(b)) {
                return Err(shape.to_owned());
            }
            Ok(DestinationUri::Kafka {
                brokers,
                topic: template(name)?,
                options,
            })
        }
        _ => {
            if !is_host_port(server) {
                return Err(shape.to_owned());
            }
            Ok(DestinationUri::Nats {
                server: server.to_owned(),
                subject: template(name)?,
                options,
            })
        }
    }
}

/// The NATS client's options (see the NATS destination).
const NATS_OPTIONS: [&str; 9] = [
    "user", "password", "token", "nkey", "creds", "tls", "tls_ca", "tls_cert", "tls_key",
];

/// The query of a message system's URI: `mods`; for Kafka client properties, for NATS the
/// client's options.
fn options(query: &str, scheme: &str) -> Result<MessageOptions, String> {
    let properties = scheme == "kafka";
    let mut options = MessageOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("option {pair:?}: expected NAME=VALUE"))?;
        let value = percent_decode(value).ok_or_else(|| format!("option {key}: bad %-escape"))?;
        match key {
            "mods" => {
                options.mods = Mods::parse(&value)
                    .ok_or_else(|| format!("option mods={value}: expected whole or split"))?;
            }
            "transactions" => {
                options.transactions = Transactions::parse(&value).ok_or_else(|| {
                    format!("option transactions={value}: expected records or grouped")
                })?;
            }
            _ if properties && key.contains('.') => {
                options.properties.insert(key.to_owned(), value);
            }
            _ if properties => {
                return Err(format!(
                    "unknown option {key:?}; expected mods, transactions or a librdkafka property (a.b=...)"
                ));
            }
            _ if scheme == "nats" && NATS_OPTIONS.contains(&key) => {
                options.properties.insert(key.to_owned(), value);
            }
            _ if scheme == "nats" => {
                return Err(format!(
                    "unknown option {key:?}; expected mods, transactions, {}",
                    NATS_OPTIONS.join(", ")
                ));
            }
            _ => {
                return Err(format!(
                    "unknown option {key:?}; expected mods or transactions"
                ));
            }
        }
    }
    Ok(options)
}

/// `%XX` escapes decoded; `None` for a broken escape or text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

fn file(path: &str) -> Option<DestinationUri> {
    (!path.is_empty()).then(|| DestinationUri::File(PathBuf::from(path)))
}

/// `//SERVER/PATH` with both parts non-empty.
fn server_and_path(rest: &str) -> Option<(&str, &str)> {
    let (server, path) = rest.strip_prefix("//")?.split_once('/')?;
    (!server.is_empty() && !path.is_empty()).then_some((server, path))
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

impl fmt::Display for DestinationUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationUri::Stdout => write!(f, "stdout"),
            DestinationUri::File(path) => write!(f, "file:{}", path.display()),
            DestinationUri::Http(url) => write!(f, "{url}"),
            DestinationUri::PubSub { project, topic, .. } => {
                write!(f, "pubsub://projects/{project}/topics/{topic}")
            }
            DestinationUri::Kafka { brokers, topic, .. } => {
                write!(f, "kafka://{}/{topic}", brokers.join(","))
            }
            DestinationUri::Nats {
                server, subject, ..
            } => write!(f, "nats://{server}/{subject}"),
            DestinationUri::Postgres(uri) => uri.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> DestinationUri {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_form_parses() {
        assert_eq!(uri("-"), DestinationUri::Stdout);
        assert_eq!(uri("out.ndjson"), DestinationUri::File("out.ndjson".into()));
        assert_eq!(
            uri("file:/x/y.ndjson"),
            DestinationUri::File("/x/y.ndjson".into())
        );
        assert_eq!(uri("./a:b"), DestinationUri::File("./a:b".into()));
        assert_eq!(
            uri("https://h:8443/in?k=v"),
            DestinationUri::Http("https://h:8443/in?k=v".into())
        );
        assert_eq!(
            uri("pubsub://projects/p1/topics/cdc"),
            DestinationUri::PubSub {
                project: "p1".into(),
                topic: Template("cdc".into()),
                options: MessageOptions::default(),
            }
        );
        assert_eq!(
            uri("kafka://a:9092,b:9092/cdc.{table_name}"),
            DestinationUri::Kafka {
                brokers: vec!["a:9092".into(), "b:9092".into()],
                topic: Template("cdc.{table_name}".into()),
                options: MessageOptions::default(),
            }
        );
        assert_eq!(
            uri("nats://127.0.0.1:4222/cdc"),
            DestinationUri::Nats {
                server: "127.0.0.1:4222".into(),
                subject: Template("cdc".into()),
                options: MessageOptions::default(),
            }
        );
        for s in [
            "-",
            "file:/x",
            "https://h/p",
            "pubsub://projects/p/topics/t",
            "nats://h:1/s",
        ] {
            assert_eq!(uri(s).to_string().replace("stdout", "-"), s);
        }
    }

    #[test]
    fn malformed_uris_say_what_was_expected() {
        let e = |s: &str| s.parse::<DestinationUri>().unwrap_err().to_string();
        assert_eq!(
            e("s3://bucket/key"),
            "\"s3://bucket/key\": unknown scheme; expected -, file:PATH, a path, http(s)://, \
             pubsub://, kafka://, nats:// or postgres://"
        );
        assert!(
            e("pubsub://topics/t").ends_with("expected pubsub://projects/PROJECT/topics/TOPIC")
        );
        assert!(e("kafka://a:9092").ends_with("expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC"));
        assert!(e("kafka://a/t").ends_with("expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC"));
        assert!(e("nats://h:0/s").ends_with("expected nats://HOST:PORT/SUBJECT"));
        assert!(e("http:///x").ends_with("expected http://HOST[:PORT]/PATH"));
        assert!(e("file:").ends_with("expected file:PATH"));
        assert!(e("pubsub://projects/p/topics/t?mods=all").ends_with("expected whole or split"));
        assert!(
            e("pubsub://projects/p/topics/t?acks=1")
                .ends_with("unknown option \"acks\"; expected mods or transactions")
        );
        assert!(
            e("nats://h:1/{table}")
                .ends_with("the only placeholder a name may hold is {table_name}")
        );
        assert!(e("kafka://h:1/t?transactions=all").ends_with("expected records or grouped"));
        assert!(
            e("kafka://h:1/cdc.{table_name}?transactions=grouped").ends_with(
                "transactions=grouped needs a fixed topic or subject: a transaction spans tables"
            )
        );
    }

    #[test]
    fn transactions_are_records_unless_grouped() {
        assert!(!uri("kafka://h:1/t").groups_transactions());
        assert!(uri("kafka://h:1/t?transactions=grouped").groups_transactions());
        assert!(uri("nats://h:1/s?transactions=grouped").groups_transactions());
        assert!(!uri("nats://h:1/s?transactions=records").groups_transactions());
    }

    #[test]
    fn options_are_query_parameters_and_kafka_passes_properties_through() {
        let DestinationUri::Kafka { options, topic, .. } = uri(
            "kafka://h:9092/cdc.{table_name}?mods=split&compression.type=zstd&sasl.password=a%26b",
        ) else {
            panic!("not kafka");
        };
        assert_eq!(options.mods, Mods::Split);
        assert_eq!(options.properties["compression.type"], "zstd");
        assert_eq!(options.properties["sasl.password"], "a&b");
        assert_eq!(topic.render("Singers"), "cdc.Singers");
        assert!(!topic.is_fixed());
        // The query stays out of the display (it may hold credentials).
        assert_eq!(
            uri("kafka://h:9092/t?sasl.password=x").to_string(),
            "kafka://h:9092/t"
        );
    }

    #[test]
    fn postgres_uris_follow_libpq_and_display_without_secrets() {
        let DestinationUri::Postgres(pg) = uri(
            "postgresql://repl:s%40cret@db.local/app?schema=Mirror&sslmode=verify-full&sslrootcert=/ca.pem",
        ) else {
            panic!("not postgres");
        };
        assert_eq!(
            (
                pg.user.as_str(),
                pg.password.as_deref(),
                pg.host.as_str(),
                pg.port
            ),
            ("repl", Some("s@cret"), "db.local", 5432)
        );
        assert_eq!(
            (pg.database.as_str(), pg.schema.as_str()),
            ("app", "Mirror")
        );
        assert_eq!(pg.sslmode, SslMode::VerifyFull);
        assert_eq!(pg.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(pg.to_string(), "postgres://repl@db.local:5432/app");
        assert!(!format!("{pg:?}").contains("cret"));
        let DestinationUri::Postgres(v6) = uri("postgres://u@[::1]:6543/d") else {
            panic!("not postgres");
        };
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.password.as_deref()),
            ("::1", 6543, None)
        );
        assert_eq!(v6.schema, "public");
        assert_eq!(v6.to_string(), "postgres://u@[::1]:6543/d");

        let e = |s: &str| s.parse::<DestinationUri>().unwrap_err().to_string();
        for bad in [
            "postgres://db/app",
            "postgres://u@h:0/d",
            "postgres://u@h",
            "postgres://u@h/",
        ] {
            assert!(e(bad).ends_with(POSTGRES_SHAPE), "{bad}: {}", e(bad));
        }
        assert!(e("postgres://u@h/d?sslmode=on").contains("expected disable, prefer, require"));
        assert!(e("postgres://u@h/d?pool=3").ends_with(&format!("expected {POSTGRES_OPTIONS}")));
    }
}
