//! The throughput section of `just bench` (issue #13): TCP over the UDP
//! backend's forwarder against the kernel's VXLAN, between two nodes on a
//! veth underlay (MTU 1500), iperf3 with 1 and 4 streams.
//!
//! Every configuration gets fresh namespaces. For the forwarder it also
//! reports its CPU time (utime + stime of its threads, from
//! `/proc/self/task/*/stat`: the forwarders run in this process) per Gbit
//! carried, and the datagrams per `sendmsg` (UDP GSO at work).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use weft_netns::{veth, Netns};
use weft_udp::{ensure_tun, Forwarder, ForwarderConfig, ForwarderHandle, Stats};

/// Options of the section.
#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    /// Seconds per iperf3 run.
    pub secs: u32,
    /// Runs per configuration (the best is reported, as the 2-core VM is noisy).
    pub runs: usize,
}

/// One iperf3 result: receiver's Gbit/s, and the forwarders' CPU seconds and
/// stats over the run (zero for VXLAN).
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    gbps: f64,
    cpu_secs: f64,
    secs: f64,
    stats: Stats,
}

fn underlay(tag: &str) -> anyhow::Result<(Netns, Netns)> {
    let a = Netns::new(&format!("tput-{tag}-a"))?;
    let b = Netns::new(&format!("tput-{tag}-b"))?;
    veth(&a, "eth0", &b, "eth0")?;
    a.add_addr("eth0", "172.18.0.2/16")?;
    b.add_addr("eth0", "172.18.0.3/16")?;
    Ok((a, b))
}

/// VXLAN as flannel sets it up (VNI 1, port 8472, MTU 1450), point to point.
fn vxlan() -> anyhow::Result<(Netns, Netns)> {
    let (a, b) = underlay("vxlan")?;
    for (ns, local, remote, addr) in [
        (&a, "172.18.0.2", "172.18.0.3", "10.244.1.0/16"),
        (&b, "172.18.0.3", "172.18.0.2", "10.244.2.0/16"),
    ] {
        ns.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            local,
            "remote",
            remote,
            "dev",
            "eth0",
            "dstport",
            "8472",
        ])?;
        ns.set_mtu("flannel.1", 1450)?;
        ns.add_addr("flannel.1", addr)?;
        ns.link_up("flannel.1")?;
    }
    Ok((a, b))
}

/// The UDP backend: flannel0 (MTU 1472) and a forwarder on each node.
fn udp(
    queues: usize,
    offload: bool,
    kernel_path: bool,
) -> anyhow::Result<(ForwarderHandle, ForwarderHandle, Netns, Netns)> {
    let (a, b) = underlay("udp")?;
    let mut handles = Vec::new();
    for (ns, ip, addr) in [
        (&a, Ipv4Addr::new(172, 18, 0, 2), "10.244.1.0/16"),
        (&b, Ipv4Addr::new(172, 18, 0, 3), "10.244.2.0/16"),
    ] {
        ns.run(move || async move { ensure_tun("flannel0", offload) })??;
        ns.add_addr("flannel0", addr)?;
        ns.set_mtu("flannel0", 1500 - weft_udp::UDP_OVERHEAD)?;
        ns.link_up("flannel0")?;
        let cfg = ForwarderConfig {
            device: "flannel0".into(),
            bind: SocketAddr::new(IpAddr::V4(ip), weft_udp::DEFAULT_PORT),
            queues,
            offload,
            share_port: false,
            kernel_path,
        };
        let f = ns.run(move || async move { Forwarder::start(cfg) })??;
        if kernel_path {
            if let Err(why) = f.kernel_path() {
                bail!("the kernel data path is not in use: {why}");
            }
        }
        handles.push(f);
    }
    let (Some(fb), Some(fa)) = (handles.pop(), handles.pop()) else {
        bail!("forwarders missing");
    };
    fa.set_peers(&[("10.244.2.0/24".parse()?, "172.18.0.3".parse()?)]);
    fb.set_peers(&[("10.244.1.0/24".parse()?, "172.18.0.2".parse()?)]);
    Ok((fa, fb, a, b))
}

/// CPU seconds used so far by this process's forwarder threads.
fn forwarder_cpu() -> f64 {
    // /proc reports clock ticks in USER_HZ, 100 on Linux (CLK_TCK).
    let tck = 100.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... ; comm may hold spaces: split after ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("weft-udp-") {
            continue;
        }
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields 14 and 15 of the line are rest[11] and rest[12].
        let field = |i: usize| rest.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
    }
    ticks as f64 / tck
}

fn sum(handles: &[&ForwarderHandle]) -> Stats {
    let mut s = Stats::default();
    for h in handles {
        let x = h.stats();
        s.tx_packets += x.tx_packets;
        s.tx_bytes += x.tx_bytes;
        s.tx_sends += x.tx_sends;
        s.rx_packets += x.rx_packets;
        s.rx_bytes += x.rx_bytes;
        s.rx_writes += x.rx_writes;
        s.drop_send_error += x.drop_send_error;
        s.drop_tun_write_error += x.drop_tun_write_error;
        s.kernel_tx_bytes += x.kernel_tx_bytes;
        s.kernel_rx_bytes += x.kernel_rx_bytes;
    }
    s
}

/// One iperf3 run: the receiver's Gbit/s, the client's run time, and what
/// `snapshot` returned just before and just after the client ran.
pub(crate) struct Iperf<T> {
    pub(crate) gbps: f64,
    pub(crate) secs: f64,
    pub(crate) before: T,
    pub(crate) after: T,
}

/// iperf3 TCP from `client` to a one-shot server on `addr` in `server`,
/// `streams` streams for `secs` seconds; `snapshot` (CPU times, counters)
/// is taken right around the client's run.
pub(crate) fn iperf3<T>(
    client: &Netns,
    server: &Netns,
    addr: &str,
    streams: u32,
    secs: u32,
    mut snapshot: impl FnMut() -> T,
) -> anyhow::Result<Iperf<T>> {
    let mut srv = server
        .command(&["iperf3", "-s", "-1", "-B", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(400));
    let before = snapshot();
    let t0 = std::time::Instant::now();
    let out = client
        .command(&[
            "iperf3",
            "-c",
            addr,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .stderr(Stdio::null())
        .output();
    let elapsed = t0.elapsed().as_secs_f64();
    let after = snapshot();
    let _ = srv.kill();
    let _ = srv.wait();
    let out = out.context("cannot run iperf3 -c")?;
    if !out.status.success() {
        bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no sum_received in iperf3's output")?;
    Ok(Iperf {
        gbps: bps / 1e9,
        secs: elapsed,
        before,
        after,
    })
}

/// iperf3 from a to b (server on b's `server` address) with `streams`
/// streams for `secs` seconds; the receiver's rate, and the forwarders'
/// CPU and counters over the run.
fn iperf(
    a: &Netns,
    b: &Netns,
    server: &str,
    streams: u32,
    secs: u32,
    fwd: &[&ForwarderHandle],
) -> anyhow::Result<Run> {
    let r = iperf3(a, b, server, streams, secs, || (forwarder_cpu(), sum(fwd)))?;
    let ((cpu0, s0), (cpu1, s1)) = (r.before, r.after);
    let stats = Stats {
        tx_packets: s1.tx_packets - s0.tx_packets,
        tx_bytes: s1.tx_bytes - s0.tx_bytes,
        tx_sends: s1.tx_sends - s0.tx_sends,
        rx_packets: s1.rx_packets - s0.rx_packets,
        rx_bytes: s1.rx_bytes - s0.rx_bytes,
        rx_writes: s1.rx_writes - s0.rx_writes,
        drop_send_error: s1.drop_send_error - s0.drop_send_error,
        drop_tun_write_error: s1.drop_tun_write_error - s0.drop_tun_write_error,
        kernel_tx_bytes: s1.kernel_tx_bytes - s0.kernel_tx_bytes,
        kernel_rx_bytes: s1.kernel_rx_bytes - s0.kernel_rx_bytes,
        ..Stats::default()
    };
    Ok(Run {
        gbps: r.gbps,
        cpu_secs: cpu1 - cpu0,
        secs: r.secs,
        stats,
    })
}

fn best(runs: Vec<Run>) -> Run {
    runs.into_iter()
        .max_by(|x, y| x.gbps.total_cmp(&y.gbps))
        .unwrap_or_default()
}

fn measure_vxlan(streams: u32, o: &ThroughputOptions) -> anyhow::Result<Run> {
    let mut runs = Vec::new();
    for _ in 0..o.runs {
        let (a, b) = vxlan()?;
        runs.push(iperf(&a, &b, "10.244.2.0", streams, o.secs, &[])?);
    }
    Ok(best(runs))
}

fn measure_udp(
    streams: u32,
    queues: usize,
    offload: bool,
    kernel_path: bool,
    o: &ThroughputOptions,
) -> anyhow::Result<Run> {
    let mut runs = Vec::new();
    for _ in 0..o.runs {
        let (fa, fb, a, b) = udp(queues, offload, kernel_path)?;
        let r = iperf(&a, &b, "10.244.2.0", streams, o.secs, &[&fa, &fb])?;
        drop((fa, fb));
        drop((a, b));
        runs.push(r);
    }
    Ok(best(runs))
}

/// Runs the section and prints its table.
pub fn run(o: &ThroughputOptions) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\n## Throughput: UDP backend forwarder vs kernel VXLAN (iperf3 TCP, {} s, best of {}, {} CPUs)\n",
        o.secs, o.runs, cpus
    );
    println!("| streams | backend | Gbit/s | udp/vxlan | forwarder CPU s per Gbit | datagrams per sendmsg | packets per TUN write | bytes by the kernel path: sent, received | drops |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for streams in [1u32, 4] {
        eprintln!("  .. vxlan, {streams} stream(s)");
        let vx = measure_vxlan(streams, o)?;
        println!(
            "| {streams} | kernel VXLAN | {:.2} | 1.00 | - | - | - | - | - |",
            vx.gbps
        );
        for (label, queues, offload, kernel) in [
            ("kernel data path (tc eBPF) + forwarder", 0usize, true, true),
            ("forwarder, offloads, 1 queue", 1, true, false),
            ("forwarder, offloads, 1 queue/CPU", 0, true, false),
            ("forwarder, no offloads, 1 queue/CPU", 0, false, false),
        ] {
            eprintln!("  .. {label}, {streams} stream(s)");
            let r = measure_udp(streams, queues, offload, kernel, o)?;
            let gbit = r.gbps * r.secs;
            let per_gbit = if gbit > 0.0 { r.cpu_secs / gbit } else { 0.0 };
            let per = |n: u64, d: u64| if d > 0 { n as f64 / d as f64 } else { 0.0 };
            let per_send = per(r.stats.tx_packets, r.stats.tx_sends);
            let per_write = per(r.stats.rx_packets, r.stats.rx_writes);
            let s = r.stats;
            let sent = per(s.kernel_tx_bytes, s.kernel_tx_bytes + s.tx_bytes);
            let received = per(s.kernel_rx_bytes, s.kernel_rx_bytes + s.rx_bytes);
            println!(
                "| {streams} | {label} | {:.2} | {:.2} | {:.3} | {:.1} | {:.1} | {:.0}%, {:.0}% | {} |",
                r.gbps,
                if vx.gbps > 0.0 { r.gbps / vx.gbps } else { 0.0 },
                per_gbit,
                per_send,
                per_write,
                sent * 100.0,
                received * 100.0,
                s.drop_send_error + s.drop_tun_write_error,
            );
        }
    }
    println!(
        "\n(CPU s per Gbit: user+system seconds of both nodes' forwarder threads divided by the Gbit carried; \
         datagrams per sendmsg > 1 is UDP GSO; packets per TUN write > 1 is received segments coalesced into one super-packet; \
         the kernel path's share: of the bytes sent by a's send program, of those received by b's receive program, the rest by the forwarders.)"
    );
    Ok(())
}
