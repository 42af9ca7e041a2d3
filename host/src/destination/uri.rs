//! Naming a destination: the one grammar of `--output`, `--side-output NAME=URI`,
//! `--dead-letter` and the pipeline file.
//!
//! `-` is stdout; `file:PATH` or a plain path is an NDJSON file (appended); `http://…` and
//! `https://…` are POST endpoints (the whole URI, query included, is the URL);
//! `pubsub://projects/P/topics/T`, `kafka://HOST:PORT[,HOST:PORT…]/TOPIC` and
//! `nats://HOST:PORT/SUBJECT` name message systems. Parsing checks the shape only; whether
//! this build can send there, and whether the destination exists, is decided when it opens.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where one output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationUri {
    Stdout,
    File(PathBuf),
    Http(String),
    PubSub { project: String, topic: String },
    Kafka { brokers: Vec<String>, topic: String },
    Nats { server: String, subject: String },
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
            "pubsub" => {
                let shape = "expected pubsub://projects/PROJECT/topics/TOPIC";
                let path = rest.strip_prefix("//").ok_or_else(|| err(shape))?;
                match path.split('/').collect::<Vec<_>>()[..] {
                    ["projects", project, "topics", topic]
                        if !project.is_empty() && !topic.is_empty() =>
                    {
                        Ok(DestinationUri::PubSub {
                            project: project.to_owned(),
                            topic: topic.to_owned(),
                        })
                    }
                    _ => Err(err(shape)),
                }
            }
            "kafka" => {
                let shape = "expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC";
                let (servers, topic) = server_and_path(rest).ok_or_else(|| err(shape))?;
                let brokers: Vec<String> = servers.split(',').map(str::to_owned).collect();
                if !brokers.iter().all(|b| is_host_port(b)) {
                    return Err(err(shape));
                }
                Ok(DestinationUri::Kafka {
                    brokers,
                    topic: topic.to_owned(),
                })
            }
            "nats" => {
                let shape = "expected nats://HOST:PORT/SUBJECT";
                let (server, subject) = server_and_path(rest).ok_or_else(|| err(shape))?;
                if !is_host_port(server) {
                    return Err(err(shape));
                }
                Ok(DestinationUri::Nats {
                    server: server.to_owned(),
                    subject: subject.to_owned(),
                })
            }
            // A Windows-style or odd path with a colon is still a path when it has a slash
            // before the colon (`./a:b`).
            _ if scheme.contains('/') => file(text).ok_or_else(|| err("expected a file path")),
            _ => Err(err(
                "unknown scheme; expected -, file:PATH, a path, http(s)://, pubsub://, \
                 kafka:// or nats://",
            )),
        }
    }
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
            DestinationUri::PubSub { project, topic } => {
                write!(f, "pubsub://projects/{project}/topics/{topic}")
            }
            DestinationUri::Kafka { brokers, topic } => {
                write!(f, "kafka://{}/{topic}", brokers.join(","))
            }
            DestinationUri::Nats { server, subject } => write!(f, "nats://{server}/{subject}"),
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
                topic: "cdc".into()
            }
        );
        assert_eq!(
            uri("kafka://a:9092,b:9092/cdc.{table_name}"),
            DestinationUri::Kafka {
                brokers: vec!["a:9092".into(), "b:9092".into()],
                topic: "cdc.{table_name}".into()
            }
        );
        assert_eq!(
            uri("nats://127.0.0.1:4222/cdc"),
            DestinationUri::Nats {
                server: "127.0.0.1:4222".into(),
                subject: "cdc".into()
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
             pubsub://, kafka:// or nats://"
        );
        assert!(
            e("pubsub://topics/t").ends_with("expected pubsub://projects/PROJECT/topics/TOPIC")
        );
        assert!(e("kafka://a:9092").ends_with("expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC"));
        assert!(e("kafka://a/t").ends_with("expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC"));
        assert!(e("nats://h:0/s").ends_with("expected nats://HOST:PORT/SUBJECT"));
        assert!(e("http:///x").ends_with("expected http://HOST[:PORT]/PATH"));
        assert!(e("file:").ends_with("expected file:PATH"));
    }
}
