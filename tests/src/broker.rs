//! One scenario for every message-system destination: a churning stream on the Spanner
//! emulator, through a graceful restart, an outage of the broker and a `kill -9` of screamer
//! during it, read back by a consumer; every mutation arrives, none repeated across the
//! graceful restart, each key's changes in order, every message keyed by its row.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use screamer::Timestamp;
use serde_json::Value;

use crate::items::{assert_ordered_per_key, counts, expected, mods, write};
use crate::plugins::named_records;
use crate::{Emulator, EmulatorOptions, Screamer, eventually, run_args};

/// One message as the test's consumer got it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The topic or subject it came from.
    pub subject: String,
    pub data: String,
    /// Attributes or headers.
    pub attributes: HashMap<String, String>,
    /// Ordering key, message key or `key` header; empty for none.
    pub key: String,
}

/// A message system under test, with a topic or stream ready for the scenario.
pub trait Broker {
    /// The `--output` URI (with `mods=split`).
    fn output(&self) -> String;
    /// Environment screamer needs to reach it.
    fn env(&self) -> Vec<(&'static str, String)>;
    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) the broker.
    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()>;
    /// The messages that arrived since the last call, waiting up to `wait` for some.
    fn drain(&mut self, wait: Duration) -> impl Future<Output = anyhow::Result<Vec<Delivered>>>;
}

/// Three records for the message tests, as NDJSON and parsed: `a` (Users, Id 0); `b`
/// (Users) holding two rows, Id 7 named `b` and Id 8 named `b2`; `c` (Albums, Id 2).
pub fn sample_records() -> (String, Vec<Value>) {
    let mut records: Vec<Value> = named_records(&["a", "b", "c"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record"))
        .collect();
    let row = |id: &str, name: &str| serde_json::json!({"keys": {"Id": id}, "new_values": {"Name": name}, "old_values": {}});
    records[1]["mods"] = serde_json::json!([row("7", "b"), row("8", "b2")]);
    records[2]["table_name"] = serde_json::json!("Albums");
    let ndjson = records.iter().map(|r| format!("{r}\n")).collect();
    (ndjson, records)
}

/// The keys `mods=split` gives the rows of [`sample_records`], in order.
pub const SAMPLE_KEYS: [&str; 4] = [
    r#"Users/{"Id":"0"}"#,
    r#"Users/{"Id":"7"}"#,
    r#"Users/{"Id":"8"}"#,
    r#"Albums/{"Id":"2"}"#,
];

/// Asserts that `message` carries the six attributes of `record` (besides the names in
/// `others`, which the protocol adds) and no key.
pub fn assert_whole_record(message: &Delivered, record: &Value, others: &[&str]) {
    let a = |k: &str| message.attributes[k].as_str();
    assert_eq!(a("table_name"), record["table_name"]);
    assert_eq!(a("mod_type"), "INSERT");
    assert_eq!(a("commit_timestamp"), record["commit_timestamp"]);
    assert_eq!(a("partition_token"), "p1");
    assert_eq!(a("server_transaction_id"), record["server_transaction_id"]);
    assert_eq!(a("record_sequence"), record["record_sequence"]);
    let extra: Vec<&String> = message
        .attributes
        .keys()
        .filter(|k| !others.contains(&k.as_str()))
        .collect();
    assert_eq!(extra.len(), 6, "{:?}", message.attributes);
    assert_eq!(message.key, "", "a whole record has no key");
}

/// The payloads of `messages`.
pub fn payloads(messages: &[Delivered]) -> Vec<String> {
    messages.iter().map(|m| m.data.clone()).collect()
}

fn delivered(messages: &[Delivered]) -> Vec<(i64, i64)> {
    mods(&payloads(messages)).expect("Items records")
}

/// Runs the scenario of the module docs against `broker`.
pub async fn stream_through_restart_and_outage(broker: &mut impl Broker) -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = std::sync::Arc::new(emulator.items_database().await?);
    let start = Timestamp::now().to_string();
    let output = broker.output();
    let args = run_args(
        &db,
        &[
            "--metadata-table",
            "Partitions",
            "--start",
            &start,
            "--output",
            &output,
        ],
    );
    let env_owned = broker.env();
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 11, Duration::from_millis(4)).await }
    });
    let mut got = Vec::new();

    // 1. A graceful stop and restart: nothing repeated.
    let mut first = Screamer::spawn_with_env(db.host(), &args, &env)?;
    while delivered(&got).len() < 200 {
        let more = broker.drain(Duration::from_secs(60)).await?;
        anyhow::ensure!(!more.is_empty(), "nothing arrived: {}", first.stderr());
        got.extend(more);
    }
    first.signal(libc::SIGINT)?;
    let status = first.wait(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Some(0), "stderr: {}", first.stderr());
    got.extend(broker.drain(Duration::from_secs(3)).await?);
    let by_first: HashSet<(i64, i64)> = delivered(&got).into_iter().collect();
    let after_first = got.len();

    // 2. The broker stops answering; screamer waits, and is killed while it waits.
    let second = Screamer::spawn_with_env(db.host(), &args, &env)?;
    got.extend(broker.drain(Duration::from_secs(60)).await?);
    broker.signal(libc::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    second.signal(libc::SIGKILL)?;
    drop(second);

    // 3. A new runner during the outage, then the broker is back: it catches up on its own.
    let mut third = Screamer::spawn_with_env(db.host(), &args, &env)?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    broker.signal(libc::SIGCONT)?;
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    eventually(Duration::from_secs(120), "every mutation", async || {
        got.extend(broker.drain(Duration::from_secs(1)).await.ok()?);
        let distinct: BTreeSet<_> = delivered(&got).into_iter().collect();
        (distinct.len() >= want.len()).then_some(())
    })
    .await?;
    third.signal(libc::SIGINT)?;
    assert_eq!(third.wait(Duration::from_secs(60)).await?.code(), Some(0));
    let stderr = third.stderr();
    assert!(stderr.contains("retrying"), "no outage seen: {stderr}");
    got.extend(broker.drain(Duration::from_secs(2)).await?);

    let later = delivered(&got[after_first..]);
    let repeated: Vec<_> = later.iter().filter(|m| by_first.contains(m)).collect();
    assert!(
        repeated.is_empty(),
        "repeated after a graceful restart: {repeated:?}"
    );
    // At least once: the kill may repeat what was published but not checkpointed; nothing
    // is lost, nothing else appears, and each key's changes arrive in order.
    let all = delivered(&got);
    let distinct: BTreeMap<_, _> = counts(all.clone()).into_keys().map(|k| (k, 1)).collect();
    assert_eq!(distinct, want, "every mutation, nothing else");
    let mut seen = HashSet::new();
    let firsts: Vec<(i64, i64)> = all.into_iter().filter(|m| seen.insert(*m)).collect();
    assert_ordered_per_key(&firsts);
    for m in &got {
        let v: Value = serde_json::from_str(&m.data)?;
        let id = v["mods"][0]["keys"]["Id"].as_str().expect("Id");
        assert_eq!(m.key, format!(r#"Items/{{"Id":"{id}"}}"#));
        assert_eq!(m.attributes["commit_timestamp"], v["commit_timestamp"]);
        assert_eq!(m.attributes["partition_token"], v["partition_token"]);
        assert_eq!(m.attributes["table_name"], "Items");
    }
    Ok(())
}
