//! The Pub/Sub destination against the real Pub/Sub emulator: payloads are the stdout lines,
//! attributes name the record, `mods=split` makes a message per row keyed by it; side
//! outputs and dead letters go to topics of their own; a stream on the Spanner emulator
//! arrives exactly once, in order per key, across a graceful restart, and through an outage
//! of Pub/Sub during which screamer is killed; a topic that does not exist is one line and
//! exit 2.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use screamer::Timestamp;
use screamer_tests::items::{assert_ordered_per_key, counts, expected, mods, write};
use screamer_tests::libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP};
use screamer_tests::plugins::{named_records, plugin, plugin_cache, record_names};
use screamer_tests::process::screamer_bin;
use screamer_tests::pubsub::{PubSubEmulator, Received};
use screamer_tests::{Emulator, EmulatorOptions, Screamer, eventually, run_args};
use serde_json::{Value, json};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `screamer plugin run ARGS` with `input` on stdin, publishing to `pubsub`.
async fn plugin_run(pubsub: &PubSubEmulator, args: Vec<String>, input: String) -> Run {
    let host = pubsub.host().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(screamer_bin())
            .args(["plugin", "run"])
            .args(&args)
            .env("PUBSUB_EMULATOR_HOST", host)
            .env("SCREAMER_PLUGIN_CACHE", plugin_cache())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning screamer");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

fn path(name: &str) -> String {
    plugin(name).display().to_string()
}

fn data(messages: &[Received]) -> Vec<String> {
    messages.iter().map(|m| m.data.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_carry_the_record_its_attributes_and_with_split_mods_the_row_key() {
    let pubsub = PubSubEmulator::start().await.unwrap();
    pubsub.topic("whole").await.unwrap();
    pubsub.topic("rows").await.unwrap();
    // Three records; the second holds three rows.
    let mut records: Vec<Value> = named_records(&["a", "b", "c"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |id: &str, name: &str| json!({"keys": {"Id": id}, "new_values": {"Name": name}, "old_values": {}});
    records[1]["mods"] = json!([row("7", "b"), row("8", "b2"), row("9", "b3")]);
    let input: String = records.iter().map(|r| format!("{r}\n")).collect();

    for (topic, query) in [("whole", ""), ("rows", "?mods=split")] {
        let run = plugin_run(
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
        assert_eq!(run.stdout, "", "records went to Pub/Sub, not stdout");
    }

    let whole = pubsub
        .pull("whole", 3, Duration::from_secs(30))
        .await
        .unwrap();
    let stdout = plugin_run(&pubsub, vec![path("identity")], input.clone()).await;
    assert_eq!(
        data(&whole),
        stdout.stdout.lines().collect::<Vec<_>>(),
        "each payload is the stdout line"
    );
    for (m, record) in whole.iter().zip(&records) {
        let attribute = |k: &str| m.attributes[k].as_str();
        assert_eq!(attribute("table_name"), "Users");
        assert_eq!(attribute("mod_type"), "INSERT");
        assert_eq!(attribute("commit_timestamp"), record["commit_timestamp"]);
        assert_eq!(attribute("partition_token"), "p1");
        assert_eq!(
            attribute("server_transaction_id"),
            record["server_transaction_id"]
        );
        assert_eq!(attribute("record_sequence"), record["record_sequence"]);
        assert_eq!(m.attributes.len(), 6, "{:?}", m.attributes);
        assert_eq!(m.ordering_key, "", "a whole record has no key");
    }

    let rows = pubsub
        .pull("rows", 5, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        record_names(&data(&rows)),
        ["a", "b", "b2", "b3", "c"],
        "one message per row, in order"
    );
    let keys: Vec<&str> = rows.iter().map(|m| m.ordering_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            r#"Users/{"Id":"0"}"#,
            r#"Users/{"Id":"7"}"#,
            r#"Users/{"Id":"8"}"#,
            r#"Users/{"Id":"9"}"#,
            r#"Users/{"Id":"2"}"#
        ]
    );
    for m in &rows {
        let v: Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(v["mods"].as_array().unwrap().len(), 1);
        assert_eq!(v["table_name"], "Users", "the rest of the record is kept");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn side_outputs_and_dead_letters_go_to_topics_of_their_own() {
    let pubsub = PubSubEmulator::start().await.unwrap();
    for topic in ["main", "audit", "dead"] {
        pubsub.topic(topic).await.unwrap();
    }
    let run = plugin_run(
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
    assert_eq!(record_names(&data(&main)), ["a", "b"]);
    assert_eq!(record_names(&data(&audit)), ["a", "b"]);
    assert_eq!(dead.len(), 1);
    let letter: Value = serde_json::from_str(&dead[0].data).unwrap();
    assert_eq!(letter["plugin"], "chaos@0.1.0");
    assert_eq!(letter["record"]["mods"][0]["new_values"]["Name"], "fail");
    assert_eq!(dead[0].attributes["table_name"], "Users");
    // Nothing more than that anywhere.
    for topic in ["main", "audit", "dead"] {
        let more = pubsub.pull(topic, 1, Duration::from_secs(1)).await.unwrap();
        assert!(more.is_empty(), "{topic}: {:?}", data(&more));
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
             unknown option \"ordering\"; expected mods",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec![path("identity")];
        args.extend(flags);
        let run = plugin_run(&pubsub, args, String::new()).await;
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert_eq!(run.stderr.trim_end(), want);
    }
}

/// Mutations (key, seq) of every message, in delivery order.
fn delivered(messages: &[Received]) -> Vec<(i64, i64)> {
    mods(&data(messages)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_reaches_pubsub_exactly_once_in_order_per_key_across_a_restart_and_an_outage()
-> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = std::sync::Arc::new(emulator.items_database().await?);
    let pubsub = PubSubEmulator::start().await?;
    pubsub.topic("changes").await?;
    let start = Timestamp::now().to_string();
    let output = pubsub.uri("changes", "?mods=split");
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
    let env = [("PUBSUB_EMULATOR_HOST", pubsub.host())];
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 11, Duration::from_millis(4)).await }
    });
    let mut got = Vec::new();

    // 1. A graceful stop and restart: nothing repeated.
    let mut first = Screamer::spawn_with_env(db.host(), &args, &env)?;
    got.extend(pubsub.pull("changes", 200, Duration::from_secs(60)).await?);
    first.signal(SIGINT)?;
    let status = first.wait(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Some(0), "stderr: {}", first.stderr());
    got.extend(
        pubsub
            .pull("changes", usize::MAX, Duration::from_secs(3))
            .await?,
    );
    let by_first: std::collections::HashSet<(i64, i64)> = delivered(&got).into_iter().collect();
    let after_first = got.len();

    // 2. Pub/Sub stops answering; screamer waits, and is killed while it waits.
    let second = Screamer::spawn_with_env(db.host(), &args, &env)?;
    got.extend(pubsub.pull("changes", 1, Duration::from_secs(60)).await?);
    pubsub.signal(SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    second.signal(SIGKILL)?;
    drop(second);

    // 3. A new runner during the outage, then Pub/Sub is back: it catches up on its own.
    let mut third = Screamer::spawn_with_env(db.host(), &args, &env)?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    pubsub.signal(SIGCONT)?;
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let total: usize = want.len();
    eventually(
        Duration::from_secs(120),
        "every mutation in Pub/Sub",
        async || {
            got.extend(
                pubsub
                    .pull("changes", 1, Duration::from_secs(1))
                    .await
                    .ok()?,
            );
            let keys: std::collections::BTreeSet<_> = delivered(&got).into_iter().collect();
            (keys.len() >= total).then_some(())
        },
    )
    .await?;
    third.signal(SIGINT)?;
    assert_eq!(third.wait(Duration::from_secs(60)).await?.code(), Some(0));
    assert!(
        third.stderr().contains("retrying"),
        "no outage seen: {}",
        third.stderr()
    );
    got.extend(
        pubsub
            .pull("changes", usize::MAX, Duration::from_secs(2))
            .await?,
    );

    let later = delivered(&got[after_first..]);
    let repeated: Vec<_> = later.iter().filter(|m| by_first.contains(m)).collect();
    assert!(
        repeated.is_empty(),
        "repeated after a graceful restart: {repeated:?}"
    );
    let all = delivered(&got);
    // At least once: the kill may repeat what was published but not checkpointed; nothing
    // is lost, nothing else appears, and each key's changes arrive in order.
    let distinct: std::collections::BTreeMap<_, _> =
        counts(all.clone()).into_keys().map(|k| (k, 1)).collect();
    assert_eq!(distinct, want, "every mutation, nothing else");
    let mut first_copies = std::collections::HashSet::new();
    let firsts: Vec<(i64, i64)> = all
        .into_iter()
        .filter(|m| first_copies.insert(*m))
        .collect();
    assert_ordered_per_key(&firsts);
    for m in &got {
        let v: Value = serde_json::from_str(&m.data)?;
        let id = v["mods"][0]["keys"]["Id"].as_str().unwrap();
        assert_eq!(m.ordering_key, format!(r#"Items/{{"Id":"{id}"}}"#));
        assert_eq!(m.attributes["commit_timestamp"], v["commit_timestamp"]);
        assert_eq!(m.attributes["partition_token"], v["partition_token"]);
    }
    Ok(())
}
