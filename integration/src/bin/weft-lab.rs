//! `just lab`: three nodes in network namespaces on one underlay switch, each
//! with a `cni0` bridge and a pod, programmed by weft's overlay from a static
//! lease list. Prints node 3's tables in the seed document's form, pings every
//! pod from every node and pod, and cleans up (also on failure or Ctrl-C).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use weft_integration::topology::CLUSTER;
use weft_integration::{seed_nodes, Cluster, NodeSpec, OverlayAgent};
use weft_netns::Netns;
use weft_overlay::reconciler::{Input, Options};
use weft_overlay::{BackendConfig, Lease, LocalNode, MacAddr, OverlayConfig, VxlanConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    /// VXLAN through flannel.1 (flannel's default).
    Vxlan,
    /// Plain routes via the other nodes' IPs.
    HostGw,
    /// VXLAN with DirectRouting: plain routes to peers on the same L2 network.
    VxlanDirect,
}

/// weft's lab: a three-node cluster in network namespaces.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The overlay backend.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: Backend,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A stable, recognisable VTEP MAC per node: the seed's for the two it prints.
fn vtep_mac(spec: &NodeSpec) -> anyhow::Result<MacAddr> {
    let text = match spec.name.as_str() {
        "control-plane" => "5a:11:99:ab:8c:22".to_string(),
        "worker" => "ce:0a:4f:22:a4:2a".to_string(),
        _ => {
            let o = spec.subnet.network().octets();
            format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
        }
    };
    Ok(text.parse()?)
}

fn run(args: &Args) -> anyhow::Result<bool> {
    if let Err(reason) = weft_netns::available() {
        bail!("{reason}\nThe lab builds its cluster out of network namespaces: run it as root.");
    }
    let t0 = Instant::now();
    let config = OverlayConfig {
        network: CLUSTER.parse()?,
        backend: match args.backend {
            Backend::Vxlan => BackendConfig::Vxlan(VxlanConfig::default()),
            Backend::VxlanDirect => BackendConfig::Vxlan(VxlanConfig {
                direct_routing: true,
                ..VxlanConfig::default()
            }),
            Backend::HostGw => BackendConfig::HostGw,
        },
    };
    let specs = seed_nodes();
    println!(
        "== weft lab: {} nodes, backend {:?}, cluster network {CLUSTER}",
        specs.len(),
        args.backend
    );
    let cluster = Cluster::new(&specs).context("building the namespaces")?;
    for n in &cluster.nodes {
        println!(
            "   node {:<14} eth0 {:<12} pod subnet {:<14} pod {} (netns {}, pod netns {})",
            n.spec.name,
            n.spec.ip,
            n.spec.subnet,
            n.spec.pod_ip(),
            n.ns.name(),
            n.pod.name()
        );
    }
    let mut leases = Vec::new();
    for s in &specs {
        leases.push(Lease {
            node: s.name.clone(),
            subnet: s.subnet,
            public_ip: s.ip,
            backend_type: config.backend.kind().into(),
            backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep_mac(s)?),
        });
    }
    let mut agents = Vec::new();
    for n in &cluster.nodes {
        let input = Input {
            config: config.clone(),
            local: LocalNode {
                name: n.spec.name.clone(),
                subnet: n.spec.subnet,
                public_ip: n.spec.ip,
                underlay: "eth0".into(),
                vtep_mac: Some(vtep_mac(&n.spec)?),
            },
            leases: leases.clone(),
        };
        agents.push(OverlayAgent::start(&n.ns, input, Options::default())?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (agent, n) in agents.iter().zip(&cluster.nodes) {
        let report = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), agent.handle.wait_applied(1)).await
            })
            .context("the overlay did not converge within 20 s")?
            .context("the reconciler stopped")?;
        if !report.errors.is_empty() {
            bail!("node {}: {}", n.spec.name, report.errors.join("; "));
        }
        println!(
            "   weft programmed {:<14} {} writes ({})",
            n.spec.name, report.writes, report.plan
        );
    }
    println!("   converged in {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);

    let node3 = cluster.nodes.last().context("no nodes")?;
    let name = &node3.spec.name;
    section(&format!("1. Pod IP and default route (pod on {name})"));
    shell(&node3.pod, &["ip", "route", "get", "1.1"]);
    section(&format!("2. Node routing table ({name})"));
    shell(&node3.ns, &["ip", "route"]);
    if matches!(args.backend, Backend::Vxlan | Backend::VxlanDirect) {
        section(&format!("3. Static ARP entries for NextHops ({name})"));
        shell(&node3.ns, &["ip", "neigh", "show", "nud", "permanent"]);
        section(&format!("4. VXLAN forwarding database ({name})"));
        shell(&node3.ns, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        section(&format!("5. The VXLAN device ({name})"));
        shell(&node3.ns, &["ip", "-d", "link", "show", "flannel.1"]);
    }
    println!("   (proto 119 marks the routes weft owns; flannel's carry no tag)");

    section("Connectivity: ping from each row to each pod");
    let mut header = format!("{:<22}", "");
    for t in &cluster.nodes {
        header.push_str(&format!("{:<14}", t.spec.pod_ip()));
    }
    println!("{header}");
    let mut all_ok = true;
    for from in &cluster.nodes {
        for (label, ns) in [
            (format!("node {}", from.spec.name), &from.ns),
            (format!("pod {}", from.spec.pod_ip()), &from.pod),
        ] {
            let mut line = format!("{label:<22}");
            for to in &cluster.nodes {
                let ok = ns
                    .exec_status(&["ping", "-c1", "-W2", "-q", &to.spec.pod_ip().to_string()])
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                all_ok &= ok;
                line.push_str(&format!("{:<14}", if ok { "ok" } else { "FAIL" }));
            }
            println!("{line}");
        }
    }
    for a in agents {
        a.stop()?;
    }
    drop(cluster);
    println!();
    println!(
        "== {} in {:.1} s; every namespace deleted",
        if all_ok {
            "all pods reachable"
        } else {
            "SOME PODS UNREACHABLE"
        },
        t0.elapsed().as_secs_f64()
    );
    Ok(all_ok)
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
