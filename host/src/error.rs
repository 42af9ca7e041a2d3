//! What every error of the library can say about itself: whether the user can fix it.
//!
//! Each stage's error type (`SourceError`, `StoreError`, `ReaderError`, `SubscribeError`,
//! `PluginError`) keeps its sources and has a `kind()`; the binary turns that into the exit
//! code (2 for input, 1 for runtime failures) in one place.

/// Who can fix a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The user's input is wrong (a name, a file, a timestamp, a table): fix it and run again.
    Input,
    /// Something failed while running (Spanner, a destination, a bug).
    Runtime,
}

/// An error and its sources, on one line (`a: b: c`).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
