//! The [`Netns`] handle: naming, creation, deletion, the process-wide
//! registry, signal cleanup, the stale sweep and the availability probe.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::Duration;

use crate::cmd::{self, DEFAULT_TIMEOUT};
use crate::error::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Every namespace name starts with this, followed by `<pid>-`.
const PREFIX: &str = "weft-";

/// Longest accepted role, to keep names readable.
const MAX_ROLE_LEN: usize = 32;

/// Names of the namespaces this process has created (or is creating) and not
/// yet deleted. A name is reserved here *before* `ip netns add`, which makes
/// name allocation race-free between threads.
static REGISTRY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Suffix counter for roles that are used more than once.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, BTreeSet<String>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The prefix of every namespace this process creates: `weft-<pid>-`.
pub fn prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// A named network namespace owned by this process.
///
/// Created with [`Netns::new`]; deleted (`ip netns del`) when dropped,
/// including while unwinding from a panic. On Ctrl-C / SIGTERM every live
/// namespace is deleted by a handler installed on first use (see
/// [`cleanup_all`]).
///
/// Processes started in the namespace ([`Netns::spawn`]) and threads that
/// entered it ([`Netns::run`]) keep the namespace itself alive after its
/// name is deleted; killing/joining them is the caller's job.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    timeout: Duration,
}

impl Netns {
    /// Creates a namespace named `weft-<pid>-<role>` (plus `-<n>` if that
    /// name is taken) and brings its `lo` up.
    ///
    /// `role` may contain ASCII letters, digits, `_`, `.` and `-`, at most
    /// 32 characters. The first call in a process also installs the
    /// Ctrl-C/SIGTERM cleanup handler and runs [`sweep_stale`].
    pub fn new(role: &str) -> Result<Netns> {
        validate_role(role)?;
        init();
        let name = allocate_name(role);
        let path = Path::new(NETNS_DIR).join(&name);
        if let Err(e) = cmd::run("ip", &["netns", "add", &name], DEFAULT_TIMEOUT) {
            registry().remove(&name);
            return Err(e);
        }
        // From here on, Drop deletes the namespace if anything fails.
        let ns = Netns {
            name,
            path,
            timeout: DEFAULT_TIMEOUT,
        };
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// The namespace's name, as used with `ip netns` / `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount, `/var/run/netns/<name>`; open it for
    /// `setns(2)`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The timeout applied to every command run through this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the command timeout (default 20 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `ip -n <name> <args…>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let full = self.ip_args(&[], args);
        cmd::run("ip", &full, self.timeout)
    }

    /// Runs `ip -n <name> -j <args…>` and parses the JSON it prints.
    /// Empty output (some `ip` versions print nothing instead of `[]`)
    /// yields an empty array.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let full = self.ip_args(&["-j"], args);
        let out = cmd::run("ip", &full, self.timeout)?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).map_err(|source| Error::Json {
            cmd: cmd::display("ip", &full),
            source,
        })
    }

    fn ip_args<'a>(&'a self, opts: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(opts);
        full.extend_from_slice(args);
        full
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        full
    }

    /// Runs `ip netns exec <name> <args…>`, fails on a nonzero exit, and
    /// returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let full = self.exec_args(args);
        cmd::run("ip", &full, self.timeout)
    }

    /// Like [`exec`](Self::exec) but returns the whole [`Output`] whatever
    /// the exit status. Errors only if the command cannot be run or times
    /// out.
    pub fn exec_status(&self, args: &[&str]) -> Result<Output> {
        let full = self.exec_args(args);
        cmd::output("ip", &full, self.timeout)
    }

    /// A [`Command`] for `ip netns exec <name> <args…>`, to configure
    /// (stdio, environment) and spawn yourself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(self.exec_args(args));
        command
    }

    /// Starts a long-running process in the namespace (`ip netns exec
    /// <name> <args…>`) with stdin closed and stdout/stderr inherited.
    /// The caller must kill and wait for it. Use [`command`](Self::command)
    /// for other stdio.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        self.command(args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| Error::Io {
                context: format!(
                    "cannot start `{}`",
                    cmd::display("ip", &self.exec_args(args))
                ),
                source,
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("weft-netns: could not delete namespace {}: {e}", self.name);
        }
        registry().remove(&self.name);
    }
}

fn delete(name: &str) -> Result<()> {
    cmd::run("ip", &["netns", "del", name], DEFAULT_TIMEOUT).map(drop)
}

fn validate_role(role: &str) -> Result<()> {
    let reason = if role.is_empty() {
        "empty"
    } else if role.len() > MAX_ROLE_LEN {
        "longer than 32 characters"
    } else if !role
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        "only ASCII letters, digits, '-', '_' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: role.to_owned(),
        reason,
    })
}

/// Picks `weft-<pid>-<role>`, or `weft-<pid>-<role>-<n>` if that is taken
/// (by this process or by a leftover on disk), and reserves it.
fn allocate_name(role: &str) -> String {
    let base = format!("{}{role}", prefix());
    let mut reg = registry();
    let mut candidate = base.clone();
    while reg.contains(&candidate) || Path::new(NETNS_DIR).join(&candidate).exists() {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        candidate = format!("{base}-{n}");
    }
    reg.insert(candidate.clone());
    candidate
}

/// One-time per-process setup: the signal handler and the stale sweep.
/// Concurrent callers wait until it is done, so the sweep never races with
/// this process's own namespaces being created.
fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        install_signal_cleanup();
        if let Err(e) = sweep_stale() {
            eprintln!("weft-netns: stale namespace sweep failed: {e}");
        }
    });
}

/// Set by [`cleanup_in_own_handler`].
static OWN_HANDLER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells the kit that this process's own signal handler calls
/// [`cleanup_all`] (as the lab's does): the kit then installs none and
/// says nothing about it. Call before the first namespace is made.
pub fn cleanup_in_own_handler() {
    OWN_HANDLER.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Installs the Ctrl-C/SIGTERM/SIGHUP handler that runs [`cleanup_all`]
/// and exits with code 130 — unless the process already catches one of
/// those signals (its own handler, e.g. the lab's), in which case it says
/// so on stderr and leaves them alone. Ignored signals (`SIG_IGN`, as in
/// background jobs of scripts) are taken over.
fn install_signal_cleanup() {
    if OWN_HANDLER.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let handler = || {
        cleanup_all();
        std::process::exit(130);
    };
    let result = if catches_termination_signals() {
        ctrlc::try_set_handler(handler)
    } else {
        ctrlc::set_handler(handler)
    };
    if let Err(e) = result {
        eprintln!(
            "weft-netns: not installing the Ctrl-C/SIGTERM cleanup handler ({e}); \
             call weft_netns::cleanup_all() from your own handler"
        );
    }
}

/// Whether this process has a handler for SIGINT, SIGTERM or SIGHUP, read
/// from the `SigCgt` mask in `/proc/self/status` (no `sigaction` needed).
/// If that cannot be read, assume yes, so nobody's handler is overwritten.
fn catches_termination_signals() -> bool {
    use nix::sys::signal::Signal;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    let Some(mask) = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return true;
    };
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]
        .iter()
        .any(|&sig| mask & (1u64 << (sig as i32 - 1)) != 0)
}

/// Deletes every namespace this process created and has not deleted yet,
/// plus any other `weft-<own pid>-…` namespace on disk.
///
/// Meant for signal handlers: the built-in Ctrl-C/SIGTERM handler calls it
/// and then exits with code 130. Programs with their own handler (which
/// prevents the built-in one from being installed) should call it there.
/// Holds the registry lock until it returns, so no new namespace is
/// registered meanwhile; the [`Netns`] handles left behind will merely fail
/// to delete again when dropped.
pub fn cleanup_all() {
    let mut reg = registry();
    let own = prefix();
    let mut names: BTreeSet<String> = std::mem::take(&mut *reg);
    names.extend(list_on_disk().into_iter().filter(|n| n.starts_with(&own)));
    for name in names {
        // Best effort: some may not exist (any more).
        let _ = delete(&name);
    }
}

/// Names of all named network namespaces (entries of [`NETNS_DIR`]).
fn list_on_disk() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

/// The pid in a `weft-<pid>-<role>` name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, role) = rest.split_once('-')?;
    if role.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Deletes leftovers of earlier runs: every `weft-<pid>-…` namespace whose
/// pid is not a running process (no `/proc/<pid>`), and every
/// `weft-<own pid>-…` namespace this process did not create (left by an
/// earlier process that had the same pid, common in containers).
///
/// Returns the names it deleted. Runs automatically on the first
/// [`Netns::new`] of a process.
///
/// Only meaningful when `/proc` and [`NETNS_DIR`] belong to the same pid
/// namespace/host as the processes that created the namespaces.
pub fn sweep_stale() -> Result<Vec<String>> {
    let me = std::process::id();
    let mut deleted = Vec::new();
    let mut first_error = None;
    for name in list_on_disk() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        let stale = if pid == me {
            !registry().contains(&name)
        } else {
            !Path::new("/proc").join(pid.to_string()).exists()
        };
        if !stale {
            continue;
        }
        match delete(&name) {
            Ok(()) => deleted.push(name),
            // Another process sweeping concurrently got there first.
            Err(_) if !Path::new(NETNS_DIR).join(&name).exists() => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if deleted.is_empty() => Err(e),
        Some(e) => {
            eprintln!("weft-netns: stale sweep: {e}");
            Ok(deleted)
        }
        None => Ok(deleted),
    }
}

/// Whether network namespaces can be used here, probed once per process:
/// `ip` must exist, and creating a namespace, running a command in it
/// (`ip netns exec`) and deleting it must work.
///
/// Returns the reason as text if not, for [`require_netns!`](crate::require_netns).
pub fn available() -> std::result::Result<(), String> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> std::result::Result<(), String> {
    match Command::new("ip").arg("-V").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(format!(
                "`ip -V` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("the `ip` command (iproute2) is not installed or not in PATH".into())
        }
        Err(e) => return Err(format!("cannot run `ip`: {e}")),
    }
    let ns = Netns::new("probe").map_err(|e| match e {
        Error::Command { stderr, .. } => {
            format!("cannot create network namespaces (not root or no CAP_SYS_ADMIN?): {stderr}")
        }
        other => format!("cannot create network namespaces: {other}"),
    })?;
    ns.exec(&["true"])
        .map_err(|e| format!("`ip netns exec` does not work here: {e}"))?;
    Ok(())
}

/// Prints `SKIPPED: <test>: <reason>` for [`require_netns!`](crate::require_netns).
///
/// `<test>` is the current thread's name (libtest names test threads after
/// the test), else `fallback`. Written straight to the stderr handle rather
/// than with `eprintln!`, so libtest's output capture does not hide it.
///
/// With [`REQUIRE_ENV`] set (CI sets it), a skip is a failure: the test
/// panics instead, so a run where namespaces cannot be made cannot pass.
#[doc(hidden)]
pub fn __skip(fallback: &str, reason: &str) {
    use std::io::Write;
    let test = match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => fallback.to_owned(),
    };
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: network namespaces are required ({REQUIRE_ENV} is set) but {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}

/// Set (to anything but empty or `0`) to make every namespace test fail
/// instead of skipping where namespaces cannot be made.
pub const REQUIRE_ENV: &str = "WEFT_REQUIRE_NETNS";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("weft-123-n1"), Some(123));
        assert_eq!(owner_pid("weft-123-n1-4"), Some(123));
        assert_eq!(owner_pid("weft-123-"), None);
        assert_eq!(owner_pid("weft-abc-n1"), None);
        assert_eq!(owner_pid("weft--n1"), None);
        assert_eq!(owner_pid("other-123-n1"), None);
        assert_eq!(owner_pid("weft-+12-n1"), None);
    }

    #[test]
    fn roles() {
        assert!(validate_role("n1").is_ok());
        assert!(validate_role("node_1.a-b").is_ok());
        assert!(validate_role("").is_err());
        assert!(validate_role("a/b").is_err());
        assert!(validate_role(&"x".repeat(33)).is_err());
    }
}
