//! The control plane, on the switch namespace: kube-apiserver and etcd
//! (the shared start script, with the endpoint reconciler on and client
//! certificates trusted), kube-controller-manager (assigns pod CIDRs from
//! the cluster network, signs service-account tokens, publishes the root
//! CA) and kube-scheduler; and `kubectl` as admin.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use weft_netns::Netns;

use super::bins::KubeBins;
use super::pki::{self, Identity};
use super::proc::Proc;
use crate::kube_api::{ApiOptions, RealApiServer};

/// The API server's port.
pub const API_PORT: u16 = 6443;
/// The cluster network (pod CIDRs are /24s of it).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service network (fixed by the start script's certificate).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// kube-apiserver + etcd.
    pub api: RealApiServer,
    controller_manager: Proc,
    scheduler: Proc,
    kubectl: Kubectl,
    dir: PathBuf,
}

impl ControlPlane {
    /// Starts everything inside `ns` with the API on `ip`, state under `dir`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, bins: &KubeBins, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let options = ApiOptions {
            script_dir: bins.script_dir(),
            endpoint_reconciler_lease: true,
            extra_args: vec![
                "--client-ca-file={state}/pki/ca.crt".into(),
                // Appended to the script's RBAC (the flag is a list): RBAC, Node.
                "--authorization-mode=Node".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--allow-privileged=true".into(),
            ],
            binaries: vec![
                ("kube-apiserver".into(), bins.path("kube-apiserver", dir)?),
                ("etcd".into(), bins.path("etcd", dir)?),
            ],
        };
        let api = RealApiServer::start_with(ns, ip, API_PORT, &options)
            .context("kube-apiserver did not start")?;
        let pki_dir = api.state_dir().join("pki");
        let url = api.url();
        let cm_config = pki::kubeconfig(
            &pki_dir,
            &dir.join("pki"),
            &url,
            Identity {
                file: "controller-manager",
                user: "system:kube-controller-manager",
                group: None,
            },
        )?;
        let sched_config = pki::kubeconfig(
            &pki_dir,
            &dir.join("pki"),
            &url,
            Identity {
                file: "scheduler",
                user: "system:kube-scheduler",
                group: None,
            },
        )?;
        let cm_bin = bins.path("kube-controller-manager", dir)?;
        let flex = dir.join("flex-volumes");
        std::fs::create_dir_all(&flex)?;
        let cm_args = [
            format!("--kubeconfig={}", cm_config.display()),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--root-ca-file={}", pki_dir.join("ca.crt").display()),
            format!(
                "--service-account-private-key-file={}",
                pki_dir.join("sa.key").display()
            ),
            format!("--flex-volume-plugin-dir={}", flex.display()),
            format!(
                "--cert-dir={}",
                dir.join("controller-manager-certs").display()
            ),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--node-monitor-grace-period=20s".into(),
            // Each controller acts as its own service account (with the
            // built-in controller roles), as kubeadm runs it.
            "--use-service-account-credentials=true".into(),
            "--v=1".into(),
        ];
        let controller_manager = Proc::spawn(
            "kube-controller-manager",
            in_netns(ns, &cm_bin, &cm_args),
            &dir.join("controller-manager.log"),
        )?;
        let sched_bin = bins.path("kube-scheduler", dir)?;
        let sched_args = [
            format!("--kubeconfig={}", sched_config.display()),
            format!("--cert-dir={}", dir.join("scheduler-certs").display()),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--v=1".into(),
        ];
        let scheduler = Proc::spawn(
            "kube-scheduler",
            in_netns(ns, &sched_bin, &sched_args),
            &dir.join("scheduler.log"),
        )?;
        let kubectl = Kubectl {
            netns: ns.path().to_path_buf(),
            bin: bins.path("kubectl", dir)?,
            kubeconfig: api.admin_kubeconfig(),
            cache: dir.join("kubectl-cache"),
        };
        Ok(ControlPlane {
            api,
            controller_manager,
            scheduler,
            kubectl,
            dir: dir.to_path_buf(),
        })
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The API's URL.
    pub fn url(&self) -> String {
        self.api.url()
    }

    /// The API server's PKI directory (CA, service-account keys).
    pub fn pki_dir(&self) -> PathBuf {
        self.api.state_dir().join("pki")
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the controller-manager and the scheduler still run; their
    /// last log lines if not.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for p in [&mut self.controller_manager, &mut self.scheduler] {
            if !p.running() {
                bail!("{} exited:\n{}", p.name(), p.log_tail(15));
            }
        }
        Ok(())
    }

    /// Stops the scheduler, the controller-manager and the API server.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.scheduler.stop(Duration::from_secs(3));
        self.controller_manager.stop(Duration::from_secs(3));
    }
}

/// `binary args…` inside network namespace `ns` (only the network: no
/// remount of /sys as `ip netns exec` does).
fn in_netns(ns: &Netns, binary: &Path, args: &[String]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(binary)
        .args(args);
    c
}

/// `kubectl` with the admin kubeconfig, run inside the switch namespace
/// (where the API is), its cache in the cluster's directory.
#[derive(Debug, Clone)]
pub struct Kubectl {
    netns: PathBuf,
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    /// The command for `kubectl args…`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(&self.bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache.display()))
            .args(args);
        c
    }

    /// Runs `kubectl args…` (at most 60 s) and returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_with_input(args, None)
    }

    /// Runs `kubectl args…` with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut c = self.command(args);
        c.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().context("cannot run kubectl")?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write as _;
            stdin.write_all(text.as_bytes())?;
        }
        let out = wait_output(child, Duration::from_secs(60))
            .with_context(|| format!("kubectl {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `kubectl args… -o json` and parses it.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let text = self.run(&full)?;
        serde_json::from_str(&text).context("kubectl printed no JSON")
    }

    /// The shell line a person types to use this kubectl.
    pub fn shell_line(&self) -> String {
        format!(
            "nsenter --net={} -- {} --kubeconfig={} --cache-dir={}",
            self.netns.display(),
            self.bin.display(),
            self.kubeconfig.display(),
            self.cache.display()
        )
    }
}

/// Waits for `child` at most `timeout` (then kills it), reading its output
/// meanwhile (so a large output cannot block it).
pub fn wait_output(
    child: std::process::Child,
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            bail!("timed out after {timeout:?}")
        }
    }
}
