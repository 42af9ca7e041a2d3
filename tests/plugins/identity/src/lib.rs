//! Returns every record as its own replacement: the whole record crosses the boundary both
//! ways, the upper bound of what a pass-through costs (a `keep` outcome costs less: nothing
//! crosses back). Used by the benchmarks.

use screamer_plugin_sdk::{Record, export_map};

fn identity(record: Record) -> Result<Record, String> {
    Ok(record)
}

export_map!(identity);
