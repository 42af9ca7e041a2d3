//! `screamer status`: the runners and partitions of a metadata table, as a table or JSON.
//!
//! Place in the flow: beside the runners, read-only. It shows what the registry and the
//! leases say: which runner is alive, what it holds, which one is active with `--ordering
//! transactions`, and how far each partition is behind.

use std::time::Duration;

use super::RunError;
use super::config::parse_duration;
use screamer::DatabaseName;
use screamer::Endpoint;
use screamer::Timestamp;
use screamer::{PartitionStore, RunnerId, SpannerStore};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Database: projects/P/instances/I/databases/D.
    #[arg(long, env = "DSN")]
    pub dsn: DatabaseName,
    /// Partition metadata table the runners share.
    #[arg(long, env = "METADATA_TABLE")]
    pub metadata_table: String,
    /// Database holding the metadata table (default: --dsn).
    #[arg(long, env = "PARTITION_DSN")]
    pub partition_dsn: Option<DatabaseName>,
    /// The runners' lease duration: a runner silent for longer is shown as dead.
    #[arg(long, env = "LEASE_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> Result<(), RunError> {
    let db = args.partition_dsn.as_ref().unwrap_or(&args.dsn);
    let store = SpannerStore::connect(&Endpoint::from_env(), db, &args.metadata_table).await?;
    let status = store.status(args.lease_duration).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&status).expect("status serializes")
        );
        return Ok(());
    }
    let now = Timestamp::now();
    let ago = |t: Timestamp| {
        let nanos = (now.unix_nanos() - t.unix_nanos()).max(0);
        format!("{:.1}s", nanos as f64 / 1e9)
    };
    println!(
        "{:<24} {:<32} {:<6} {:>10} {:<7}",
        "RUNNER", "LAST HEARTBEAT", "ALIVE", "PARTITIONS", "ACTIVE"
    );
    for r in &status.runners {
        // Only with --ordering transactions is one runner the active one.
        let active = status.active.as_ref() == Some(&r.runner_id);
        println!(
            "{:<24} {:<32} {:<6} {:>10} {:<7}",
            r.runner_id,
            format!("{} ({} ago)", r.heartbeat_at, ago(r.heartbeat_at)),
            if r.alive { "yes" } else { "no" },
            r.partitions,
            if active { "yes" } else { "-" }
        );
    }
    println!();
    println!(
        "{:<20} {:<10} {:<24} {:>6} {:<32} {:>10}",
        "PARTITION", "STATE", "OWNER", "EPOCH", "WATERMARK", "LAG"
    );
    for p in &status.partitions {
        let token: String = p.token.as_str().chars().take(18).collect();
        println!(
            "{:<20} {:<10} {:<24} {:>6} {:<32} {:>10}",
            token,
            p.state,
            p.owner.as_ref().map_or("-", RunnerId::as_str),
            p.epoch.map_or("-".to_owned(), |e| e.to_string()),
            p.watermark.to_string(),
            ago(p.watermark)
        );
    }
    Ok(())
}
