//! Prints one line per changed row of a change stream until Ctrl-C.
//!
//! ```sh
//! SPANNER_EMULATOR_HOST=localhost:9010 \
//!   cargo run -p screamer --example print_changes -- projects/p/instances/i/databases/d Changes
//! ```

use std::sync::Arc;

use screamer::{
    Consumer, ConsumerError, DataChangeRecord, Endpoint, MemoryStore, SpannerSource, Subscriber,
    SubscriberOptions,
};
use tokio_util::sync::CancellationToken;

struct PrintRows;

impl Consumer for PrintRows {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        for r in records {
            for m in &r.mods {
                println!(
                    "{} {} {:?} keys={} new={}",
                    r.commit_timestamp,
                    r.table_name,
                    r.mod_type,
                    m.keys.as_str(),
                    m.new_values.as_str(),
                );
            }
        }
        // Returning Ok acknowledges the batch.
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dsn), Some(stream)) = (args.next(), args.next()) else {
        eprintln!("usage: print_changes projects/P/instances/I/databases/D STREAM");
        std::process::exit(2);
    };
    let db = dsn.parse()?;
    let source = SpannerSource::connect(&Endpoint::from_env(), &db, &stream).await?;
    let subscriber = Subscriber::new(
        source,
        Arc::new(MemoryStore::new()),
        SubscriberOptions::default(),
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }
    });
    let summary = subscriber.subscribe(PrintRows, stop).await?;
    eprintln!(
        "stopped after {} finished partitions",
        summary.partitions_finished
    );
    Ok(())
}
