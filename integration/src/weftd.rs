//! Runs the real `weftd` binary in a node namespace, as the DaemonSet would
//! on a node: its own net-conf.json, subnet file and log under a directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use weft_netns::Netns;

/// flannel's default `net-conf.json` with the given backend JSON.
pub fn net_conf(network: &str, backend: &str, nftables: bool) -> String {
    format!(r#"{{"Network":"{network}","EnableNFTables":{nftables},"Backend":{backend}}}"#)
}

/// `net-conf.json` for a cluster of these families: IPv4's `Network`
/// (or `EnableIPv4: false`), `EnableIPv6` with `IPv6Network`, as flannel's
/// dual-stack documentation writes it.
pub fn net_conf_families(networks: &[ipnet::IpNet], backend: &str, nftables: bool) -> String {
    let mut fields = Vec::new();
    match networks.iter().find(|n| matches!(n, ipnet::IpNet::V4(_))) {
        Some(v4) => fields.push(format!(r#""Network":"{v4}""#)),
        None => fields.push(r#""EnableIPv4":false"#.to_string()),
    }
    if let Some(v6) = networks.iter().find(|n| matches!(n, ipnet::IpNet::V6(_))) {
        fields.push(format!(r#""EnableIPv6":true,"IPv6Network":"{v6}""#));
    }
    format!(
        r#"{{{},"EnableNFTables":{nftables},"Backend":{backend}}}"#,
        fields.join(",")
    )
}

/// How weftd learns its node: `NODE_NAME`, or (when `extra` holds
/// `--pod=<namespace>/<name>`, a test-only marker removed from the flags)
/// `POD_NAMESPACE` and `POD_NAME` as flannel's manifest sets them.
fn identity(node: &str, extra: &[&str]) -> Vec<(String, String)> {
    match extra.iter().find_map(|a| a.strip_prefix("--pod=")) {
        Some(pod) => {
            let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
            vec![
                ("POD_NAMESPACE".into(), ns.into()),
                ("POD_NAME".into(), name.into()),
            ]
        }
        None => vec![("NODE_NAME".into(), node.into())],
    }
}

/// Every weftd this process started and has not stopped yet (for a signal
/// handler that must not leave them running).
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Kills every weftd this process started (from a Ctrl-C handler; the
/// data plane they made goes with their namespaces).
pub fn kill_all() {
    let pids = RUNNING
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn forget(pid: u32) {
    if let Ok(mut r) = RUNNING.lock() {
        r.retain(|p| *p != pid);
    }
}

/// One running weftd.
pub struct Weftd {
    child: Option<Child>,
    /// The node's name.
    pub node: String,
    /// Where its files are.
    pub dir: PathBuf,
}

impl Weftd {
    /// Starts `binary` in `ns` for node `node`: `--kube-subnet-mgr
    /// --kubeconfig-file <kubeconfig> --iface eth0 --ip-masq` plus `extra`,
    /// with `net-conf.json`, `subnet.env` and `weftd.log` in `dir`.
    pub fn start(
        binary: &Path,
        ns: &Netns,
        node: &str,
        kubeconfig: &Path,
        net_conf: &str,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Weftd> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("net-conf.json");
        std::fs::write(&conf, net_conf)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("weftd.log"))?;
        let bin = binary.to_string_lossy().to_string();
        let kc = kubeconfig.to_string_lossy().to_string();
        let conf_s = conf.to_string_lossy().to_string();
        let subnet = dir.join("subnet.env").to_string_lossy().to_string();
        let mut args = vec![
            bin.as_str(),
            "--kube-subnet-mgr",
            "--kubeconfig-file",
            kc.as_str(),
            "--net-config-path",
            conf_s.as_str(),
            "--subnet-file",
            subnet.as_str(),
            "--iface",
            "eth0",
            "--ip-masq",
        ];
        args.extend(extra.iter().filter(|a| !a.starts_with("--pod=")));
        let child = ns
            .command(&args)
            .envs(identity(node, extra))
            .env("RUST_LOG", "info,weft=debug,weft_overlay=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start weftd for {node}"))?;
        if let Ok(mut r) = RUNNING.lock() {
            r.push(child.id());
        }
        Ok(Weftd {
            child: Some(child),
            node: node.to_string(),
            dir: dir.to_path_buf(),
        })
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weftd.log")).unwrap_or_default()
    }

    /// The subnet file, once written.
    pub fn subnet_env(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("subnet.env")).ok()
    }

    /// Waits until the subnet file exists (weftd is ready) or `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            if self.subnet_env().is_some() {
                return Ok(t0.elapsed());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    anyhow::bail!(
                        "weftd for {} exited with {status}:\n{}",
                        self.node,
                        self.log()
                    );
                }
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "weftd for {} not ready after {timeout:?}:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits (SIGKILL after 10 s); the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    /// SIGKILL now (a crash, an OOM kill): nothing of weftd's runs after it.
    pub fn kill(mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        forget(child.id());
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Waits up to `timeout` for it to exit by itself; its status, or `None`
    /// if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let t0 = Instant::now();
        loop {
            let child = self.child.as_mut().context("already stopped")?;
            if let Some(status) = child.try_wait()? {
                forget(child.id());
                self.child = None;
                return Ok(Some(status));
            }
            if t0.elapsed() > timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        forget(child.id());
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

/// The HTTP status code (`"200"`, `"503"`, or `""` when nothing answers) of
/// `path` on weftd's health server at `port` in `ns`.
pub fn health_status(ns: &Netns, port: u16, path: &str) -> String {
    ns.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-m",
        "2",
        &format!("http://127.0.0.1:{port}{path}"),
    ])
    .unwrap_or_default()
}
