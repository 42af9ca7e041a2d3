//! The plugin stage on a real change stream: every example plugin in one chain, and hot
//! swaps (with an invalid file among them) while thousands of records flow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert, insert_or_update, update};
use screamer::{Dialect, Timestamp};
use screamer_tests::libc::{SIGHUP, SIGINT};
use screamer_tests::plugins::{
    chaos_version, parse, plugin, plugin_cache, replace_file, scratch_dir,
};
use screamer_tests::{
    Emulator, EmulatorOptions, ITEMS_SCHEMA, Screamer, TestDatabase, eventually, run_args,
};
use serde_json::{Value, json};

fn base_args(db: &TestDatabase) -> Vec<String> {
    let cache = plugin_cache().display().to_string();
    run_args(db, &["--plugin-cache", &cache])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_plugin_in_one_chain_on_the_stream() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator
        .database(
            Dialect::GoogleSql,
            &[
                "CREATE TABLE Users (Id INT64 NOT NULL, Email STRING(MAX), Name STRING(MAX), Bio STRING(MAX)) PRIMARY KEY (Id)",
                "CREATE TABLE Orders (Id INT64 NOT NULL, Total INT64) PRIMARY KEY (Id)",
                "CREATE CHANGE STREAM Changes FOR Users, Orders",
            ],
        )
        .await?;
    let (start, end) = write_users_and_orders(&db).await?;
    let dir = scratch_dir("example-chain");
    let (audit, dead) = (dir.join("audit.ndjson"), dir.join("dead.ndjson"));
    let mut args = base_args(&db);
    args.extend(example_chain(start, end, &audit, &dead));
    let mut screamer = Screamer::spawn(db.host(), &args)?;
    let status = screamer.wait(Duration::from_secs(90)).await?;
    assert_eq!(status.code(), Some(0), "stderr: {}", screamer.stderr());

    let out = parse(&screamer.lines());
    let (users, orders): (Vec<&Value>, Vec<&Value>) =
        out.iter().partition(|v| v["table_name"] == "Users");
    assert_eq!(orders.len(), 5);
    assert!(
        out.iter()
            .all(|v| v["mod_type"] != "DELETE" && v["source"] == "e2e")
    );
    assert_users_went_through_every_plugin(&users)?;
    let audit = parse(
        &std::fs::read_to_string(&audit)?
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    );
    assert_eq!(audit.len(), 10);
    assert!(
        audit
            .iter()
            .all(|a| a["mod_type"] == "UPDATE" && a["source"] == "e2e")
    );
    assert!(!dead.exists() || std::fs::read_to_string(&dead)?.is_empty());
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// 20 users inserted, 10 renamed, 5 deleted, then 5 orders: one commit each. Returns the
/// range that holds them.
async fn write_users_and_orders(db: &TestDatabase) -> anyhow::Result<(Timestamp, Timestamp)> {
    let start = Timestamp::now();
    let cols = ["Id", "Email", "Name", "Bio"];
    for id in 1..=20i64 {
        let (email, name, bio) = (
            format!("u{id}@x.io"),
            format!("user {id}"),
            "a long biography",
        );
        db.apply(vec![insert("Users", &cols, &[&id, &email, &name, &bio])])
            .await?;
    }
    for id in 1..=10i64 {
        db.apply(vec![update(
            "Users",
            &["Id", "Name"],
            &[&id, &format!("renamed {id}")],
        )])
        .await?;
    }
    for id in 16..=20i64 {
        db.apply(vec![delete("Users", Key::new(&id))]).await?;
    }
    let mut end = start;
    for id in 1..=5i64 {
        end = db
            .apply(vec![insert(
                "Orders",
                &["Id", "Total"],
                &[&id, &(id * 100)],
            )])
            .await?;
    }
    Ok((start, end))
}

/// The flags of a bounded run through every example plugin: filter (no deletes), redact
/// (hashed emails), enrich, fanout (user updates to `audit`), drop_columns (no Bio).
fn example_chain(start: Timestamp, end: Timestamp, audit: &Path, dead: &Path) -> Vec<String> {
    let mut args = vec![
        "--start".to_owned(),
        start.to_string(),
        "--end".to_owned(),
        end.to_string(),
    ];
    for name in ["filter", "redact", "enrich", "fanout", "drop_columns"] {
        args.extend(["--plugin".to_owned(), plugin(name).display().to_string()]);
    }
    for config in [
        r#"filter={"mod_types":["INSERT","UPDATE"]}"#,
        r#"redact={"columns":["Email"],"mode":"hash","salt":"pepper"}"#,
        r#"enrich={"source":"e2e"}"#,
        r#"fanout={"tables":["Users"],"mod_types":["UPDATE"]}"#,
        r#"drop_columns={"columns":["Bio"]}"#,
    ] {
        args.extend(["--plugin-config".to_owned(), config.to_owned()]);
    }
    args.extend([
        "--side-output".to_owned(),
        format!("audit={}", audit.display()),
        "--dead-letter".to_owned(),
        dead.display().to_string(),
    ]);
    args
}

/// The 20 inserts and 10 updates of [`write_users_and_orders`], per user in commit order,
/// each changed by every plugin of [`example_chain`].
fn assert_users_went_through_every_plugin(users: &[&Value]) -> anyhow::Result<()> {
    assert_eq!(
        users.len(),
        30,
        "20 inserts + 10 updates; the deletes are filtered out"
    );
    let mut emails = HashSet::new();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in users {
        let m = &u["mods"][0];
        let id = m["keys"]["Id"].as_str().unwrap().to_owned();
        assert!(
            m["new_values"].get("Bio").is_none(),
            "Bio dropped by the Python plugin: {u}"
        );
        seen.entry(id.clone())
            .or_default()
            .push(u["mod_type"].as_str().unwrap().to_owned());
        if u["mod_type"] == "INSERT" {
            let email = m["new_values"]["Email"].as_str().unwrap();
            assert_eq!(email.len(), 64, "hashed: {email}");
            assert_ne!(email, format!("u{id}@x.io"));
            emails.insert(email.to_owned());
            // enrich runs before drop_columns: it still saw Bio.
            assert_eq!(u["changed_columns"], json!(["Bio", "Email", "Name"]));
        } else {
            assert_eq!(m["new_values"], json!({"Name": format!("renamed {id}")}));
            assert_eq!(u["changed_columns"], json!(["Name"]));
        }
        // Derived from the commit timestamp the record carries.
        let ts: Timestamp = u["commit_timestamp"].as_str().unwrap().parse()?;
        assert_eq!(
            u["commit_unix_millis"],
            json!((ts.unix_nanos() / 1_000_000) as i64)
        );
        assert_eq!(
            u["column_types"][0]["name"], "Id",
            "column types re-attached"
        );
    }
    assert_eq!(emails.len(), 20, "20 distinct hashes");
    // Per key, in commit order.
    for (id, kinds) in &seen {
        let n: i64 = id.parse()?;
        let expected: &[&str] = if n <= 10 {
            &["INSERT", "UPDATE"]
        } else {
            &["INSERT"]
        };
        assert_eq!(kinds, expected, "user {id}");
    }
    Ok(())
}

/// Every (Id, Seq) written, with `Name = "fail"` on every 97th commit (a dead letter).
async fn write_items(db: &TestDatabase, from: i64, to: i64) -> anyhow::Result<()> {
    for i in from..to {
        let name = if i % 97 == 0 {
            "fail".to_owned()
        } else {
            format!("n{i}")
        };
        db.apply(vec![insert_or_update(
            "Items",
            &["Id", "Seq", "Name"],
            &[&(i % 13), &i, &name],
        )])
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_swaps_while_records_flow_process_each_record_exactly_once() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator
        .database(
            Dialect::GoogleSql,
            &[
                "CREATE TABLE Items (Id INT64 NOT NULL, Seq INT64 NOT NULL, Name STRING(MAX)) PRIMARY KEY (Id)",
                ITEMS_SCHEMA[1],
            ],
        )
        .await?;
    let dir = scratch_dir("hot-swap");
    let file = dir.join("chaos.wasm");
    let dead = dir.join("dead.ndjson");
    std::fs::write(&file, chaos_version("v001"))?;
    let mut args = base_args(&db);
    for a in [
        "--plugin",
        &file.display().to_string(),
        "--dead-letter",
        &dead.display().to_string(),
        "--log-level",
        "info",
    ] {
        args.push(a.to_owned());
    }
    let mut screamer = Screamer::spawn(db.host(), &args)?;
    eventually(Duration::from_secs(30), "screamer subscribed", async || {
        screamer.stderr().contains("subscribing").then_some(())
    })
    .await?;
    let total = swap_while_writing(&screamer, &db, &file, &dead).await?;
    screamer.signal(SIGINT)?;
    let status = screamer.wait(Duration::from_secs(30)).await?;
    assert_eq!(status.code(), Some(0), "stderr: {}", screamer.stderr());
    assert_eq!(swaps(&screamer), 3);
    let dead = std::fs::read_to_string(&dead)?.lines().count();
    assert_each_record_once_by_one_version(&parse(&screamer.lines()), dead, total)?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// Hot swaps that took effect, as the host logs them.
fn swaps(s: &Screamer) -> usize {
    s.stderr().matches("plugin swapped").count()
}

/// Writes 5 steps of items while the plugin file changes under the running `screamer`:
/// v001, v002, an invalid file (refused: v002 stays), v003, v004, then a SIGHUP that keeps
/// the unchanged file. Returns once every record written is out or dead-lettered: how
/// many there were.
async fn swap_while_writing(
    screamer: &Screamer,
    db: &TestDatabase,
    file: &Path,
    dead: &Path,
) -> anyhow::Result<i64> {
    const STEP: i64 = 600;
    let dead_lines = || {
        std::fs::read_to_string(dead)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    // Each version must see records: swap once the first record of its step is out, while
    // the rest of the step still flows.
    let out_or_dead = async |n: i64| {
        eventually(Duration::from_secs(60), "written records out", async || {
            (screamer.line_count() + dead_lines() >= n as usize).then_some(())
        })
        .await
    };
    let logged = async |what: &str, line: &str| {
        eventually(Duration::from_secs(30), what, async || {
            screamer.stderr().contains(line).then_some(())
        })
        .await
    };
    let swapped = async |n: usize| {
        eventually(Duration::from_secs(30), "swap", async || {
            (swaps(screamer) == n).then_some(())
        })
        .await
    };
    write_items(db, 0, STEP).await?;
    out_or_dead(1).await?;
    replace_file(file, &chaos_version("v002"))?;
    swapped(1).await?;
    write_items(db, STEP, 2 * STEP).await?;
    replace_file(file, b"\0asm\x0d\0\x01\0 not really a component")?;
    logged("invalid file refused", "new plugin file refused").await?;
    write_items(db, 2 * STEP, 3 * STEP).await?;
    out_or_dead(2 * STEP + 1).await?;
    replace_file(file, &chaos_version("v003"))?;
    swapped(2).await?;
    write_items(db, 3 * STEP, 4 * STEP).await?;
    out_or_dead(3 * STEP + 1).await?;
    replace_file(file, &chaos_version("v004"))?;
    swapped(3).await?;
    write_items(db, 4 * STEP, 5 * STEP).await?;
    // SIGHUP reloads every plugin; an unchanged file is kept as it is.
    screamer.signal(SIGHUP)?;
    logged("SIGHUP reload", "plugin file unchanged").await?;
    let total = 5 * STEP;
    eventually(
        Duration::from_secs(60),
        "every record out or dead-lettered",
        async || (screamer.line_count() + dead_lines() >= total as usize).then_some(()),
    )
    .await?;
    Ok(total)
}

/// Of the `total` items written, every one not failing (every 97th) came out exactly once,
/// the failing ones as `dead` dead letters; each partition's records went through versions
/// v001..v004 in order, never back.
fn assert_each_record_once_by_one_version(
    out: &[Value],
    dead: usize,
    total: i64,
) -> anyhow::Result<()> {
    let failing = (0..total).filter(|i| i % 97 == 0).count();
    let mut per_seq: BTreeMap<i64, usize> = BTreeMap::new();
    let mut versions_per_partition: HashMap<String, Vec<String>> = HashMap::new();
    let mut per_version: BTreeMap<String, usize> = BTreeMap::new();
    for v in out {
        let seq: i64 = v["mods"][0]["new_values"]["Seq"]
            .as_str()
            .unwrap()
            .parse()?;
        *per_seq.entry(seq).or_default() += 1;
        let tag = v["processed_by"]
            .as_str()
            .expect("every record tagged by one version")
            .to_owned();
        *per_version.entry(tag.clone()).or_default() += 1;
        versions_per_partition
            .entry(v["partition_token"].as_str().unwrap().to_owned())
            .or_default()
            .push(tag);
    }
    assert_eq!(out.len(), total as usize - failing, "{per_version:?}");
    assert!(per_seq.values().all(|&n| n == 1), "a record came out twice");
    assert!(
        (0..total)
            .filter(|i| i % 97 != 0)
            .all(|i| per_seq.contains_key(&i))
    );
    assert_eq!(dead, failing);
    // Versions only move forward within a partition: each batch saw exactly one version.
    for tags in versions_per_partition.values() {
        assert!(tags.windows(2).all(|w| w[0] <= w[1]), "{tags:?}");
    }
    let expected = [
        "chaos-tag:v001",
        "chaos-tag:v002",
        "chaos-tag:v003",
        "chaos-tag:v004",
    ];
    assert_eq!(
        per_version.keys().map(String::as_str).collect::<Vec<_>>(),
        expected,
        "{per_version:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_plugin_on_the_stream() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator
        .database(Dialect::GoogleSql, &screamer_tests::USERS_SCHEMA)
        .await?;
    let start = Timestamp::now();
    let mut end = start;
    for id in 1..=6i64 {
        end = db
            .apply(vec![insert(
                "Users",
                &["Id", "Name"],
                &[&id, &format!("u{id}")],
            )])
            .await?;
    }
    let mut args = base_args(&db);
    let tag_table = plugin("tag_table").display().to_string();
    for a in [
        "--start",
        &start.to_string(),
        "--end",
        &end.to_string(),
        "--plugin",
        &tag_table,
        "--plugin-config",
        r#"tag_table={"prefix":"js:"}"#,
    ] {
        args.push(a.to_owned());
    }
    let mut screamer = Screamer::spawn(db.host(), &args)?;
    let status = screamer.wait(Duration::from_secs(120)).await?;
    assert!(status.success(), "{}", screamer.stderr());
    let out = parse(&screamer.lines());
    assert_eq!(out.len(), 6);
    let mut ids: Vec<String> = out
        .iter()
        .map(|v| {
            assert_eq!(v["table_tag"], "js:Users", "{v}");
            v["mods"][0]["keys"]["Id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
    Ok(())
}
