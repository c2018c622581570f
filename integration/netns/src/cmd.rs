//! Running external commands with a timeout, capturing their output.

use std::io::Read;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Default timeout for every command the kit runs.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for the output pipes to close after the child exited.
///
/// Normally they close at once; a grandchild that was left running in the
/// background (`sh -c 'server &'`) keeps them open, and we do not want to
/// wait for it.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Renders a command line for error messages, quoting where needed.
pub(crate) fn display(program: &str, args: &[&str]) -> String {
    let mut out = quote(program);
    for arg in args {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `program args…` with stdin closed, captures stdout and stderr, and
/// kills it if it is still running after `timeout`.
///
/// A nonzero exit is *not* an error here; see [`check`].
pub(crate) fn output(program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let cmd = display(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Io {
            context: format!("cannot start `{cmd}`"),
            source,
        })?;

    // Drain both pipes on helper threads so a chatty child cannot block on a
    // full pipe while we wait for it. Chunks are appended to shared buffers,
    // so whatever arrived is kept even if a pipe never closes.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let buffers = [
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    ];
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let mut readers = 0;
    for (pipe, buffer) in pipes.into_iter().zip(&buffers) {
        let Some(pipe) = pipe else { continue };
        let buffer = Arc::clone(buffer);
        let done_tx = done_tx.clone();
        let spawned = thread::Builder::new()
            .name("netns-cmd-pipe".into())
            .spawn(move || {
                drain(pipe, &buffer);
                let _ = done_tx.send(());
            });
        if let Err(source) = spawned {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Io {
                context: format!("cannot start a pipe reader for `{cmd}`"),
                source,
            });
        }
        readers += 1;
    }
    drop(done_tx);

    let status = wait_with_deadline(&mut child, &cmd, timeout)?;

    let grace_end = Instant::now() + PIPE_GRACE;
    for _ in 0..readers {
        let left = grace_end.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let [stdout, stderr] = buffers.map(|b| std::mem::take(&mut *lock(&b)));
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Copies `pipe` into `buffer` chunk by chunk until EOF or an error (which
/// just truncates the captured output).
fn drain(mut pipe: Box<dyn Read + Send>, buffer: &Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => lock(buffer).extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    cmd: &str,
    timeout: Duration,
) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Io {
                    context: format!("cannot wait for `{cmd}`"),
                    source,
                });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                cmd: cmd.to_owned(),
                timeout,
            });
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Turns an unsuccessful [`Output`] into [`Error::Command`].
pub(crate) fn check(program: &str, args: &[&str], out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            cmd: display(program, args),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs a command, fails on nonzero exit, returns its stdout as text.
pub(crate) fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let out = check(program, args, output(program, args, timeout)?)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(display("ip", &["-n", "x", "link"]), "ip -n x link");
        assert_eq!(
            display("sh", &["-c", "echo 'hi' there"]),
            r"sh -c 'echo '\''hi'\'' there'"
        );
        assert_eq!(display("a", &[""]), "a ''");
    }

    #[test]
    fn timeout_kills() {
        let start = Instant::now();
        let err = output("sleep", &["5"], Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn failure_is_reported() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], DEFAULT_TIMEOUT).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn background_grandchild_does_not_hang() {
        let start = Instant::now();
        let out = run("sh", &["-c", "echo hi; sleep 3 &"], DEFAULT_TIMEOUT).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(out, "hi\n");
    }
}
