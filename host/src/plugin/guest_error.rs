//! A trapped guest's own error, out of what its language runtime printed on the way down.
//!
//! Place in the flow: when a call traps (`instance::settle`), before the dead letter is
//! written. A guest language's runtime turns an uncaught error into a Rust panic and an
//! `unreachable` trap, printing the error wrapped in its own words: componentize-py prints
//! the Python traceback, then `panicked at runtime/src/lib.rs`; jco's QuickJS runtime prints
//! `Failed to call 'process': Exception(Exception { message: Some(..), stack: Some(..) })`;
//! a Rust plugin prints `panicked at src/lib.rs:L:C:` and its message. This module finds the
//! guest's part in those lines (the tail of the call's stderr) and says it in one line:
//! message and location, without the runtime's. Anything it does not recognize is left to
//! the trap's own text.

/// A language runtime's report of an uncaught error, found in a call's lines.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct GuestError {
    /// The guest's error and where it was raised, on one line.
    pub message: String,
    /// Where the runtime's report begins in the lines: what came before, the guest said
    /// itself.
    pub report_at: usize,
}

/// The guest's error in `lines` (oldest first), if a language runtime's report of an
/// uncaught error is among them.
pub(super) fn guest_error(lines: &[String]) -> Option<GuestError> {
    python(lines)
        .or_else(|| javascript(lines))
        .or_else(|| javascript_value(lines))
        .or_else(|| python_value(lines))
        .or_else(|| rust(lines))
}

/// A Python traceback: the exception line, and the innermost frame. The tail may have lost
/// the traceback's first lines: componentize-py's own line after it is enough.
fn python(lines: &[String]) -> Option<GuestError> {
    let end = lines
        .iter()
        .rposition(|l| l.contains("Python function threw an unexpected exception"))
        .or_else(|| {
            let header = lines
                .iter()
                .any(|l| l.trim() == "Traceback (most recent call last):");
            header.then_some(lines.len())
        })?;
    let body = &lines[..end];
    // The traceback ends where the runtime's panic begins.
    let body = &body[..body
        .iter()
        .rposition(|l| l.contains("panicked at "))
        .unwrap_or(body.len())];
    let at = body
        .iter()
        .rposition(|l| !l.trim().is_empty() && !l.starts_with(' '))?;
    let exception = body[at].as_str();
    if exception.starts_with("Traceback") {
        return None;
    }
    let frame = body[..at]
        .iter()
        .rfind(|l| l.trim_start().starts_with("File \""))
        .map(|l| l.trim());
    let message = match frame {
        Some(frame) => format!("Python exception: {exception} ({frame})"),
        None => format!("Python exception: {exception}"),
    };
    let report_at = body[..at]
        .iter()
        .position(|l| l.trim() == "Traceback (most recent call last):" || l.starts_with(' '))
        .unwrap_or(at);
    Some(GuestError { message, report_at })
}

/// jco's report of a JavaScript exception: its message, and its stack's frames.
fn javascript(lines: &[String]) -> Option<GuestError> {
    let at = lines
        .iter()
        .rposition(|l| l.contains("Exception(Exception { message: "))?;
    let line = &lines[at];
    let message = debug_string_after(line, "message: Some(")?;
    let stack = debug_string_after(line, "stack: Some(").unwrap_or_default();
    let frames: Vec<&str> = stack
        .lines()
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    let message = if frames.is_empty() {
        format!("JavaScript exception: {message}")
    } else {
        format!("JavaScript exception: {message} ({})", frames.join("; "))
    };
    Some(GuestError {
        message,
        report_at: panic_line(&lines[..at]).unwrap_or(at),
    })
}

/// jco's runtime refusing a value the plugin returned: `expected string: FromJs { from:
/// "int", to: "string", .. }`. It does not say which field; TypeScript's types do, at build.
fn javascript_value(lines: &[String]) -> Option<GuestError> {
    let at = lines.iter().rposition(|l| l.contains("FromJs { from: "))?;
    let from = debug_string_after(&lines[at], "from: ")?;
    let to = debug_string_after(&lines[at], "to: ")?;
    Some(GuestError {
        message: format!(
            "JavaScript value of the wrong type in what the plugin returned: expected {to}, \
             got {from} (TypeScript names the field at build: `screamer plugin new --lang \
             typescript`)"
        ),
        report_at: panic_line(&lines[..=at]).unwrap_or(at),
    })
}

/// componentize-py's runtime refusing a value the plugin returned: it unwraps the Python
/// `TypeError` of the conversion (`PyErr { type: <class 'TypeError'>, value:
/// TypeError("'int' object is not an instance of 'str'"), .. }`). It does not say which
/// field either.
fn python_value(lines: &[String]) -> Option<GuestError> {
    const ERROR: &str = "PyErr { type: <class 'TypeError'>, value: TypeError(";
    let at = lines.iter().rposition(|l| l.contains(ERROR))?;
    let text = debug_string_after(&lines[at], ERROR)?;
    Some(GuestError {
        message: format!("Python value of the wrong type in what the plugin returned: {text}"),
        report_at: panic_line(&lines[..=at]).unwrap_or(at),
    })
}

/// A Rust panic: `panicked at FILE:LINE:COL:` then the message on the next line.
fn rust(lines: &[String]) -> Option<GuestError> {
    let report_at = panic_line(lines)?;
    let at = lines.iter().rposition(|l| l.contains("panicked at "))?;
    let rest = lines[at].split_once("panicked at ")?.1;
    // The SDK's panic hook logs location and message as one line (its newline escaped);
    // Rust's default hook prints the message on the next line.
    let (location, message) = match rest.split_once(":\\n") {
        Some((location, message)) => (location, message.trim()),
        None => (
            rest.trim_end_matches(':'),
            lines.get(at + 1).map_or("", |m| m.trim()),
        ),
    };
    Some(GuestError {
        message: format!("Rust panic: {message} ({location})"),
        report_at,
    })
}

/// The last `thread '..' panicked at` line, where a runtime's report begins (after the
/// empty line Rust prints before it, which is kept with it).
fn panic_line(lines: &[String]) -> Option<usize> {
    let at = lines.iter().rposition(|l| l.contains("panicked at "))?;
    Some(if at > 0 && lines[at - 1].trim().is_empty() {
        at - 1
    } else {
        at
    })
}

/// The Rust debug-printed string literal that starts right after `marker` in `line`,
/// unescaped (`\"`, `\\`, `\n`, `\t`, `\u{..}`; the guest's stderr line was escaped again by
/// the host, so `\n` arrives as the two characters).
fn debug_string_after(line: &str, marker: &str) -> Option<String> {
    let start = line.find(marker)? + marker.len();
    let mut chars = line[start..].strip_prefix('"')?.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                    out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_python_traceback_gives_the_exception_and_its_innermost_frame() {
        let said = lines(
            "Traceback (most recent call last):\n  File \"/0/app.py\", line 12, in process\n    \
             helper()\n  File \"/0/app.py\", line 28, in helper\nValueError: refusing 00000001\n\n\
             thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:\n\
             Python function threw an unexpected exception\n\
             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            guest_error(&said),
            Some(GuestError {
                message: "Python exception: ValueError: refusing 00000001 \
                          (File \"/0/app.py\", line 28, in helper)"
                    .to_owned(),
                report_at: 0
            })
        );
        // The traceback's first lines lost from the tail: the runtime's line is enough.
        let error = guest_error(&said[2..]).unwrap();
        assert!(error.message.starts_with("Python exception: ValueError"));
        assert_eq!(error.report_at, 0);
    }

    #[test]
    fn a_javascript_exception_gives_its_message_and_stack() {
        let said = lines(
            "\nthread '<unnamed>' (1) panicked at crates/runtime/src/interpreter.rs:51:31:\n\
             Failed to call 'process': Exception(Exception { message: Some(\"boom \\\"x\\\" on 1\"), \
             stack: Some(\"    at <anonymous> (/app.js:15:72)\\n    at process (/app.js:12:18)\\n\") })\n\
             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            guest_error(&said),
            Some(GuestError {
                message: "JavaScript exception: boom \"x\" on 1 \
                          (at <anonymous> (/app.js:15:72); at process (/app.js:12:18))"
                    .to_owned(),
                report_at: 0
            })
        );
    }

    #[test]
    fn a_rust_panic_gives_its_message_and_location() {
        let said = lines(
            "a warning first\n\nthread '<unnamed>' (1) panicked at src/lib.rs:42:9:\n\
             chaos: panic after 2\n\
             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            guest_error(&said),
            Some(GuestError {
                message: "Rust panic: chaos: panic after 2 (src/lib.rs:42:9)".to_owned(),
                report_at: 1
            })
        );
        // The SDK's hook: one log line, its newline escaped by the host.
        let said = lines("panic: panicked at src/lib.rs:117:17:\\nchaos: shouted\npartial");
        assert_eq!(
            guest_error(&said).unwrap().message,
            "Rust panic: chaos: shouted (src/lib.rs:117:17)"
        );
        assert_eq!(guest_error(&lines("just a warning")), None);
    }

    #[test]
    fn a_python_value_of_the_wrong_type_says_what_was_expected() {
        let said = lines(
            "\nthread '<unnamed>' panicked at runtime/src/lib.rs:1494:89:\n\
             called `Result::unwrap()` on an `Err` value: PyErr { type: <class 'TypeError'>, \
             value: TypeError(\"'int' object is not an instance of 'str'\"), traceback: None }",
        );
        let error = guest_error(&said).unwrap();
        assert_eq!(
            error.message,
            "Python value of the wrong type in what the plugin returned: 'int' object is not \
             an instance of 'str'"
        );
        assert_eq!(error.report_at, 0);
    }

    #[test]
    fn a_javascript_value_of_the_wrong_type_says_what_was_expected() {
        let said = lines(
            "\nthread '<unnamed>' (1) panicked at crates/runtime/src/call.rs:119:33:\n\
             expected string: FromJs { from: \"int\", to: \"string\", message: None }",
        );
        let error = guest_error(&said).unwrap();
        assert!(
            error.message.starts_with(
                "JavaScript value of the wrong type in what the plugin returned: \
                 expected string, got int"
            ),
            "{}",
            error.message
        );
        assert_eq!(error.report_at, 0);
    }
}
