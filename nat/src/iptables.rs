//! iptables-legacy and iptables-nft: flannel's chains `FLANNEL-POSTRTG` (nat)
//! and `FLANNEL-FWD` (filter), jumped to from `POSTROUTING` and `FORWARD`.
//!
//! Reading is one `iptables-*-save` (skipped when weft's chains certainly
//! do not exist: see `certainly_absent`); writing is one
//! `iptables-*-restore --noflush -w`: the chain bodies are declared (which
//! empties them) and refilled, missing jump rules appended, duplicates and
//! chains of a switched-off option removed — all in one transaction per
//! table, never rule by rule.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::NatError;
use crate::nft_dump;
use crate::render::{self, iptables_jump, iptables_place};
use crate::rules::{Chain, RuleSet};
use crate::{NatBackend, NatMode, Snapshot};

/// Which iptables binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `iptables-legacy*`.
    Legacy,
    /// `iptables-nft*`.
    Nft,
}

/// The iptables backend of one flavor.
#[derive(Debug, Clone)]
pub struct IptablesBackend {
    flavor: Flavor,
    timeout: Duration,
    /// A line appended to every restore payload (tests of atomicity only).
    poison: Option<String>,
}

impl IptablesBackend {
    /// `iptables-legacy`.
    pub fn legacy() -> Self {
        IptablesBackend {
            flavor: Flavor::Legacy,
            timeout: Duration::from_secs(10),
            poison: None,
        }
    }

    /// `iptables-nft`.
    pub fn nft() -> Self {
        IptablesBackend {
            flavor: Flavor::Nft,
            timeout: Duration::from_secs(10),
            poison: None,
        }
    }

    /// A backend whose restores carry one rule the kernel refuses, to show
    /// that a failed apply leaves the previous rules in place. Tests only.
    #[doc(hidden)]
    pub fn with_bad_line_for_tests(mode: NatMode) -> Self {
        let mut b = if mode == NatMode::IptablesLegacy {
            Self::legacy()
        } else {
            Self::nft()
        };
        b.poison = Some("-A FLANNEL-POSTRTG -j NO-SUCH-TARGET".into());
        b
    }

    fn binary(&self, tool: &str) -> String {
        match self.flavor {
            Flavor::Legacy => format!("iptables-legacy{tool}"),
            Flavor::Nft => format!("iptables-nft{tool}"),
        }
    }

    /// Whether none of weft's (or flannel's) chains can exist, known without
    /// running a process: for iptables-legacy, no table at all has been
    /// instantiated in this network namespace; for iptables-nft, no table of
    /// family `ip` holds a chain of that name (one netlink dump) (a jump needs its target
    /// chain, so no jump can exist either). `false` when unsure: then
    /// `iptables-save` is read. True on a fresh node before anything made
    /// rules, and for the flavor a host does not use. Must be called from a
    /// thread in the namespace to look at.
    pub fn certainly_absent(&self) -> bool {
        match self.flavor {
            Flavor::Legacy => {
                // The calling thread's namespace (weft's loop thread may have
                // setns'd). No such file: ip_tables is not even loaded.
                match std::fs::read_to_string("/proc/thread-self/net/ip_tables_names") {
                    Ok(names) => names.trim().is_empty(),
                    Err(e) => {
                        e.kind() == std::io::ErrorKind::NotFound
                            && std::path::Path::new("/proc/thread-self/net").is_dir()
                    }
                }
            }
            Flavor::Nft => matches!(
                nft_dump::ip_chain_names("reading the chains of family ip"),
                Ok(Some(names)) if !names.iter().any(|n| OUR_CHAINS.contains(&n.as_str()))
            ),
        }
    }

    /// The `iptables-save` output of the nat and filter tables.
    pub fn save(&self) -> Result<String, NatError> {
        run(&self.binary("-save"), &[], None, self.timeout, self.mode())
    }

    fn restore(&self, payload: &str) -> Result<(), NatError> {
        let poisoned;
        let payload = match &self.poison {
            Some(line) => {
                poisoned = payload.replacen("COMMIT\n", &format!("{line}\nCOMMIT\n"), 1);
                poisoned.as_str()
            }
            None => payload,
        };
        tracing::debug!(mode = %self.mode(), %payload, "iptables-restore");
        run_writer(
            &self.binary("-restore"),
            &["--noflush", "-w", "5"],
            payload,
            self.timeout,
            self.mode(),
        )
    }
}

/// weft's (and flannel's) chain names.
const OUR_CHAINS: [&str; 2] = [render::POSTRTG_CHAIN, render::FWD_CHAIN];

/// What `iptables-save` shows of weft's chains, per table.
#[derive(Debug, Default)]
struct Seen {
    /// (table, chain) declared.
    chains: Vec<(String, String)>,
    /// (table, line) jump rules into weft's chains.
    jumps: Vec<(String, String)>,
    /// (table, line) rules inside weft's chains, in order.
    rules: Vec<(String, String)>,
}

fn parse_save(save: &str) -> Seen {
    let ours = OUR_CHAINS;
    let mut seen = Seen::default();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if ours.contains(&name) {
                seen.chains.push((table.clone(), name.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if ours.contains(&chain) {
                seen.rules.push((table.clone(), line.to_string()));
            } else if ours.iter().any(|c| line.ends_with(&format!("-j {c}"))) {
                seen.jumps.push((table.clone(), line.to_string()));
            }
        }
    }
    seen
}

impl Seen {
    /// Back from the canonical lines of [`Seen::snapshot`].
    fn from_snapshot(snapshot: &Snapshot) -> Seen {
        let ours = OUR_CHAINS;
        let mut seen = Seen::default();
        for line in &snapshot.0 {
            let Some((table, rest)) = line.split_once(' ') else {
                continue;
            };
            if let Some(name) = rest.strip_prefix(':') {
                seen.chains.push((table.to_string(), name.to_string()));
            } else {
                let chain = rest
                    .strip_prefix("-A ")
                    .and_then(|r| r.split_whitespace().next());
                if chain.is_some_and(|c| ours.contains(&c)) {
                    seen.rules.push((table.to_string(), rest.to_string()));
                } else {
                    seen.jumps.push((table.to_string(), rest.to_string()));
                }
            }
        }
        seen
    }

    /// Canonical lines: per chain of ours, its declaration, its jumps, its body.
    fn snapshot(&self) -> Snapshot {
        let mut lines = Vec::new();
        for chain in [Chain::Postrouting, Chain::Forward] {
            let (table, builtin, name) = iptables_place(chain);
            if self.chains.iter().any(|(t, c)| t == table && c == name) {
                lines.push(format!("{table} :{name}"));
            }
            for (t, j) in &self.jumps {
                if t == table
                    && j.starts_with(&format!("-A {builtin} "))
                    && j.ends_with(&format!("-j {name}"))
                {
                    lines.push(format!("{t} {j}"));
                }
            }
            for (t, r) in &self.rules {
                if t == table && r.starts_with(&format!("-A {name} ")) {
                    lines.push(format!("{t} {r}"));
                }
            }
        }
        // Jumps from elsewhere (another chain, another table) are ours to remove too.
        for (t, j) in &self.jumps {
            let known = [Chain::Postrouting, Chain::Forward].into_iter().any(|c| {
                let (table, builtin, name) = iptables_place(c);
                t == table
                    && j.starts_with(&format!("-A {builtin} "))
                    && j.ends_with(&format!("-j {name}"))
            });
            if !known {
                lines.push(format!("{t} {j}"));
            }
        }
        Snapshot(lines)
    }
}

/// The restore payload that turns `seen` into `rules`.
fn payload(rules: &RuleSet, seen: &Seen) -> String {
    let mut out = String::new();
    for (chain, list) in rules.chains() {
        let (table, builtin, name) = iptables_place(chain);
        let jump = iptables_jump(chain);
        let jumps: Vec<&String> = seen
            .jumps
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, j)| j)
            .collect();
        let declared = seen.chains.iter().any(|(t, c)| t == table && c == name);
        let mut body = String::new();
        if list.is_empty() {
            // Switched off: remove jumps, then the chain.
            for j in &jumps {
                body.push_str(&format!("-D{}\n", &j[2..]));
            }
            if declared {
                body.push_str(&format!("-F {name}\n-X {name}\n"));
            }
        } else {
            body.push_str(&format!(":{name} - [0:0]\n"));
            for r in list {
                body.push_str(&render::iptables_rule(r));
                body.push('\n');
            }
            // Keep exactly one well-formed jump from the built-in chain.
            let mut kept = false;
            for j in &jumps {
                if **j == jump && !kept {
                    kept = true;
                } else {
                    body.push_str(&format!("-D{}\n", &j[2..]));
                }
            }
            if !kept {
                body.push_str(&jump);
                body.push('\n');
            }
        }
        if !body.is_empty() {
            out.push_str(&format!("*{table}\n{body}COMMIT\n"));
        }
        let _ = builtin;
    }
    out
}

impl NatBackend for IptablesBackend {
    fn mode(&self) -> NatMode {
        match self.flavor {
            Flavor::Legacy => NatMode::IptablesLegacy,
            Flavor::Nft => NatMode::IptablesNft,
        }
    }

    fn observe(&mut self) -> Result<Snapshot, NatError> {
        if self.certainly_absent() {
            return Ok(Seen::default().snapshot());
        }
        Ok(parse_save(&self.save()?).snapshot())
    }

    fn expected(&self, rules: &RuleSet) -> Snapshot {
        let mut lines = Vec::new();
        for (chain, list) in rules.chains() {
            if list.is_empty() {
                continue;
            }
            let (table, _, name) = iptables_place(chain);
            lines.push(format!("{table} :{name}"));
            lines.push(format!("{table} {}", iptables_jump(chain)));
            for r in list {
                lines.push(format!("{table} {}", render::iptables_rule(r)));
            }
        }
        Snapshot(lines)
    }

    fn apply(&mut self, rules: &RuleSet, current: &Snapshot) -> Result<(), NatError> {
        // The observation says which chains and jump rules exist; no second read.
        let seen = Seen::from_snapshot(current);
        let payload = payload(rules, &seen);
        if payload.is_empty() {
            return Ok(());
        }
        self.restore(&payload)
    }

    fn remove(&mut self) -> Result<(), NatError> {
        let empty = RuleSet {
            postrouting: Vec::new(),
            forward: Vec::new(),
        };
        if self.certainly_absent() {
            return Ok(());
        }
        let seen = parse_save(&self.save()?);
        let payload = payload(&empty, &seen);
        if payload.is_empty() {
            return Ok(());
        }
        self.restore(&payload)
    }
}

/// One thread for the whole process that kills commands overrunning their
/// timeout, so running a command costs no thread of its own.
mod watchdog {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{self, RecvTimeoutError, Sender};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    struct Entry {
        pid: Pid,
        deadline: Instant,
        done: Arc<AtomicBool>,
        killed: Arc<AtomicBool>,
    }

    /// A watched command; [`Watch::finish`] once it has been waited for.
    pub(super) struct Watch {
        done: Arc<AtomicBool>,
        killed: Arc<AtomicBool>,
    }

    impl Watch {
        /// Stops watching; whether the command was killed for overrunning.
        pub(super) fn finish(self) -> bool {
            self.done.store(true, Ordering::SeqCst);
            self.killed.load(Ordering::SeqCst)
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            self.done.store(true, Ordering::SeqCst);
        }
    }

    /// Kills `pid` (SIGKILL) unless it is finished within `timeout`.
    pub(super) fn watch(pid: Pid, timeout: Duration) -> Watch {
        let done = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let entry = Entry {
            pid,
            deadline: Instant::now() + timeout,
            done: done.clone(),
            killed: killed.clone(),
        };
        static THREAD: OnceLock<Mutex<Sender<Entry>>> = OnceLock::new();
        let sender = THREAD.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Entry>();
            std::thread::spawn(move || {
                let mut watched: Vec<Entry> = Vec::new();
                loop {
                    watched.retain(|e| !e.done.load(Ordering::SeqCst));
                    let now = Instant::now();
                    for e in watched.iter().filter(|e| e.deadline <= now) {
                        if !e.done.load(Ordering::SeqCst) {
                            let _ = kill(e.pid, Signal::SIGKILL);
                            e.killed.store(true, Ordering::SeqCst);
                        }
                    }
                    watched.retain(|e| e.deadline > now);
                    let next = watched.iter().map(|e| e.deadline).min();
                    let got = match next {
                        Some(d) => rx.recv_timeout(d.saturating_duration_since(now)),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(e) => watched.push(e),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
            Mutex::new(tx)
        });
        if let Ok(tx) = sender.lock() {
            let _ = tx.send(entry);
        }
        Watch { done, killed }
    }
}

/// Runs a command with optional stdin and a timeout; its stdout.
pub(crate) fn run(
    binary: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
    mode: NatMode,
) -> Result<String, NatError> {
    execute(binary, args, stdin, Stdio::piped(), timeout, mode)
}

/// Like [`run`], for a writer whose stdout is not read (`/dev/null`).
fn run_writer(
    binary: &str,
    args: &[&str],
    stdin: &str,
    timeout: Duration,
    mode: NatMode,
) -> Result<(), NatError> {
    execute(binary, args, Some(stdin), Stdio::null(), timeout, mode).map(drop)
}

fn execute(
    binary: &str,
    args: &[&str],
    stdin: Option<&str>,
    stdout: Stdio,
    timeout: Duration,
    mode: NatMode,
) -> Result<String, NatError> {
    let command = format!("{binary} {}", args.join(" "))
        .trim_end()
        .to_string();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NatError::MissingBinary {
                binary: binary.to_string(),
                mode: mode.name(),
            },
            _ => NatError::Io {
                context: format!("cannot run {command}"),
                source: e,
            },
        })?;
    // The watchdog kills the command if it hangs; waiting itself blocks (no polling delay).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let watch = watchdog::watch(pid, timeout);
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| NatError::Io {
            context: format!("writing to {command}"),
            source: e,
        })?;
    }
    let out = child.wait_with_output();
    let killed = watch.finish();
    let out = out.map_err(|e| NatError::Io {
        context: format!("reading {command}"),
        source: e,
    })?;
    if killed {
        return Err(NatError::Command {
            command,
            status: format!("killed after {timeout:?}"),
            stderr: String::new(),
        });
    }
    if !out.status.success() {
        return Err(NatError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Options, SnatRules};

    #[test]
    fn a_hanging_command_is_killed_at_its_timeout_and_others_are_not() {
        let t0 = std::time::Instant::now();
        let slow = std::thread::spawn(|| {
            run(
                "sleep",
                &["5"],
                None,
                Duration::from_millis(200),
                NatMode::IptablesNft,
            )
        });
        // Commands run meanwhile, with a long timeout, are left alone.
        for _ in 0..5 {
            let out = run(
                "cat",
                &[],
                Some("x"),
                Duration::from_secs(10),
                NatMode::IptablesNft,
            );
            assert_eq!(out.unwrap(), "x");
        }
        let e = slow.join().unwrap().unwrap_err();
        assert!(
            matches!(&e, NatError::Command { status, .. } if status.contains("killed after")),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }

    fn seed() -> RuleSet {
        SnatRules::build(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.0.0/24".parse().unwrap(),
            Options::default(),
        )
        .unwrap()
    }

    const FOREIGN: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n";

    #[test]
    fn cold_payload_creates_chains_bodies_and_jumps() {
        let p = payload(&seed(), &parse_save(FOREIGN));
        assert!(
            p.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -m mark"),
            "{p}"
        );
        assert!(p.contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n*filter\n"));
        assert!(p.ends_with(
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\nCOMMIT\n"
        ));
        assert!(
            !p.contains("KUBE"),
            "foreign rules are never in the payload"
        );
    }

    #[test]
    fn observed_equal_to_expected_after_a_restore_of_the_payload() {
        // What iptables-save prints after the cold payload was restored.
        let rules = seed();
        let mut save = String::from("*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n");
        save.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
        save.push_str(&format!("{}\n", iptables_jump(Chain::Postrouting)));
        for r in &rules.postrouting {
            save.push_str(&format!("{}\n", render::iptables_rule(r)));
        }
        save.push_str("COMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n");
        save.push_str(&format!("{}\n", iptables_jump(Chain::Forward)));
        for r in &rules.forward {
            save.push_str(&format!("{}\n", render::iptables_rule(r)));
        }
        save.push_str("COMMIT\n");
        let backend = IptablesBackend::legacy();
        let snapshot = parse_save(&save).snapshot();
        assert_eq!(snapshot, backend.expected(&rules));
        let back = Seen::from_snapshot(&snapshot);
        let again = parse_save(&save);
        assert_eq!((back.chains, back.rules), (again.chains, again.rules));
        assert_eq!(
            back.jumps.len(),
            2,
            "the foreign KUBE jump is not in the snapshot"
        );
        // Present jumps are kept, not duplicated.
        let p = payload(&rules, &parse_save(&save));
        assert_eq!(p.matches("-j FLANNEL-POSTRTG").count(), 0, "{p}");
    }

    #[test]
    fn duplicate_jumps_are_removed_and_switched_off_chains_deleted() {
        let save = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n{j}\n{j}\nCOMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n{f}\n-A FLANNEL-FWD -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n",
            j = iptables_jump(Chain::Postrouting),
            f = iptables_jump(Chain::Forward)
        );
        let rules = SnatRules::build(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.0.0/24".parse().unwrap(),
            Options {
                forward: false,
                ..Options::default()
            },
        )
        .unwrap();
        let p = payload(&rules, &parse_save(&save));
        assert_eq!(
            p.matches("-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG")
                .count(),
            1,
            "{p}"
        );
        assert!(p.contains("*filter\n-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-F FLANNEL-FWD\n-X FLANNEL-FWD\nCOMMIT\n"), "{p}");
    }
}

#[cfg(test)]
mod missing_binary {
    use super::*;

    #[test]
    fn a_missing_binary_is_a_typed_error_naming_it_and_the_mode() {
        let e = run(
            "weft-no-such-iptables-save",
            &[],
            None,
            Duration::from_secs(1),
            NatMode::IptablesLegacy,
        )
        .unwrap_err();
        assert!(
            matches!(&e, NatError::MissingBinary { binary, mode } if binary == "weft-no-such-iptables-save" && *mode == "iptables-legacy")
        );
        assert!(
            e.to_string().contains("install the iptables package"),
            "{e}"
        );
    }
}
