//! A real Kubernetes API server (kube-apiserver + etcd from `shared/kube`)
//! for tests and the lab, run inside a kit namespace and stopped on drop.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weft_integration::kube_api::RealApiServer;
//! let ns = weft_netns::Netns::new("api")?;
//! let api = RealApiServer::start(&ns, "127.0.0.1".parse()?, 6443)?;
//! api.grant_flannel_role()?;
//! api.create_node("n1", "10.244.1.0/24", "172.18.0.2".parse()?, &[])?;
//! # Ok(()) }
//! ```
//!
//! Only one server per namespace: etcd always takes the namespace's
//! 127.0.0.1:2379. Admin operations run on a thread inside the namespace
//! ([`RealApiServer::admin`]); other clients use [`client`] on a thread in
//! a namespace that reaches the API (e.g. a node attached to the switch).
//!
//! Stopping SIGKILLs both processes (the state is thrown away; a graceful
//! stop would take 2-3 s) and falls back to the `stop` script. A watchdog
//! process runs `stop` and deletes the state if this process dies without
//! dropping the server (SIGKILL, Ctrl-C). The binaries are unpacked once
//! into `target/weft-kube-bin` (see `bin_cache`), saving ~2.7 s a start.

mod audit;
pub(crate) mod bin_cache;
mod locate;
mod objects;
mod process;

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::future::LocalBoxFuture;
use futures::FutureExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::Signal;
use weft_netns::{Netns, NsTask};

pub use audit::agent_requests;
pub use locate::check_dir;
pub use objects::{PolicyRule, AGENT_USER, FLANNEL_ROLE, FLANNEL_RULES};
pub use process::{all_pids, cmdline, process_alive};
use process::{read_pid, runs_own, signal_own};

/// How long `start` may take before it is given up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one admin operation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The processes `start` records, by pid file name (`<state>/<name>.pid`).
const PROCESSES: [&str; 2] = ["apiserver", "etcd"];

/// In [`ApiOptions::extra_args`], replaced by the state directory.
pub const STATE_PLACEHOLDER: &str = "{state}";

/// How [`RealApiServer::start_with`] starts the server.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// The directory holding the `start` and `stop` scripts (default:
    /// [`RealApiServer::locate`]).
    pub script_dir: Option<PathBuf>,
    /// `KUBE_ENDPOINT_RECONCILER=lease`: the `kubernetes` Service gets
    /// endpoints, which in-cluster clients need.
    pub endpoint_reconciler_lease: bool,
    /// Flags appended to kube-apiserver's (the last occurrence wins);
    /// `{state}` stands for the state directory.
    pub extra_args: Vec<String>,
    /// `kube-apiserver` and `etcd` to run instead of the script's own
    /// `.xz` files, by name.
    pub binaries: Vec<(String, PathBuf)>,
}

type Job = Box<dyn FnOnce(kube::Client) -> LocalBoxFuture<'static, ()> + Send>;

/// A running kube-apiserver (with its etcd) inside a kit namespace; see the
/// module docs. Dropping it stops both processes and deletes its state.
#[derive(Debug)]
pub struct RealApiServer {
    dir: PathBuf,
    state: Option<tempfile::TempDir>,
    state_path: PathBuf,
    url: String,
    startup: Duration,
    paused: AtomicBool,
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    worker: Option<NsTask<()>>,
    watchdog: Option<(Child, ChildStdin)>,
}

impl RealApiServer {
    /// Where the shared kube directory is: `$WEFT_KUBE_DIR`, else
    /// `<workspace>/../shared/kube`, else `./../shared/kube`. The reason
    /// as text if there is none, it is incomplete (start, stop,
    /// kube-apiserver.xz, etcd.xz) or openssl, curl or xz are missing.
    pub fn locate() -> Result<PathBuf, String> {
        locate::locate()
    }

    /// Starts kube-apiserver and etcd inside `ns` (`ip netns exec <ns>
    /// <dir>/start <state> <bind_ip> <port>`, at most 60 s), with state in
    /// a fresh temporary directory, and connects an admin client from a
    /// thread inside `ns`.
    pub fn start(ns: &Netns, bind_ip: Ipv4Addr, port: u16) -> anyhow::Result<RealApiServer> {
        Self::start_with(ns, bind_ip, port, &ApiOptions::default())
    }

    /// [`start`](Self::start) with [`ApiOptions`]: the start script's
    /// environment, extra flags and the binaries to run.
    pub fn start_with(
        ns: &Netns,
        bind_ip: Ipv4Addr,
        port: u16,
        options: &ApiOptions,
    ) -> anyhow::Result<RealApiServer> {
        let dir = match &options.script_dir {
            Some(dir) => dir.clone(),
            None => Self::locate().map_err(|e| anyhow!("no real kube-apiserver: {e}"))?,
        };
        let state = tempfile::Builder::new()
            .prefix("weft-kube-")
            .tempdir()
            .context("cannot create a state directory")?;
        // Canonical, as the script records it in the processes' arguments.
        let state_path = state.path().canonicalize()?;
        // From here on, Drop stops whatever got started.
        let mut server = RealApiServer {
            watchdog: Some(process::watchdog(&dir, &state_path)?),
            dir,
            state: Some(state),
            state_path,
            url: String::new(),
            startup: Duration::ZERO,
            paused: AtomicBool::new(false),
            jobs: None,
            worker: None,
        };
        let began = Instant::now();
        if options.binaries.is_empty() {
            bin_cache::prepare(&server.dir, &server.state_path);
        } else {
            link_binaries(&options.binaries, &server.state_path)?;
        }
        server.url = server.run_start(ns, bind_ip, port, options)?;
        server.startup = began.elapsed();
        server.spawn_worker(ns)?;
        Ok(server)
    }

    fn run_start(
        &self,
        ns: &Netns,
        bind_ip: Ipv4Addr,
        port: u16,
        options: &ApiOptions,
    ) -> anyhow::Result<String> {
        let out_path = self.state_path.join("start.out");
        let out = File::create(&out_path).context("cannot create start.out")?;
        let script = self.dir.join("start");
        let (ip, port) = (bind_ip.to_string(), port.to_string());
        let args = [path_str(&script)?, path_str(&self.state_path)?, &ip, &port];
        let mut command = ns.command(&args);
        if options.endpoint_reconciler_lease {
            command.env("KUBE_ENDPOINT_RECONCILER", "lease");
        }
        if !options.extra_args.is_empty() {
            let state = path_str(&self.state_path)?;
            let extra: Vec<String> = options
                .extra_args
                .iter()
                .map(|a| a.replace(STATE_PLACEHOLDER, state))
                .collect();
            command.env("KUBE_APISERVER_EXTRA_ARGS", extra.join(" "));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot run the start script")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("kube-apiserver not ready after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            bail!("start script failed ({status}): {}", output.trim());
        }
        output
            .lines()
            .find_map(|l| l.strip_prefix("ready: "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("start script printed no `ready:` line: {output}"))
    }

    /// A thread in `ns` that owns the admin client and runs [`Self::admin`] jobs.
    fn spawn_worker(&mut self, ns: &Netns) -> anyhow::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let kubeconfig = self.admin_kubeconfig();
        let task = ns.spawn_task(move || async move {
            let client = match client(&kubeconfig, Some(Duration::from_secs(30))).await {
                Ok(client) => client,
                Err(e) => return drop(ready_tx.send(Err(format!("{e:#}")))),
            };
            let _ = ready_tx.send(Ok(()));
            while let Some(job) = rx.recv().await {
                // A panicking job only drops its reply channel.
                let _ = std::panic::AssertUnwindSafe(job(client.clone()))
                    .catch_unwind()
                    .await;
            }
        })?;
        self.jobs = Some(tx);
        self.worker = Some(task);
        match ready_rx.recv_timeout(ADMIN_TIMEOUT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("cannot build the admin client: {e}"),
            Err(e) => bail!("admin client thread did not start: {e}"),
        }
    }

    /// Runs `f` with the admin client (user `admin`, `system:masters`) on
    /// a thread inside the server's namespace, and returns its result.
    pub fn admin<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |client| {
            async move {
                let _ = tx.send(f(client).await);
            }
            .boxed_local()
        });
        self.jobs
            .as_ref()
            .context("the API server is stopped")?
            .send(job)
            .map_err(|_| anyhow!("the admin client thread is gone"))?;
        rx.recv_timeout(ADMIN_TIMEOUT)
            .map_err(|e| anyhow!("admin operation: {e}"))?
    }

    /// The API's URL, e.g. `https://172.18.0.1:6443`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// How long the start script took until the API was ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The state directory (pid files, logs, `pki/ca.crt`, kubeconfigs).
    pub fn state_dir(&self) -> &Path {
        &self.state_path
    }

    /// Kubeconfig of user `admin` (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state_path.join("kubeconfig")
    }

    /// Kubeconfig of user `node-agent`, who has no rights until granted.
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.state_path.join("kubeconfig-agent")
    }

    /// The pids of kube-apiserver and etcd, as recorded by `start`.
    pub fn pids(&self) -> Vec<u32> {
        PROCESSES
            .iter()
            .filter_map(|name| read_pid(&self.state_path, name))
            .collect()
    }

    /// Makes the API unreachable without losing state: SIGSTOPs
    /// kube-apiserver. Requests hang (connections are still accepted by
    /// the kernel) until [`resume`](Self::resume).
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal_apiserver(Signal::SIGSTOP)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Undoes [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal_apiserver(Signal::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn signal_apiserver(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = read_pid(&self.state_path, "apiserver").context("no apiserver.pid")?;
        if !runs_own(&self.state_path, pid) {
            bail!("kube-apiserver (pid {pid}) is not running");
        }
        signal_own(&self.state_path, &[pid], signal);
        Ok(())
    }

    /// Restarts kube-apiserver alone, etcd and its data kept, as a control
    /// plane upgrade or a crash does: SIGTERM (SIGKILL after 5 s), `down`
    /// without any API, then the same command line again in `ns` (the
    /// server's namespace). Returns once the new one answers the admin
    /// client.
    pub fn restart_apiserver(&self, ns: &Netns, down: Duration) -> anyhow::Result<()> {
        let pid = read_pid(&self.state_path, "apiserver").context("no apiserver.pid")?;
        if !runs_own(&self.state_path, pid) {
            bail!("kube-apiserver (pid {pid}) is not running");
        }
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        signal_own(&self.state_path, &[pid], Signal::SIGTERM);
        let t0 = Instant::now();
        while process_alive(pid) {
            if t0.elapsed() > Duration::from_secs(5) {
                signal_own(&self.state_path, &[pid], Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(down);
        // In the background like the start script, so it is nobody's child.
        let mut command = vec![
            "sh".to_string(),
            "-c".into(),
            r#""$@" >>"$WEFT_API_LOG" 2>&1 & echo $!"#.into(),
            "sh".into(),
        ];
        command.extend(argv);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let out = ns
            .command(&args)
            .env("WEFT_API_LOG", self.state_path.join("apiserver.log"))
            .stdin(Stdio::null())
            .output()
            .context("cannot start kube-apiserver again")?;
        let new_pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::write(self.state_path.join("apiserver.pid"), &new_pid)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answered = self.admin(|client| async move {
                client
                    .apiserver_version()
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::from)
            });
            if answered.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not back after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agents' requests so far, from the audit log (see
    /// [`ApiOptions::audited`]).
    pub fn agent_requests(&self) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
        agent_requests(&self.state_path.join("audit.log"))
    }

    /// Stops kube-apiserver and etcd and deletes the state (also on drop).
    pub fn stop(self) {
        drop(self);
    }

    /// Idempotent, never panics. SIGKILLs both processes (the state is
    /// thrown away, and a graceful stop takes 2-3 s), falls back to the
    /// stop script for anything left, then ends the watchdog and the admin
    /// thread.
    fn shutdown(&mut self) {
        let pids = self.pids();
        signal_own(&self.state_path, &pids, Signal::SIGKILL);
        self.paused.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        // Wait for them to be gone (a dying process's cmdline is already
        // empty, so check liveness, not ownership, for the pids just killed).
        while pids.iter().any(|&pid| process::process_alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not right after SIGKILL: the script would wait (kill -0) until
        // init reaps the zombies, up to a second here.
        if pids.iter().any(|&pid| runs_own(&self.state_path, pid)) {
            let _ = Command::new(self.dir.join("stop"))
                .arg(&self.state_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status();
        }
        for name in PROCESSES {
            let _ = std::fs::remove_file(self.state_path.join(format!("{name}.pid")));
        }
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

impl Drop for RealApiServer {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(state) = self.state.take() {
            let _ = state.close();
        }
    }
}

/// A kube client from `kubeconfig`, for use on a thread in a namespace
/// that reaches the API (e.g. inside `ns.run(|| async { .. })`). With
/// `timeout`, connecting, sending and waiting for a response each time out.
pub async fn client(kubeconfig: &Path, timeout: Option<Duration>) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("bad kubeconfig")?;
    if timeout.is_some() {
        config.connect_timeout = timeout;
        config.read_timeout = timeout;
        config.write_timeout = timeout;
        config.reset_reader_on_write = true;
    }
    kube::Client::try_from(config).context("cannot build a kube client")
}

/// Links the given binaries into `<state>/bin`, where the start script
/// takes them instead of unpacking its own.
fn link_binaries(binaries: &[(String, PathBuf)], state: &Path) -> anyhow::Result<()> {
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin)?;
    for (name, path) in binaries {
        std::os::unix::fs::symlink(path, bin.join(name))
            .with_context(|| format!("cannot link {}", path.display()))?;
    }
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("not UTF-8: {}", path.display()))
}
