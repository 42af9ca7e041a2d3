//! The Kafka destination against a real Kafka-protocol broker (`tansu`, in memory): values
//! are the stdout lines, headers name the record, `mods=split` makes a message per row keyed
//! by it (one partition per key), a topic template puts each table in its own topic, a
//! message over the size limit is a dead letter while the rest arrive; a stream on the
//! Spanner emulator arrives exactly once, in order per key, across a graceful restart, and
//! through an outage of the broker during which screamer is killed; a topic that does not
//! exist is one line and exit 2.

use std::collections::HashMap;
use std::time::Duration;

use screamer_tests::broker::{Delivered, stream_through_restart_and_outage};
use screamer_tests::kafka::{KafkaBroker, Topic, poll};
use screamer_tests::plugins::{
    PluginRun, named_records, plugin, record_names, scratch_dir, screamer_with_env,
};
use serde_json::{Value, json};

/// `screamer plugin run ARGS` with `input` on stdin, off the async runtime.
async fn plugin_run(args: Vec<String>, input: String) -> PluginRun {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = ["plugin", "run"]
            .into_iter()
            .chain(args.iter().map(String::as_str))
            .collect();
        screamer_with_env(&args, &input, &[]).unwrap()
    })
    .await
    .unwrap()
}

fn identity() -> String {
    plugin("identity").display().to_string()
}

fn data(messages: &[Delivered]) -> Vec<String> {
    messages.iter().map(|m| m.data.clone()).collect()
}

/// Every message of `topic` (its `partitions`), within `wait`.
fn read(kafka: &KafkaBroker, topic: &str, partitions: i32, wait: Duration) -> Vec<Delivered> {
    let consumer = kafka.consumer(topic, partitions).unwrap();
    tokio::task::block_in_place(|| poll(&consumer, wait)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_carry_the_record_its_headers_and_with_split_mods_the_row_key() {
    let kafka = KafkaBroker::start().await.unwrap();
    for topic in ["whole", "cdc.Users", "cdc.Albums"] {
        kafka.topic(topic, 1).await.unwrap();
    }
    let mut records: Vec<Value> = named_records(&["a", "b", "c"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |id: &str, name: &str| json!({"keys": {"Id": id}, "new_values": {"Name": name}, "old_values": {}});
    records[1]["mods"] = json!([row("7", "b"), row("8", "b2")]);
    records[2]["table_name"] = json!("Albums");
    let input: String = records.iter().map(|r| format!("{r}\n")).collect();

    let whole = plugin_run(
        vec![identity(), "--output".into(), kafka.uri("whole", "")],
        input.clone(),
    )
    .await;
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    assert!(whole.stdout.is_empty(), "records went to Kafka, not stdout");
    let got = read(&kafka, "whole", 1, Duration::from_secs(30));
    let stdout = plugin_run(vec![identity()], input.clone()).await;
    assert_eq!(data(&got), stdout.stdout, "each value is the stdout line");
    for (m, record) in got.iter().zip(&records) {
        assert_eq!(m.attributes["table_name"], record["table_name"]);
        assert_eq!(m.attributes["mod_type"], "INSERT");
        assert_eq!(m.attributes["commit_timestamp"], record["commit_timestamp"]);
        assert_eq!(m.attributes["partition_token"], "p1");
        assert_eq!(
            m.attributes["server_transaction_id"],
            record["server_transaction_id"]
        );
        assert_eq!(m.attributes["record_sequence"], record["record_sequence"]);
        assert_eq!(m.attributes.len(), 6, "{:?}", m.attributes);
        assert_eq!(m.key, "", "a whole record has no key");
    }

    let split = plugin_run(
        vec![
            identity(),
            "--output".into(),
            kafka.uri("cdc.{table_name}", "?mods=split&compression.type=zstd"),
        ],
        input,
    )
    .await;
    assert_eq!(split.code, Some(0), "{}", split.stderr);
    let users = read(&kafka, "cdc.Users", 1, Duration::from_secs(30));
    let albums = read(&kafka, "cdc.Albums", 1, Duration::from_secs(30));
    assert_eq!(record_names(&data(&users)), ["a", "b", "b2"]);
    assert_eq!(record_names(&data(&albums)), ["c"]);
    let keys: Vec<&str> = users
        .iter()
        .chain(&albums)
        .map(|m| m.key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            r#"Users/{"Id":"0"}"#,
            r#"Users/{"Id":"7"}"#,
            r#"Users/{"Id":"8"}"#,
            r#"Albums/{"Id":"2"}"#
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_size_limit_is_a_dead_letter_and_the_rest_arrive() {
    let kafka = KafkaBroker::start().await.unwrap();
    kafka.topic("sized", 1).await.unwrap();
    let dead = scratch_dir("kafka-refused").join("dead.ndjson");
    let big = "x".repeat(5000);
    let names = ["a", big.as_str(), "b"];
    let run = plugin_run(
        vec![
            identity(),
            "--output".into(),
            kafka.uri("sized", "?message.max.bytes=2000"),
            "--dead-letter".into(),
            dead.display().to_string(),
        ],
        named_records(&names),
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got = read(&kafka, "sized", 1, Duration::from_secs(30));
    assert_eq!(record_names(&data(&got)), ["a", "b"]);
    let letters: Vec<Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["destination"], kafka.uri("sized", ""));
    assert_eq!(letters[0]["record"]["mods"][0]["new_values"]["Name"], big);
    let error = letters[0]["error"].as_str().unwrap();
    assert!(error.contains("too large"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_that_does_not_exist_is_one_line_and_exit_2() {
    let kafka = KafkaBroker::start().await.unwrap();
    let run = plugin_run(
        vec![identity(), "--output".into(), kafka.uri("missing", "")],
        String::new(),
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(
        run.stderr.trim_end().lines().last().unwrap(),
        format!(
            "error: --output {}: topic \"missing\" does not exist",
            kafka.uri("missing", "")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_reaches_kafka_exactly_once_in_order_per_key_across_a_restart_and_an_outage()
-> anyhow::Result<()> {
    let kafka = KafkaBroker::start().await?;
    kafka.topic("changes", 3).await?;
    let mut topic = Topic {
        broker: &kafka,
        name: "changes",
        consumer: kafka.consumer("changes", 3)?,
    };
    stream_through_restart_and_outage(&mut topic).await?;
    // Each key in one partition.
    let all = read(&kafka, "changes", 3, Duration::from_secs(10));
    let mut partition_of: HashMap<String, String> = HashMap::new();
    for m in &all {
        let p = partition_of
            .entry(m.key.clone())
            .or_insert(m.subject.clone());
        assert_eq!(*p, m.subject, "key {} in two partitions", m.key);
    }
    Ok(())
}
