//! Write screamer plugins in Rust.
//!
//! Place in the flow: a plugin runs inside the screamer host, between record decoding and
//! the sink. The host hands it batches of data change records (in commit order per
//! partition) and takes back one [`Outcome`] per record: keep it, drop it, patch it (say
//! which values changed: [`Patch`]), replace it, emit several records (optionally to a named
//! side output), or fail it to the dead-letter destination. This crate is the only guest code that touches `wit-bindgen`; plugin code
//! sees plain Rust types and is unit-testable with `cargo test` on the host target.
//!
//! # A filter in three lines
//! ```
//! use screamer_plugin_sdk::{Record, export_filter};
//!
//! fn keep(record: &Record) -> bool {
//!     record.table_name == "Orders"
//! }
//! export_filter!(keep);
//! ```
//!
//! # A processor with configuration
//! ```
//! use screamer_plugin_sdk::{Outcome, Plugin, Record, export_plugin};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     tag: String,
//! }
//!
//! struct Tagger(Config);
//!
//! impl Plugin for Tagger {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.tag.is_empty() {
//!             return Err("`tag` must not be empty".into());
//!         }
//!         Ok(Tagger(config))
//!     }
//!
//!     fn process(&mut self, mut record: Record) -> Outcome {
//!         match record.set_extra("tag", self.0.tag.as_str()) {
//!             Ok(()) => Outcome::Replace(record),
//!             Err(e) => Outcome::Fail(e),
//!         }
//!     }
//! }
//! export_plugin!(Tagger);
//!
//! // Plain unit tests, no wasm needed:
//! let mut plugin = Tagger::new(Config { tag: "eu".into() }).unwrap();
//! let record = Record::new("Orders", screamer_plugin_sdk::ModType::Insert);
//! let Outcome::Replace(out) = plugin.process(record) else { panic!() };
//! assert_eq!(out.extra_map().unwrap()["tag"], "eu");
//! // Outcomes and records compare with `==` (and print with `{:?}`):
//! let dropped = screamer_plugin_sdk::Outcome::Drop;
//! assert_eq!(dropped, Outcome::Drop);
//! ```
//!
//! Build a plugin with `cargo build --target wasm32-wasip2 --release` in a crate with
//! `crate-type = ["cdylib"]`; the `.wasm` file is the component the host loads. See
//! `docs/write-a-plugin.md` in the repository for the whole walk-through.

#![deny(missing_docs)]

extern crate self as screamer_plugin_sdk;

use std::any::Any;
use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub mod json;
pub mod patch;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "screamer_plugin_sdk::bindings",
        runtime_path: "screamer_plugin_sdk::__private::wit_bindgen::rt",
        // Native unit tests compare outcomes with `assert_eq!`.
        additional_derives: [PartialEq],
    });
}

pub use bindings::screamer::plugin::types::{
    ChangeRecord as Record, Emission, FieldPatch, ModType, Origin, Outcome, PluginInfo,
    RecordPatch, RowChange, RowField, Timestamp,
};
pub use origin::{origin, origin_at};
pub use patch::Patch;

pub mod origin;

/// A plugin: built once per instance from its configuration, then fed records.
///
/// The host calls [`Plugin::process_batch`] with each batch; the default processes the
/// records one by one with [`Plugin::process`].
pub trait Plugin: Sized + 'static {
    /// The configuration, deserialized from the JSON object the host passes (`{}` when the
    /// user gave none). Use [`NoConfig`] for a plugin without settings.
    type Config: DeserializeOwned;

    /// Validates the configuration; an `Err` is shown to the user and the plugin is not run.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What becomes of one record.
    fn process(&mut self, record: Record) -> Outcome;

    /// One outcome per record, in order. Override to work on the whole batch at once (and
    /// read each record's origin with [`origin_at`]).
    fn process_batch(&mut self, batch: Vec<Record>) -> Vec<Outcome> {
        batch
            .into_iter()
            .enumerate()
            .map(|(index, record)| origin::processing(index, || self.process(record)))
            .collect()
    }
}

/// The configuration of a plugin that takes none: only `{}` is accepted.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// An error about a record's JSON fields.
pub type JsonError = String;

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, JsonError> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_str(text).map_err(|e| format!("{what} is not a JSON object: {e}"))
}

impl ModType {
    /// Parses `INSERT`, `UPDATE` or `DELETE` (any case), for plugin configurations.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.to_ascii_uppercase().as_str() {
            "INSERT" => Ok(ModType::Insert),
            "UPDATE" => Ok(ModType::Update),
            "DELETE" => Ok(ModType::Delete),
            _ => Err(format!("{name:?} is not INSERT, UPDATE or DELETE")),
        }
    }
}

impl Record {
    /// An empty record of `table` (for tests and for records a plugin makes up). Returned
    /// or emitted, it has its input record's [`Origin`]: commit timestamp, partition and
    /// transaction are never the plugin's.
    pub fn new(table: &str, mod_type: ModType) -> Self {
        Record {
            table_name: table.into(),
            mod_type,
            mods: Vec::new(),
            extra: None,
        }
    }

    /// Adds a row change (builder style, for tests).
    pub fn with_mod(mut self, row: RowChange) -> Self {
        self.mods.push(row);
        self
    }

    /// The extra top-level output fields, parsed.
    pub fn extra_map(&self) -> Result<Map<String, Value>, JsonError> {
        parse_object(self.extra.as_deref().unwrap_or(""), "extra")
    }

    /// Sets one extra top-level output field (it appears beside `table_name` and the rest).
    pub fn set_extra(&mut self, name: &str, value: impl Into<Value>) -> Result<(), JsonError> {
        let mut extra = self.extra_map()?;
        extra.insert(name.to_owned(), value.into());
        self.extra = Some(Value::Object(extra).to_string());
        Ok(())
    }
}

impl RowChange {
    /// A row change from three JSON objects (keys, new values, old values).
    pub fn new(keys: Value, new_values: Value, old_values: Value) -> Self {
        RowChange {
            keys: keys.to_string(),
            new_values: new_values.to_string(),
            old_values: old_values.to_string(),
        }
    }

    /// The primary key columns, parsed.
    pub fn keys_map(&self) -> Result<Map<String, Value>, JsonError> {
        parse_object(&self.keys, "keys")
    }

    /// The values after the change, parsed.
    pub fn new_values_map(&self) -> Result<Map<String, Value>, JsonError> {
        parse_object(&self.new_values, "new_values")
    }

    /// The values before the change, parsed.
    pub fn old_values_map(&self) -> Result<Map<String, Value>, JsonError> {
        parse_object(&self.old_values, "old_values")
    }

    /// One new value deserialized into `T`; `Ok(None)` when the column is absent.
    pub fn new_value<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, JsonError> {
        get_as(&self.new_values, "new_values", column)
    }

    /// One old value deserialized into `T`; `Ok(None)` when the column is absent.
    pub fn old_value<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, JsonError> {
        get_as(&self.old_values, "old_values", column)
    }

    /// Replaces the mod's keys.
    pub fn set_keys(&mut self, keys: Map<String, Value>) {
        self.keys = Value::Object(keys).to_string();
    }

    /// Replaces the mod's new values.
    pub fn set_new_values(&mut self, values: Map<String, Value>) {
        self.new_values = Value::Object(values).to_string();
    }

    /// Replaces the mod's old values.
    pub fn set_old_values(&mut self, values: Map<String, Value>) {
        self.old_values = Value::Object(values).to_string();
    }
}

/// Member `column` of the object `text` (row field `what`) deserialized, the others only
/// skipped over.
fn get_as<T: DeserializeOwned>(
    text: &str,
    what: &str,
    column: &str,
) -> Result<Option<T>, JsonError> {
    json::member(text, column, what)?
        .map(|v| serde_json::from_str(v.get()).map_err(|e| format!("column {column}: {e}")))
        .transpose()
}

impl Emission {
    /// A record for the main output (it goes on to the next plugin).
    pub fn main(record: Record) -> Self {
        Emission {
            output: None,
            record,
        }
    }

    /// A record for the named side output (it leaves the chain).
    pub fn to(output: &str, record: Record) -> Self {
        Emission {
            output: Some(output.to_owned()),
            record,
        }
    }
}

/// Logs into the host's tracing, tagged with this plugin's name and version. On the host
/// target (unit tests) messages go to stderr.
pub mod log {
    use super::bindings::screamer::plugin::log::Level;

    fn emit(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        super::bindings::screamer::plugin::log::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("[{level:?}] {message}");
    }

    /// Logs at trace level (the host's log, tagged with the plugin).
    pub fn trace(message: impl AsRef<str>) {
        emit(Level::Trace, message.as_ref());
    }
    /// Logs at debug level.
    pub fn debug(message: impl AsRef<str>) {
        emit(Level::Debug, message.as_ref());
    }
    /// Logs at info level.
    pub fn info(message: impl AsRef<str>) {
        emit(Level::Info, message.as_ref());
    }
    /// Logs at warn level.
    pub fn warn(message: impl AsRef<str>) {
        emit(Level::Warn, message.as_ref());
    }
    /// Logs at error level.
    pub fn error(message: impl AsRef<str>) {
        emit(Level::Error, message.as_ref());
    }
}

#[doc(hidden)]
pub mod __private {
    pub use super::bindings::exports::screamer::plugin::processor::Guest;
    pub use wit_bindgen;

    use super::*;

    thread_local! {
        // Wasm instances are single-threaded; one plugin value per instance.
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<P: Plugin>(config: &str) -> Result<(), String> {
        // A panic traps the instance; logging it first puts the message in the host's log
        // and in the dead-letter entry instead of a bare "unreachable".
        #[cfg(target_arch = "wasm32")]
        std::panic::set_hook(Box::new(|info| crate::log::error(format!("panic: {info}"))));
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let config: P::Config =
            serde_json::from_str(text).map_err(|e| format!("invalid configuration: {e}"))?;
        let plugin = P::new(config)?;
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn process<P: Plugin>(batch: Vec<Record>) -> Vec<Outcome> {
        STATE.with(|s| {
            let mut state = s.borrow_mut();
            match state.as_mut().and_then(|p| p.downcast_mut::<P>()) {
                Some(plugin) => plugin.process_batch(batch),
                None => batch
                    .iter()
                    .map(|_| Outcome::Fail("plugin used before init".into()))
                    .collect(),
            }
        })
    }
}

/// Exports a [`Plugin`] type as this component's processor. Use once per plugin crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __ScreamerExport;
            impl $crate::__private::Guest for __ScreamerExport {
                fn info() -> $crate::PluginInfo {
                    $crate::PluginInfo {
                        name: env!("CARGO_PKG_NAME").into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }
                }
                fn init(config: String) -> Result<(), String> {
                    $crate::__private::init::<$plugin>(&config)
                }
                fn process(batch: Vec<$crate::Record>) -> Vec<$crate::Outcome> {
                    $crate::__private::process::<$plugin>(batch)
                }
            }
    $crate::__export_plugin_impl!(__ScreamerExport with_types_in $crate::bindings);
        };
    };
}

/// Exports a filter: `fn(&Record) -> bool`, `true` keeps the record. Takes no configuration.
#[macro_export]
macro_rules! export_filter {
    ($keep:path) => {
        #[doc(hidden)]
        pub struct __ScreamerFilter;
        impl $crate::Plugin for __ScreamerFilter {
            type Config = $crate::NoConfig;
            fn new(_: $crate::NoConfig) -> Result<Self, String> {
                Ok(__ScreamerFilter)
            }
            fn process(&mut self, record: $crate::Record) -> $crate::Outcome {
                if $keep(&record) {
                    $crate::Outcome::Keep
                } else {
                    $crate::Outcome::Drop
                }
            }
        }
        $crate::export_plugin!(__ScreamerFilter);
    };
}

/// Exports a map: `fn(Record) -> Result<Record, String>`; `Err` fails the record.
#[macro_export]
macro_rules! export_map {
    ($map:path) => {
        #[doc(hidden)]
        pub struct __ScreamerMap;
        impl $crate::Plugin for __ScreamerMap {
            type Config = $crate::NoConfig;
            fn new(_: $crate::NoConfig) -> Result<Self, String> {
                Ok(__ScreamerMap)
            }
            fn process(&mut self, record: $crate::Record) -> $crate::Outcome {
                match $map(record) {
                    Ok(r) => $crate::Outcome::Replace(r),
                    Err(e) => $crate::Outcome::Fail(e),
                }
            }
        }
        $crate::export_plugin!(__ScreamerMap);
    };
}

/// Exports a flat-map: `fn(Record) -> Result<Vec<Emission>, String>`; an empty vector drops
/// the record, `Err` fails it.
#[macro_export]
macro_rules! export_flat_map {
    ($flat_map:path) => {
        #[doc(hidden)]
        pub struct __ScreamerFlatMap;
        impl $crate::Plugin for __ScreamerFlatMap {
            type Config = $crate::NoConfig;
            fn new(_: $crate::NoConfig) -> Result<Self, String> {
                Ok(__ScreamerFlatMap)
            }
            fn process(&mut self, record: $crate::Record) -> $crate::Outcome {
                match $flat_map(record) {
                    Ok(records) => $crate::Outcome::Emit(records),
                    Err(e) => $crate::Outcome::Fail(e),
                }
            }
        }
        $crate::export_plugin!(__ScreamerFlatMap);
    };
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn row_values_parse_and_update() {
        let mut row = RowChange::new(
            json!({"Id": "1"}),
            json!({"Name": "a", "Age": "7"}),
            json!({}),
        );
        assert_eq!(
            row.new_value::<String>("Name").unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(row.new_value::<String>("Missing").unwrap(), None);
        let mut values = row.new_values_map().unwrap();
        values.remove("Age");
        row.set_new_values(values);
        assert_eq!(row.new_values, r#"{"Name":"a"}"#);
    }

    #[test]
    fn extra_fields_accumulate() {
        let mut r = Record::new("T", ModType::Update);
        r.set_extra("a", 1).unwrap();
        r.set_extra("b", "x").unwrap();
        assert_eq!(r.extra.as_deref(), Some(r#"{"a":1,"b":"x"}"#));
    }

    struct Upper;
    impl Plugin for Upper {
        type Config = NoConfig;
        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(Upper)
        }
        fn process(&mut self, mut record: Record) -> Outcome {
            record.table_name = record.table_name.to_uppercase();
            Outcome::Replace(record)
        }
    }

    /// Tags each record with its origin's sequence.
    struct Sequence;
    impl Plugin for Sequence {
        type Config = NoConfig;
        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(Sequence)
        }
        fn process(&mut self, mut record: Record) -> Outcome {
            let sequence = origin()
                .expect("an origin while processing")
                .record_sequence;
            record.set_extra("sequence", sequence).unwrap();
            Outcome::Replace(record)
        }
    }

    #[test]
    fn each_record_of_a_batch_has_its_own_origin() {
        let at = |sequence: &str| Origin {
            record_sequence: sequence.into(),
            ..Origin::at(Timestamp {
                seconds: 1,
                nanos: 0,
            })
        };
        origin::set_for_tests(vec![at("a"), at("b")]);
        let batch = vec![Record::new("T", ModType::Insert); 2];
        let out = Sequence.process_batch(batch);
        let sequences: Vec<Value> = out
            .iter()
            .map(|o| match o {
                Outcome::Replace(r) => r.extra_map().unwrap()["sequence"].clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sequences, ["a", "b"]);
        assert_eq!(origin_at(1), Some(at("b")));
        assert_eq!(origin_at(2), None);
    }

    #[test]
    fn init_then_process_through_the_guest_glue() {
        assert!(
            __private::init::<Upper>(r#"{"unexpected": 1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        __private::init::<Upper>("").unwrap();
        let out = __private::process::<Upper>(vec![Record::new("t", ModType::Insert)]);
        assert!(matches!(&out[..], [Outcome::Replace(r)] if r.table_name == "T"));
    }
}
