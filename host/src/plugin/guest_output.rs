//! What a plugin instance says: its stdout, its stderr and its `log` calls, turned into the
//! host's tracing and into the last words a dead letter quotes.
//!
//! Invariants: a guest never writes to the host's streams. Every line it produces is one
//! tracing event tagged `plugin=name@version`, with control characters (newlines included)
//! escaped, so no guest text forges a host line or breaks the NDJSON on stdout or in the
//! dead letters. A call's lines are logged when it returns; a call that fails logs none of
//! them: its warnings and errors (the last [`TAIL_LINES`]) go into its failure, which names
//! the guest's own error when a language runtime reported one (`guest_error`). At most
//! [`LINES_PER_CALL`] lines per call are kept (the rest are counted and reported once), a
//! line is cut at [`MAX_LINE`] bytes: memory stays bounded whatever the guest writes.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much a guest line matters: the `log` import's levels; stdout is `Info`, stderr `Warn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Lines logged per call; the rest are counted.
pub(super) const LINES_PER_CALL: u32 = 100;
/// Longest line kept, in bytes (longer ones are cut).
pub(super) const MAX_LINE: usize = 2048;
/// Warnings and errors kept for a failed call's dead letter: a Python traceback and the
/// runtime's panic around it fit.
pub(super) const TAIL_LINES: usize = 32;

/// How a call ended, for what becomes of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallEnd {
    /// Its lines are logged.
    Returned,
    /// Its lines are left to the failure's message.
    Failed,
}

/// The output of one instance; clones share it (the WASI streams and the `log` import).
#[derive(Clone)]
pub(super) struct GuestOutput(Arc<Mutex<Said>>);

struct Said {
    tag: Arc<str>,
    /// Bytes of the current, unfinished stdout and stderr line.
    partial: [Vec<u8>; 2],
    /// The last warnings and errors of the current call.
    tail: VecDeque<String>,
    /// The current call's lines, logged when it returns.
    pending: Vec<(Level, String)>,
    logged: u32,
    suppressed: u64,
    /// Lines are kept for the tail only, never logged: a trial instance, whose `init` the
    /// running instances repeat (and log) right after.
    quiet: bool,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Stdout = 0,
    Stderr = 1,
}

impl GuestOutput {
    pub(super) fn new(tag: Arc<str>) -> Self {
        GuestOutput(Arc::new(Mutex::new(Said {
            tag,
            partial: [Vec::new(), Vec::new()],
            tail: VecDeque::new(),
            pending: Vec::new(),
            logged: 0,
            suppressed: 0,
            quiet: false,
        })))
    }

    fn said(&self) -> std::sync::MutexGuard<'_, Said> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_tag(&self, tag: Arc<str>) {
        self.said().tag = tag;
    }

    /// From now on lines only reach the tail (a failed call's dead letter or error).
    pub(super) fn quiet(&self) {
        self.said().quiet = true;
    }

    /// Starts a call: its budget of lines and its tail begin empty.
    pub(super) fn begin_call(&self) {
        let mut said = self.said();
        said.tail.clear();
        said.pending.clear();
        said.logged = 0;
        said.suppressed = 0;
    }

    /// Ends a call: unfinished lines are finished; a call that returned has its lines
    /// logged (and the count of those over the limit). Returns the call's last warnings and
    /// errors, oldest first.
    pub(super) fn end_call(&self, end: CallEnd) -> Vec<String> {
        let mut said = self.said();
        for source in [Source::Stdout, Source::Stderr] {
            let rest = std::mem::take(&mut said.partial[source as usize]);
            if !rest.is_empty() {
                said.line(source_level(source), &rest);
            }
        }
        let pending = std::mem::take(&mut said.pending);
        if end == CallEnd::Returned {
            let plugin = &*said.tag;
            for (level, text) in pending {
                log(plugin, level, &text);
            }
            if said.suppressed > 0 {
                let n = said.suppressed;
                tracing::warn!(target: "screamer::plugin", plugin,
                    "{n} more lines from the plugin in this call were not logged (limit {LINES_PER_CALL})");
            }
        }
        said.suppressed = 0;
        said.tail.drain(..).collect()
    }

    /// A `log` call from the guest.
    pub(super) fn log(&self, level: Level, message: &str) {
        self.said().line(level, message.as_bytes());
    }

    fn write(&self, source: Source, mut bytes: &[u8]) {
        let mut said = self.said();
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut said.partial[source as usize]);
            line.extend_from_slice(&bytes[..end]);
            said.line(source_level(source), &line);
            bytes = &bytes[end + 1..];
        }
        let partial = &mut said.partial[source as usize];
        let room = MAX_LINE.saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

fn source_level(source: Source) -> Level {
    match source {
        Source::Stdout => Level::Info,
        Source::Stderr => Level::Warn,
    }
}

impl Said {
    fn line(&mut self, level: Level, bytes: &[u8]) {
        let text = escape(bytes);
        if matches!(level, Level::Warn | Level::Error) {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(text.clone());
        }
        if self.quiet {
            return;
        }
        if self.logged >= LINES_PER_CALL {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        self.pending.push((level, text));
    }
}

fn log(plugin: &str, level: Level, text: &str) {
    match level {
        Level::Trace => tracing::trace!(target: "screamer::plugin", plugin, "{text}"),
        Level::Debug => tracing::debug!(target: "screamer::plugin", plugin, "{text}"),
        Level::Info => tracing::info!(target: "screamer::plugin", plugin, "{text}"),
        Level::Warn => tracing::warn!(target: "screamer::plugin", plugin, "{text}"),
        Level::Error => tracing::error!(target: "screamer::plugin", plugin, "{text}"),
    }
}

/// The line as text: at most [`MAX_LINE`] bytes, invalid UTF-8 replaced, control characters
/// and what could disguise a line escaped (`\n`, `\u{1b}`, `\u{202e}`), a trailing `\r`
/// dropped.
fn escape(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_LINE)];
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if disguises(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `c` could make a log line read as something else: control characters, the
/// line and paragraph separators (a new line to some readers), and the bidirectional
/// overrides and isolates (which reorder what a terminal shows).
fn disguises(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A WASI stdout or stderr that feeds a [`GuestOutput`].
struct GuestStream {
    output: GuestOutput,
    source: Source,
}

/// The guest's stdout (`stderr: false`) or stderr, as a WASI stream.
pub(super) struct GuestStdio {
    output: GuestOutput,
    source: Source,
}

impl GuestOutput {
    pub(super) fn stdout(&self) -> GuestStdio {
        GuestStdio {
            output: self.clone(),
            source: Source::Stdout,
        }
    }

    pub(super) fn stderr(&self) -> GuestStdio {
        GuestStdio {
            output: self.clone(),
            source: Source::Stderr,
        }
    }
}

impl IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.stream())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.stream())
    }
}

impl GuestStdio {
    fn stream(&self) -> GuestStream {
        GuestStream {
            output: self.output.clone(),
            source: self.source,
        }
    }
}

/// Permit per write: what WASI streams typically offer.
const PERMIT: usize = 64 << 10;

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_bidirectional_overrides_are_escaped() {
        assert_eq!(
            escape("a\u{202e}gnp.exe\u{2028}ERROR host\u{2066}x".as_bytes()),
            "a\\u{202e}gnp.exe\\u{2028}ERROR host\\u{2066}x"
        );
        assert_eq!(escape("café ü 日本".as_bytes()), "café ü 日本");
    }

    #[test]
    fn lines_are_escaped_cut_and_kept_in_a_bounded_tail() {
        let out = GuestOutput::new("p@1".into());
        out.begin_call();
        out.write(Source::Stderr, b"first\nforged\x1b[31m line");
        out.write(Source::Stderr, b" ends\r\n");
        for i in 0..40 {
            out.write(Source::Stderr, format!("line {i}\n").as_bytes());
        }
        out.write(Source::Stderr, &vec![b'x'; 10 * MAX_LINE]);
        let lines = out.end_call(CallEnd::Failed);
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[..2], ["line 9", "line 10"]);
        assert_eq!(lines[TAIL_LINES - 2], "line 39");
        assert_eq!(lines[TAIL_LINES - 1].len(), MAX_LINE);
        assert_eq!(escape(b"forged\x1b[31m\nx"), "forged\\u{1b}[31m\\nx");
    }

    #[test]
    fn a_new_call_starts_with_an_empty_tail_and_budget() {
        let out = GuestOutput::new("p@1".into());
        out.begin_call();
        for _ in 0..(LINES_PER_CALL + 50) {
            out.log(Level::Error, "again");
        }
        assert_eq!(out.said().suppressed, 50);
        out.end_call(CallEnd::Returned);
        out.begin_call();
        out.log(Level::Info, "quiet");
        assert!(out.end_call(CallEnd::Returned).is_empty());
    }

    #[test]
    fn a_failed_call_logs_nothing_and_hands_its_lines_on() {
        let out = GuestOutput::new("p@1".into());
        out.begin_call();
        out.log(Level::Info, "working");
        out.log(Level::Error, "boom");
        assert_eq!(out.said().pending.len(), 2);
        assert_eq!(out.end_call(CallEnd::Failed), ["boom"]);
        assert!(out.said().pending.is_empty());
    }

    #[test]
    fn a_quiet_instance_logs_nothing_and_keeps_its_tail() {
        let out = GuestOutput::new("p@1".into());
        out.quiet();
        out.begin_call();
        out.log(Level::Info, "configured");
        out.log(Level::Error, "refused");
        assert_eq!(out.said().logged, 0);
        assert_eq!(out.end_call(CallEnd::Returned), ["refused"]);
    }
}
