//! Errors of the NAT subsystem.

use crate::rules::RuleError;

/// Why NAT rules could not be read or written. The rules in place stay as
/// they were: every apply is one transaction.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The desired rule set is invalid (bad network or subnet).
    #[error("invalid NAT input: {0}")]
    Rules(#[from] RuleError),
    /// A binary the mode needs is missing.
    #[error("{binary} not found: install the iptables package (mode {mode})")]
    MissingBinary {
        /// The binary, e.g. `iptables-legacy-restore`.
        binary: String,
        /// The mode that needs it.
        mode: &'static str,
    },
    /// A command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The kernel refused a netlink request or batch.
    #[error("kernel refused {what}: {detail}")]
    Kernel {
        /// What was sent, e.g. `the nftables batch for table ip flannel-ipv4`.
        what: String,
        /// The error (errno, offending message).
        detail: String,
    },
    /// A reconcile of the loop failed (shared with its counters).
    #[error(transparent)]
    Failing(std::sync::Arc<NatError>),
    /// The NAT loop is not running (any more).
    #[error("the NAT loop has stopped")]
    Stopped,
    /// Input/output error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
