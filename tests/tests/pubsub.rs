//! The Pub/Sub destination against the real Pub/Sub emulator: payloads are the stdout lines,
//! attributes name the record, `mods=split` makes a message per row keyed by it; side
//! outputs and dead letters go to topics of their own; a stream on the Spanner emulator
//! arrives exactly once, in order per key, across a graceful restart, and through an outage
//! of Pub/Sub during which screamer is killed; a topic that does not exist is one line and
//! exit 2.

use std::time::Duration;

use screamer_tests::broker::{
    SAMPLE_KEYS, assert_whole_record, payloads, sample_records, stream_through_restart_and_outage,
};
use screamer_tests::plugins::plugin_run_async;
use screamer_tests::plugins::{PluginRun, named_records, plugin, record_names};
use screamer_tests::pubsub::{PubSubEmulator, Topic};
use serde_json::Value;

/// `screamer plugin run ARGS` with `input` on stdin, publishing to `pubsub`.
async fn publish(pubsub: &PubSubEmulator, args: Vec<String>, input: String) -> PluginRun {
    let env = vec![("PUBSUB_EMULATOR_HOST", pubsub.host().to_owned())];
    plugin_run_async(args, input, env).await
}

fn path(name: &str) -> String {
    plugin(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_carry_the_record_its_attributes_and_with_split_mods_the_row_key() {
    let pubsub = PubSubEmulator::start().await.unwrap();
    pubsub.topic("whole").await.unwrap();
    pubsub.topic("rows").await.unwrap();
    let (input, records) = sample_records();

    for (topic, query) in [("whole", ""), ("rows", "?mods=split")] {
        let run = publish(
            &pubsub,
            vec![
                path("identity"),
                "--output".into(),
                pubsub.uri(topic, query),
            ],
            input.clone(),
        )
        .await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "records went to Pub/Sub, not stdout");
    }

    let whole = pubsub
        .pull("whole", 3, Duration::from_secs(30))
        .await
        .unwrap();
    let stdout = publish(&pubsub, vec![path("identity")], input.clone()).await;
    assert_eq!(
        payloads(&whole),
        stdout.stdout,
        "each payload is the stdout line"
    );
    for (m, record) in whole.iter().zip(&records) {
        assert_whole_record(m, record, &[]);
    }

    let rows = pubsub
        .pull("rows", 4, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        record_names(&payloads(&rows)),
        ["a", "b", "b2", "c"],
        "one message per row, in order"
    );
    let keys: Vec<&str> = rows.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, SAMPLE_KEYS);
    for (m, table) in rows.iter().zip(["Users", "Users", "Users", "Albums"]) {
        let v: Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(v["mods"].as_array().unwrap().len(), 1);
        assert_eq!(v["table_name"], table, "the rest of the record is kept");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn side_outputs_and_dead_letters_go_to_topics_of_their_own() {
    let pubsub = PubSubEmulator::start().await.unwrap();
    for topic in ["main", "audit", "dead"] {
        pubsub.topic(topic).await.unwrap();
    }
    let run = publish(
        &pubsub,
        vec![
            path("chaos"),
            path("fanout"),
            "--plugin-config".into(),
            r#"fanout={"output":"audit"}"#.into(),
            "--output".into(),
            pubsub.uri("main", ""),
            "--side-output".into(),
            format!("audit={}", pubsub.uri("audit", "")),
            "--dead-letter".into(),
            pubsub.uri("dead", ""),
        ],
        named_records(&["a", "fail", "b"]),
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let main = pubsub
        .pull("main", 2, Duration::from_secs(30))
        .await
        .unwrap();
    let audit = pubsub
        .pull("audit", 2, Duration::from_secs(30))
        .await
        .unwrap();
    let dead = pubsub
        .pull("dead", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record_names(&payloads(&main)), ["a", "b"]);
    assert_eq!(record_names(&payloads(&audit)), ["a", "b"]);
    assert_eq!(dead.len(), 1);
    let letter: Value = serde_json::from_str(&dead[0].data).unwrap();
    assert_eq!(letter["plugin"], "chaos@0.1.0");
    assert_eq!(letter["record"]["mods"][0]["new_values"]["Name"], "fail");
    assert_eq!(dead[0].attributes["table_name"], "Users");
    // Nothing more than that anywhere.
    for topic in ["main", "audit", "dead"] {
        let more = pubsub.pull(topic, 1, Duration::from_secs(1)).await.unwrap();
        assert!(more.is_empty(), "{topic}: {:?}", payloads(&more));
    }
}

/// A topic per table: the records of a table whose topic does not exist become dead
/// letters naming it, and the other tables' records are published (not retried forever).
#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_its_topic_is_dead_lettered_and_the_others_go_on() {
    let pubsub = PubSubEmulator::start().await.unwrap();
    for topic in ["cdc.Users", "dead"] {
        pubsub.topic(topic).await.unwrap();
    }
    let (input, _) = sample_records();
    let run = publish(
        &pubsub,
        vec![
            path("identity"),
            "--output".into(),
            pubsub.uri("cdc.{table_name}", ""),
            "--dead-letter".into(),
            pubsub.uri("dead", ""),
        ],
        input,
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let users = pubsub
        .pull("cdc.Users", 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record_names(&payloads(&users)), ["a", "b"]);
    let dead = pubsub
        .pull("dead", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let letter: Value = serde_json::from_str(&dead[0].data).unwrap();
    assert_eq!(letter["destination"], pubsub.uri("cdc.{table_name}", ""));
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("topic projects/test-project/topics/cdc.Albums does not exist"),
        "{letter}"
    );
    assert_eq!(letter["record"]["table_name"], "Albums");
    for topic in ["cdc.Users", "dead"] {
        let more = pubsub.pull(topic, 1, Duration::from_secs(1)).await.unwrap();
        assert!(more.is_empty(), "{topic}: {:?}", payloads(&more));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_that_does_not_exist_or_a_bad_option_is_one_line_and_exit_2() {
    let pubsub = PubSubEmulator::start().await.unwrap();
    pubsub.topic("there").await.unwrap();
    let cases = [
        (
            vec!["--output".to_owned(), pubsub.uri("missing", "")],
            "error: --output pubsub://projects/test-project/topics/missing: topic \
             projects/test-project/topics/missing does not exist",
        ),
        (
            vec!["--output".to_owned(), pubsub.uri("there", "?mods=rows")],
            "error: --output: \"pubsub://projects/test-project/topics/there?mods=rows\": \
             option mods=rows: expected whole or split",
        ),
        (
            vec!["--output".to_owned(), pubsub.uri("there", "?ordering=on")],
            "error: --output: \"pubsub://projects/test-project/topics/there?ordering=on\": \
             unknown option \"ordering\"; expected mods or transactions",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec![path("identity")];
        args.extend(flags);
        let run = publish(&pubsub, args, String::new()).await;
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert_eq!(
            run.stderr.trim_end().lines().last(),
            Some(want),
            "{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_reaches_pubsub_exactly_once_in_order_per_key_across_a_restart_and_an_outage()
-> anyhow::Result<()> {
    let pubsub = PubSubEmulator::start().await?;
    pubsub.topic("changes").await?;
    let mut topic = Topic {
        emulator: &pubsub,
        id: "changes",
    };
    stream_through_restart_and_outage(&mut topic).await
}
