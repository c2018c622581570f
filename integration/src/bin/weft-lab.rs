//! `just lab`: the seed document, working, on one machine. An underlay
//! switch, three nodes running the real `weftd` against a Kubernetes API
//! (the real kube-apiserver where ../shared/kube has it, else weft's embedded
//! Node API server), two pods per node created through `weft-cni` with a
//! flannel conflist, and an outside host. Prints what the seed prints for
//! worker2, a connectivity matrix and two packet walks (`weft trace`), then deletes
//! everything (also on failure or Ctrl-C).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use weft_integration::lab::{
    outside_ip, ApiChoice, Backend, Binaries, IpFamily, Lab, LabSpec, OUTSIDE_IP, OUTSIDE_IP6,
};
use weft_integration::pinger::Pinger;
use weft_integration::seed_nodes;
use weft_integration::topology::{cluster_network, CLUSTER};
use weft_nat::NatMode;
use weft_netns::Netns;
use weft_overlay::Family;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// VXLAN through flannel.1 (flannel's default).
    Vxlan,
    /// Plain routes via the other nodes' IPs.
    HostGw,
    /// VXLAN with DirectRouting: plain routes to peers on the same L2 network.
    VxlanDirect,
    /// flannel's UDP backend: flannel0 and weft's forwarder (IPv4).
    Udp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NatArg {
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IpFamilyArg {
    /// IPv4 pods (flannel's default).
    Ipv4,
    /// IPv6-only pods (EnableIPv4: false, EnableIPv6 with IPv6Network).
    Ipv6,
    /// Dual-stack pods: an IPv4 and an IPv6 address each.
    Dual,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ApiArg {
    Auto,
    Real,
    Embedded,
}

/// `up`: leave the lab running for exploration; `down`: remove a lab left up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Action {
    /// Build the lab, print everything, and keep it until `just lab down` or Ctrl-C.
    Up,
    /// Remove the lab that `just lab up` left running.
    Down,
}

/// weft's lab: a three-node cluster in network namespaces.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Without: build the lab, print everything, remove it.
    #[arg(value_enum)]
    action: Option<Action>,
    /// The overlay backend.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: BackendArg,
    /// The NAT mode weftd uses.
    #[arg(long, value_enum, default_value = "iptables-nft")]
    nat: NatArg,
    /// The pods' address families.
    #[arg(long, value_enum, default_value = "ipv4")]
    ip_family: IpFamilyArg,
    /// Set this node up the way flanneld and flannel's CNI plugin would (no
    /// weftd), show the mixed cluster, then let weftd take the node over
    /// while a pod pings a pod on it every 10 ms. E.g. `--flannel-node worker2`.
    #[arg(long, value_name = "NODE")]
    flannel_node: Option<String>,
    /// The Kubernetes API: the real kube-apiserver where one is found
    /// (--kube-dir, $WEFT_KUBE_DIR, ../shared/kube), else the embedded Node
    /// API server (auto); or insist on one.
    #[arg(long, value_enum, default_value = "auto")]
    api: ApiArg,
    /// A directory with kube-apiserver.xz, etcd.xz and the start/stop
    /// scripts (as ../shared/kube); implies --api real.
    #[arg(long, value_name = "DIR")]
    kube_dir: Option<PathBuf>,
    /// Directory with weftd and weft-cni (default: next to weft-lab).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The reference CNI plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_plugins: PathBuf,
}

/// Set while `up` waits: Ctrl-C (or `down`) then ends the wait and the lab is
/// dropped normally; at any other time the handler cleans up itself.
static WAITING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// The name `up` is recorded under.
const UP: &str = "weft-lab";

fn main() -> ExitCode {
    let args = Args::parse();
    weft_netns::cleanup_in_own_handler();
    let _ = ctrlc::set_handler(|| {
        if WAITING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else {
            // Mid-build: nothing will drop the lab, so take it down here
            // (the kube-apiserver's watchdog stops it when this process ends).
            weft_integration::weftd::kill_all();
            weft_netns::cleanup_all();
            std::process::exit(130);
        }
    });
    if args.action == Some(Action::Down) {
        return match down() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft-lab down: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    if let Err(reason) = weft_netns::available() {
        bail!("{reason}\nThe lab builds its cluster out of network namespaces: run it as root.");
    }
    let t0 = Instant::now();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .to_path_buf(),
    };
    let bins = Binaries {
        weftd: bin_dir.join("weftd"),
        weft_cni: bin_dir.join("weft-cni"),
        reference_plugins: args.cni_plugins.clone(),
    };
    for b in [
        &bins.weftd,
        &bins.weft_cni,
        &bins.reference_plugins.join("bridge"),
    ] {
        if !b.exists() {
            bail!("{} is missing (`just lab` builds weftd and weft-cni; the bridge plugin comes with containernetworking-plugins)", b.display());
        }
    }
    let backend = match args.backend {
        BackendArg::Vxlan => Backend::Vxlan,
        BackendArg::HostGw => Backend::HostGw,
        BackendArg::VxlanDirect => Backend::VxlanDirect,
        BackendArg::Udp => Backend::Udp,
    };
    let nat = match args.nat {
        NatArg::IptablesLegacy => NatMode::IptablesLegacy,
        NatArg::IptablesNft => NatMode::IptablesNft,
        NatArg::Nftables => NatMode::Nftables,
    };
    let ip_family = match args.ip_family {
        IpFamilyArg::Ipv4 => IpFamily::Ipv4,
        IpFamilyArg::Ipv6 => IpFamily::Ipv6,
        IpFamilyArg::Dual => IpFamily::Dual,
    };
    let families = ip_family.families();
    let specs = seed_nodes();
    let networks: Vec<String> = families
        .iter()
        .map(|f| cluster_network(*f).to_string())
        .collect();
    println!(
        "== weft lab: {} nodes, backend {:?}, NAT {nat}, {ip_family}, cluster network {}",
        specs.len(),
        args.backend,
        networks.join(" + ")
    );
    let flannel: Vec<&str> = args.flannel_node.iter().map(String::as_str).collect();
    if let Some(f) = flannel.first() {
        if !specs.iter().any(|s| s.name == *f) {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "--flannel-node: no node {f} (the lab's nodes: {})",
                names.join(", ")
            );
        }
    }
    let api = match (&args.kube_dir, args.api) {
        (Some(dir), ApiArg::Auto | ApiArg::Real) => {
            weft_integration::kube_api::check_dir(dir)
                .map_err(|e| anyhow::anyhow!("--kube-dir: {e}"))?;
            // Read by RealApiServer::locate; no other thread reads the environment.
            std::env::set_var("WEFT_KUBE_DIR", dir);
            ApiChoice::Real
        }
        (Some(_), ApiArg::Embedded) => bail!("--kube-dir and --api embedded contradict each other"),
        (None, ApiArg::Auto) => ApiChoice::Auto,
        (None, ApiArg::Real) => ApiChoice::Real,
        (None, ApiArg::Embedded) => ApiChoice::Embedded,
    };
    let mut lab = Lab::start_with(
        &LabSpec {
            nodes: &specs,
            flannel: &flannel,
            backend,
            nat,
            api,
            ip_family,
        },
        &bins,
    )?;
    println!("   Kubernetes API: {}", lab.api.describe());
    for n in &lab.nodes {
        let eth0: Vec<String> = families
            .iter()
            .map(|f| n.spec.ip_of(*f).to_string())
            .collect();
        let cidrs: Vec<String> = families
            .iter()
            .map(|f| n.spec.subnet_of(*f).to_string())
            .collect();
        println!(
            "   node {:<14} eth0 {:<11} podCIDRs {:<14} netns {}{}",
            n.spec.name,
            eth0.join(" "),
            cidrs.join(" "),
            n.ns.name(),
            if n.flannel.is_some() {
                "  (set up as flanneld would, no weftd)"
            } else {
                ""
            }
        );
    }
    println!(
        "   outside host    eth0 {OUTSIDE_IP}{}   netns {}",
        if families.contains(&Family::V6) {
            format!(" {OUTSIDE_IP6}")
        } else {
            String::new()
        },
        lab.outside.name()
    );
    println!(
        "   weftd ready on every node after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for i in 0..lab.nodes.len() {
        for k in 1..=2 {
            let name = format!("pod{}-{k}", i + 1);
            lab.add_pod(i, &name)?;
            let ips: Vec<String> = lab.nodes[i]
                .pods
                .last()
                .map(|p| p.ips.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            let ip = ips.join(" ");
            let how = if lab.nodes[i].flannel.is_some() {
                "through bridge with flannel's delegate config, as flannel's CNI plugin does"
            } else {
                "through weft-cni as /opt/cni/bin/flannel"
            };
            println!(
                "   pod {name:<8} on {:<14} {ip} (created {how})",
                lab.nodes[i].spec.name
            );
        }
    }
    lab.wait_for_overlay(std::time::Duration::from_secs(20))?;

    let node3 = lab.nodes.last().context("no nodes")?;
    for &family in families {
        seed_tables(node3, family, backend, nat);
    }
    println!("   (proto 119 marks the routes weft owns; flannel's carry no tag)");

    let mut ok = matrix(&lab)?;
    ok &= walk(&lab);
    if let Some(i) = lab.nodes.iter().position(|n| n.flannel.is_some()) {
        ok &= take_over(&mut lab, i)?;
    }
    if args.action == Some(Action::Up) {
        weft_integration::up_down::record(UP)?;
        println!(
            "\n== the lab is up ({}). In another terminal:",
            if ok {
                "every check passed"
            } else {
                "SOME CHECKS FAILED"
            }
        );
        for n in &lab.nodes {
            println!(
                "   ip netns exec {:<28} bash   # node {}",
                n.ns.name(),
                n.spec.name
            );
            for p in &n.pods {
                println!(
                    "   ip netns exec {:<28} bash   # pod {} ({})",
                    p.ns.name(),
                    p.name,
                    p.ip
                );
            }
        }
        println!(
            "   ip netns exec {:<28} bash   # the outside host",
            lab.outside.name()
        );
        println!("   weftd logs and configs: {}", lab.path().display());
        println!(
            "   {} trace <src> <dst> --netns-prefix {}   # follow a packet through the lab",
            lab.weft_bin().display(),
            weft_netns::prefix()
        );
        println!("   just lab down    # removes it (or Ctrl-C here)");
        WAITING.store(true, Ordering::SeqCst);
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        weft_integration::up_down::forget(UP);
    }
    let lab_secs = t0.elapsed().as_secs_f64();
    let _ = &mut lab;
    drop(lab);
    println!();
    println!(
        "== {} in {lab_secs:.1} s; every namespace and process deleted",
        if ok {
            "every check passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    Ok(ok)
}

/// Stops the lab that `up` left running: SIGTERM to it, then wait until it
/// has removed everything.
fn down() -> anyhow::Result<()> {
    if weft_integration::up_down::stop_recorded(UP, std::time::Duration::from_secs(30))? {
        println!("the lab is down");
    } else {
        let swept = weft_netns::sweep_stale()?;
        println!("no lab is up; {} stale namespace(s) removed", swept.len());
    }
    Ok(())
}

/// What the seed prints for a node, for one family: the pod's route, the
/// node's routes, the static neighbours and the FDB (VXLAN), the SNAT rules.
fn seed_tables(
    node: &weft_integration::lab::LabNode,
    family: Family,
    backend: Backend,
    nat: NatMode,
) {
    let name = &node.spec.name;
    let (flag, device, table, tools) = match family {
        Family::V4 => (
            "-4",
            "flannel.1",
            "ip flannel-ipv4",
            ["iptables-legacy", "iptables-nft"],
        ),
        Family::V6 => (
            "-6",
            "flannel-v6.1",
            "ip6 flannel-ipv6",
            ["ip6tables-legacy", "ip6tables-nft"],
        ),
    };
    let Some(pod) = node.pods.first() else {
        return;
    };
    section(&format!(
        "1. Pod IP and default route ({} on {name}, {family})",
        pod.name
    ));
    let outside = outside_ip(family).to_string();
    shell(&pod.ns, &["ip", flag, "route", "get", &outside]);
    section(&format!("2. Node routing table ({name}, {family})"));
    shell(&node.ns, &["ip", flag, "route"]);
    if backend == Backend::Udp {
        section(&format!("3. The TUN device ({name})"));
        shell(&node.ns, &["ip", "-d", "link", "show", "flannel0"]);
        shell(&node.ns, &["ip", "addr", "show", "dev", "flannel0"]);
        // The kernel path's receive engine, where weftd made one.
        if node.ns.ip(&["link", "show", "weft-udp-rx"]).is_ok() {
            shell(&node.ns, &["ip", "-d", "link", "show", "weft-udp-rx"]);
        }
    } else if backend != Backend::HostGw {
        section(&format!(
            "3. Static neighbours for next hops ({name}, {family})"
        ));
        shell(&node.ns, &["ip", flag, "neigh", "show", "nud", "permanent"]);
        section(&format!("4. VXLAN forwarding database ({name}, {device})"));
        shell(&node.ns, &["bridge", "fdb", "show", "dev", device]);
    }
    section(&format!("5. SNAT rules ({name}, {nat}, {family})"));
    match nat {
        NatMode::IptablesLegacy | NatMode::IptablesNft => {
            let tool = tools[usize::from(nat == NatMode::IptablesNft)];
            shell(
                &node.ns,
                &[tool, "-t", "nat", "-L", "FLANNEL-POSTRTG", "-n", "-v"],
            );
        }
        NatMode::Nftables => {
            let (fam, t) = table.split_once(' ').unwrap_or(("ip", table));
            shell(&node.ns, &["nft", "list", "table", fam, t]);
        }
    }
}

/// Every pod to every pod (for each family); each pod to the outside (and
/// the address the outside saw); the outside to each pod (and the address
/// the pod saw).
fn matrix(lab: &Lab) -> anyhow::Result<bool> {
    let pods = lab.pods();
    let mut ok = true;
    for &family in lab.families() {
        section(&format!(
            "Connectivity ({family}): ping from each pod (rows) to each pod (columns)"
        ));
        print!("{:<10}", "");
        for (p, _) in &pods {
            print!("{:<9}", p.name);
        }
        println!();
        for ((from, _), row) in pods.iter().zip(lab.ping_matrix_of(family)) {
            print!("{:<10}", from.name);
            for good in row {
                ok &= good;
                print!("{:<9}", if good { "ok" } else { "FAIL" });
            }
            println!();
        }
    }
    section("Pods <-> outside host (TCP; the address the other side saw)");
    let show = |a: Option<IpAddr>| {
        a.map(|a| a.to_string())
            .unwrap_or_else(|| "(no connection)".into())
    };
    for c in lab.outside_checks()? {
        ok &= c.masqueraded() && c.kept_source();
        println!(
            "   {:<8} -> outside  seen as {:<15} {}",
            format!("{} {}", c.pod, c.family),
            show(c.to_outside),
            if c.masqueraded() {
                "ok (masqueraded to its node's address)"
            } else {
                "FAIL (want the node's address)"
            }
        );
        println!(
            "   outside  -> {:<8} seen as {:<15} {}",
            format!("{} {}", c.pod, c.family),
            show(c.from_outside),
            if c.kept_source() {
                "ok (the client's own address)"
            } else {
                "FAIL (want the outside's address)"
            }
        );
    }
    Ok(ok)
}

/// Migration: weftd takes over flannel-made node `i` while a pod on
/// another node pings a pod on it every 10 ms; shows what changed.
fn take_over(lab: &mut Lab, i: usize) -> anyhow::Result<bool> {
    let from = if i == 0 { lab.nodes.len() - 1 } else { 0 };
    let (src, dst) = (&lab.nodes[from].pods[0], &lab.nodes[i].pods[0]);
    let name = lab.nodes[i].spec.name.clone();
    section(&format!(
        "Migration: weftd takes over {name} while {} pings {} ({}) every 10 ms",
        src.name, dst.name, dst.ip
    ));
    println!("Before (flannel's state):");
    shell(&lab.nodes[i].ns, &["ip", "route", "show", "root", CLUSTER]);
    let before = lab.nodes[i]
        .ns
        .ip(&["-o", "link", "show", "flannel.1"])
        .ok();
    let mut ping = Pinger::start(&src.ns, dst.ip, 300)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t0 = Instant::now();
    lab.take_over(i)?;
    println!(
        "weftd ready on {name} after {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let overlapped = ping.running();
    let summary = ping.finish()?;
    let n = &lab.nodes[i];
    println!("After (weft's: the same routes, now tagged proto 119):");
    shell(&n.ns, &["ip", "route", "show", "root", CLUSTER]);
    let kept = before.is_none() || n.ns.ip(&["-o", "link", "show", "flannel.1"]).ok() == before;
    println!(
        "flannel.1: {}",
        match (before.is_some(), kept) {
            (false, _) => "none (host-gw)",
            (true, true) => "kept (same index, same MAC: the other nodes change nothing)",
            (true, false) => "FAIL: recreated or changed",
        }
    );
    let ping_ok = overlapped && summary.lost() <= 1;
    println!(
        "ping: {} sent, {} received, {} lost{}",
        summary.sent,
        summary.received,
        summary.lost(),
        if ping_ok {
            "  ok"
        } else if !overlapped {
            "  FAIL (ended before the takeover)"
        } else {
            "  FAIL"
        }
    );
    Ok(kept && ping_ok)
}

/// The seed's "day in the life of a packet", printed by `weft trace`:
/// pod1-1 on node 1 to pod3-1 on node 3, then pod1-1 to the outside host
/// (the SNAT rule it meets).
fn walk(lab: &Lab) -> bool {
    let (Some(a), Some(c)) = (lab.nodes.first(), lab.nodes.last()) else {
        return true;
    };
    let (Some(src), Some(dst)) = (a.pods.first(), c.pods.first()) else {
        return true;
    };
    let outside = outside_ip(Family::of_addr(&src.ip));
    let mut ok = true;
    for (title, to) in [
        (
            format!(
                "A day in the life of a packet: {} ({}) on {} -> {} ({}) on {}",
                src.name, src.ip, a.spec.name, dst.name, dst.ip, c.spec.name
            ),
            dst.ip,
        ),
        (
            format!(
                "And one to the outside host: {} ({}) -> {outside}",
                src.name, src.ip
            ),
            outside,
        ),
    ] {
        section(&title);
        println!(
            "$ weft trace {} {to} --netns <each of the lab's namespaces>",
            src.ip
        );
        match lab.trace(src.ip, to, &[]) {
            Ok(out) => {
                print!("{}", String::from_utf8_lossy(&out.stdout));
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                ok &= out.status.success();
            }
            Err(e) => {
                println!("(failed: {e:#})");
                ok = false;
            }
        }
    }
    ok
}

fn section(title: &str) {
    println!("\n-- {title}");
}

fn shell(ns: &Netns, args: &[&str]) {
    println!("$ {}", args.join(" "));
    match ns.exec(args) {
        Ok(out) => print!("{out}"),
        Err(e) => println!("(failed: {e})"),
    }
}
