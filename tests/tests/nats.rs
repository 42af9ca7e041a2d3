//! The NATS JetStream destination against a real `nats-server -js`: payloads are the stdout
//! lines, headers name the record, `mods=split` makes a message per row with its `key`,
//! a subject template puts each table on its own subject; a stream on the Spanner emulator
//! arrives exactly once, in order per key, across a graceful restart, and through an outage
//! of the server during which screamer is killed; a subject no stream takes is one line and
//! exit 2.

use std::time::Duration;

use screamer_tests::broker::{
    SAMPLE_KEYS, assert_whole_record, payloads, sample_records, stream_through_restart_and_outage,
};
use screamer_tests::certificates::make_certificates;
use screamer_tests::nats::{Access, NatsServer, Stream};
use screamer_tests::nats_auth::{Operator, nkey_access, nkey_user};
use screamer_tests::plugins::plugin_run_async;
use screamer_tests::plugins::{PluginRun, plugin_arg, record_names, scratch_dir};

/// `plugin run` of the identity plugin over the sample records into `output`.
async fn run(output: String) -> PluginRun {
    let args = vec![plugin_arg("identity"), "--output".into(), output];
    plugin_run_async(args, sample_records().0, vec![]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_carry_the_record_its_headers_and_with_split_mods_the_row_key() {
    let nats = NatsServer::start().await.unwrap();
    nats.stream("CDC", &["cdc.>"]).await.unwrap();
    let (input, records) = sample_records();

    let whole = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            nats.uri("cdc.whole", ""),
        ],
        input.clone(),
        vec![],
    )
    .await;
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    assert!(whole.stdout.is_empty(), "records went to NATS, not stdout");
    let got = nats.read("CDC", 3, Duration::from_secs(30)).await.unwrap();
    let stdout = plugin_run_async(vec![plugin_arg("identity")], input.clone(), vec![]).await;
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

    let split = plugin_run_async(
        vec![
            plugin_arg("identity"),
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
    let run = plugin_run_async(
        vec![
            plugin_arg("identity"),
            "--output".into(),
            nats.uri("elsewhere", ""),
        ],
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

/// A user and password are options of the URI: with the right ones every record arrives;
/// with wrong or missing ones screamer does not start (one line naming the server, exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_user_and_password_are_uri_options_and_a_refusal_is_one_line() {
    let nats = NatsServer::start_with(Access {
        server_args: ["--user", "cdc", "--pass", "s3cret"]
            .map(String::from)
            .to_vec(),
        client: async_nats::ConnectOptions::with_user_and_password("cdc".into(), "s3cret".into()),
    })
    .await
    .unwrap();
    nats.stream("CDC", &["cdc"]).await.unwrap();
    let ok = run(nats.uri("cdc", "?user=cdc&password=s3cret")).await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let got = nats.read("CDC", 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record_names(&payloads(&got)), ["a", "b", "c"]);
    for query in ["?user=cdc&password=wrong", ""] {
        let refused = run(nats.uri("cdc", query)).await;
        assert_eq!(refused.code, Some(2), "{query}: {}", refused.stderr);
        assert_eq!(
            refused.stderr.trim_end().lines().last(),
            Some(
                format!(
                    "error: --output nats://{0}/cdc: {0} refused the connection: authorization violation",
                    nats.host()
                )
                .as_str()
            ),
            "{query}: {}",
            refused.stderr
        );
    }
    let half = run(nats.uri("cdc", "?user=cdc")).await;
    assert_eq!(half.code, Some(2));
    assert!(
        half.stderr
            .contains("options user and password go together"),
        "{}",
        half.stderr
    );
}

/// TLS is an option of the URI: a server certificate signed by a CA of the test's own,
/// the CA as the root, passes every record; an untrusted server, a wrong root or a missing
/// file is one line, exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn tls_is_a_uri_option_and_an_untrusted_server_is_one_line() {
    let dir = scratch_dir("nats-tls");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    make_certificates(&dir);
    let path = |p: &std::path::Path| p.display().to_string();
    let nats = NatsServer::start_with(Access {
        server_args: vec![
            "--tls".into(),
            "--tlscert".into(),
            path(&cert),
            "--tlskey".into(),
            path(&key),
        ],
        client: async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true),
    })
    .await
    .unwrap();
    nats.stream("CDC", &["cdc"]).await.unwrap();
    let ok = run(nats.uri("cdc", &format!("?tls_ca={}", path(&ca)))).await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let got = nats.read("CDC", 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record_names(&payloads(&got)), ["a", "b", "c"]);
    // The server's certificate is not trusted without its root, nor with another one.
    let untrusted = run(nats.uri("cdc", "?tls=true")).await;
    assert_eq!(untrusted.code, Some(2), "{}", untrusted.stderr);
    assert!(
        untrusted
            .stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with(&format!(
                "error: --output nats://{0}/cdc: {0} refused the connection:",
                nats.host()
            )),
        "{}",
        untrusted.stderr
    );
    let wrong_root = run(nats.uri("cdc", &format!("?tls_ca={}", path(&cert)))).await;
    assert_eq!(wrong_root.code, Some(2), "{}", wrong_root.stderr);
    assert!(
        wrong_root.stderr.contains("invalid peer certificate"),
        "{}",
        wrong_root.stderr
    );
    let missing = run(nats.uri("cdc", "?tls_ca=/nonexistent.pem")).await;
    assert_eq!(missing.code, Some(2));
    assert!(
        missing
            .stderr
            .contains("option tls_ca=/nonexistent.pem: No such file"),
        "{}",
        missing.stderr
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// NKey seed files and `.creds` files (a user JWT with its seed) authenticate: with the right
/// one every record arrives; a key the server does not know is refused (one line, exit 2); a
/// file that is no seed or no credentials, or two ways to authenticate at once, is one line
/// naming the option (exit 2) before any connection.
#[tokio::test(flavor = "multi_thread")]
async fn nkey_and_creds_files_authenticate_and_a_bad_one_is_one_line() {
    let refusal = |nats: &NatsServer| {
        format!(
            "error: --output nats://{0}/cdc: {0} refused the connection: authorization violation",
            nats.host()
        )
    };
    let last_line = |stderr: &str| {
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    };
    let dir = scratch_dir("nats-nkeys");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    // NKeys: the server knows the harness's key and screamer's.
    let (harness_seed, harness_key) = nkey_user();
    let (seed, key) = nkey_user();
    let access = nkey_access(&dir, &harness_seed, &[&harness_key, &key]).unwrap();
    let nats = NatsServer::start_with(access).await.unwrap();
    nats.stream("CDC", &["cdc"]).await.unwrap();
    let seed_file = file("screamer.nk", &format!("{seed}\n"));
    let ok = run(nats.uri("cdc", &format!("?nkey={seed_file}"))).await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let got = nats.read("CDC", 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record_names(&payloads(&got)), ["a", "b", "c"]);
    let stranger = file("stranger.nk", &nkey_user().0);
    let refused = run(nats.uri("cdc", &format!("?nkey={stranger}"))).await;
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert_eq!(last_line(&refused.stderr), refusal(&nats));
    let not_a_seed = file("public.nk", &key);
    let bad = run(nats.uri("cdc", &format!("?nkey={not_a_seed}"))).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        last_line(&bad.stderr).contains(&format!("option nkey={not_a_seed}: not an NKey seed")),
        "{}",
        bad.stderr
    );
    let both = run(nats.uri("cdc", &format!("?nkey={seed_file}&token=t"))).await;
    assert_eq!(both.code, Some(2), "{}", both.stderr);
    assert!(
        last_line(&both.stderr)
            .ends_with("options user/password, token, nkey and creds are alternatives: give one"),
        "{}",
        both.stderr
    );
    drop(nats);

    // Credentials files: an operator, its account, users signed by the account.
    let operator = Operator::new(&dir);
    let nats = NatsServer::start_with(operator.access().unwrap())
        .await
        .unwrap();
    nats.stream("CDC", &["cdc"]).await.unwrap();
    let creds = operator
        .user_creds("screamer")
        .unwrap()
        .display()
        .to_string();
    let ok = run(nats.uri("cdc", &format!("?creds={creds}"))).await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let got = nats.read("CDC", 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record_names(&payloads(&got)), ["a", "b", "c"]);
    let stranger = operator
        .stranger_creds("stranger")
        .unwrap()
        .display()
        .to_string();
    let refused = run(nats.uri("cdc", &format!("?creds={stranger}"))).await;
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        last_line(&refused.stderr).starts_with(&format!(
            "error: --output nats://{0}/cdc: {0} refused the connection:",
            nats.host()
        )),
        "{}",
        refused.stderr
    );
    let garbage = file("garbage.creds", "not credentials\n");
    let bad = run(nats.uri("cdc", &format!("?creds={garbage}"))).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        last_line(&bad.stderr).contains(&format!(
            "option creds={garbage}: not a NATS credentials file"
        )),
        "{}",
        bad.stderr
    );
    std::fs::remove_dir_all(dir).unwrap();
}
