//! The Kafka destination against a real Kafka-protocol broker (`tansu`, in memory): values
//! are the stdout lines, headers name the record, `mods=split` makes a message per row keyed
//! by it (one partition per key), a topic template puts each table in its own topic, a
//! message over the size limit is a dead letter while the rest arrive; a stream on the
//! Spanner emulator arrives exactly once, in order per key, across a graceful restart, and
//! through an outage of the broker during which screamer is killed; a topic that does not
//! exist is one line and exit 2.

use std::collections::HashMap;
use std::time::Duration;

use screamer_tests::broker::{
    Delivered, SAMPLE_KEYS, assert_whole_record, payloads, sample_records,
    stream_through_restart_and_outage,
};
use screamer_tests::kafka::{KafkaBroker, Topic, poll};
use screamer_tests::plugins::plugin_run_async;
use screamer_tests::plugins::{named_records, plugin_arg, record_names, scratch_dir};
use serde_json::Value;

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
    let (input, records) = sample_records();

    let whole = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            kafka.uri("whole", ""),
        ],
        input.clone(),
        vec![],
    )
    .await;
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    assert!(whole.stdout.is_empty(), "records went to Kafka, not stdout");
    let got = read(&kafka, "whole", 1, Duration::from_secs(30));
    let stdout = plugin_run_async(vec![plugin_arg("identity")], input.clone(), vec![]).await;
    assert_eq!(
        payloads(&got),
        stdout.stdout,
        "each value is the stdout line"
    );
    for (m, record) in got.iter().zip(&records) {
        assert_whole_record(m, record, &[]);
    }

    let split = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            kafka.uri("cdc.{table_name}", "?mods=split&compression.type=zstd"),
        ],
        input,
        vec![],
    )
    .await;
    assert_eq!(split.code, Some(0), "{}", split.stderr);
    let users = read(&kafka, "cdc.Users", 1, Duration::from_secs(30));
    let albums = read(&kafka, "cdc.Albums", 1, Duration::from_secs(30));
    assert_eq!(record_names(&payloads(&users)), ["a", "b", "b2"]);
    assert_eq!(record_names(&payloads(&albums)), ["c"]);
    let keys: Vec<&str> = users
        .iter()
        .chain(&albums)
        .map(|m| m.key.as_str())
        .collect();
    assert_eq!(keys, SAMPLE_KEYS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_size_limit_is_a_dead_letter_and_the_rest_arrive() {
    let kafka = KafkaBroker::start().await.unwrap();
    kafka.topic("sized", 1).await.unwrap();
    let dead = scratch_dir("kafka-refused").join("dead.ndjson");
    let big = "x".repeat(5000);
    let names = ["a", big.as_str(), "b"];
    let run = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            kafka.uri("sized", "?message.max.bytes=2000"),
            "--dead-letter".into(),
            dead.display().to_string(),
        ],
        named_records(&names),
        vec![],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got = read(&kafka, "sized", 1, Duration::from_secs(30));
    assert_eq!(record_names(&payloads(&got)), ["a", "b"]);
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
    let run = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            kafka.uri("missing", ""),
        ],
        String::new(),
        vec![],
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
