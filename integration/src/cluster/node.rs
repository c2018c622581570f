//! One Kubernetes node: a network namespace on the switch, plus a mount
//! and UTS namespace kept alive by a holder process, in which containerd,
//! kubelet and kube-proxy run as on a real machine.
//!
//! Inside the node's mount namespace, `/run`, `/var/lib`, `/var/log` and
//! `/opt` are the node's own directories and `/etc` is an overlay of the
//! machine's `/etc` with the node's changes on top, so a DaemonSet's
//! hostPath volumes (`/opt/cni/bin`, `/etc/cni/net.d`, `/run/flannel`, …)
//! are that node's, and nothing is written to the machine's files. `/sys`
//! is this network namespace's sysfs with the machine's cgroups kept; the
//! three kernel sysctls kubelet wants (global, not per namespace) are files
//! bound over `/proc/sys/…` that kubelet only checks
//! (`protectKernelDefaults`). Pods live in the cgroup `/<cgroup root>` of
//! every v1 hierarchy, made here and removed on stop.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use weft_netns::{Netns, Switch};

use super::bins::KubeBins;
use super::control::{wait_output, CLUSTER_CIDR};
use super::image::OciArchive;
use super::pki::{self, Identity};
use super::proc::{wait_for, Proc};
use super::reap;

/// Which `iptables` the node's own tools (kubelet, kube-proxy) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// `iptables` is iptables-legacy (an old distribution).
    Legacy,
    /// `iptables` is iptables-nft (Debian's default).
    Nft,
}

/// kube-proxy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// `mode: iptables`.
    Iptables,
    /// `mode: nftables`.
    Nftables,
}

impl ProxyMode {
    fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its name (and hostname).
    pub name: String,
    /// Its address on the switch.
    pub ip: Ipv4Addr,
    /// Its `iptables`.
    pub firewall: Firewall,
    /// kube-proxy's mode.
    pub proxy: ProxyMode,
}

impl NodeSpec {
    /// `legacy/iptables`-style summary for listings.
    pub fn describe(&self) -> String {
        let fw = match self.firewall {
            Firewall::Legacy => "iptables-legacy",
            Firewall::Nft => "iptables-nft",
        };
        format!("iptables = {fw}, kube-proxy mode {}", self.proxy.as_str())
    }
}

/// What the nodes share: where the API is and how to reach it.
#[derive(Debug, Clone)]
pub struct NodeContext<'a> {
    /// The binaries.
    pub bins: &'a KubeBins,
    /// The API's URL.
    pub api_url: String,
    /// The API server's PKI (CA key for client certificates).
    pub pki: PathBuf,
    /// The switch's address (the nodes' default gateway).
    pub gateway: Ipv4Addr,
    /// The switch network's prefix length.
    pub prefix: u8,
    /// Images imported into containerd before kubelet starts.
    pub images: &'a [OciArchive],
    /// The pause image's reference (containerd's sandbox image).
    pub pause: &'a str,
    /// A prefix unique to this cluster, for cgroup names.
    pub unique: &'a str,
}

/// Sysctls kubelet checks with `protectKernelDefaults` (path, value).
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The iptables alternatives a legacy node re-points.
const IPTABLES_ALTERNATIVES: [&str; 6] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
];

/// A running node.
#[derive(Debug)]
pub struct ClusterNode {
    /// What it is.
    pub spec: NodeSpec,
    /// Its network namespace.
    pub ns: Netns,
    dir: PathBuf,
    holder: Option<Proc>,
    cgroup_root: String,
    containerd: Option<Proc>,
    kubelet: Option<Proc>,
    proxy: Option<Proc>,
}

impl ClusterNode {
    /// Creates the node and starts containerd (with `ctx.images`
    /// imported), kubelet and kube-proxy. Does not wait for Ready.
    pub fn start(
        spec: NodeSpec,
        switch: &Switch,
        dir: &Path,
        ctx: &NodeContext<'_>,
    ) -> anyhow::Result<ClusterNode> {
        let ns = Netns::new(&spec.name)?;
        switch.attach(&ns, "eth0", &format!("{}/{}", spec.ip, ctx.prefix))?;
        ns.ip(&["route", "add", "default", "via", &ctx.gateway.to_string()])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let dir = dir.join(&spec.name);
        let cgroup_root = format!("{}-{}", ctx.unique, spec.name);
        let mut node = ClusterNode {
            spec,
            ns,
            dir,
            holder: None,
            cgroup_root,
            containerd: None,
            kubelet: None,
            proxy: None,
        };
        node.prepare_dirs()?;
        reap::make_cgroups(&node.cgroup_root)?;
        node.start_holder()?;
        node.start_containerd(ctx)?;
        node.write_configs(ctx)?;
        node.start_kubelet(ctx)?;
        node.start_proxy(ctx)?;
        Ok(node)
    }

    /// The node's own root for `path` as seen from the machine (e.g.
    /// `/opt/cni/bin` → `<dir>/root/opt/cni/bin`); `None` for a path that
    /// is not per node.
    pub fn host_path(&self, path: &str) -> Option<PathBuf> {
        for (inside, outside) in [
            ("/run", "run"),
            ("/var/lib", "var-lib"),
            ("/var/log", "var-log"),
            ("/opt", "opt"),
            ("/etc", "etc-upper"),
        ] {
            if let Some(rest) = path.strip_prefix(inside) {
                let rest = rest.trim_start_matches('/');
                return Some(self.dir.join("root").join(outside).join(rest));
            }
        }
        None
    }

    /// Its directory (configs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The holder's pid (`nsenter -t <pid> -m -n -u` enters the node).
    pub fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map_or(0, Proc::pid)
    }

    /// The cgroup root of the node's pods.
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    fn prepare_dirs(&self) -> anyhow::Result<()> {
        for sub in [
            "root/run",
            "root/var-lib",
            "root/var-log",
            "root/opt/cni/bin",
            "root/etc-upper",
            "root/etc-work",
            "mnt/cgroup",
            "sysctl",
            "pki",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        // The CNI plugins a flannel conflist delegates to, as a node has them.
        let cni_bin = self.dir.join("root/opt/cni/bin");
        for plugin in ["bridge", "host-local", "portmap", "loopback"] {
            let src = Path::new("/usr/lib/cni").join(plugin);
            if !src.is_file() {
                bail!(
                    "no CNI plugin {} (apt-get install containernetworking-plugins)",
                    src.display()
                );
            }
            std::fs::copy(&src, cni_bin.join(plugin))?;
        }
        Ok(())
    }

    /// The holder's script: the node's mounts, then it sleeps until stopped.
    fn holder_script(&self) -> anyhow::Result<String> {
        let d = self.dir.display();
        let mut s = String::from("set -eu\n");
        writeln!(s, "hostname {}", self.spec.name)?;
        // A sysfs of this network namespace, keeping the machine's cgroups.
        writeln!(s, "mount --rbind /sys/fs/cgroup {d}/mnt/cgroup")?;
        writeln!(s, "umount -l /sys")?;
        writeln!(s, "mount -t sysfs sysfs /sys")?;
        writeln!(s, "mount --move {d}/mnt/cgroup /sys/fs/cgroup")?;
        for (inside, own) in [
            ("/run", "run"),
            ("/var/lib", "var-lib"),
            ("/var/log", "var-log"),
            ("/opt", "opt"),
        ] {
            writeln!(s, "mount --bind {d}/root/{own} {inside}")?;
        }
        writeln!(
            s,
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/root/etc-upper,workdir={d}/root/etc-work /etc"
        )?;
        for (key, want) in KUBELET_SYSCTLS {
            let proc_path = Path::new("/proc/sys").join(key);
            let Ok(have) = std::fs::read_to_string(&proc_path) else {
                continue;
            };
            if have.trim() != want {
                let file = self.dir.join("sysctl").join(key.replace('/', "."));
                std::fs::write(&file, format!("{want}\n"))?;
                writeln!(s, "mount --bind {} {}", file.display(), proc_path.display())?;
            }
        }
        if self.spec.firewall == Firewall::Legacy {
            for alt in IPTABLES_ALTERNATIVES {
                let target = alt.replacen("tables", "tables-legacy", 1);
                writeln!(s, "ln -sfn /usr/sbin/{target} /etc/alternatives/{alt}")?;
            }
        }
        writeln!(s, "touch {d}/ready")?;
        writeln!(s, "exec -a '{} {d}' sleep infinity", reap::HOLDER_NAME)?;
        Ok(s)
    }

    fn start_holder(&mut self) -> anyhow::Result<()> {
        let script = self.holder_script()?;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path().display()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "slave",
            ])
            .args(["--", "bash", "-c", &script]);
        let mut holder = Proc::spawn("holder", c, &self.dir.join("holder.log"))?;
        let ready = self.dir.join("ready");
        let waited = wait_for("the node's namespaces", Duration::from_secs(10), || {
            if !holder.running() {
                bail!("the holder exited: {}", holder.log_tail(10));
            }
            Ok(ready.exists())
        });
        self.holder = Some(holder);
        waited.map(drop)
    }

    /// `nsenter` into the node (mount, network, UTS) running `program`.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, program: S) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid().to_string())
            .args(["-m", "-n", "-u", "--"])
            .arg(program);
        c
    }

    /// Runs `args` inside the node (at most 60 s); its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("no command")?;
        let child = self
            .command(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {program} on {}", self.spec.name))?;
        let out = wait_output(child, Duration::from_secs(60))
            .with_context(|| format!("{} on {}", args.join(" "), self.spec.name))?;
        if !out.status.success() {
            bail!(
                "{} on {} failed: {}",
                args.join(" "),
                self.spec.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_containerd(&mut self, ctx: &NodeContext<'_>) -> anyhow::Result<()> {
        let config = self.dir.join("containerd.toml");
        std::fs::write(&config, containerd_config(ctx.pause))?;
        let mut c = self.command("containerd");
        c.arg("--config").arg(&config);
        let mut p = Proc::spawn("containerd", c, &self.dir.join("containerd.log"))?;
        let socket = self.dir.join("root/run/containerd/containerd.sock");
        let waited = wait_for("containerd's socket", Duration::from_secs(20), || {
            if !p.running() {
                bail!("containerd exited: {}", p.log_tail(10));
            }
            Ok(socket.exists())
        });
        self.containerd = Some(p);
        waited?;
        for image in ctx.images {
            self.import(image)?;
        }
        Ok(())
    }

    /// Imports an image into the node's containerd (namespace `k8s.io`,
    /// where CRI sees it at once), named by its reference.
    pub fn import(&self, image: &OciArchive) -> anyhow::Result<()> {
        let path = image.path.to_str().context("image path not UTF-8")?;
        self.exec(&[
            "ctr",
            "--address",
            "/run/containerd/containerd.sock",
            "-n",
            "k8s.io",
            "images",
            "import",
            path,
        ])
        .map(drop)
        .with_context(|| format!("importing {}", image.reference))
    }

    fn write_configs(&self, ctx: &NodeContext<'_>) -> anyhow::Result<()> {
        let name = &self.spec.name;
        let user = format!("system:node:{name}");
        pki::kubeconfig(
            &ctx.pki,
            &self.dir.join("pki"),
            &ctx.api_url,
            Identity {
                file: "kubelet",
                user: &user,
                group: Some("system:nodes"),
            },
        )?;
        pki::kubeconfig(
            &ctx.pki,
            &self.dir.join("pki"),
            &ctx.api_url,
            Identity {
                file: "kube-proxy",
                user: "system:kube-proxy",
                group: None,
            },
        )?;
        std::fs::write(
            self.dir.join("kubelet.yaml"),
            kubelet_config(&self.spec, &self.cgroup_root),
        )?;
        std::fs::write(
            self.dir.join("kube-proxy.yaml"),
            proxy_config(
                &self.spec,
                &self.dir.join("pki/kube-proxy.kubeconfig"),
                ctx.prefix,
            ),
        )?;
        Ok(())
    }

    fn start_kubelet(&mut self, ctx: &NodeContext<'_>) -> anyhow::Result<()> {
        let bin = ctx.bins.path("kubelet", &self.dir)?;
        let mut c = self.command(&bin);
        c.arg(format!(
            "--config={}",
            self.dir.join("kubelet.yaml").display()
        ))
        .arg(format!(
            "--kubeconfig={}",
            self.dir.join("pki/kubelet.kubeconfig").display()
        ))
        .arg(format!("--hostname-override={}", self.spec.name))
        .arg(format!("--node-ip={}", self.spec.ip))
        .arg("--v=1");
        self.kubelet = Some(Proc::spawn("kubelet", c, &self.dir.join("kubelet.log"))?);
        Ok(())
    }

    fn start_proxy(&mut self, ctx: &NodeContext<'_>) -> anyhow::Result<()> {
        let bin = ctx.bins.path("kube-proxy", &self.dir)?;
        let mut c = self.command(&bin);
        c.arg(format!(
            "--config={}",
            self.dir.join("kube-proxy.yaml").display()
        ))
        .arg("--v=1");
        self.proxy = Some(Proc::spawn(
            "kube-proxy",
            c,
            &self.dir.join("kube-proxy.log"),
        )?);
        Ok(())
    }

    /// Whether containerd, kubelet and kube-proxy still run; the last log
    /// lines of one that does not.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for p in [&mut self.containerd, &mut self.kubelet, &mut self.proxy]
            .into_iter()
            .flatten()
        {
            if !p.running() {
                bail!(
                    "{} on {} exited:\n{}",
                    p.name(),
                    self.spec.name,
                    p.log_tail(15)
                );
            }
        }
        Ok(())
    }

    /// First step of a stop: kubelet goes, so nothing restarts containers.
    pub fn stop_kubelet(&mut self) {
        if let Some(mut p) = self.kubelet.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Stops everything of the node, in CLUSTER.md's order: kubelet, then
    /// every process in the node's namespaces or cgroups (by pid), then the
    /// holder (its mounts go with it), then the cgroups. The network
    /// namespace goes when the node is dropped. Idempotent.
    pub fn stop(&mut self) {
        self.stop_kubelet();
        if let Some(mut p) = self.proxy.take() {
            p.stop(Duration::from_secs(3));
        }
        let holder = self.holder_pid();
        if holder != 0 {
            reap::kill_node_processes(holder, std::slice::from_ref(&self.cgroup_root));
        }
        if let Some(mut p) = self.containerd.take() {
            p.stop(Duration::from_secs(3));
        }
        if let Some(mut p) = self.holder.take() {
            p.stop(Duration::from_secs(3));
        }
        reap::remove_cgroups(&self.cgroup_root);
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn containerd_config(pause: &str) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
"#
    )
}

fn kubelet_config(spec: &NodeSpec, cgroup_root: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
protectKernelDefaults: true
oomScoreAdj: 0
failSwapOn: false
readOnlyPort: 0
volumePluginDir: /var/lib/kubelet/volumeplugins
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 10s
"#,
        ip = spec.ip,
    )
}

fn proxy_config(spec: &NodeSpec, kubeconfig: &Path, prefix: u8) -> String {
    let network = ipnet::Ipv4Net::new(spec.ip, prefix)
        .map(|n| n.trunc().to_string())
        .unwrap_or_else(|_| format!("{}/32", spec.ip));
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: {mode}
clusterCIDR: {CLUSTER_CIDR}
hostnameOverride: {name}
bindAddress: {ip}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
oomScoreAdj: 0
nodePortAddresses: ["{network}"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
        mode = spec.proxy.as_str(),
        name = spec.name,
        ip = spec.ip,
    )
}
