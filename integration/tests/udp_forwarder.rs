//! The UDP backend's forwarder (weft-udp) in network namespaces (root): two
//! nodes on a veth underlay `172.18.0.0/16`, each with `flannel0` made by
//! `ensure_tun` (address = its subnet's network address with the cluster
//! prefix, MTU = 1500 − 28, up, as the overlay reconciler sets it) and a
//! forwarder; pings and TCP across nodes, flannel's wire format checked
//! byte for byte on the underlay, drops counted, peers removed, the device
//! deleted and recreated, the port taken.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_netns::{require_netns, veth, Netns};
use weft_udp::{ensure_tun, Forwarder, ForwarderConfig, ForwarderHandle, Stats, UdpError};

const DEV: &str = "flannel0";
const PORT: u16 = 8285;
const MTU: u32 = 1500 - 28;

/// One node: its namespace, underlay IP, subnet number (10.244.<n>.0/24).
struct Node {
    ns: Netns,
    ip: Ipv4Addr,
    n: u8,
}

impl Node {
    fn subnet(&self) -> IpNet {
        format!("10.244.{}.0/24", self.n).parse().unwrap()
    }

    /// flannel0's address: the subnet's network address, cluster prefix.
    fn tun_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.n, 0)
    }

    /// `ensure_tun` in the node, then what the reconciler does with it.
    fn make_tun(&self) -> bool {
        let created = self
            .ns
            .run(|| async { ensure_tun(DEV, true) })
            .unwrap()
            .unwrap();
        let cidr = format!("{}/16", self.tun_ip());
        self.ns.add_addr(DEV, &cidr).unwrap();
        self.ns.set_mtu(DEV, MTU).unwrap();
        self.ns.link_up(DEV).unwrap();
        created
    }

    fn start(&self, offload: bool) -> Result<ForwarderHandle, UdpError> {
        self.start_sharing(offload, false)
    }

    fn start_sharing(&self, offload: bool, share_port: bool) -> Result<ForwarderHandle, UdpError> {
        self.start_with(offload, share_port, false)
    }

    fn start_with(
        &self,
        offload: bool,
        share_port: bool,
        kernel_path: bool,
    ) -> Result<ForwarderHandle, UdpError> {
        let cfg = ForwarderConfig {
            device: DEV.to_owned(),
            bind: SocketAddr::new(IpAddr::V4(self.ip), PORT),
            queues: 2,
            offload,
            share_port,
            kernel_path,
        };
        self.ns
            .run(move || async move { Forwarder::start(cfg) })
            .unwrap()
    }

    fn ping(&self, to: Ipv4Addr, count: u32) -> bool {
        let out = self
            .ns
            .exec_status(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                &to.to_string(),
            ])
            .unwrap();
        out.status.success()
    }

    fn has_device(&self) -> bool {
        self.ns
            .exec_status(&["ip", "link", "show", "dev", DEV])
            .unwrap()
            .status
            .success()
    }
}

/// Two nodes, 172.18.0.2 (10.244.1.0/24) and 172.18.0.3 (10.244.2.0/24),
/// forwarders running and knowing each other. Field order = drop order:
/// forwarders stop before the namespaces go.
struct Pair {
    fa: ForwarderHandle,
    fb: ForwarderHandle,
    a: Node,
    b: Node,
}

fn nodes(tag: &str) -> (Node, Node) {
    let a = Node {
        ns: Netns::new(&format!("udp-{tag}-a")).unwrap(),
        ip: Ipv4Addr::new(172, 18, 0, 2),
        n: 1,
    };
    let b = Node {
        ns: Netns::new(&format!("udp-{tag}-b")).unwrap(),
        ip: Ipv4Addr::new(172, 18, 0, 3),
        n: 2,
    };
    veth(&a.ns, "eth0", &b.ns, "eth0").unwrap();
    a.ns.add_addr("eth0", "172.18.0.2/16").unwrap();
    b.ns.add_addr("eth0", "172.18.0.3/16").unwrap();
    (a, b)
}

impl Pair {
    fn new(tag: &str, offload: bool) -> Pair {
        Pair::with(tag, offload, false, false)
    }

    /// Each node's forwarder with or without the kernel data path.
    fn with(tag: &str, offload: bool, kernel_a: bool, kernel_b: bool) -> Pair {
        let (a, b) = nodes(tag);
        assert!(a.make_tun());
        assert!(b.make_tun());
        let fa = a.start_with(offload, false, kernel_a).unwrap();
        let fb = b.start_with(offload, false, kernel_b).unwrap();
        for (f, on) in [(&fa, kernel_a), (&fb, kernel_b)] {
            if on {
                assert_eq!(f.kernel_path(), Ok(()), "kernel data path not in use");
            }
        }
        let pair = Pair { fa, fb, a, b };
        pair.fa.set_peers(&[(pair.b.subnet(), pair.b.ip.into())]);
        pair.fb.set_peers(&[(pair.a.subnet(), pair.a.ip.into())]);
        pair
    }
}

/// Held by the tests that saturate both cores (bulk TCP) and by the one
/// that times a hand-over in milliseconds: run together on a 2-core
/// machine, the transfers starve the hand-over's drain and it measures
/// the machine, not the forwarder.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until `f()` holds, up to `secs`.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `payload` as one datagram from `from` (bound in `ns`) to `to`.
fn send_datagram(ns: &Netns, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
    ns.run(move || async move {
        let s = UdpSocket::bind(from).unwrap();
        s.send_to(&payload, to).unwrap();
    })
    .unwrap();
}

fn ping_both_ways(offload: bool) {
    let p = Pair::new(if offload { "ping-o" } else { "ping" }, offload);
    assert!(
        p.a.ping(p.b.tun_ip(), 3),
        "a cannot ping b over the forwarder"
    );
    assert!(
        p.b.ping(p.a.tun_ip(), 3),
        "b cannot ping a over the forwarder"
    );
    // 3 requests + 3 replies each way at least (a forwarder counts a
    // packet just after its send, so maybe after the ping saw the reply).
    let six = |s: &Stats| s.tx_packets >= 6 && s.rx_packets >= 6;
    assert!(eventually(2, || six(&p.fa.stats()) && six(&p.fb.stats())));
    let (sa, sb) = (p.fa.stats(), p.fb.stats());
    assert!(six(&sa), "{sa:?}");
    assert!(six(&sb), "{sb:?}");
    // flannel0's own IPv6 link-local chatter (router solicitations, MLD)
    // is for no peer subnet: dropped as unknown. Nothing else is dropped.
    assert_eq!(sa.drops(), sa.drop_unknown_subnet, "{sa:?}");
    assert_eq!(sb.drops(), sb.drop_unknown_subnet, "{sb:?}");
}

#[test]
fn ping_across_nodes() {
    require_netns!();
    ping_both_ways(true);
}

#[test]
fn ping_across_nodes_without_offload() {
    require_netns!();
    ping_both_ways(false);
}

/// TCP bulk data both ways (iperf3, 2 streams): TSO super-packets split into
/// MTU-sized datagrams sent with GSO, received with GRO and coalesced for
/// the TUN — a broken split or checksum would stall or corrupt TCP.
#[test]
fn tcp_bulk_transfer_with_offload() {
    require_netns!();
    let _alone = exclusive();
    let p = Pair::new("tcp", true);
    let out = iperf3_a_to_b(&p, &["-n", "40M", "-P", "2"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // iperf3 stops counting when the sender has written its 40 MiB; what
    // the receiver got by then all crossed both forwarders.
    let received = json["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(received >= 20 << 20, "received only {received} bytes");
    assert!(p.fa.stats().tx_bytes >= received, "{:?}", p.fa.stats());
    assert!(p.fb.stats().rx_bytes >= received, "{:?}", p.fb.stats());
    let sa = p.fa.stats();
    assert!(
        sa.tx_sends < sa.tx_packets / 2,
        "expected GSO sends to carry several packets each: {sa:?}"
    );
    assert_eq!(sa.drop_bad_offload + p.fb.stats().drop_bad_offload, 0);
    for (s, side) in [(sa, "a"), (p.fb.stats(), "b")] {
        assert_eq!(
            s.drop_tun_write_error + s.drop_send_error,
            0,
            "{side}: {s:?}"
        );
    }
}

/// iperf3 from a to b's flannel0 address (`args`: how much, streams), as
/// JSON; panics if it failed.
fn iperf3_a_to_b(p: &Pair, args: &[&str]) -> std::process::Output {
    let mut server =
        p.b.ns
            .command(&["iperf3", "-s", "-1", "-B", "10.244.2.0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut cmd = vec!["iperf3", "-c", "10.244.2.0", "-J"];
    cmd.extend_from_slice(args);
    let out = p.a.ns.exec_status(&cmd).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// An ICMP echo request 10.244.1.0 → 10.244.2.5 (no such host: nothing
/// answers, only the datagram matters), TTL 64, id 0x4242, 8 data bytes.
/// The byte at `i` of the test stream: depends on the position, so a
/// payload written at the wrong offset, twice or not at all shows.
fn stream_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i >> 10) as u8
}

/// TCP data crosses both forwarders intact, each way: 32 MiB of a known
/// stream compared byte for byte where it arrives. Received segments are
/// written to the TUN as super-packets gathered from the receive buffers;
/// a wrong offset, length or header would corrupt the stream (the kernel
/// does not check the payload of a super-packet against the segments'
/// checksums), not stall it.
#[test]
fn tcp_stream_arrives_intact() {
    require_netns!();
    let _alone = exclusive();
    let p = Pair::new("intact", true);
    stream_both_ways_intact(&p);
    for (s, side) in [(p.fa.stats(), "a"), (p.fb.stats(), "b")] {
        assert_eq!(s.drops() - s.drop_unknown_subnet, 0, "{side}: {s:?}");
        assert!(
            s.rx_writes * 2 < s.rx_packets,
            "{side}: received segments were not coalesced into super-packets: {s:?}"
        );
    }
}

/// 32 MiB each way over TCP, every byte checked (a veth underlay never
/// verifies checksums: a byte misplaced by a framing bug would arrive).
fn stream_both_ways_intact(p: &Pair) {
    const SIZE: u64 = 32 << 20;
    for (from, to) in [(&p.a, &p.b), (&p.b, &p.a)] {
        let addr = SocketAddr::new(IpAddr::V4(to.tun_ip()), 5300);
        let listener = to
            .ns
            .run(move || async move { std::net::TcpListener::bind(addr) })
            .unwrap()
            .unwrap();
        let server = to
            .ns
            .spawn_task(move || async move {
                use std::io::Read;
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 1 << 16];
                let (mut at, mut first_bad) = (0u64, None);
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    for &b in &buf[..n] {
                        if first_bad.is_none() && b != stream_byte(at) {
                            first_bad = Some(at);
                        }
                        at += 1;
                    }
                }
                (at, first_bad)
            })
            .unwrap();
        from.ns
            .run(move || async move {
                use std::io::Write;
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                let mut at = 0u64;
                while at < SIZE {
                    for b in buf.iter_mut() {
                        *b = stream_byte(at);
                        at += 1;
                    }
                    s.write_all(&buf).unwrap();
                }
            })
            .unwrap();
        let (got, first_bad) = server.join().unwrap();
        assert_eq!(got, SIZE, "bytes that arrived");
        assert_eq!(first_bad, None, "the first byte that differs");
    }
}

fn crafted_packet() -> Vec<u8> {
    let mut p = vec![
        0x45, 0x00, 0x00, 0x24, // v4, ihl 5, total 36
        0x42, 0x42, 0x40, 0x00, // id, DF
        0x40, 0x01, 0x00, 0x00, // TTL 64, ICMP, checksum
        10, 244, 1, 0, // src
        10, 244, 2, 5, // dst
        0x08, 0x00, 0x00, 0x00, // echo request, checksum
        0x12, 0x34, 0x00, 0x01, // id, seq
        b'w', b'e', b'f', b't', b'-', b'u', b'd', b'p',
    ];
    let c = weft_udp::packet::ipv4_header_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = inet_checksum(&p[20..]);
    p[22..24].copy_from_slice(&icmp.to_be_bytes());
    p
}

fn inet_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP payloads of the IPv4/UDP packets in a pcap file (Ethernet link
/// type), with their UDP ports.
fn pcap_udp_payloads(pcap: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    assert_eq!(&pcap[..4], &0xa1b2c3d4u32.to_le_bytes(), "pcap magic");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..at + 16 + caplen];
        at += 16 + caplen;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 {
            continue;
        }
        // A valid outer header: its checksum, its length, node to node.
        assert_eq!(inet_checksum(&ip[..ihl]), 0, "outer IPv4 header checksum");
        assert_eq!(
            (&ip[12..16], &ip[16..20]),
            (&[172, 18, 0, 2][..], &[172, 18, 0, 3][..])
        );
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "outer IPv4 total length");
        let udp = &ip[ihl..total];
        assert_eq!(
            usize::from(u16::from_be_bytes([udp[4], udp[5]])),
            udp.len(),
            "UDP length"
        );
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        out.push((sport, dport, udp[8..].to_vec()));
    }
    out
}

/// flannel's framing on the wire: a packet routed into `flannel0` on node a
/// leaves a's underlay as a UDP datagram 8285 → 8285 whose payload is the
/// IP packet itself, TTL decremented as flannel's proxy does, nothing more.
#[test]
fn wire_format_is_flannels() {
    require_netns!();
    wire_format(false);
}

/// The same bytes from the kernel data path's send program.
#[test]
fn kernel_path_wire_format_is_flannels() {
    require_netns!();
    wire_format(true);
}

fn wire_format(kernel: bool) {
    let p = Pair::with(
        if kernel { "kp-wire" } else { "wire" },
        true,
        kernel,
        kernel,
    );
    let pcap = tempfile::NamedTempFile::new().unwrap();
    let path = pcap.path().to_str().unwrap().to_owned();
    let mut dump =
        p.b.ns
            .command(&[
                "tcpdump", "-i", "eth0", "-n", "-U", "-c", "1", "-w", &path, "udp", "port", "8285",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    // Wait for "listening on eth0"; keep the pipe open until tcpdump exits
    // (it writes its summary there).
    let mut err = std::io::BufReader::new(dump.stderr.take().unwrap());
    {
        use std::io::BufRead;
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 && !line.contains("listening") {
            line.clear();
        }
    }
    // Inject the crafted packet into a's routing: a raw socket, header
    // included, so the bytes entering flannel0 are exactly ours.
    let packet = crafted_packet();
    let sent = packet.clone();
    p.a.ns
        .run(move || async move {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
            let to = SockAddr::from(SocketAddr::from(([10, 244, 2, 5], 0)));
            s.send_to(&sent, &to).unwrap();
        })
        .unwrap();
    let finished = eventually(5, || matches!(dump.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = dump.kill();
    }
    let _ = dump.wait();
    drop(err);
    assert!(finished, "tcpdump saw no datagram on b's underlay");
    let bytes = std::fs::read(pcap.path()).unwrap();
    let datagrams = pcap_udp_payloads(&bytes);
    assert_eq!(datagrams.len(), 1, "pcap: {}", hex_of(&bytes));
    let (sport, dport, payload) = &datagrams[0];
    assert_eq!((*sport, *dport), (PORT, PORT));
    // The golden datagram payload: the packet above with TTL 63 and the
    // IPv4 header checksum patched accordingly; no byte added or removed.
    let golden = "45000024 42424000 3f01e0aa 0af40100 0af40205 0800760b 12340001 77656674 2d756470";
    let golden: Vec<u8> = hex(golden);
    assert_eq!(hex_of(payload), hex_of(&golden), "datagram payload");
    // And that golden is the injected packet with only the TTL step applied.
    let mut expected = packet;
    assert!(weft_udp::packet::decrement_ttl(&mut expected));
    assert_eq!(hex_of(&expected), hex_of(&golden));
    let s = p.fa.stats();
    let by_kernel = s.kernel_tx_packets >= 1 && s.tx_packets == 0;
    assert_eq!(by_kernel, kernel, "who sent it: {s:?}");
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Datagrams that must not reach the pods: from an address that is no
/// peer's public IP, too short to be an IP packet, not an IP packet. Each
/// is dropped and counted, and nothing is written to the TUN.
#[test]
fn bad_datagrams_are_dropped_and_counted() {
    require_netns!();
    bad_datagrams(false);
}

/// With the kernel data path the receive program leaves all of these to
/// the forwarder, which drops and counts them the same.
#[test]
fn kernel_path_leaves_bad_datagrams_to_the_forwarder() {
    require_netns!();
    bad_datagrams(true);
}

fn bad_datagrams(kernel: bool) {
    let p = Pair::with(
        if kernel { "kp-drops" } else { "drops" },
        true,
        kernel,
        kernel,
    );
    let to = SocketAddr::from(([172, 18, 0, 3], PORT));
    let before: Stats = p.fb.stats();

    // A valid packet for a pod on b, from an unknown address on a's link.
    p.a.ns.add_addr("eth0", "172.18.0.99/16").unwrap();
    let mut inject = crafted_packet();
    inject[16..20].copy_from_slice(&[10, 244, 2, 0]); // to b's flannel0 address
    send_datagram(&p.a.ns, "172.18.0.99:40000".parse().unwrap(), to, inject);
    assert!(
        eventually(5, || p.fb.stats().drop_unknown_sender
            == before.drop_unknown_sender + 1),
        "{:?}",
        p.fb.stats()
    );

    // From a's public IP (a known peer), any source port.
    let from: SocketAddr = "172.18.0.2:40001".parse().unwrap();
    send_datagram(&p.a.ns, from, to, vec![0x45; 10]);
    assert!(
        eventually(5, || p.fb.stats().drop_too_short
            == before.drop_too_short + 1),
        "{:?}",
        p.fb.stats()
    );
    send_datagram(&p.a.ns, from, to, vec![0xab; 64]);
    assert!(
        eventually(5, || p.fb.stats().drop_not_ip == before.drop_not_ip + 1),
        "{:?}",
        p.fb.stats()
    );
    let after = p.fb.stats();
    assert_eq!(after.rx_packets, before.rx_packets, "{after:?}");
    // (flannel0's IPv6 chatter may add unknown-subnet drops meanwhile.)
    let other = |s: &Stats| s.drops() - s.drop_unknown_subnet;
    assert_eq!(other(&after), other(&before) + 3, "{after:?}");
    // The forwarder still works.
    assert!(p.a.ping(p.b.tun_ip(), 1));
}

/// Sends one datagram into flannel0 from each of `ports` on `node` (to a
/// discard port on b's subnet: a flow each, with no replies, so the kernel
/// picks their TUN queue by hash or by a steering program) and returns how
/// many packets each queue of `f` forwarded meanwhile.
fn flows_per_queue(node: &Node, f: &ForwarderHandle, ports: std::ops::Range<u16>) -> Vec<u64> {
    let before = f.queue_stats();
    let total = |s: &[Stats]| s.iter().map(|q| q.tx_packets).sum::<u64>();
    let n = u64::from(ports.end - ports.start);
    for port in ports {
        send_datagram(
            &node.ns,
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([10, 244, 2, 9], 9)),
            b"flow".to_vec(),
        );
    }
    assert!(
        eventually(5, || total(&f.queue_stats()) >= total(&before) + n),
        "{:?}",
        f.queue_stats()
    );
    f.queue_stats()
        .iter()
        .zip(&before)
        .map(|(a, b)| a.tx_packets - b.tx_packets)
        .collect()
}

/// A stopping forwarder steers flannel0's packets to its successor's
/// queues (one of them) until the successor has taken over; then the
/// kernel spreads flows over the successor's queues again.
#[test]
fn a_stopping_forwarder_steers_the_tun_to_its_successor() {
    require_netns!();
    let p = Pair::new("steer", true);
    let Pair { fa, fb, a, b } = p;
    let fa2 = a
        .start_sharing(true, true)
        .expect("the successor joins the port");
    fa2.set_peers(&[(b.subnet(), b.ip.into())]);
    fa.stop();
    // 40 flows: by hash over 2 queues, all on one is a 2^-39 chance.
    let steered = flows_per_queue(&a, &fa2, 40_000..40_040);
    assert!(
        steered.iter().filter(|&&n| n > 0).count() == 1,
        "before took_over every flow goes to one queue: {steered:?}"
    );
    fa2.took_over();
    let spread = flows_per_queue(&a, &fa2, 41_000..41_040);
    assert!(
        spread.iter().all(|&n| n > 0),
        "after took_over the kernel spreads flows again: {spread:?}"
    );
    drop((fa2, fb));
}

/// A peer taken out of the table is not forwarded to any more, at once.
#[test]
fn removed_peer_is_no_longer_forwarded_to() {
    require_netns!();
    removed_peer(false);
}

#[test]
fn kernel_path_stops_sending_to_a_removed_peer() {
    require_netns!();
    removed_peer(true);
}

fn removed_peer(kernel: bool) {
    let p = Pair::with(
        if kernel { "kp-remove" } else { "remove" },
        true,
        kernel,
        kernel,
    );
    assert!(p.a.ping(p.b.tun_ip(), 1));
    p.fa.set_peers(&[]);
    let before = p.fa.stats();
    assert!(
        !p.a.ping(p.b.tun_ip(), 2),
        "ping went through a removed peer"
    );
    let after = p.fa.stats();
    assert_eq!(after.tx_packets, before.tx_packets, "{after:?}");
    assert_eq!(
        after.kernel_tx_packets, before.kernel_tx_packets,
        "{after:?}"
    );
    assert!(
        after.drop_unknown_subnet >= before.drop_unknown_subnet + 2,
        "{after:?}"
    );
    // Put back: forwarding resumes.
    p.fa.set_peers(&[(p.b.subnet(), p.b.ip.into())]);
    assert!(p.a.ping(p.b.tun_ip(), 1));
}

/// `flannel0` deleted by hand: the forwarder notices, keeps running, and
/// re-attaches when the device is back (made again as the reconciler would).
#[test]
fn device_deleted_and_recreated() {
    require_netns!();
    device_recreated(false);
}

/// The kernel path's programs go with the device; they are attached to
/// the new one (its watcher wakes on the link events).
#[test]
fn kernel_path_follows_a_recreated_device() {
    require_netns!();
    device_recreated(true);
}

fn device_recreated(kernel: bool) {
    let p = Pair::with(
        if kernel { "kp-recreate" } else { "recreate" },
        true,
        kernel,
        kernel,
    );
    assert!(p.a.ping(p.b.tun_ip(), 1));
    p.b.ns.ip(&["link", "del", DEV]).unwrap();
    assert!(
        eventually(5, || p.fb.stats().device_lost >= 2),
        "both queues should notice: {:?}",
        p.fb.stats()
    );
    assert!(!p.a.ping(p.b.tun_ip(), 1));
    assert!(p.b.make_tun(), "ensure_tun should create it again");
    assert!(
        eventually(5, || p.fb.stats().device_reattached >= 2),
        "{:?}",
        p.fb.stats()
    );
    assert!(
        eventually(10, || p.a.ping(p.b.tun_ip(), 1)),
        "no forwarding after the device came back"
    );
    if kernel {
        // b's watcher attaches the programs to the new device as the link
        // events arrive (later on a busy machine); until then b's forwarder
        // sends.
        assert!(
            eventually(5, || {
                let before = p.fb.stats();
                p.b.ping(p.a.tun_ip(), 1) && {
                    let after = p.fb.stats();
                    after.kernel_tx_packets > before.kernel_tx_packets
                        && after.tx_packets == before.tx_packets
                }
            }),
            "b's kernel path did not come back: {:?}",
            p.fb.stats()
        );
    } else {
        assert!(p.b.ping(p.a.tun_ip(), 1));
    }
}

/// Port 8285 taken: a clear `PortInUse(8285)`, whether by a plain socket or
/// by another forwarder (whose sockets use SO_REUSEPORT).
#[test]
fn port_in_use_is_reported() {
    require_netns!();
    let (a, _b) = nodes("port");
    a.make_tun();
    let holder =
        a.ns.run(|| async { UdpSocket::bind("0.0.0.0:8285").unwrap() })
            .unwrap();
    match a.start(true) {
        Err(UdpError::PortInUse(8285)) => {}
        other => panic!("expected PortInUse(8285), got {other:?}"),
    }
    let msg = UdpError::PortInUse(8285).to_string();
    assert!(msg.contains("8285"), "{msg}");
    drop(holder);
    let first = a.start(true).unwrap();
    match a.start(true) {
        Err(UdpError::PortInUse(8285)) => {}
        other => panic!("a second forwarder: expected PortInUse(8285), got {other:?}"),
    }
    first.stop();
}

/// A successor forwarder (a restarted weftd taking over) joins the port's
/// group and attaches queues of its own while the old one still runs; the
/// old one then stops, forwarding what was queued to it first. Pings every
/// 5 ms across both hand-overs (b's, then a's): not one is lost.
#[test]
fn a_successor_takes_over_without_losing_a_packet() {
    require_netns!();
    handover(false);
}

/// The same with the kernel data path on: the successor's programs sit
/// behind the predecessor's on each hook and take over when its links
/// close.
#[test]
fn kernel_path_hand_over_loses_no_packet() {
    require_netns!();
    handover(true);
}

fn handover(kernel: bool) {
    let _alone = exclusive();
    let p = Pair::with(
        if kernel { "kp-handover" } else { "handover" },
        true,
        kernel,
        kernel,
    );
    let count = 400;
    let target = p.b.tun_ip().to_string();
    let ping =
        p.a.ns
            .command(&[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.005",
                "-W",
                "1",
                &target,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let Pair { fa, fb, a, b } = p;
    let fb2 = b
        .start_with(true, true, kernel)
        .expect("the successor joins the port");
    fb2.set_peers(&[(a.subnet(), a.ip.into())]);
    let old_b = fb.stop();
    fb2.took_over();
    std::thread::sleep(Duration::from_millis(300));
    let fa2 = a
        .start_with(true, true, kernel)
        .expect("the successor joins the port");
    fa2.set_peers(&[(b.subnet(), b.ip.into())]);
    let old_a = fa.stop();
    fa2.took_over();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    println!("hand-over under 5 ms pings: {summary}");
    println!("old a {old_a:?}\nold b {old_b:?}");
    println!("fa2 {:?}\nfb2 {:?}", fa2.stats(), fb2.stats());
    assert!(
        summary.starts_with(&format!("{count} packets transmitted, {count} received")),
        "pings were lost across the hand-over: {text}"
    );
    for s in [fb2.stats(), fa2.stats()] {
        let (rx, tx) = if kernel {
            (s.kernel_rx_packets, s.kernel_tx_packets)
        } else {
            (s.rx_packets, s.tx_packets)
        };
        assert!(rx > 0 && tx > 0, "the successor forwarded nothing: {s:?}");
    }
    // Without share_port a held port is still refused.
    assert!(matches!(b.start(true), Err(UdpError::PortInUse(PORT))));
    drop((fa2, fb2));
}

/// `ensure_tun` creates once, then finds the device; the device (with its
/// address) outlives the forwarder, and a new forwarder attaches to it.
#[test]
fn ensure_tun_is_idempotent_and_the_device_persists() {
    require_netns!();
    let (a, b) = nodes("persist");
    assert!(a.make_tun());
    assert!(!a
        .ns
        .run(|| async { ensure_tun(DEV, true) })
        .unwrap()
        .unwrap());
    assert!(!a
        .ns
        .run(|| async { ensure_tun(DEV, false) })
        .unwrap()
        .unwrap());
    b.make_tun();
    let f = a.start(true).unwrap();
    f.stop();
    assert!(a.has_device(), "flannel0 vanished with the forwarder");
    let addrs = a.ns.ip(&["-4", "addr", "show", "dev", DEV]).unwrap();
    assert!(addrs.contains("10.244.1.0/16"), "{addrs}");
    // A restarted forwarder re-attaches to the same device and forwards.
    let fa = a.start(true).unwrap();
    let fb = b.start(true).unwrap();
    fa.set_peers(&[(b.subnet(), b.ip.into())]);
    fb.set_peers(&[(a.subnet(), a.ip.into())]);
    assert!(a.ping(b.tun_ip(), 1));
    drop((fa, fb));
    // Invalid names are refused before touching anything.
    assert!(matches!(
        a.ns.run(|| async { ensure_tun("bad/name", true) }).unwrap(),
        Err(UdpError::InvalidName(_))
    ));
}

/// With the kernel data path on both nodes, pings cross without either
/// forwarder carrying them: the tc programs frame and unframe them.
#[test]
fn kernel_path_carries_pings() {
    require_netns!();
    let p = Pair::with("kp-ping", true, true, true);
    assert!(
        p.a.ping(p.b.tun_ip(), 3),
        "a cannot ping b over the kernel path"
    );
    assert!(
        p.b.ping(p.a.tun_ip(), 3),
        "b cannot ping a over the kernel path"
    );
    let (sa, sb) = (p.fa.stats(), p.fb.stats());
    for (s, side) in [(sa, "a"), (sb, "b")] {
        assert!(
            s.kernel_tx_packets >= 6 && s.kernel_rx_packets >= 6,
            "{side}: {s:?}"
        );
        assert_eq!((s.tx_packets, s.rx_packets), (0, 0), "{side}: {s:?}");
    }
}

/// TCP bulk data (iperf3, 2 streams, 10 s) over the kernel data path on
/// both nodes: TSO super-packets framed as UDP tunnel super-packets,
/// unframed whole on the other side. Nearly every packet stays in the
/// kernel (the forwarder sees at most the odd packet the programs pass on).
#[test]
fn kernel_path_carries_tcp_bulk() {
    require_netns!();
    let _alone = exclusive();
    let p = Pair::with("kp-tcp", true, true, true);
    stream_both_ways_intact(&p);
    let out = iperf3_a_to_b(&p, &["-t", "5", "-P", "2"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let received = json["end"]["sum_received"]["bytes"].as_u64().unwrap();
    let retrans = json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let gbps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9;
    let (sa, sb) = (p.fa.stats(), p.fb.stats());
    eprintln!("{gbps:.2} Gbit/s, {retrans} retransmits\na: {sa:?}\nb: {sb:?}");
    assert!(received >= 20 << 20, "received only {received} bytes");
    // Sent: all by a's send program.
    assert!(sa.kernel_tx_bytes >= received, "{sa:?}");
    assert!(
        sa.tx_bytes < received / 100,
        "a's forwarder sent too much: {sa:?}"
    );
    // Received: the veth underlay hands over TCP super-packets framed
    // whole. A kernel that can clear their tunnel marks lets b's receive
    // program unframe them; else it reframes them for b's receive engine,
    // whose VXLAN code unframes them. Either way they stay in the kernel.
    assert!(p.fb.super_packets().is_ok(), "{:?}", p.fb.super_packets());
    assert!(sb.kernel_rx_bytes >= received, "{sb:?}");
    assert!(
        sb.rx_bytes < received / 100,
        "b's forwarder received too much: {sb:?}"
    );
}

/// `name`'s MAC address in `ns`.
fn link_mac(ns: &Netns, name: &str) -> [u8; 6] {
    let json = ns.ip_json(&["link", "show", "dev", name]).unwrap();
    let mac = json[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no MAC in {json}"));
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    <[u8; 6]>::try_from(bytes).unwrap()
}

/// A kernel that clears super-packets' tunnel marks in tc
/// (`BPF_F_ADJ_ROOM_DECAP_L4_UDP`, newer than 6.18) needs no receive
/// engine: then none is made. Else b has one, in use.
fn no_engine_needed(p: &Pair) -> bool {
    let how =
        p.fb.super_packets()
            .expect("super-packets leave the kernel");
    if how.contains("in tc") {
        // The flag came after 6.18: a probe that finds it earlier is wrong.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        assert!(
            version > (6, 18),
            "the probe found the flag on {}",
            release.trim()
        );
        assert_eq!(p.b.ns.ifindex(ENGINE).ok(), None, "an engine nobody needs");
        eprintln!("this kernel unframes super-packets in tc: no receive engine to test");
        return true;
    }
    assert!(how.contains(ENGINE), "{how}");
    false
}

const ENGINE: &str = "weft-udp-rx";
const ENGINE_PORT: u16 = PORT + 1;

/// A VXLAN datagram's payload (VNI 1) holding an Ethernet frame to `mac`
/// with an IPv4/UDP packet 10.244.1.5:4000 → 10.244.2.0:9999 carrying
/// `data`.
fn vxlan_to(mac: [u8; 6], data: &[u8]) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 244, 1, 5, 10, 244, 2, 0,
    ];
    let total = (20 + 8 + data.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = weft_udp::packet::ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&4000u16.to_be_bytes());
    ip.extend_from_slice(&9999u16.to_be_bytes());
    ip.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(data);
    let mut out = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    out.extend_from_slice(&mac);
    out.extend_from_slice(&[0x02, 0x42, 0, 0, 0, 1, 0x08, 0x00]);
    out.extend_from_slice(&ip);
    out
}

/// The receive engine takes only frames for its own MAC, which only the
/// receive program writes and which is never published: a VXLAN datagram
/// sent straight to its port with another MAC, or to the broadcast
/// address, reaches no pod. (One with its MAC does: the probe sees
/// delivery, so its silence for the others means something.)
#[test]
fn receive_engine_takes_only_frames_for_its_own_mac() {
    require_netns!();
    let p = Pair::with("kp-engine", true, true, true);
    if no_engine_needed(&p) {
        return;
    }
    let listener =
        p.b.ns
            .run(|| async {
                let s = UdpSocket::bind("10.244.2.0:9999").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                s
            })
            .unwrap();
    let mac = link_mac(&p.b.ns, ENGINE);
    // No address at all: an IPv6 link-local one would spell out the MAC.
    let addresses = p.b.ns.ip(&["addr", "show", ENGINE]).unwrap();
    assert!(!addresses.contains("inet"), "{addresses}");
    let to = SocketAddr::from(([172, 18, 0, 3], ENGINE_PORT));
    let from: SocketAddr = "172.18.0.2:40003".parse().unwrap();
    for (dst, tag) in [
        ([0x02, 0x11, 0x22, 0x33, 0x44, 0x55], &b"other mac"[..]),
        ([0xff; 6], &b"broadcast"[..]),
        (mac, &b"engine mac"[..]),
    ] {
        send_datagram(&p.a.ns, from, to, vxlan_to(dst, tag));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = listener.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert_eq!(got, vec!["engine mac".to_string()]);
}

/// The receive engine outlives its forwarder: a successor finds it as it
/// was and uses it without writing (same device); deleted or set down by
/// hand, it is back within a second and super-packets stay in the kernel.
#[test]
fn receive_engine_is_kept_across_restarts_and_remade() {
    require_netns!();
    let _alone = exclusive();
    let p = Pair::with("kp-engine-keep", true, true, true);
    if no_engine_needed(&p) {
        return;
    }
    let Pair { fa, fb, a, b } = p;
    let first = b.ns.ifindex(ENGINE).expect("no receive engine");
    drop(fb);
    assert_eq!(
        b.ns.ifindex(ENGINE).ok(),
        Some(first),
        "the engine went with its forwarder"
    );
    let fb = b.start_with(true, false, true).unwrap();
    fb.set_peers(&[(a.subnet(), a.ip.into())]);
    assert_eq!(fb.kernel_path(), Ok(()));
    assert!(fb.super_packets().is_ok(), "{:?}", fb.super_packets());
    assert_eq!(
        b.ns.ifindex(ENGINE).ok(),
        Some(first),
        "the successor made the engine again"
    );
    let p = Pair { fa, fb, a, b };

    p.b.ns.ip(&["link", "del", ENGINE]).unwrap();
    let t0 = Instant::now();
    assert!(
        eventually(5, || p.b.ns.ifindex(ENGINE).ok().is_some()),
        "the engine was not made again"
    );
    let took = t0.elapsed();
    eprintln!("receive engine made again after {took:?}");
    assert!(took < Duration::from_secs(1), "made again after {took:?}");
    // Set down by hand (its VXLAN socket closes): up again.
    let up = || {
        p.b.ns
            .ip(&["link", "show", ENGINE])
            .unwrap_or_default()
            .contains(",UP")
    };
    assert!(eventually(5, up), "the engine is not up");
    p.b.ns.link_down(ENGINE).unwrap();
    let t0 = Instant::now();
    assert!(eventually(5, up), "the engine was not set up again");
    let took = t0.elapsed();
    eprintln!("receive engine up again after {took:?}");
    assert!(took < Duration::from_secs(1), "up again after {took:?}");
    // Once the programs point at the new engine, super-packets arrive
    // through it.
    assert!(eventually(5, || p.fb.super_packets().is_ok()));
    let before = p.fb.stats();
    let out = iperf3_a_to_b(&p, &["-t", "2"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let received = json["end"]["sum_received"]["bytes"].as_u64().unwrap();
    let after = p.fb.stats();
    assert!(received >= 10 << 20, "received only {received} bytes");
    assert!(
        after.kernel_rx_bytes - before.kernel_rx_bytes >= received,
        "{after:?}"
    );
    assert!(
        after.rx_bytes - before.rx_bytes < received / 100,
        "b's forwarder received too much: {after:?}"
    );
}

/// A node with the kernel data path and one without (a flannel node, or
/// weft without `CAP_BPF`) understand each other: the same bytes on the
/// wire. b's forwarder sends trains of datagrams (UDP GSO), which a's
/// receive program leaves to a's forwarder; every byte still arrives.
#[test]
fn kernel_path_and_forwarder_nodes_interoperate() {
    require_netns!();
    let _alone = exclusive();
    let p = Pair::with("kp-mixed", true, true, false);
    assert!(p.a.ping(p.b.tun_ip(), 2), "a (kernel path) cannot ping b");
    assert!(p.b.ping(p.a.tun_ip(), 2), "b (forwarder) cannot ping a");
    stream_both_ways_intact(&p);
    let (sa, sb) = (p.fa.stats(), p.fb.stats());
    // 32 MiB each way (a super-packet counts once: bytes, not packets).
    let mib32 = 32 << 20;
    assert!(
        sa.kernel_tx_bytes > mib32 && sa.tx_packets == 0,
        "a: {sa:?}"
    );
    assert!(sb.rx_bytes > mib32 && sb.tx_bytes > mib32, "b: {sb:?}");
    assert!(sa.rx_bytes + sa.kernel_rx_bytes > mib32, "a: {sa:?}");
    assert_eq!(sa.drops() - sa.drop_unknown_subnet, 0, "a: {sa:?}");
}

/// Everything between two nodes is one UDP 4-tuple (8285 to 8285), which
/// the kernel's own reuse-port hash would send to one socket: the group's
/// program spreads datagrams by the flow inside, so the receiving
/// forwarder's queues share the work (and each flow stays on one).
#[test]
fn received_flows_spread_over_the_queues() {
    require_netns!();
    let p = Pair::new("spread", true);
    let before = p.fb.queue_stats();
    // 40 flows a → b, to even client ports as Linux's connect picks them.
    for port in (40_000..40_080).step_by(2) {
        send_datagram(
            &p.a.ns,
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([10, 244, 2, 9], 9)),
            b"flow".to_vec(),
        );
    }
    let total = |s: &[Stats]| s.iter().map(|q| q.rx_packets).sum::<u64>();
    assert!(
        eventually(5, || total(&p.fb.queue_stats()) >= total(&before) + 40),
        "{:?}",
        p.fb.queue_stats()
    );
    let per: Vec<u64> =
        p.fb.queue_stats()
            .iter()
            .zip(&before)
            .map(|(a, b)| a.rx_packets - b.rx_packets)
            .collect();
    // By chance all on one: 2^-39.
    assert!(per.iter().all(|&n| n > 0), "received per queue: {per:?}");
}

/// A peer table the maps cannot hold (more than 65,536 subnets) makes the
/// kernel path give up for good — its maps might otherwise still send to a
/// peer that is gone — and the forwarder carries everything.
#[test]
fn kernel_path_gives_up_when_its_maps_cannot_follow() {
    require_netns!();
    let p = Pair::with("kp-full", true, true, true);
    let mut peers: Vec<(IpNet, IpAddr)> = (0..65_600u32)
        .map(|i| {
            // 11.0.0.0/24, 11.0.1.0/24, …, then 12.0.0.0/24, …
            let net = format!("{}.{}.{}.0/24", 11 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
            (
                net.parse().unwrap(),
                IpAddr::V4(Ipv4Addr::new(172, 19, 0, 1)),
            )
        })
        .collect();
    peers.push((p.b.subnet(), p.b.ip.into()));
    p.fa.set_peers(&peers);
    let why =
        p.fa.kernel_path()
            .expect_err("the kernel path should have given up");
    assert!(why.contains("could not be written"), "{why}");
    let before = p.fa.stats();
    assert!(
        p.a.ping(p.b.tun_ip(), 2),
        "a cannot ping b through its forwarder"
    );
    let after = p.fa.stats();
    assert!(after.tx_packets >= before.tx_packets + 2, "{after:?}");
    assert_eq!(
        after.kernel_tx_packets, before.kernel_tx_packets,
        "{after:?}"
    );
}
