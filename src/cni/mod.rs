//! `weft-cni`: the CNI plugin, a drop-in for flannel's (installed as
//! `/opt/cni/bin/flannel`, so a flannel conflist works unchanged).
//!
//! A meta-plugin: it reads the node's subnet file (`/run/flannel/subnet.env`,
//! written by weftd), generates a `bridge` configuration with `host-local`
//! IPAM ([`conf::NetConf::delegate_config`]) and delegates to the reference
//! plugins found in `CNI_PATH`. Only std and serde: no async runtime.
//!
//! Commands (spec 0.1.0 – 1.1.0):
//! - `ADD` saves the delegate configuration under `<dataDir>/<containerID>`
//!   (dir 0700, file 0600, atomic and synced) before running the delegate,
//!   and prints the delegate's result converted to the requested version
//!   ([`result`]).
//! - `DEL` runs the delegate with the saved configuration; succeeds when
//!   there is none; removes it only when the delegate succeeded.
//! - `CHECK` (0.4.0+; older versions: error 1, as libcni's skel) — flannel's
//!   is a no-op; weft's requires the saved configuration (else error 3) and
//!   `prevResult`, checks that the subnet file still holds the subnet the
//!   container was added in (else error 101), and runs the delegate's CHECK
//!   with the saved configuration and `prevResult` (bridge checks the
//!   interfaces, addresses and routes; routes without `gw` are given the
//!   gateway the bridge programmed them with, see
//!   [`commands::fill_route_gateways`]).
//! - `STATUS` (1.1.0): error 50 while the subnet file is missing or invalid
//!   or the plugins are not in `CNI_PATH`, so the runtime reports the network
//!   not ready instead of failing sandboxes (flannel#2232).
//! - `GC` (1.1.0): see [`gc`]; releases host-local reservations itself
//!   because the reference host-local has no GC (flannel#1416).
//! - `VERSION`: every version from 0.1.0 to 1.1.0.
//!
//! Decisions:
//! - The delegate runs with the requested `cniVersion`, except that 1.1.0 is
//!   delegated as 1.0.0 ([`version::Version::for_delegate`]): Debian's
//!   plugins (1.1.1) stop at 1.0.0 and 1.1.0 changes nothing in ADD/DEL/CHECK
//!   or the result layout; STATUS and GC go to the delegate (as 1.1.0) only
//!   if its `VERSION` lists 1.1.0.
//! - Errors are the spec's JSON on stdout with exit status 1: 1 unsupported
//!   version or command, 3 unknown container (CHECK), 4 bad `CNI_*`
//!   variables (including a container ID that is not
//!   `[A-Za-z0-9][A-Za-z0-9_.-]*`, which keeps paths inside `dataDir`), 5 I/O,
//!   6 undecodable input, 7 invalid configuration (the message names the
//!   field; also an invalid subnet file, which sends the user to the weftd
//!   pod), 11 subnet file missing (weftd not ready), 50 STATUS not ready, 100
//!   delegate failed without a CNI error or timed out, 101 subnet changed
//!   (CHECK), 999 internal. A delegate's own CNI error is passed through.
//! - A delegate is killed, with its process group, after 60 s
//!   (`WEFT_CNI_DELEGATE_TIMEOUT`, in seconds, changes it).
//! - Address families: the subnet file may configure IPv4, IPv6 or both
//!   ([`subnet_file`]); the delegate gets a host-local range and the
//!   cluster routes of each, and results, DEL, CHECK and GC carry both.
//! - Stricter than flannel: `name` is required and must be a valid network
//!   name (it is host-local's directory name), plugin types must be plain
//!   file names, a cluster-network route already in `ipam.routes` is not
//!   added twice, and a family's subnet-file key without its partner is
//!   refused.

pub mod commands;
pub mod conf;
pub mod delegate;
pub mod env;
pub mod error;
pub mod gc;
pub mod result;
pub mod store;
pub mod subnet_file;
pub mod types;
pub mod version;

use std::io::Read;

pub use conf::NetConf;
pub use env::{CniEnv, Command};
pub use error::CniError;
pub use result::CniResult;
pub use subnet_file::SubnetFile;
pub use version::Version;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Stdout (a result, the VERSION reply, an error, or nothing).
    pub stdout: String,
    /// Exit status 0 (else 1).
    pub success: bool,
}

impl Outcome {
    /// Success with `stdout`.
    pub fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            success: true,
        }
    }

    /// Failure with `err` as the spec's JSON.
    pub fn error(err: &CniError, cni_version: Version) -> Outcome {
        Outcome {
            stdout: err.to_json(cni_version.as_str()),
            success: false,
        }
    }
}

/// Runs one plugin invocation: `env` as given, the netconf read from
/// `stdin` (not read for VERSION). Never panics on bad input.
pub fn run(env: &CniEnv, stdin: impl Read) -> Outcome {
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, Version::LATEST),
    };
    if command == Command::Version {
        return Outcome::ok(version::version_reply());
    }
    let mut bytes = Vec::new();
    let limit = u64::try_from(conf::MAX_STDIN).unwrap_or(u64::MAX) + 1;
    if let Err(e) = stdin.take(limit).read_to_end(&mut bytes) {
        return Outcome::error(&CniError::io("cannot read stdin", &e), Version::LATEST);
    }
    let reply_version = conf::peek_version(&bytes).unwrap_or(Version::LATEST);
    match dispatch(command, env, &bytes) {
        Ok(stdout) => Outcome::ok(stdout.unwrap_or_default()),
        Err(e) => Outcome::error(&e, reply_version),
    }
}

/// Checks the environment and the netconf, then runs `command`; its stdout
/// (`None`: nothing to print).
pub fn dispatch(command: Command, env: &CniEnv, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let checked = env.check(command)?;
    if command == Command::Version {
        return Ok(Some(version::version_reply()));
    }
    let conf = NetConf::parse(stdin)?;
    match command {
        Command::Add => commands::add(&checked, &conf).map(Some),
        Command::Del => commands::del(&checked, &conf).map(|()| None),
        Command::Check => commands::check(&checked, &conf).map(|()| None),
        Command::Status => commands::status(&checked, &conf).map(|()| None),
        Command::Gc => gc::gc(&checked, &conf).map(|()| None),
        Command::Version => Ok(Some(version::version_reply())),
    }
}
