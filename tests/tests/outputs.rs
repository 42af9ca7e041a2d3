//! Destinations named by URI, into a real HTTP server: every record arrives, in order,
//! through a destination that fails for a while (through `screamer plugin run`, and from a
//! stream on the emulator across a graceful restart, exactly once); a record the destination
//! refuses for good is a dead letter naming it, the rest arrive; a destination URI that is
//! wrong or not available is one line and exit 2.

use std::time::Duration;

use screamer::Timestamp;
use screamer_tests::items::{assert_ordered_per_partition, counts, expected, mods, write};
use screamer_tests::libc::SIGINT;
use screamer_tests::{Emulator, EmulatorOptions, Screamer, eventually, run_args};

use screamer_tests::http::{Behaviour, HttpSink};
use screamer_tests::plugins::plugin_run_async;
use screamer_tests::plugins::{named_records, parse, plugin_arg, record_names, scratch_dir};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn every_record_reaches_an_http_endpoint_in_order_through_its_failures() {
    let sink = HttpSink::start(Behaviour {
        fail_next: 3,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    // 600 records: three plugin-run batches, the first retried three times.
    let sent: Vec<String> = (0..600).map(|i| format!("n{i}")).collect();
    let run = plugin_run_async(
        vec![plugin_arg("identity"), "--output".into(), sink.url()],
        named_records(&sent),
        vec![(
            "SCREAMER_HTTP_HEADERS",
            "Authorization: Bearer test-token\nX-Source: screamer-test".into(),
        )],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "records went to the endpoint, not stdout"
    );
    assert_eq!(
        record_names(&sink.lines()),
        sent,
        "every record once, in order"
    );
    assert!(sink.requests() >= 3 + 3, "{} requests", sink.requests());
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("test-token"),
        "a secret header reached the log"
    );
    let headers = sink.last_headers();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer test-token")
    );
    assert_eq!(header("x-source").as_deref(), Some("screamer-test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn records_an_endpoint_refuses_become_dead_letters_and_the_rest_arrive() {
    let sink = HttpSink::start(Behaviour {
        refuse_containing: Some("\"Name\":\"too-big".into()),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let dead = scratch_dir("http-refused").join("dead.ndjson");
    let sent: Vec<String> = (0..40)
        .map(|i| {
            if i % 13 == 5 {
                format!("too-big-{i}")
            } else {
                format!("n{i}")
            }
        })
        .collect();
    let run = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            sink.url(),
            "--dead-letter".into(),
            dead.display().to_string(),
        ],
        named_records(&sent),
        vec![],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let kept: Vec<String> = sent
        .iter()
        .filter(|n| !n.starts_with("too-big"))
        .cloned()
        .collect();
    assert_eq!(
        record_names(&sink.lines()),
        kept,
        "the accepted records, in order"
    );
    let dead: Vec<Value> = parse(
        &std::fs::read_to_string(&dead)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    );
    let refused: Vec<&str> = dead
        .iter()
        .map(|d| {
            d["record"]["mods"][0]["new_values"]["Name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(refused, ["too-big-5", "too-big-18", "too-big-31"]);
    for d in &dead {
        assert_eq!(d["destination"], sink.url());
        assert_eq!(
            d["error"],
            "HTTP 413 Payload Too Large: record too large for us"
        );
        assert_eq!(d["record"]["table_name"], "Users", "the whole record");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_is_wrong_or_not_available_is_one_line_and_exit_2() {
    let cases = [
        (
            vec!["--output", "s3://bucket/key"],
            "error: --output: \"s3://bucket/key\": unknown scheme; expected -, file:PATH, a path, \
             http(s)://, pubsub://, kafka://, nats:// or postgres://",
        ),
        (
            vec!["--output", "kafka://127.0.0.1:9092"],
            "error: --output: \"kafka://127.0.0.1:9092\": expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC",
        ),
        (
            vec!["--side-output", "audit=nats://127.0.0.1:4222/{table}"],
            "error: --side-output audit: \"nats://127.0.0.1:4222/{table}\": the only \
             placeholder a name may hold is {table_name}",
        ),
        (
            vec!["--dead-letter", "pubsub://projects/p/topics"],
            "error: --dead-letter: \"pubsub://projects/p/topics\": expected \
             pubsub://projects/PROJECT/topics/TOPIC",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec![plugin_arg("identity")];
        args.extend(flags.iter().map(|s| s.to_string()));
        let run = plugin_run_async(args, String::new(), vec![]).await;
        assert_eq!(run.code, Some(2), "{flags:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.lines().last().unwrap(),
            expected,
            "{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_through_an_endpoint_that_fails_for_a_while_arrives_exactly_once()
-> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(3),
        ..EmulatorOptions::exact()
    })
    .await?;
    let db = std::sync::Arc::new(emulator.items_database().await?);
    let sink = HttpSink::start(Behaviour::default()).await?;
    let start = Timestamp::now().to_string();
    let (sink_url, metadata) = (sink.url(), ["--metadata-table", "Partitions"]);
    let args = run_args(
        &db,
        &[&metadata[..], &["--start", &start, "--output", &sink_url]].concat(),
    );
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1200, 11, Duration::from_millis(4)).await }
    });
    let mut first = Screamer::spawn(db.host(), &args)?;
    eventually(
        Duration::from_secs(60),
        "records at the endpoint",
        async || (sink.lines().len() >= 200).then_some(()),
    )
    .await?;
    // The endpoint answers 503 for a while; the readers wait, nothing is checkpointed past it.
    sink.fail_next(6);
    eventually(Duration::from_secs(60), "the endpoint back", async || {
        (sink.failing() == 0).then_some(())
    })
    .await?;
    first.signal(SIGINT)?;
    let status = first.wait(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Some(0), "stderr: {}", first.stderr());
    assert!(first.stderr().contains("retrying"), "{}", first.stderr());

    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let mut second = Screamer::spawn(db.host(), &args)?;
    eventually(
        Duration::from_secs(60),
        "the rest at the endpoint",
        async || (mods(&sink.lines()).ok()?.len() >= want.len()).then_some(()),
    )
    .await?;
    second.signal(SIGINT)?;
    assert_eq!(second.wait(Duration::from_secs(60)).await?.code(), Some(0));
    let lines = sink.lines();
    let got = mods(&lines)?;
    assert_eq!(counts(got), want, "every mutation exactly once");
    // Per partition, not per key: the emulator moves a key's records to the child of other
    // parents, so a reader held back by the endpoint lets the next generation run ahead
    // (docs/architecture.md, "Emulator facts"); per-key order across partitions holds on
    // Spanner, where children cover their parents' key ranges.
    assert_ordered_per_partition(&lines)?;
    Ok(())
}
