//! A plugin that misbehaves on demand, for the host's failure and hot-swap tests.
//!
//! For each record it looks at the first row's new value of column `Name`:
//! `"panic"` panics (a trap), `"loop"` spins forever (the host's deadline must stop it),
//! `"bomb"` allocates until the memory cap stops it, `"fail"` returns a plugin error,
//! `"sleep"` sleeps 30 s in WASI (the deadline must hold there too), `"amplify"` emits
//! 400,000 tiny records, `"fan:N"` emits N copies, `"shadow"` sets extra fields named like the
//! record's own, `"patch"` patches the record (sets `Patched` in its new values, removes its
//! old values' `Name`, sets `extra.patched`; `"patch-twice"` sets `Patched` 100,000 times,
//! the last to 99999), `"patch-row"`, `"patch-set"` and `"patch-deep"` return patches the
//! host must refuse (a row the record lacks, settings that are not an object, settings
//! nested 124 levels), `"shout"` writes forged lines to stderr and stdout then panics, `"connect"`
//! opens a TCP connection to the configured `connect` address and reports it in
//! `extra.connected`; any other value passes, tagged with `extra.processed_by` = this
//! build's [`TAG`].
//! Configuration: `{"fail_init": true}` makes `init` refuse, `{"sleep_init": true}` makes it
//! sleep 30 s, `{"panic_after": N}` makes every instance panic on its (N+1)th record,
//! `{"connect": "HOST:PORT"}` is where `"connect"` goes.

use screamer_plugin_sdk::{
    Emission, FieldPatch, Outcome, Patch, Plugin, Record, RecordPatch, RowField, export_plugin,
};

/// Tests patch these bytes in the built `.wasm` (same length) to make distinct versions of
/// one build: a different file hash and a different tag on every record.
pub static TAG: &str = "chaos-tag:v000";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub fail_init: bool,
    #[serde(default)]
    pub sleep_init: bool,
    pub panic_after: Option<u32>,
    pub connect: Option<String>,
}

pub struct Chaos {
    config: Config,
    processed: u32,
}

const SLEEP: std::time::Duration = std::time::Duration::from_secs(30);

impl Plugin for Chaos {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.fail_init {
            return Err("refusing to start, as configured (fail_init)".into());
        }
        if config.sleep_init {
            std::thread::sleep(SLEEP);
        }
        Ok(Chaos {
            config,
            processed: 0,
        })
    }

    fn process(&mut self, mut record: Record) -> Outcome {
        let name = record
            .mods
            .first()
            .and_then(|m| m.new_value::<String>("Name").ok().flatten())
            .unwrap_or_default();
        self.processed += 1;
        if self.config.panic_after.is_some_and(|n| self.processed > n) {
            panic!(
                "chaos: this instance has processed {} records",
                self.processed - 1
            );
        }
        if let Some(n) = name.strip_prefix("fan:") {
            let copies = n.parse().unwrap_or(0);
            return Outcome::Emit(vec![
                Emission {
                    output: None,
                    record
                };
                copies
            ]);
        }
        match name.as_str() {
            "panic" => panic!("chaos: asked to panic"),
            "sleep" => {
                std::thread::sleep(SLEEP);
                Outcome::Keep
            }
            "amplify" => {
                let tiny = Record::new("T", record.mod_type);
                Outcome::Emit(vec![
                    Emission {
                        output: None,
                        record: tiny
                    };
                    400_000
                ])
            }
            "shadow" => {
                record.extra = Some(r#"{"table_name":"Shadow","mods":[],"output":"x"}"#.to_owned());
                Outcome::Replace(record)
            }
            "deep" => {
                // JSON nested 124 levels: parses alone, but not inside an output line.
                let deep = format!("{}1{}", "[".repeat(123), "]".repeat(123));
                record.mods[0].new_values = format!(r#"{{"Name":{deep}}}"#);
                Outcome::Replace(record)
            }
            "twice" => {
                record.mods[0].new_values = r#"{"Name":"a","Name":"b"}"#.to_owned();
                Outcome::Replace(record)
            }
            "patch" => {
                let mut extra = serde_json::Map::new();
                extra.insert("patched".into(), true.into());
                Patch::new()
                    .set(
                        0,
                        RowField::NewValues,
                        "Patched",
                        &serde_json::json!({"by": "chaos"}),
                    )
                    .remove(0, RowField::OldValues, "Name")
                    .set_extra(&extra)
                    .clone()
                    .into_outcome()
            }
            "patch-twice" => {
                let mut patch = Patch::new();
                for n in 0..100_000 {
                    patch.set(0, RowField::NewValues, "Patched", &n.into());
                }
                patch.into_outcome()
            }
            "patch-row" | "patch-set" | "patch-deep" => {
                let deep = format!(r#"{{"X":{}1{}}}"#, "[".repeat(123), "]".repeat(123));
                let (row, set) = match name.as_str() {
                    "patch-row" => (7, "{}".to_owned()),
                    "patch-set" => (0, "[1]".to_owned()),
                    _ => (0, deep),
                };
                Outcome::Patch(RecordPatch {
                    fields: vec![FieldPatch {
                        row,
                        field: RowField::NewValues,
                        remove: Vec::new(),
                        set,
                    }],
                    extra: None,
                })
            }
            "nameless" => Outcome::Emit(vec![Emission {
                output: Some(String::new()),
                record,
            }]),
            "shout" => {
                println!("{{\"forged\": \"stdout line\"}}");
                eprint!("2026-12-02T00:00:00Z ERROR screamer: forged host line\npartial");
                screamer_plugin_sdk::log::warn("multi\nline log");
                panic!("chaos: shouted");
            }
            "connect" => {
                let addr = self.config.connect.clone().unwrap_or_default();
                let connected = match std::net::TcpStream::connect(&addr) {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => format!("{:?}", e.kind()),
                };
                match record.set_extra("connected", connected) {
                    Ok(()) => Outcome::Replace(record),
                    Err(e) => Outcome::Fail(e),
                }
            }
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "fail" => Outcome::Fail("chaos: asked to fail".into()),
            _ => {
                let tag = std::hint::black_box(TAG);
                match record.set_extra("processed_by", tag) {
                    Ok(()) => Outcome::Replace(record),
                    Err(e) => Outcome::Fail(e),
                }
            }
        }
    }
}

export_plugin!(Chaos);
