//! Errors of the NAT subsystem.

use crate::family::Family;
use crate::rules::{RuleError, RuleSet};

/// Why NAT rules could not be read or written. The rules in place stay as
/// they were: every apply is one transaction.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The desired rule set is invalid (bad network or subnet).
    #[error("invalid NAT input: {0}")]
    Rules(#[from] RuleError),
    /// A rule set was given to a backend (or loop) of the other family.
    #[error("{rules} rules given to the {backend} NAT backend")]
    WrongFamily {
        /// The backend's family.
        backend: Family,
        /// The rule set's family.
        rules: Family,
    },
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

/// [`NatError::WrongFamily`] unless `rules` are of the backend's `family`.
pub(crate) fn ensure_family(family: Family, rules: &RuleSet) -> Result<(), NatError> {
    if rules.family == family {
        Ok(())
    } else {
        Err(NatError::WrongFamily {
            backend: family,
            rules: rules.family,
        })
    }
}
