//! Running the iptables tools: one process with optional stdin, stdout
//! captured (readers) or discarded (writers), stderr kept for errors, and a
//! timeout enforced by one watchdog thread for the whole process.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::NatError;
use crate::NatMode;

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
pub(crate) fn run_writer(
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
