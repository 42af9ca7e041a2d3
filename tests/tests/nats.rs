//! The NATS JetStream destination against a real `nats-server -js`: payloads are the stdout
//! lines, headers name the record, `mods=split` makes a message per row with its `key`,
//! a subject template puts each table on its own subject; a stream on the Spanner emulator
//! arrives exactly once, in order per key, across a graceful restart, and through an outage
//! of the server during which screamer is killed; a subject no stream takes is one line and
//! exit 2.

use std::time::Duration;

use screamer_tests::broker::{
    SAMPLE_KEYS, assert_whole_record, payloads, plugin_run, sample_records,
    stream_through_restart_and_outage,
};
use screamer_tests::nats::{NatsServer, Stream};
use screamer_tests::plugins::{plugin, record_names};

fn identity() -> String {
    plugin("identity").display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_carry_the_record_its_headers_and_with_split_mods_the_row_key() {
    let nats = NatsServer::start().await.unwrap();
    nats.stream("CDC", &["cdc.>"]).await.unwrap();
    let (input, records) = sample_records();

    let whole = plugin_run(
        vec![identity(), "--output".into(), nats.uri("cdc.whole", "")],
        input.clone(),
        vec![],
    )
    .await;
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    assert!(whole.stdout.is_empty(), "records went to NATS, not stdout");
    let got = nats.read("CDC", 3, Duration::from_secs(30)).await.unwrap();
    let stdout = plugin_run(vec![identity()], input.clone(), vec![]).await;
    assert_eq!(
        payloads(&got),
        stdout.stdout,
        "each payload is the stdout line"
    );
    for (m, record) in got.iter().zip(&records) {
        assert_eq!(m.subject, "cdc.whole");
        assert!(m.attributes.contains_key("Nats-Msg-Id"));
        assert_whole_record(m, record, &["Nats-Msg-Id"]);
    }

    let split = plugin_run(
        vec![
            identity(),
            "--output".into(),
            nats.uri("cdc.{table_name}", "?mods=split"),
        ],
        input,
        vec![],
    )
    .await;
    assert_eq!(split.code, Some(0), "{}", split.stderr);
    let got = nats.read("CDC", 7, Duration::from_secs(30)).await.unwrap();
    let rows = &got[3..];
    assert_eq!(record_names(&payloads(rows)), ["a", "b", "b2", "c"]);
    let subjects: Vec<&str> = rows.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        ["cdc.Users", "cdc.Users", "cdc.Users", "cdc.Albums"]
    );
    let keys: Vec<&str> = rows.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, SAMPLE_KEYS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_no_stream_takes_is_one_line_and_exit_2() {
    let nats = NatsServer::start().await.unwrap();
    nats.stream("CDC", &["cdc.>"]).await.unwrap();
    let run = plugin_run(
        vec![identity(), "--output".into(), nats.uri("elsewhere", "")],
        String::new(),
        vec![],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(
        run.stderr.trim_end().lines().last().unwrap(),
        format!(
            "error: --output {}: no JetStream stream takes subject \"elsewhere\"",
            nats.uri("elsewhere", "")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_reaches_jetstream_exactly_once_in_order_per_key_across_a_restart_and_an_outage()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    nats.stream("CHANGES", &["changes"]).await?;
    let mut stream = Stream {
        server: &nats,
        name: "CHANGES",
        subject: "changes",
        seen: 0,
    };
    stream_through_restart_and_outage(&mut stream).await
}
