//! A plugin that misbehaves on demand, for the host's failure and hot-swap tests.
//!
//! For each record it looks at the first row's new value of column `Name`:
//! `"panic"` panics (a trap), `"loop"` spins forever (the host's deadline must stop it),
//! `"bomb"` allocates until the memory cap stops it, `"fail"` returns a plugin error; any
//! other value passes, tagged with `extra.processed_by` = this build's [`TAG`].
//! Configuration: `{"fail_init": true}` makes `init` refuse.

use screamer_plugin_sdk::{Outcome, Plugin, Record, export_plugin};

/// Tests patch these bytes in the built `.wasm` (same length) to make distinct versions of
/// one build: a different file hash and a different tag on every record.
pub static TAG: &str = "chaos-tag:v000";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub fail_init: bool,
}

pub struct Chaos;

impl Plugin for Chaos {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.fail_init {
            return Err("refusing to start, as configured (fail_init)".into());
        }
        Ok(Chaos)
    }

    fn process(&mut self, mut record: Record) -> Outcome {
        let name = record
            .mods
            .first()
            .and_then(|m| m.new_value::<String>("Name").ok().flatten())
            .unwrap_or_default();
        match name.as_str() {
            "panic" => panic!("chaos: asked to panic"),
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
