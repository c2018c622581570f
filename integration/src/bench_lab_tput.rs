//! The throughput section in the lab (issue #13): iperf3 TCP from a pod on
//! node 1 to a pod on node 3 of the full lab (real weftd, pods through
//! weft-cni, NAT rules in place), for host-gw (the ceiling: no
//! encapsulation), VXLAN and udp, 1 and 4 streams. For udp the forwarder
//! runs inside weftd: its CPU is the two weftd processes' user + system
//! time over the run.

use std::path::PathBuf;
use std::time::Duration;

use weft_nat::NatMode;

use crate::bench_udp::iperf3;
use crate::lab::{Backend, Binaries, Lab};
use crate::seed_nodes;

/// One measurement: receiver's Gbit/s and the weftds' CPU seconds.
struct Measured {
    gbps: f64,
    cpu_secs: f64,
    secs: f64,
}

/// A process's user + system seconds (`/proc/<pid>/stat` fields 14, 15).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // In USER_HZ, 100 on Linux (the value `/proc` reports in).
    f.iter().sum::<u64>() as f64 / 100.0
}

fn measure(lab: &Lab, streams: u32, secs: u32) -> anyhow::Result<Measured> {
    let (src, dst) = (&lab.nodes[0], &lab.nodes[2]);
    let pids: Vec<u32> = [src, dst]
        .iter()
        .filter_map(|n| n.agent.as_ref().and_then(|a| a.pid()))
        .collect();
    let r = iperf3(
        &src.pods[0].ns,
        &dst.pods[0].ns,
        &dst.pods[0].ip.to_string(),
        streams,
        secs,
        || pids.iter().map(|p| cpu_secs(*p)).sum::<f64>(),
    )?;
    Ok(Measured {
        gbps: r.gbps,
        cpu_secs: r.after - r.before,
        secs: r.secs,
    })
}

/// Runs the section and prints its table: for each backend a fresh lab.
pub fn run(bins: &Binaries, secs: u32) -> anyhow::Result<()> {
    println!(
        "\n## Throughput in the lab: pod on node 1 -> pod on node 3 (iperf3 TCP, {secs} s, weftd with iptables-nft)\n"
    );
    println!("| streams | backend | Gbit/s | /host-gw | udp/vxlan | weftd CPU s per Gbit |");
    println!("|---|---|---|---|---|---|");
    let mut rows: Vec<(u32, Backend, Measured)> = Vec::new();
    for backend in [Backend::HostGw, Backend::Vxlan, Backend::Udp] {
        let mut lab = Lab::start(&seed_nodes(), backend, NatMode::IptablesNft, bins)?;
        for i in 0..lab.nodes.len() {
            lab.add_pod(i, &format!("t{}", i + 1))?;
        }
        lab.wait_for_overlay(Duration::from_secs(20))?;
        for streams in [1u32, 4] {
            eprintln!("  .. {backend:?}, {streams} stream(s)");
            rows.push((streams, backend, measure(&lab, streams, secs)?));
        }
    }
    for streams in [1u32, 4] {
        let of = |b: Backend| {
            rows.iter()
                .find(|(s, x, _)| *s == streams && *x == b)
                .map_or(0.0, |(_, _, m)| m.gbps)
        };
        let (ceiling, vxlan) = (of(Backend::HostGw), of(Backend::Vxlan));
        for (s, b, m) in rows.iter().filter(|(s, _, _)| *s == streams) {
            let gbit = m.gbps * m.secs;
            println!(
                "| {s} | {b:?} | {:.2} | {:.2} | {} | {} |",
                m.gbps,
                if ceiling > 0.0 { m.gbps / ceiling } else { 0.0 },
                if *b == Backend::Udp && vxlan > 0.0 {
                    format!("**{:.2}**", m.gbps / vxlan)
                } else {
                    "-".into()
                },
                if *b == Backend::Udp && gbit > 0.0 {
                    format!("{:.3}", m.cpu_secs / gbit)
                } else {
                    "-".into()
                }
            );
        }
    }
    println!("\n(goal: udp/vxlan >= 0.8; host-gw is the ceiling.)");
    Ok(())
}

/// The binaries next to `exe` (weftd, weft-cni) and the reference plugins.
pub fn binaries_next_to(exe: &std::path::Path) -> Binaries {
    Binaries {
        weftd: exe.with_file_name("weftd"),
        weft_cni: exe.with_file_name("weft-cni"),
        reference_plugins: PathBuf::from("/usr/lib/cni"),
    }
}
