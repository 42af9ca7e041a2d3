//! A bank for the ordering tests: accounts in two tables (`Checking`, `Savings`), opened by
//! one transaction, then transfers that move money between accounts of either table, each
//! one read-write transaction of two rows. The bank's total never changes, so a reader that
//! sees half a transaction sees a wrong total.
//!
//! Also the checks of an output of `--ordering transactions`: whole transactions,
//! contiguous, in commit order, each once.

use std::collections::{BTreeMap, HashSet};

use gcloud_spanner::mutation::insert_or_update;
use screamer::{Dialect, Timestamp};

use crate::{Emulator, TestDatabase};

/// The tables and the stream over both.
pub const BANK_SCHEMA: [&str; 3] = [
    "CREATE TABLE Checking (Id INT64 NOT NULL, Balance INT64 NOT NULL) PRIMARY KEY (Id)",
    "CREATE TABLE Savings (Id INT64 NOT NULL, Balance INT64 NOT NULL) PRIMARY KEY (Id)",
    "CREATE CHANGE STREAM Changes FOR Checking, Savings",
];

/// What each account holds when opened.
pub const OPENING_BALANCE: i64 = 100;

const TABLES: [&str; 2] = ["Checking", "Savings"];

/// An account: its table and id.
pub type Account = (&'static str, i64);

/// The bank as its only writer knows it.
pub struct Bank {
    pub db: TestDatabase,
    balances: BTreeMap<Account, i64>,
    /// Transactions committed, with their commit timestamps.
    pub commits: Vec<Timestamp>,
    /// A linear congruential generator: transfers differ from test to test run only by
    /// their timing.
    seed: u64,
}

impl Bank {
    /// A database with [`BANK_SCHEMA`] and `accounts` accounts in each table, opened by one
    /// transaction.
    pub async fn open(emulator: &Emulator, accounts: i64) -> anyhow::Result<Self> {
        let db = emulator.database(Dialect::GoogleSql, &BANK_SCHEMA).await?;
        let balances: BTreeMap<Account, i64> = TABLES
            .iter()
            .flat_map(|t| (0..accounts).map(move |id| ((*t, id), OPENING_BALANCE)))
            .collect();
        let mut bank = Self {
            db,
            balances,
            commits: Vec::new(),
            seed: 7,
        };
        let all: Vec<Account> = bank.balances.keys().copied().collect();
        bank.write(&all).await?;
        Ok(bank)
    }

    /// The total every consistent reader sees.
    pub fn total(&self) -> i64 {
        self.balances.values().sum()
    }

    /// Balances as the writer left them.
    pub fn balances(&self) -> &BTreeMap<Account, i64> {
        &self.balances
    }

    /// Moves money between two accounts (of either table) in one transaction.
    pub async fn transfer(&mut self) -> anyhow::Result<Timestamp> {
        let accounts: Vec<Account> = self.balances.keys().copied().collect();
        let from = accounts[self.next() % accounts.len()];
        let mut to = accounts[self.next() % accounts.len()];
        if to == from {
            to = accounts[(self.next() + 1) % accounts.len()];
        }
        let amount = (self.next() % 20) as i64 + 1;
        *self.balances.get_mut(&from).expect("an account") -= amount;
        *self.balances.get_mut(&to).expect("an account") += amount;
        self.write(&[from, to]).await
    }

    async fn write(&mut self, accounts: &[Account]) -> anyhow::Result<Timestamp> {
        let mutations = accounts
            .iter()
            .map(|a| insert_or_update(a.0, &["Id", "Balance"], &[&a.1, &self.balances[a]]))
            .collect();
        let at = self.db.apply(mutations).await?;
        self.commits.push(at);
        Ok(at)
    }

    /// `screamer` arguments reading the bank's stream with `--ordering transactions` from
    /// its opening transaction, through its last commit so far when `bounded`, then `extra`.
    pub fn ordered_args(&self, bounded: bool, extra: &[&str]) -> Vec<String> {
        let start = self.commits[0].to_string();
        let end = self.commits.last().expect("opened").to_string();
        let mut args = vec!["--start", &start, "--ordering", "transactions"];
        if bounded {
            args.extend(["--end", &end]);
        }
        args.extend(extra);
        crate::run_args(&self.db, &args)
    }

    fn next(&mut self) -> usize {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.seed >> 33) as usize
    }
}

/// One transaction of an output: its records' lines, parsed.
#[derive(Debug)]
pub struct OutputTransaction {
    pub id: String,
    pub commit: Timestamp,
    pub records: Vec<serde_json::Value>,
}

/// Splits NDJSON output `lines` into transactions and checks that each is whole (as many
/// records as `number_of_records_in_transaction`, in record-sequence order), contiguous,
/// and that they come in commit-timestamp order, each once. Panics naming what broke.
pub fn whole_transactions_in_order(lines: &[String]) -> Vec<OutputTransaction> {
    let mut out: Vec<OutputTransaction> = Vec::new();
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = v["server_transaction_id"]
            .as_str()
            .expect("an id")
            .to_owned();
        let commit: Timestamp = v["commit_timestamp"]
            .as_str()
            .expect("a commit timestamp")
            .parse()
            .expect("a timestamp");
        match out.last_mut() {
            Some(t) if t.id == id => t.records.push(v),
            _ => out.push(OutputTransaction {
                id,
                commit,
                records: vec![v],
            }),
        }
    }
    let mut seen = HashSet::new();
    for (i, t) in out.iter().enumerate() {
        assert!(seen.insert(&t.id), "transaction {} split or repeated", t.id);
        if i > 0 {
            assert!(
                out[i - 1].commit <= t.commit,
                "{} before {}",
                out[i - 1].id,
                t.id
            );
        }
        let expected = t.records[0]["number_of_records_in_transaction"]
            .as_i64()
            .expect("a count");
        assert_eq!(
            t.records.len() as i64,
            expected,
            "transaction {} whole",
            t.id
        );
        let sequences: Vec<&str> = t
            .records
            .iter()
            .map(|r| r["record_sequence"].as_str().expect("a sequence"))
            .collect();
        assert!(sequences.is_sorted(), "transaction {}: {sequences:?}", t.id);
    }
    out
}

/// The transactions NDJSON output `lines` holds records of.
pub fn transaction_ids(lines: &[String]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["server_transaction_id"].as_str().map(str::to_owned))
        .collect()
}

/// Balances after applying the records of `transactions` in order (new values of each
/// row's `Balance`).
pub fn replay(transactions: &[OutputTransaction]) -> BTreeMap<(String, i64), i64> {
    let mut balances = BTreeMap::new();
    for record in transactions.iter().flat_map(|t| &t.records) {
        let table = record["table_name"].as_str().expect("a table").to_owned();
        for m in record["mods"].as_array().expect("mods") {
            let id: i64 = m["keys"]["Id"]
                .as_str()
                .expect("an id")
                .parse()
                .expect("a number");
            let balance: i64 = m["new_values"]["Balance"]
                .as_str()
                .expect("a balance")
                .parse()
                .expect("a number");
            balances.insert((table.clone(), id), balance);
        }
    }
    balances
}
