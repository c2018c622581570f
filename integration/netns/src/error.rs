//! The kit's error type.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while driving network namespaces.
///
/// Command-related variants carry the full command line, so a failing test
/// shows exactly what was run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The full command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// A command did not finish in time and was killed.
    #[error("`{cmd}` timed out after {timeout:?} and was killed")]
    Timeout {
        /// The full command line.
        cmd: String,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// An I/O error (spawning a command, reading a file, starting a thread).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A command's output was not the JSON it should have been.
    #[error("`{cmd}` printed invalid JSON: {source}")]
    Json {
        /// The full command line.
        cmd: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// A command's output parsed but did not contain what was expected.
    #[error("`{cmd}`: unexpected output: {detail}")]
    Unexpected {
        /// The full command line.
        cmd: String,
        /// What was missing or wrong.
        detail: String,
    },

    /// `setns(2)` into a namespace failed.
    #[error("setns into {path} failed: {source}")]
    Setns {
        /// The namespace file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// A role, interface or namespace name was not acceptable.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// `Result` with the kit's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
