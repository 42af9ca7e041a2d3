//! Why a plugin gave a record no outcome.
//!
//! Place in the flow: made where the call fails (the instance) or where the chain refuses
//! what came back, kept typed to the dead letter (whose `error` is its display) and to the
//! metrics (which count failures by [`PluginFailure::kind`]). Every variant displays as one
//! line; what the guest logged during a failed call follows the reason.

use std::fmt;
use std::time::Duration;

pub use crate::observe::PluginFailureKind;

/// Why a plugin did not give a record an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    /// The plugin failed the record itself (its `fail` outcome), with its message.
    #[error("{0}")]
    Failed(String),
    /// The call ran longer than the plugin's deadline.
    #[error("deadline exceeded: the call ran longer than {limit:?}{said}")]
    Deadline {
        /// The plugin's deadline.
        limit: Duration,
        /// What the guest logged.
        said: Said,
    },
    /// The call hit a cap: the plugin's memory, or the bytes of outcomes lifted out of one
    /// call.
    #[error("{what}{said}")]
    Limit {
        /// Which cap, and by how much.
        what: String,
        /// What the guest logged.
        said: Said,
    },
    /// The instance trapped (a panic, an out-of-bounds access, `unreachable`), or could not
    /// start.
    #[error("{message}{said}")]
    Trap {
        /// The trap's message.
        message: String,
        /// What the guest logged.
        said: Said,
    },
    /// What the plugin returned is refused: not one outcome per record, an invalid record,
    /// more emissions than allowed.
    #[error("{0}")]
    Refused(String),
}

impl PluginFailure {
    /// The metric label for this failure.
    pub fn kind(&self) -> PluginFailureKind {
        match self {
            PluginFailure::Failed(_) => PluginFailureKind::Failed,
            PluginFailure::Deadline { .. } => PluginFailureKind::Deadline,
            PluginFailure::Limit { .. } => PluginFailureKind::Limit,
            PluginFailure::Trap { .. } => PluginFailureKind::Trap,
            PluginFailure::Refused(_) => PluginFailureKind::Refused,
        }
    }

    /// Whether the call failed, so the instance is gone (a refusal or the plugin's own
    /// `fail` leave it as it was).
    pub fn dropped_instance(&self) -> bool {
        matches!(
            self,
            PluginFailure::Deadline { .. }
                | PluginFailure::Limit { .. }
                | PluginFailure::Trap { .. }
        )
    }
}

/// What the guest logged during a failed call; shown after the reason, on the same line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Said(String);

impl Said {
    /// Guest log text, on one line.
    pub fn new(text: &str) -> Self {
        Said(text.replace('\n', " "))
    }
}

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " (the plugin said: {})", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_one_line_with_what_the_plugin_said() {
        let deadline = PluginFailure::Deadline {
            limit: Duration::from_millis(300),
            said: Said::new("looping\nfor ever"),
        };
        assert_eq!(
            deadline.to_string(),
            "deadline exceeded: the call ran longer than 300ms (the plugin said: looping for ever)"
        );
        assert_eq!(deadline.kind().as_str(), "deadline");
        assert!(deadline.dropped_instance());
        let failed = PluginFailure::Failed("no such user".into());
        assert_eq!(failed.to_string(), "no such user");
        assert!(!failed.dropped_instance());
    }
}
