//! weft's benchmarks. Every figure is measured in this run, inside network
//! namespaces created for it (deleted at the end, also on Ctrl-C); the
//! machine's own network namespace is never touched.
//!
//! `weft-bench [overlay|dual|nat|agent|cni|all]` — one section per subsystem (`dual`: the
//! overlay's two reconcilers of a dual-stack node); `all` runs every section but `scale`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use tokio::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// The overlay: cold programming, one-peer latency, no-op reconcile, restart.
    Overlay,
    /// The overlay of a dual-stack node: cold programming of `--peers` peers
    /// in both families (six objects each) by weft's IPv4 and IPv6
    /// reconcilers against `ip -batch` + `bridge -batch`.
    Dual,
    /// NAT: weft's apply vs nft -f and iptables-restore, cold and no-op.
    Nat,
    /// The agent: a Node added in the API -> programmed on another node.
    Agent,
    /// The CNI plugin: ADD+DEL through weft-cni vs the bridge plugin directly.
    Cni,
    /// Scale: thousands of real-sized Nodes through the real kube-apiserver
    /// (memory, arrival lag, one-change latency, API requests, restart, cold
    /// start, idle CPU per NAT mode). Not part of `all` (it takes minutes).
    Scale,
    /// Throughput: TCP (iperf3, 1 and 4 streams) over the UDP backend's
    /// forwarder against kernel VXLAN. Not part of `all`.
    Throughput,
    /// Every section but `scale` and `throughput`.
    All,
}

/// weft's benchmarks, in fresh network namespaces (needs root).
#[derive(Debug, Parser)]
#[command(name = "weft-bench")]
struct Args {
    /// Which section to run.
    #[arg(value_enum, default_value_t = Section::All)]
    section: Section,
    /// Peers (other nodes) in the overlay benchmark.
    #[arg(long, default_value_t = 5000)]
    peers: usize,
    /// Cold-programming runs per side (each in fresh namespaces).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One-peer changes to time.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Node additions to time in the agent section.
    #[arg(long, default_value_t = 100)]
    agent_events: usize,
    /// The weftd binary (default: next to weft-bench).
    #[arg(long)]
    weftd: Option<std::path::PathBuf>,
    /// The weft-cni binary (default: next to weft-bench).
    #[arg(long)]
    weft_cni: Option<std::path::PathBuf>,
    /// ADD+DEL cycles per side in the CNI section.
    #[arg(long, default_value_t = 30)]
    cni_cycles: usize,
    /// Fresh namespaces per side and NAT mode.
    #[arg(long, default_value_t = 15)]
    nat_runs: usize,
    /// Nodes in the scale section.
    #[arg(long, default_value_t = 5000)]
    scale_nodes: usize,
    /// One-change events in the scale section.
    #[arg(long, default_value_t = 100)]
    scale_events: usize,
    /// Seconds of idle CPU measured per NAT mode in the scale section.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Seconds per iperf3 run in the throughput section.
    #[arg(long, default_value_t = 10)]
    tput_secs: u32,
    /// iperf3 runs per configuration in the throughput section (best kept).
    #[arg(long, default_value_t = 2)]
    tput_runs: usize,
    /// No-op reconciles to time.
    #[arg(long, default_value_t = 20)]
    noops: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(reason) = weft_netns::available() {
        bail!("weft-bench needs network namespaces (run as root): {reason}");
    }
    // The main thread's runtime only waits on the reconciler's handle (with timeouts).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("cannot build a Tokio runtime")?;
    let scratch = Scratch::new()?;
    if matches!(args.section, Section::Overlay | Section::All) {
        overlay::run(&args, &rt, scratch.path())?;
    }
    if matches!(args.section, Section::Dual | Section::All) {
        dual::run(&args, &rt, scratch.path())?;
    }
    if matches!(args.section, Section::Nat | Section::All) {
        weft_integration::bench_nat::run(args.nat_runs)?;
    }
    if matches!(args.section, Section::Agent | Section::All) {
        let weftd = match &args.weftd {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("weftd"),
        };
        weft_integration::bench_agent::run(&weftd, args.agent_events)?;
    }
    if args.section == Section::Scale {
        let weftd = match &args.weftd {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("weftd"),
        };
        weft_integration::bench_scale::run(
            &weftd,
            &weft_integration::bench_scale::ScaleOptions {
                nodes: args.scale_nodes,
                events: args.scale_events,
                idle_secs: args.idle_secs,
            },
        )?;
    }
    if args.section == Section::Throughput {
        weft_integration::bench_udp::run(&weft_integration::bench_udp::ThroughputOptions {
            secs: args.tput_secs,
            runs: args.tput_runs,
        })?;
        let bins = weft_integration::bench_lab_tput::binaries_next_to(&std::env::current_exe()?);
        weft_integration::bench_lab_tput::run(&bins, args.tput_secs)?;
    }
    if matches!(args.section, Section::Cni | Section::All) {
        let weft_cni = match &args.weft_cni {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("weft-cni"),
        };
        weft_integration::bench_cni::run(&weft_cni, args.cni_cycles)?;
    }
    Ok(())
}

/// A private directory for batch files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir:?}"))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Progress, on stderr so stdout holds only the figures.
fn progress(msg: &str) {
    eprintln!("  .. {msg}");
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

mod overlay {
    use super::*;

    use weft_integration::bench::{
        batch_files, create_device_with_ip, ms, node_namespace, overlay_input, peer_events, peers,
        run_n, verify_overlay, Monitor, Peer, Samples,
    };
    use weft_integration::OverlayAgent;
    use weft_netns::Netns;
    use weft_overlay::{
        desired, diff, kernel::Scope, plan, DeviceSpec, Input, Kernel, Observed, ObservedDevice,
        ObservedKind, Options, Peers, ReconcilerHandle, Touched, UnderlayFacts, VxlanParams,
    };

    pub fn run(args: &Args, rt: &Runtime, scratch: &Path) -> anyhow::Result<()> {
        let n = args.peers;
        if n == 0 || n + args.events / 2 + 2 >= 65_536 {
            bail!("--peers must be between 1 and about 65000");
        }
        let all = peers(1, n);
        let input = overlay_input(&all)?;
        let (ip_batch, bridge_batch) = batch_files(&all);
        let ip_file = scratch.join("overlay.ip");
        let bridge_file = scratch.join("overlay.bridge");
        std::fs::write(&ip_file, ip_batch).context("writing the ip batch file")?;
        std::fs::write(&bridge_file, bridge_batch).context("writing the bridge batch file")?;

        // 1. Cold programming, alternating sides; the last weft node is kept.
        println!("overlay: cold programming of {n} peers ({} objects)", 3 * n);
        let mut weft = Samples::default();
        let mut batch = Samples::default();
        let mut kept: Option<(Netns, OverlayAgent)> = None;
        for run in 1..=args.runs.max(1) {
            progress(&format!("cold run {run}: ip/bridge -batch"));
            batch.push(cold_batch(&all, &ip_file, &bridge_file)?);
            if let Some((ns, agent)) = kept.take() {
                agent.stop()?;
                drop(ns);
            }
            progress(&format!("cold run {run}: weft"));
            let (took, ns, agent) = cold_weft(rt, &input, &all)?;
            weft.push(took);
            kept = Some((ns, agent));
        }
        let ratio = weft.median().as_secs_f64() / batch.median().as_secs_f64();
        println!(
            "  weft              {:.2} s  (runs: {})",
            weft.median().as_secs_f64(),
            weft.list_secs()
        );
        println!(
            "  ip/bridge -batch  {:.2} s  (runs: {})",
            batch.median().as_secs_f64(),
            batch.list_secs()
        );
        println!(
            "  ratio weft/ip     {ratio:.2}x   (goal <= 1.3x: {})",
            verdict(ratio <= 1.3)
        );
        let (ns, agent) = kept.context("no weft run")?;

        // 2. One-peer changes at n peers.
        one_peer(args, rt, &ns, &agent.handle, &input)?;

        // 3. No-op reconciles, then an agent restart on the programmed node.
        noop(args, rt, &agent.handle, input.leases.len())?;
        agent.stop()?;
        // With the loop stopped (it would undo the extra peer's writes).
        let floor = kernel_floor(&ns, &input, n + 1 + args.events)?;
        println!(
            "overlay: the kernel's own time for the same writes (Kernel::apply of one peer's plan, no \
             loop; {} samples): add p50 {} p99 {}, delete p50 {} p99 {}",
            floor.0 .0.len(),
            ms(floor.0.percentile(50.0)),
            ms(floor.0.percentile(99.0)),
            ms(floor.1.percentile(50.0)),
            ms(floor.1.percentile(99.0))
        );
        println!(
            "  (at {n} routes on one device every route insert walks one kernel hash chain: \
             fib_info is hashed without the gateway)"
        );
        restart(rt, &ns, &input, &all)?;
        Ok(())
    }

    /// One `ip -batch` + `bridge -batch` run on a fresh node whose
    /// `flannel.1` was made by iproute2.
    fn cold_batch(all: &[Peer], ip_file: &Path, bridge_file: &Path) -> anyhow::Result<Duration> {
        let ns = node_namespace("bench-ip")?;
        create_device_with_ip(&ns)?;
        let ip_file = path_str(ip_file)?;
        let bridge_file = path_str(bridge_file)?;
        let t0 = Instant::now();
        run_n(&ns, "ip", &["-batch", ip_file])?;
        run_n(&ns, "bridge", &["-batch", bridge_file])?;
        let took = t0.elapsed();
        verify_overlay(&ns, all).context("after ip/bridge -batch")?;
        Ok(took)
    }

    /// weft's reconciler on a fresh node: a first reconcile with no peers
    /// makes `flannel.1`; then the timed one, from `update()` with every
    /// lease until the reconciler reports the generation applied.
    fn cold_weft(
        rt: &Runtime,
        input: &Input,
        all: &[Peer],
    ) -> anyhow::Result<(Duration, Netns, OverlayAgent)> {
        let ns = node_namespace("bench-weft")?;
        let empty = Input {
            leases: Vec::new(),
            ..input.clone()
        };
        let agent = OverlayAgent::start(&ns, empty, Options::default())?;
        wait_applied(rt, &agent.handle, 1, Duration::from_secs(30))?;
        settle(rt, &agent.handle)?;
        let next = input.clone();
        let t0 = Instant::now();
        let generation = agent.handle.update(next);
        let report = wait_applied(rt, &agent.handle, generation, Duration::from_secs(120))?;
        let took = t0.elapsed();
        let writes = report.writes;
        if writes < 3 * all.len() {
            bail!("weft sent {writes} writes for {} objects", 3 * all.len());
        }
        verify_overlay(&ns, all).context("after weft's reconcile")?;
        Ok((took, ns, agent))
    }

    fn one_peer(
        args: &Args,
        rt: &Runtime,
        ns: &Netns,
        handle: &ReconcilerHandle,
        input: &Input,
    ) -> anyhow::Result<()> {
        let n = input.leases.len();
        let monitor = Monitor::start(ns)?;
        settle(rt, handle)?;
        let (writes0, resyncs0) = (
            handle.stats().writes.load(ORD),
            handle.stats().resyncs.load(ORD),
        );
        let mut kernel = Samples::default();
        let mut applied = Samples::default();
        let mut spot_checks = 0;
        progress(&format!("{} one-peer changes", args.events));
        for k in 0..args.events {
            let add = k % 2 == 0;
            let peer = Peer {
                i: (n + 1 + k / 2) as u32,
            };
            let lease = peer.lease();
            monitor.drain();
            let t0 = Instant::now();
            let generation = if add {
                handle.upsert(lease)
            } else {
                handle.remove(&lease.node)
            };
            wait_applied(rt, handle, generation, Duration::from_secs(10))?;
            applied.push(t0.elapsed());
            let seen = monitor
                .wait_for(&peer_events(peer, add), Duration::from_secs(10))
                .with_context(|| format!("change {k} (peer {})", peer.i))?;
            kernel.push(seen.saturating_duration_since(t0));
            if k % 25 == 0 || k + 2 >= args.events {
                spot_check(ns, peer, add)?;
                spot_checks += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        monitor.stop()?;
        let writes = handle.stats().writes.load(ORD) - writes0;
        let resyncs = handle.stats().resyncs.load(ORD) - resyncs0;
        // The in-process work: one change, and (for scale) everything at once.
        let (t_change, t_desired, t_diff) = pure_cost(input)?;

        println!(
            "overlay: one-peer change -> kernel updated ({} events at {n} peers)",
            args.events
        );
        println!(
            "  kernel-observed   p50 {}  p99 {}  max {}   (goal p99 < 1 ms: {})",
            ms(kernel.percentile(50.0)),
            ms(kernel.percentile(99.0)),
            ms(kernel.max()),
            verdict(kernel.percentile(99.0) < Duration::from_millis(1))
        );
        println!(
            "  wait_applied      p50 {}  p99 {}  max {}",
            ms(applied.percentile(50.0)),
            ms(applied.percentile(99.0)),
            ms(applied.max())
        );
        println!(
            "  (kernel-observed: from handle.upsert()/remove() to the last of the peer's route, \
             neighbour and FDB events on an independent rtnetlink monitor in the namespace; \
             alternately adding and removing a peer)"
        );
        println!(
            "  writes per change {:.1}, full kernel re-reads during the run {resyncs}, \
             {spot_checks} spot checks with `ip route show` ok",
            writes as f64 / args.events.max(1) as f64
        );
        println!(
            "  in-process compute at {n} peers (no kernel): one change (desired state + plan) p99 {}; \
             everything from scratch: desired {} + diff {}",
            ms(t_change),
            ms(t_desired),
            ms(t_diff)
        );
        Ok(())
    }

    /// The kernel's own cost of one peer's three writes at this size: the
    /// plan of one more peer applied with [`Kernel::apply`] and deleted
    /// again, timed alone (no reconcile loop, no channels, no monitor).
    fn kernel_floor(ns: &Netns, input: &Input, first: usize) -> anyhow::Result<(Samples, Samples)> {
        let input = input.clone();
        let task = ns.spawn_task(move || async move {
            let kernel = Kernel::connect()?;
            let underlay = kernel.underlay(&input.local.underlay).await?;
            let name = input
                .config
                .backend
                .device_name(input.config.network)
                .context("no device")?;
            let device = kernel.device(&name).await?.context("no flannel.1")?;
            let scope = Scope {
                network: input.config.network,
                overlay: Some(device.ifindex),
                underlay: underlay.ifindex,
            };
            let (mut add, mut del) = (Samples::default(), Samples::default());
            for k in 0..100 {
                let one = desired(
                    &input.config,
                    &input.local,
                    &underlay,
                    &[Peer {
                        i: (first + k) as u32,
                    }
                    .lease()],
                );
                let empty = Observed {
                    device: None,
                    entries: Default::default(),
                };
                let plan_add = plan(None, &one.state.entries, &empty, &Touched::everything());
                let t0 = Instant::now();
                let (_, applied) = kernel.apply(&plan_add, &scope).await;
                add.push(t0.elapsed());
                let full = Observed {
                    device: None,
                    entries: one.state.entries.clone(),
                };
                let plan_del = plan(None, &Default::default(), &full, &Touched::everything());
                let t0 = Instant::now();
                let (_, deleted) = kernel.apply(&plan_del, &scope).await;
                del.push(t0.elapsed());
                if !applied.errors.is_empty() || !deleted.errors.is_empty() || applied.writes != 3 {
                    bail!("kernel floor: {:?} {:?}", applied.errors, deleted.errors);
                }
            }
            Ok((add, del))
        })?;
        task.join()?
    }

    /// `ip route show <subnet>` holds the peer's route exactly when it was added.
    fn spot_check(ns: &Netns, peer: Peer, added: bool) -> anyhow::Result<()> {
        let subnet = peer.subnet().to_string();
        let routes = ns.ip_json(&["route", "show", "exact", &subnet])?;
        let count = routes.as_array().map_or(0, Vec::len);
        if count != usize::from(added) {
            bail!(
                "spot check: after {} peer {}, the kernel has {count} route(s) for {subnet}",
                if added { "adding" } else { "removing" },
                peer.i
            );
        }
        Ok(())
    }

    /// Median times of one lease change (incremental desired state and the
    /// plan at its keys), of `desired()` from scratch and of a no-op full
    /// `diff()`, for this input.
    fn pure_cost(input: &Input) -> anyhow::Result<(Duration, Duration, Duration)> {
        let underlay = UnderlayFacts {
            ifindex: 2,
            mtu: 1500,
            networks: vec!["172.18.0.0/16".parse()?],
        };
        let mut t_desired = Samples::default();
        let mut t_diff = Samples::default();
        for _ in 0..5 {
            let t0 = Instant::now();
            let want = desired(&input.config, &input.local, &underlay, &input.leases);
            t_desired.push(t0.elapsed());
            let Some(DeviceSpec::Vxlan(device)) = want.state.device.as_ref() else {
                bail!("no VXLAN device desired");
            };
            let observed = Observed {
                device: Some(ObservedDevice {
                    ifindex: 3,
                    kind: ObservedKind::Vxlan(VxlanParams {
                        vni: Some(device.vni),
                        local: Some(device.local),
                        port: Some(device.port),
                        underlay: Some(device.underlay),
                        learning: Some(device.learning),
                    }),
                    mtu: device.mtu,
                    mac: device.mac,
                    up: true,
                    addresses: vec![device.address],
                }),
                entries: want.state.entries.clone(),
            };
            let t0 = Instant::now();
            let plan = diff(&want.state, &observed);
            t_diff.push(t0.elapsed());
            if !plan.is_empty() {
                bail!("pure cost: the no-op diff is not empty: {plan}");
            }
        }
        let mut peers = Peers::new(
            input.config.clone(),
            input.local.clone(),
            Some(underlay.clone()),
        );
        peers.replace(input.leases.clone());
        let mut observed = Observed {
            device: None,
            entries: peers.entries().clone(),
        };
        let mut t_change = Samples::default();
        let extra = Peer {
            i: (input.leases.len() + 100) as u32,
        };
        for k in 0..200 {
            let t0 = Instant::now();
            let touched = if k % 2 == 0 {
                peers.upsert(extra.lease())
            } else {
                peers.remove(&extra.lease().node)
            };
            let plan = plan(None, peers.entries(), &observed, &touched);
            t_change.push(t0.elapsed());
            if plan.writes() != 3 || touched.all {
                bail!("pure cost: one change planned {plan}");
            }
            plan.apply_to(&mut observed.entries);
        }
        Ok((
            t_change.percentile(99.0),
            t_desired.median(),
            t_diff.median(),
        ))
    }

    fn noop(
        args: &Args,
        rt: &Runtime,
        handle: &ReconcilerHandle,
        peers: usize,
    ) -> anyhow::Result<()> {
        settle(rt, handle)?;
        let mut times = Samples::default();
        let (mut writes, mut resynced) = (0, 0);
        for _ in 0..args.noops.max(1) {
            let t0 = Instant::now();
            let report = reconcile_now(rt, handle)?;
            times.push(t0.elapsed());
            writes += report.writes;
            resynced += usize::from(report.resynced);
        }
        println!(
            "overlay: no-op reconcile at {} peers ({} reconciles)",
            peers,
            times.0.len()
        );
        println!(
            "  time {} median, max {}; writes {writes} in total (goal 0: {}){}",
            ms(times.median()),
            ms(times.max()),
            verdict(writes == 0),
            if resynced > 0 {
                format!("; {resynced} of them re-read the kernel")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// A new reconciler on the programmed node, as after an agent restart:
    /// from start until its first reconcile is applied.
    fn restart(rt: &Runtime, ns: &Netns, input: &Input, all: &[Peer]) -> anyhow::Result<()> {
        let next = input.clone();
        let t0 = Instant::now();
        let agent = OverlayAgent::start(ns, next, Options::default())?;
        let first = wait_applied(rt, &agent.handle, 1, Duration::from_secs(60))?;
        let took = t0.elapsed();
        let writes = first.writes;
        std::thread::sleep(Duration::from_millis(300));
        let later = agent.handle.stats().writes.load(ORD) as usize - writes;
        verify_overlay(ns, all).context("after the restart")?;
        agent.stop()?;
        println!(
            "  restart: first reconcile {} (start + full kernel read + compute), \
             writes {writes} (goal 0: {}); {later} more in the next 300 ms",
            ms(took),
            verdict(writes == 0),
        );
        Ok(())
    }

    const ORD: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

    /// Lets the reconciler fold the events of its last apply, then runs one
    /// reconcile that must change nothing, so the next measurement starts idle.
    pub(super) fn settle(rt: &Runtime, handle: &ReconcilerHandle) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(200));
        reconcile_now(rt, handle)?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    }

    fn reconcile_now(
        rt: &Runtime,
        handle: &ReconcilerHandle,
    ) -> anyhow::Result<weft_overlay::Report> {
        let report = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), handle.reconcile_now()).await
            })
            .context("reconcile_now timed out")?
            .context("the reconciler has stopped")?;
        if !report.errors.is_empty() {
            bail!("reconcile failed: {:?}", report.errors);
        }
        Ok(report)
    }

    /// Waits until `generation` is applied; returns the report of the
    /// reconcile that applied it.
    pub(super) fn wait_applied(
        rt: &Runtime,
        handle: &ReconcilerHandle,
        generation: u64,
        timeout: Duration,
    ) -> anyhow::Result<weft_overlay::Report> {
        rt.block_on(async { tokio::time::timeout(timeout, handle.wait_applied(generation)).await })
            .map_err(|_| {
                anyhow::anyhow!(
                    "generation {generation} not applied within {timeout:?}; last reconcile: {:?}",
                    handle.last_report()
                )
            })?
            .context("the reconciler has stopped")
    }

    pub(super) fn path_str(p: &Path) -> anyhow::Result<&str> {
        p.to_str().with_context(|| format!("{p:?} is not UTF-8"))
    }
}

/// Dual stack: a node with `flannel.1` and `flannel-v6.1`, per peer a route,
/// a neighbour and an FDB entry on each — weft's two reconcilers (one per
/// family, as weftd runs them) against one `ip -batch` and one
/// `bridge -batch` of the same objects, in fresh namespaces, alternating.
mod dual {
    use super::*;

    use weft_integration::bench::{
        add_ipv6_underlay, batch_files_of, create_device6_with_ip, create_device_with_ip,
        node_namespace, overlay_input_of, peers, run_n, verify_family, Peer, Samples,
    };
    use weft_integration::OverlayAgent;
    use weft_overlay::{Family, Input, Options};

    use super::overlay::{path_str, settle, wait_applied};

    /// The goal: weft within 10 % of iproute2's batch mode.
    const GOAL: f64 = 1.1;

    pub fn run(args: &Args, rt: &Runtime, scratch: &Path) -> anyhow::Result<()> {
        let n = args.peers;
        if n == 0 || n >= 65_536 {
            bail!("--peers must be between 1 and 65535");
        }
        let all = peers(1, n);
        let inputs = [
            overlay_input_of(&all, Family::V4)?,
            overlay_input_of(&all, Family::V6)?,
        ];
        let (ip_batch, bridge_batch) = batch_files_of(&all, &Family::ALL);
        let ip_file = scratch.join("dual.ip");
        let bridge_file = scratch.join("dual.bridge");
        std::fs::write(&ip_file, ip_batch).context("writing the ip batch file")?;
        std::fs::write(&bridge_file, bridge_batch).context("writing the bridge batch file")?;

        println!(
            "dual stack: cold programming of {n} dual-stack peers ({} objects: per peer a route, \
             a neighbour and an FDB entry on flannel.1 and on flannel-v6.1)",
            6 * n
        );
        let mut weft = Samples::default();
        let mut batch = Samples::default();
        let mut checked = (0, 0);
        for run in 1..=args.runs.max(1) {
            progress(&format!("dual-stack cold run {run}: ip/bridge -batch"));
            let (took, objects) = cold_batch(&all, &ip_file, &bridge_file)?;
            batch.push(took);
            checked.1 = objects;
            progress(&format!("dual-stack cold run {run}: weft"));
            let (took, objects) = cold_weft(rt, &inputs, &all)?;
            weft.push(took);
            checked.0 = objects;
        }
        let ratio = weft.median().as_secs_f64() / batch.median().as_secs_f64();
        println!(
            "  weft (2 reconcilers)  {:.2} s  (runs: {})",
            weft.median().as_secs_f64(),
            weft.list_secs()
        );
        println!(
            "  ip/bridge -batch      {:.2} s  (runs: {})",
            batch.median().as_secs_f64(),
            batch.list_secs()
        );
        println!(
            "  ratio weft/ip         {ratio:.2}x   (goal <= {GOAL}x: {})",
            verdict(ratio <= GOAL)
        );
        println!(
            "  end states: after every run both sides hold exactly the {} expected objects \
             (weft {}, ip/bridge {}; ip -j / bridge -j, nothing missing, nothing else)",
            6 * n,
            checked.0,
            checked.1
        );
        Ok(())
    }

    /// A fresh dual-stack node: `eth0` with both families' addresses.
    fn node(role: &str) -> anyhow::Result<weft_netns::Netns> {
        let ns = node_namespace(role)?;
        add_ipv6_underlay(&ns)?;
        Ok(ns)
    }

    /// Both families' objects on `flannel.1` and `flannel-v6.1`.
    fn verify(ns: &weft_netns::Netns, all: &[Peer]) -> anyhow::Result<usize> {
        let mut objects = 0;
        for fam in Family::ALL {
            objects += verify_family(ns, all, fam).with_context(|| format!("{fam}"))?;
        }
        Ok(objects)
    }

    /// One `ip -batch` + `bridge -batch` run (both families in each file) on
    /// a fresh node whose two devices were made by iproute2.
    fn cold_batch(
        all: &[Peer],
        ip_file: &Path,
        bridge_file: &Path,
    ) -> anyhow::Result<(Duration, usize)> {
        let ns = node("dual-ip")?;
        create_device_with_ip(&ns)?;
        create_device6_with_ip(&ns)?;
        let ip_file = path_str(ip_file)?;
        let bridge_file = path_str(bridge_file)?;
        let t0 = Instant::now();
        run_n(&ns, "ip", &["-batch", ip_file])?;
        run_n(&ns, "bridge", &["-batch", bridge_file])?;
        let took = t0.elapsed();
        let objects = verify(&ns, all).context("after ip/bridge -batch")?;
        Ok((took, objects))
    }

    /// weft's two reconcilers on a fresh node, each on its own thread as in
    /// weftd: a first reconcile with no peers makes each device; then the
    /// timed part, from handing both every lease until both report their
    /// generation applied.
    fn cold_weft(
        rt: &Runtime,
        inputs: &[Input; 2],
        all: &[Peer],
    ) -> anyhow::Result<(Duration, usize)> {
        let ns = node("dual-weft")?;
        let mut agents = Vec::new();
        for input in inputs {
            let empty = Input {
                leases: Vec::new(),
                ..input.clone()
            };
            let agent = OverlayAgent::start(&ns, empty, Options::default())?;
            wait_applied(rt, &agent.handle, 1, Duration::from_secs(30))?;
            agents.push(agent);
        }
        for agent in &agents {
            settle(rt, &agent.handle)?;
        }
        let next: Vec<Input> = inputs.to_vec();
        let t0 = Instant::now();
        let generations: Vec<u64> = agents
            .iter()
            .zip(next)
            .map(|(agent, input)| agent.handle.update(input))
            .collect();
        let mut writes = 0;
        for (agent, generation) in agents.iter().zip(generations) {
            writes += wait_applied(rt, &agent.handle, generation, Duration::from_secs(120))?.writes;
        }
        let took = t0.elapsed();
        if writes < 6 * all.len() {
            bail!("weft sent {writes} writes for {} objects", 6 * all.len());
        }
        let objects = verify(&ns, all).context("after weft's reconciles")?;
        for agent in agents {
            agent.stop()?;
        }
        Ok((took, objects))
    }
}
