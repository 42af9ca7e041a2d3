//! Exact record fields for every mod type and value capture type, and the same records from
//! a PostgreSQL-dialect database.

use std::time::Duration;

use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, update};
use gcloud_spanner::statement::Statement;
use screamer::{DataChangeRecord, Dialect, ModType, Timestamp};
use screamer_tests::{Emulator, EmulatorOptions, TestDatabase, read_range};
use serde_json::{Value, json};

const CAPTURE_TYPES: [&str; 4] = [
    "OLD_AND_NEW_VALUES",
    "NEW_VALUES",
    "NEW_ROW",
    "NEW_ROW_AND_OLD_VALUES",
];

fn one_ns() -> Duration {
    Duration::from_nanos(1)
}

/// The fields of a record that do not vary from run to run.
fn stable(r: &DataChangeRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap();
    let o = v.as_object_mut().unwrap();
    for volatile in [
        "partition_token",
        "commit_timestamp",
        "server_transaction_id",
    ] {
        assert!(o.remove(volatile).is_some(), "{volatile} missing");
    }
    v
}

fn columns(names: &[(&str, Value, bool, i64)]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|(n, t, pk, pos)| {
                json!({"name": n, "type": t, "is_primary_key": pk, "ordinal_position": pos})
            })
            .collect(),
    )
}

fn record(table: &str, mod_type: &str, capture: &str, column_types: Value, mods: Value) -> Value {
    json!({
        "record_sequence": "00000000",
        "is_last_record_in_transaction_in_partition": true,
        "table_name": table,
        "column_types": column_types,
        "mods": mods,
        "mod_type": mod_type,
        "value_capture_type": capture,
        "number_of_records_in_transaction": 1,
        "number_of_partitions_in_transaction": 1,
        "transaction_tag": "",
        "is_system_transaction": false,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mod_type_and_value_capture_type_has_exact_fields() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    for capture in CAPTURE_TYPES {
        // Spanner allows at most three change streams per table: a database per type.
        let db = emulator
            .database(
                Dialect::GoogleSql,
                &[
                    "CREATE TABLE Singers (SingerId INT64 NOT NULL, Name STRING(MAX), \
                     Score FLOAT64, Tags ARRAY<STRING(MAX)>, Info JSON) PRIMARY KEY (SingerId)",
                    &format!(
                        "CREATE CHANGE STREAM S FOR Singers OPTIONS (value_capture_type = '{capture}')"
                    ),
                ],
            )
            .await?;
        let start = Timestamp::now();
        let commits = insert_update_delete(&db).await?;
        let (records, summary) =
            read_range(&db, "S", start, commits[2].saturating_add(one_ns())).await?;
        assert!(summary.reached_end);
        let got: Vec<Value> = records.iter().map(stable).collect();
        assert_eq!(got, singer_records(capture), "value capture type {capture}");
        let times: Vec<Timestamp> = records.iter().map(|r| r.commit_timestamp).collect();
        assert_eq!(times, commits, "{capture}");
        assert_eq!(
            records.iter().map(|r| r.mod_type).collect::<Vec<_>>(),
            vec![ModType::Insert, ModType::Update, ModType::Delete]
        );
    }
    Ok(())
}

/// Singer 1 inserted (DML), renamed A -> B, deleted: one commit each, returned in order.
async fn insert_update_delete(db: &TestDatabase) -> anyhow::Result<Vec<Timestamp>> {
    let inserted = db
        .dml(vec![Statement::new(
            r#"INSERT INTO Singers (SingerId, Name, Score, Tags, Info)
               VALUES (1, 'A', 1.5, ['a', 'b'], JSON '{"x":1}')"#,
        )])
        .await?;
    let updated = db
        .apply(vec![update(
            "Singers",
            &["SingerId", "Name"],
            &[&1i64, &"B"],
        )])
        .await?;
    let deleted = db.apply(vec![delete("Singers", Key::new(&1i64))]).await?;
    assert!(inserted < updated && updated < deleted);
    Ok(vec![inserted, updated, deleted])
}

/// The three records of [`insert_update_delete`] under `capture`, without the fields that
/// vary from run to run: what each capture type includes of the columns and the values.
fn singer_records(capture: &str) -> Vec<Value> {
    let key = json!({"SingerId": "1"});
    let full_a = json!({"Info": "{\"x\":1}", "Name": "A", "Score": 1.5, "Tags": ["a", "b"]});
    let full_b = json!({"Info": "{\"x\":1}", "Name": "B", "Score": 1.5, "Tags": ["a", "b"]});
    let all_columns = columns(&[
        ("SingerId", json!({"code": "INT64"}), true, 1),
        ("Name", json!({"code": "STRING"}), false, 2),
        ("Score", json!({"code": "FLOAT64"}), false, 3),
        (
            "Tags",
            json!({"code": "ARRAY", "array_element_type": "STRING"}),
            false,
            4,
        ),
        ("Info", json!({"code": "JSON"}), false, 5),
    ]);
    let key_and_name = columns(&[
        ("SingerId", json!({"code": "INT64"}), true, 1),
        ("Name", json!({"code": "STRING"}), false, 2),
    ]);
    let empty = json!({});
    let m = |new: &Value, old: &Value| json!([{"keys": key, "new_values": new, "old_values": old}]);
    let (update_columns, update_mods, delete_mods) = match capture {
        "OLD_AND_NEW_VALUES" => (
            &key_and_name,
            m(&json!({"Name": "B"}), &json!({"Name": "A"})),
            m(&empty, &full_b),
        ),
        "NEW_VALUES" => (
            &key_and_name,
            m(&json!({"Name": "B"}), &empty),
            m(&empty, &empty),
        ),
        "NEW_ROW" => (&all_columns, m(&full_b, &empty), m(&empty, &empty)),
        "NEW_ROW_AND_OLD_VALUES" => (
            &all_columns,
            m(&full_b, &json!({"Name": "A"})),
            m(&empty, &full_b),
        ),
        _ => unreachable!(),
    };
    vec![
        record(
            "Singers",
            "INSERT",
            capture,
            all_columns.clone(),
            m(&full_a, &empty),
        ),
        record(
            "Singers",
            "UPDATE",
            capture,
            update_columns.clone(),
            update_mods,
        ),
        record(
            "Singers",
            "DELETE",
            capture,
            all_columns.clone(),
            delete_mods,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_dialect_gives_the_same_records() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let ddl = [
        "CREATE TABLE Singers (SingerId bigint NOT NULL, Name varchar, Score float8, \
         Tags varchar[], PRIMARY KEY (SingerId))",
        "CREATE CHANGE STREAM S0 FOR Singers WITH (value_capture_type = 'OLD_AND_NEW_VALUES')",
    ];
    let google = emulator
        .database(Dialect::GoogleSql, &[
            "CREATE TABLE singers (singerid INT64 NOT NULL, name STRING(MAX), score FLOAT64, \
             tags ARRAY<STRING(MAX)>) PRIMARY KEY (singerid)",
            "CREATE CHANGE STREAM s0 FOR singers OPTIONS (value_capture_type = 'OLD_AND_NEW_VALUES')",
        ])
        .await?;
    let postgres = emulator.database(Dialect::PostgreSql, &[]).await?;
    // The emulator takes PostgreSQL DDL only after the database exists.
    postgres.ddl(&ddl).await?;

    let mut outputs = Vec::new();
    for (db, stream, insert) in [
        (
            &google,
            "s0",
            "INSERT INTO singers (singerid, name, score, tags) VALUES (7, 'A', 2.5, ['x'])",
        ),
        (
            &postgres,
            "s0",
            "INSERT INTO singers (singerid, name, score, tags) VALUES (7, 'A', 2.5, ARRAY['x'])",
        ),
    ] {
        let start = Timestamp::now();
        let t1 = db.dml(vec![Statement::new(insert)]).await?;
        let t2 = db
            .dml(vec![Statement::new(
                "DELETE FROM singers WHERE singerid = 7",
            )])
            .await?;
        let (records, _) = read_range(db, stream, start, t2.saturating_add(one_ns())).await?;
        assert_eq!(
            records
                .iter()
                .map(|r| r.commit_timestamp)
                .collect::<Vec<_>>(),
            vec![t1, t2]
        );
        outputs.push(records.iter().map(stable).collect::<Vec<_>>());
    }
    assert_eq!(outputs[0], outputs[1], "GoogleSQL vs PostgreSQL");
    assert_eq!(outputs[0][0]["mods"][0]["keys"], json!({"singerid": "7"}));
    assert_eq!(
        outputs[0][0]["mods"][0]["new_values"],
        json!({"name": "A", "score": 2.5, "tags": ["x"]})
    );
    Ok(())
}
