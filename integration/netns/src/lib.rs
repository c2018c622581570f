//! Network-namespace kit for weft's tests, lab and benchmarks.
//!
//! Every namespace is created by this process under the name
//! `weft-<pid>-<role>[-<n>]` and deleted when its [`Netns`] is dropped
//! (also while unwinding from a panic), on Ctrl-C/SIGTERM/SIGHUP (a handler
//! is installed on first use unless the program catches those signals
//! itself; see [`cleanup_all`]) or, if the process died hard, by
//! [`sweep_stale`] in a later run.
//!
//! Nothing here changes the host's own network namespace: the only commands
//! run from it are `ip netns add`/`ip netns del`; everything else runs via
//! `ip -n <ns> …`, `ip netns exec <ns> …` or on a thread that `setns`-ed
//! into a kit namespace.
//!
//! ```no_run
//! use weft_netns::{veth, Netns};
//!
//! # fn main() -> weft_netns::Result<()> {
//! let a = Netns::new("a")?;
//! let b = Netns::new("b")?;
//! veth(&a, "eth0", &b, "eth0")?;
//! a.add_addr("eth0", "10.0.0.1/24")?;
//! b.add_addr("eth0", "10.0.0.2/24")?;
//! a.exec(&["ping", "-c1", "-W2", "10.0.0.2"])?;
//! let routes = b.ip_json(&["route", "show"])?;
//! let bound = b.run(|| async { std::net::UdpSocket::bind("10.0.0.2:0").is_ok() })?;
//! assert!(bound);
//! # Ok(()) }
//! ```
//!
//! Tests should start with [`require_netns!`] so they are skipped (with a
//! message) where namespaces cannot be created, e.g. without root.

#![warn(missing_docs)]

mod cmd;
mod error;
mod ns;
pub mod probe;
mod task;
mod topology;

pub use cmd::DEFAULT_TIMEOUT;
pub use error::{Error, Result};
#[doc(hidden)]
pub use ns::__skip;
pub use ns::{
    available, cleanup_all, cleanup_in_own_handler, prefix, sweep_stale, Netns, NETNS_DIR,
    REQUIRE_ENV,
};
pub use task::NsTask;
pub use topology::{veth, Switch};

/// Skips the current test unless network namespaces are usable here.
///
/// If [`available()`] fails, prints `SKIPPED: <test>: <reason>` to stderr
/// and returns from the enclosing function. Use `require_netns!()` in tests
/// returning `()`, or `require_netns!(value)` to return `value` (e.g.
/// `require_netns!(Ok(()))`).
#[macro_export]
macro_rules! require_netns {
    () => {
        $crate::require_netns!(())
    };
    ($ret:expr) => {
        if let ::std::result::Result::Err(reason) = $crate::available() {
            $crate::__skip(::std::module_path!(), &reason);
            return $ret;
        }
    };
}
