//! Running a delegate plugin: found by its type in `CNI_PATH`, given the
//! configuration on stdin and the `CNI_*` variables, killed if it runs
//! longer than the timeout. Its stderr is passed through (the runtime logs
//! it); its error JSON becomes our error unchanged.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::conf::check_plugin_name;
use super::error::{code, CniError};

/// Finds plugin `kind` in `cni_path` (`:`-separated directories): the first
/// executable regular file of that name.
pub fn find(kind: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    check_plugin_name("type", kind)?;
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    for dir in &dirs {
        let candidate = Path::new(dir).join(kind);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(CniError::config(format!(
        "failed to find plugin {kind:?} in CNI_PATH [{}]",
        dirs.join(", ")
    )))
}

/// Input up to this size is written to the delegate's stdin directly: it
/// fits in a pipe's buffer (at least 64 KiB on Linux), so it cannot block.
const SMALL_INPUT: usize = 16 * 1024;

/// The `CNI_*` variables a delegate gets (the rest of the environment is
/// inherited). `None` removes the variable.
#[derive(Debug, Clone, Default)]
pub struct DelegateEnv {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
}

/// Runs `plugin` with `stdin`; on success its stdout. A nonzero exit
/// returns the plugin's CNI error as is, or error 100 if it printed none;
/// running past `timeout` kills it (error 100).
pub fn exec(
    plugin: &Path,
    env: &DelegateEnv,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CniError> {
    let name = plugin.file_name().map_or_else(
        || plugin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", &env.command);
    for (k, v) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        match v {
            Some(v) if !v.is_empty() => cmd.env(k, v),
            _ => cmd.env_remove(k),
        };
    }
    // Its own process group, so a timeout kills what it started too.
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::DELEGATE_FAILED,
                format!("cannot run delegate {}: {e}", plugin.display()),
            )
        })?;
    // The input fits in the pipe's buffer (else a thread writes it, as the
    // plugin may write before it has read everything).
    if let Some(mut pipe) = child.stdin.take() {
        if stdin.len() <= SMALL_INPUT {
            let _ = pipe.write_all(stdin);
        } else {
            let input = stdin.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
    }
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        CniError::new(
            code::DELEGATE_FAILED,
            format!(
                "delegate {name} {} did not finish within {:.0?}: killed",
                env.command, timeout
            ),
        )
    };
    // Read on a thread, so that a plugin that hangs (or leaves something
    // holding its stdout) cannot hang us: on timeout the thread is left
    // behind and the plugin's process group is killed.
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = pipe.read_to_end(&mut out).map(|_| out);
            let _ = tx.send(read);
        });
    }
    let stdout = match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            kill(&mut child);
            return Err(CniError::io(
                format!("cannot read delegate {name}'s output"),
                &e,
            ));
        }
        Err(_) => {
            kill(&mut child);
            return Err(timed_out());
        }
    };
    let status = wait_until(&mut child, deadline).ok_or_else(timed_out)?;
    if status.success() {
        return Ok(stdout);
    }
    Err(CniError::from_json(&stdout).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&stdout);
        let text: String = text.trim().chars().take(400).collect();
        CniError::new(
            code::DELEGATE_FAILED,
            format!("delegate {name} {} failed ({status})", env.command),
        )
        .details(text)
    }))
}

/// Sends SIGKILL to process group `pgid` (std cannot signal a group, so
/// `kill(1)` does it; only ever on a timeout or a failure).
fn kill_group(pgid: u32) {
    let group = format!("-{pgid}");
    for kill in ["/bin/kill", "/usr/bin/kill"] {
        let done = Command::new(kill)
            .args(["-KILL", "--", &group])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if done.is_ok() {
            break;
        }
    }
}

/// Kills the delegate's process group, then the delegate (not reaped yet,
/// so the group is still its own), and reaps it.
fn kill(child: &mut Child) {
    kill_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for the child (whose stdout is closed, so it is exiting) until
/// `deadline`; kills it then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    let mut pause = Duration::from_micros(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_micros(500));
            }
            _ => {
                kill(child);
                return None;
            }
        }
    }
}

/// The spec versions plugin `plugin` supports (its `VERSION` reply).
pub fn supported_versions(
    plugin: &Path,
    cni_path: &str,
    timeout: Duration,
) -> Result<Vec<String>, CniError> {
    let env = DelegateEnv {
        command: "VERSION".into(),
        path: Some(cni_path.to_owned()),
        ..DelegateEnv::default()
    };
    let out = exec(plugin, &env, br#"{"cniVersion":"1.1.0"}"#, timeout)?;
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(rename = "supportedVersions", default)]
        supported: Vec<String>,
    }
    let reply: Reply = serde_json::from_slice(&out).map_err(|e| {
        CniError::internal(format!(
            "cannot read the VERSION reply of {}: {e}",
            plugin.display()
        ))
    })?;
    Ok(reply.supported)
}
