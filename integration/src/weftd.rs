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

    /// What a failure message shows of the log: every warning and error,
    /// the longest pause between two lines (where a slow start hid), and
    /// the last `tail` lines.
    pub fn log_digest(&self, tail: usize) -> String {
        digest(&self.log(), tail)
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

/// weftd's `/metrics` in `ns` on `port`, parsed as Prometheus text (by
/// prometheus-parse: a line it cannot read is an error here).
pub fn scrape(ns: &Netns, port: u16) -> anyhow::Result<Metrics> {
    let text = ns.exec(&[
        "curl",
        "-sf",
        "-m",
        "2",
        &format!("http://127.0.0.1:{port}/metrics"),
    ])?;
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter())?;
    // Every non-comment line must have become a sample (or a bucket).
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            // Buckets, _sum and _count of a histogram.
            prometheus_parse::Value::Histogram(b) => b.len(),
            _ => 1,
        })
        .sum::<usize>();
    anyhow::ensure!(
        parsed == samples,
        "{parsed} of {samples} sample lines parsed:\n{text}"
    );
    Ok(Metrics { scrape, text })
}

/// A parsed scrape.
pub struct Metrics {
    /// The samples.
    pub scrape: prometheus_parse::Scrape,
    /// The text as served.
    pub text: String,
}

impl Metrics {
    /// The samples `name` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
        self.scrape
            .samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    /// The value of the sample `name` whose labels include `labels`
    /// (counters, gauges and untyped alike); `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).find_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
    }

    /// The observations of histogram `name` with `labels` (its `+Inf` bucket).
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) => b
                .iter()
                .find(|c| c.less_than.is_infinite())
                .map(|c| c.count),
            _ => None,
        })
    }
}

/// See [`Weftd::log_digest`].
fn digest(log: &str, tail: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = String::new();
    let loud: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    if !loud.is_empty() {
        out += "warnings and errors:\n";
        for l in loud.iter().rev().take(20).rev() {
            out += l;
            out.push('\n');
        }
    }
    // Timestamps lead tracing's lines (RFC 3339); a pause of a second or
    // more is shown with the lines on either side.
    let stamps: Vec<(usize, f64)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| seconds_of_day(l).map(|t| (i, t)))
        .collect();
    let longest = stamps
        .windows(2)
        .map(|w| (w[0].0, w[1].0, w[1].1 - w[0].1))
        .max_by(|a, b| a.2.total_cmp(&b.2));
    if let Some((a, b, gap)) = longest.filter(|g| g.2 >= 1.0) {
        out += &format!(
            "the longest pause, {gap:.1} s, between:\n{}\n{}\n",
            lines[a], lines[b]
        );
    }
    out += "the end:\n";
    let start = lines.len().saturating_sub(tail);
    out += &lines[start..].join("\n");
    out
}

/// The seconds since midnight of a line starting `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn seconds_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let h: f64 = t.get(0..2)?.parse().ok()?;
    let m: f64 = t.get(3..5)?.parse().ok()?;
    let s: f64 = t.get(6..)?.trim_end_matches('Z').parse().ok()?;
    (line.as_bytes().get(10) == Some(&b'T')).then_some(h * 3600.0 + m * 60.0 + s)
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn the_digest_shows_warnings_the_longest_pause_and_the_end() {
        let log = "2026-12-07T06:42:08.100000Z  INFO a\n\
                   2026-12-07T06:42:08.200000Z  WARN b\n\
                   2026-12-07T06:42:38.300000Z  INFO c\n\
                   2026-12-07T06:42:38.400000Z  INFO d\n";
        let d = digest(log, 1);
        assert!(
            d.contains("warnings and errors:\n2026-12-07T06:42:08.200000Z  WARN b\n"),
            "{d}"
        );
        assert!(d.contains("the longest pause, 30.1 s, between:\n2026-12-07T06:42:08.200000Z  WARN b\n2026-12-07T06:42:38.300000Z  INFO c"), "{d}");
        assert!(
            d.ends_with("the end:\n2026-12-07T06:42:38.400000Z  INFO d"),
            "{d}"
        );
    }
}
