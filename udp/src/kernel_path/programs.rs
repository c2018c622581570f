//! The kernel data path's two tc programs, assembled at run time with the
//! node's constants (port, device numbers, address) as immediates.
//!
//! **Send** (`flannel0` egress): an IPv4 packet whose destination is in a
//! peer's subnet (the `routes` LPM trie) gets an outer IPv4 + UDP header
//! put in front of it, exactly flannel's framing (from and to
//! `Backend.Port`, the node's public IP to the peer's, DF, TTL 64, UDP
//! checksum 0 as IPv4 allows), its own TTL decremented as flannel's proxy
//! does, and room for an Ethernet header, and is sent out of the underlay
//! with the neighbour's addresses filled in (`bpf_redirect_neigh`). A TCP super-packet (TSO) stays one: it
//! is marked as a UDP tunnel packet, and the underlay (or the kernel's GSO)
//! cuts it into MTU-sized datagrams, each with a copy of the outer header.
//!
//! **Receive** (underlay ingress): an unfragmented IPv4 datagram to the
//! port, addressed to this node, from a known peer (the `sources` hash)
//! and carrying exactly one IPv4 packet (its length is the datagram's: a
//! train of datagrams merged by GRO is not) loses its outer headers, has
//! its TTL decremented, and enters the stack as received by `flannel0`
//! (`bpf_redirect` to its ingress), the very place the forwarder's TUN
//! write puts it. A TCP super-packet framed whole (a veth underlay passes
//! them on as they were sent) is unframed whole only where the kernel can
//! also clear its UDP tunnel marks (`BPF_F_ADJ_ROOM_DECAP_L4_UDP`, kernels
//! after 6.18, probed once by [`decap_probe`]); elsewhere it is reframed
//! as VXLAN for the receive engine (see the receive program and
//! [`crate::kernel_path::engine`]), whose own ingress program
//! ([`engine_ingress`]) hands the unframed packet to `flannel0`.
//!
//! Everything else goes on as if the programs were not there (`TCX_NEXT`):
//! IPv6 inside, unknown subnets, unknown senders, TTL about to expire,
//! anything malformed. The user-space forwarder then handles it, drops and
//! counts it as before. Once a packet has been changed a failure drops it
//! (`TC_ACT_SHOT`); that needs the kernel to be out of memory.

use std::net::Ipv4Addr;

use crate::bpf::asm::{
    Alu, Asm, AsmError, Cond, Insn, Label, Reg, Size, FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9,
};

/// `bpf_map_lookup_elem`.
const MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_map_update_elem`.
const MAP_UPDATE_ELEM: i32 = 2;
/// `bpf_ktime_get_ns`.
const KTIME_GET_NS: i32 = 5;
/// `bpf_skb_store_bytes`.
const SKB_STORE_BYTES: i32 = 9;
/// `bpf_l3_csum_replace`.
const L3_CSUM_REPLACE: i32 = 10;
/// `bpf_redirect`.
const REDIRECT: i32 = 23;
/// `bpf_skb_change_head`.
const SKB_CHANGE_HEAD: i32 = 43;
/// `bpf_skb_load_bytes`.
const SKB_LOAD_BYTES: i32 = 26;
/// `bpf_skb_adjust_room`.
const SKB_ADJUST_ROOM: i32 = 50;
/// `bpf_redirect_neigh`.
const REDIRECT_NEIGH: i32 = 152;

/// `BPF_ADJ_ROOM_MAC`: room made (or taken) right after the L2 header.
const ADJ_ROOM_MAC: i32 = 1;
/// `BPF_F_ADJ_ROOM_FIXED_GSO`: keep the super-packet's segment size (the
/// TUN's MTU is already the underlay's minus the headers added here).
const ADJ_FIXED_GSO: i32 = 1 << 0;
/// `BPF_F_ADJ_ROOM_ENCAP_L3_IPV4`.
const ADJ_ENCAP_L3_IPV4: i32 = 1 << 1;
/// `BPF_F_ADJ_ROOM_ENCAP_L4_UDP`.
const ADJ_ENCAP_L4_UDP: i32 = 1 << 4;
/// `BPF_F_ADJ_ROOM_DECAP_L4_UDP` (kernels after 6.18): also clears a
/// super-packet's UDP tunnel state.
const ADJ_DECAP_L4_UDP: i32 = 1 << 10;
/// `BPF_F_INGRESS`.
const F_INGRESS: i32 = 1;
/// `BPF_F_RECOMPUTE_CSUM`: a store also mends `skb->csum` (a packet whose
/// checksum the device computed over all of it, `CHECKSUM_COMPLETE`).
const F_RECOMPUTE_CSUM: i32 = 1;

/// How long a flow that sent a super-packet keeps all its packets on the
/// super-packets' way (the receive engine, or the forwarder) (1 s).
const STICKY_NS: i32 = 1_000_000_000;

/// `TCX_NEXT`: not ours, on to the next program (or the stack).
const TCX_NEXT: i32 = -1;
/// `TCX_PASS`: on to the stack, past any further program.
const TCX_PASS: i32 = 0;
/// `TC_ACT_SHOT`.
const TC_ACT_SHOT: i32 = 2;

/// `struct __sk_buff` fields.
const SKB_LEN: i16 = 0;
const SKB_PKT_TYPE: i16 = 4;
const SKB_PROTOCOL: i16 = 16;
const SKB_GSO_SEGS: i16 = 164;
const SKB_GSO_SIZE: i16 = 176;

/// Bytes of the Ethernet header in front of what the underlay receives.
const ETH: i32 = 14;
/// The outer IPv4 + UDP headers.
pub(crate) const OUTER: i32 = 28;
/// What reframing as VXLAN adds: its header and an Ethernet header.
const REFRAME: i32 = 8 + 14;
/// The inner Ethernet source a reframed packet carries (any unicast
/// address but the engine's own).
const REFRAME_SOURCE: [u8; 6] = [0x02, 0x77, 0x65, 0x66, 0x74, 0x00];

/// Keys of the per-CPU `stats` array (value: packets, bytes as u64).
pub(crate) const STAT_TX: u32 = 0;
/// See [`STAT_TX`].
pub(crate) const STAT_RX: u32 = 1;

/// A 16-bit network-order value as the machine reads it from memory.
fn wire16(v: u16) -> i32 {
    wire_bytes2(v.to_be_bytes())
}

/// An address as the machine reads it from memory.
fn wire32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// What the send program needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendParams {
    /// The `routes` LPM trie: key (prefix length u32, IPv4 address),
    /// value [`crate::kernel_path::RouteValue`].
    pub routes: i32,
    /// The `stats` per-CPU array.
    pub stats: i32,
    /// The underlay device.
    pub underlay: u32,
    /// `Backend.Port`, source and destination.
    pub port: u16,
}

/// What the receive program needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceiveParams {
    /// The `sources` hash: peers' public IPv4 addresses.
    pub sources: i32,
    /// The `flows` LRU hash: inner (source, destination, ports) → when the
    /// flow last sent a super-packet to the forwarder (ns).
    pub flows: i32,
    /// The `stats` per-CPU array.
    pub stats: i32,
    /// The TUN device the packets are handed to.
    pub tun: u32,
    /// `Backend.Port`.
    pub port: u16,
    /// This node's public IP: datagrams to other addresses are not ours.
    pub local: Ipv4Addr,
    /// The kernel has `BPF_F_ADJ_ROOM_DECAP_L4_UDP` ([`decap_probe`]):
    /// super-packets are unframed here, and no engine is needed.
    pub decap_l4_udp: bool,
    /// The receive engine super-packets are reframed for, if there is one
    /// (see [`crate::kernel_path::engine`]).
    pub engine: Option<EngineParams>,
}

/// Where a reframed super-packet goes: the engine's UDP port and MAC.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineParams {
    /// The engine's VXLAN port.
    pub port: u16,
    /// The engine's VXLAN network identifier.
    pub vni: u32,
    /// The engine's MAC address.
    pub mac: [u8; 6],
}

/// Adds `segs` packets (0 = one) and `bytes` bytes to the per-CPU counter
/// `key`. Uses r0..r5 and the u32 at `fp + slot`.
fn count(
    a: &mut Asm,
    stats: i32,
    key: u32,
    segs: Reg,
    bytes: Reg,
    slot: i16,
) -> Result<(), AsmError> {
    let done = a.label();
    let one = a.label();
    a.store_imm(Size::W, FP, slot, key as i32);
    lookup(a, stats, slot);
    a.jump_imm(Cond::Eq, R0, 0, done);
    a.jump_imm(Cond::Ne, segs, 0, one);
    a.mov_imm(segs, 1);
    a.bind(one)?;
    a.load(Size::Dw, R1, R0, 0);
    a.alu_reg(Alu::Add, R1, segs);
    a.store(Size::Dw, R0, 0, R1);
    a.load(Size::Dw, R1, R0, 8);
    a.alu_reg(Alu::Add, R1, bytes);
    a.store(Size::Dw, R0, 8, R1);
    a.bind(done)?;
    Ok(())
}

/// Decrements the TTL of the IPv4 header at packet offset `at`, whose TTL
/// and protocol bytes are also on the stack at `fp + copy`, and mends the
/// header checksum. Jumps to `fail` if the kernel could not write.
fn decrement_ttl(a: &mut Asm, at: i32, copy: i16, fail: Label) {
    // Old (TTL, protocol) word, as it is in the packet.
    a.load(Size::H, R9, FP, copy);
    a.load(Size::B, R2, FP, copy);
    a.alu_imm(Alu::Add, R2, -1);
    a.store(Size::B, FP, copy, R2);
    a.mov(R1, R6);
    a.mov_imm(R2, at + 8);
    a.mov(R3, FP);
    a.alu_imm(Alu::Add, R3, i32::from(copy));
    a.mov_imm(R4, 1);
    a.mov_imm(R5, 0);
    a.call(SKB_STORE_BYTES);
    a.jump_imm(Cond::Ne, R0, 0, fail);
    a.mov(R1, R6);
    a.mov_imm(R2, at + 10);
    a.mov(R3, R9);
    a.load(Size::H, R4, FP, copy);
    a.mov_imm(R5, 2);
    a.call(L3_CSUM_REPLACE);
    a.jump_imm(Cond::Ne, R0, 0, fail);
}

/// The one's complement checksum of the 32-bit sum of 16-bit words in
/// `sum` (any 32-bit sum): folded twice, complemented, in the
/// low 16 bits of `sum`. Uses `scratch`.
fn fold_and_complement(a: &mut Asm, sum: Reg, scratch: Reg) {
    for _ in 0..2 {
        a.mov(scratch, sum);
        a.alu_imm(Alu::Rsh, scratch, 16);
        a.alu_imm(Alu::And, sum, 0xffff);
        a.alu_reg(Alu::Add, sum, scratch);
    }
    a.alu_imm(Alu::Xor, sum, 0xffff);
}

/// `r0 = bpf_map_lookup_elem(map, fp + key)` (null when absent).
fn lookup(a: &mut Asm, map: i32, key: i16) {
    a.load_map(R1, map);
    a.mov(R2, FP);
    a.alu_imm(Alu::Add, R2, i32::from(key));
    a.call(MAP_LOOKUP_ELEM);
}

/// The inner IPv4 header copied to `fp + at`: not IPv4, or a TTL that
/// would expire here (the forwarder counts it), goes to `next`.
fn inner_ipv4_with_ttl(a: &mut Asm, at: i16, next: Label) {
    a.load(Size::B, R2, FP, at);
    a.alu_imm(Alu::And, R2, 0xf0);
    a.jump_imm(Cond::Ne, R2, 0x40, next);
    a.load(Size::B, R2, FP, at + 8);
    a.jump_imm(Cond::Le, R2, 1, next);
}

/// `r6 = ctx`; anything but IPv4 goes to `next`.
fn ipv4_only(a: &mut Asm, next: Label) {
    a.mov(R6, R1);
    a.load(Size::W, R2, R6, SKB_PROTOCOL);
    a.jump_imm(Cond::Ne, R2, wire16(0x0800), next);
}

/// Copies `len` packet bytes from offset `at` to the stack at `fp + to`;
/// a packet too short goes to `fail`.
fn load_bytes(a: &mut Asm, at: i32, to: i16, len: i32, fail: Label) {
    a.mov(R1, R6);
    a.mov_imm(R2, at);
    a.mov(R3, FP);
    a.alu_imm(Alu::Add, R3, i32::from(to));
    a.mov_imm(R4, len);
    a.call(SKB_LOAD_BYTES);
    a.jump_imm(Cond::Ne, R0, 0, fail);
}

/// `r0 = bpf_skb_adjust_room(skb, diff, BPF_ADJ_ROOM_MAC, flags)`.
fn adjust_room(a: &mut Asm, diff: i32, flags: i32) {
    a.mov(R1, R6);
    a.mov_imm(R2, diff);
    a.mov_imm(R3, ADJ_ROOM_MAC);
    a.mov_imm(R4, flags);
    a.call(SKB_ADJUST_ROOM);
}

/// The two exits every program shares, then the finished program.
fn finish(mut a: Asm, next: Label, drop: Label) -> Result<Vec<Insn>, AsmError> {
    a.bind(next)?;
    ret(&mut a, TCX_NEXT);
    a.bind(drop)?;
    ret(&mut a, TC_ACT_SHOT);
    a.finish()
}

/// Returns `code`.
fn ret(a: &mut Asm, code: i32) {
    a.mov_imm(R0, code);
    a.exit();
}

/// The send program, for `flannel0`'s egress.
pub(crate) fn send(p: SendParams) -> Result<Vec<Insn>, AsmError> {
    // Stack: LPM key at -8 (prefix length, address), the inner IPv4
    // header at -40, the outer headers being built at -72, a stats key
    // at -80.
    const KEY: i16 = -8;
    const INNER: i16 = -40;
    const HDR: i16 = -72;
    const SKEY: i16 = -80;
    let mut a = Asm::new();
    let next = a.label();
    let drop = a.label();

    ipv4_only(&mut a, next);
    // The inner header.
    load_bytes(&mut a, 0, INNER, 20, next);
    inner_ipv4_with_ttl(&mut a, INNER, next);
    // Which peer: longest prefix match on the destination.
    a.store_imm(Size::W, FP, KEY, 32);
    a.load(Size::W, R2, FP, INNER + 16);
    a.store(Size::W, FP, KEY + 4, R2);
    lookup(&mut a, p.routes, KEY);
    a.jump_imm(Cond::Eq, R0, 0, next);
    a.mov(R7, R0);
    // Segments, before the room is made (which resets the count).
    a.load(Size::W, R8, R6, SKB_GSO_SEGS);
    // Room for the outer headers in front; a super-packet becomes a UDP
    // tunnel super-packet.
    adjust_room(
        &mut a,
        OUTER,
        ADJ_FIXED_GSO | ADJ_ENCAP_L3_IPV4 | ADJ_ENCAP_L4_UDP,
    );
    a.jump_imm(Cond::Ne, R0, 0, next);
    // From here the packet is changed: a failure drops it.
    decrement_ttl(&mut a, OUTER, INNER + 8, drop);
    // The outer IPv4 header.
    a.load(Size::W, R9, R6, SKB_LEN);
    a.store_imm(Size::B, FP, HDR, 0x45);
    a.store_imm(Size::B, FP, HDR + 1, 0);
    a.mov(R2, R9);
    a.be16(R2);
    a.store(Size::H, FP, HDR + 2, R2);
    a.store_imm(Size::H, FP, HDR + 4, 0);
    a.store_imm(Size::H, FP, HDR + 6, wire16(0x4000));
    a.store_imm(Size::B, FP, HDR + 8, 64);
    a.store_imm(Size::B, FP, HDR + 9, 17);
    // Checksum: the peer's constant words' sum plus the length, folded.
    a.load(Size::W, R2, R7, 8);
    a.alu_reg(Alu::Add, R2, R9);
    fold_and_complement(&mut a, R2, R3);
    a.be16(R2);
    a.store(Size::H, FP, HDR + 10, R2);
    a.load(Size::W, R2, R7, 4);
    a.store(Size::W, FP, HDR + 12, R2);
    a.load(Size::W, R2, R7, 0);
    a.store(Size::W, FP, HDR + 16, R2);
    // UDP: port to port, length, no checksum.
    a.store_imm(Size::H, FP, HDR + 20, wire16(p.port));
    a.store_imm(Size::H, FP, HDR + 22, wire16(p.port));
    a.mov(R2, R9);
    a.alu_imm(Alu::Add, R2, -20);
    a.be16(R2);
    a.store(Size::H, FP, HDR + 24, R2);
    a.store_imm(Size::H, FP, HDR + 26, 0);
    a.mov(R1, R6);
    a.mov_imm(R2, 0);
    a.mov(R3, FP);
    a.alu_imm(Alu::Add, R3, i32::from(HDR));
    a.mov_imm(R4, OUTER);
    a.mov_imm(R5, 0);
    a.call(SKB_STORE_BYTES);
    a.jump_imm(Cond::Ne, R0, 0, drop);
    // Room for an Ethernet header, which `bpf_redirect_neigh` expects
    // (and fills in).
    a.mov(R1, R6);
    a.mov_imm(R2, ETH);
    a.mov_imm(R3, 0);
    a.call(SKB_CHANGE_HEAD);
    a.jump_imm(Cond::Ne, R0, 0, drop);
    // Counted as the forwarder counts: the inner packets.
    a.alu_imm(Alu::Add, R9, -OUTER);
    count(&mut a, p.stats, STAT_TX, R8, R9, SKEY)?;
    a.mov_imm(R1, p.underlay as i32);
    a.mov_imm(R2, 0);
    a.mov_imm(R3, 0);
    a.mov_imm(R4, 0);
    a.call(REDIRECT_NEIGH);
    a.exit();

    finish(a, next, drop)
}

/// The receive program, for the underlay's ingress.
pub(crate) fn receive(p: ReceiveParams) -> Result<Vec<Insn>, AsmError> {
    // Stack: the outer IPv4 header at -56, UDP at -36, the inner IPv4
    // header at -28 and the 4 bytes after it (TCP's and UDP's ports; with
    // the addresses before them the flow's key); the source address as a
    // key at -64, a stats key at -72, a time at -80.
    const HDR: i16 = -56;
    const UDP: i16 = HDR + 20;
    const INNER: i16 = UDP + 8;
    const FLOW: i16 = INNER + 12;
    const SRC: i16 = -64;
    const SKEY: i16 = -72;
    const TIME: i16 = -80;
    let mut a = Asm::new();
    let next = a.label();
    let drop = a.label();

    ipv4_only(&mut a, next);
    // PACKET_HOST only.
    a.load(Size::W, R2, R6, SKB_PKT_TYPE);
    a.jump_imm(Cond::Ne, R2, 0, next);
    load_bytes(&mut a, ETH, HDR, 52, next);
    // IPv4 without options, UDP, not a fragment, to the port, to us.
    a.load(Size::B, R2, FP, HDR);
    a.jump_imm(Cond::Ne, R2, 0x45, next);
    a.load(Size::B, R2, FP, HDR + 9);
    a.jump_imm(Cond::Ne, R2, 17, next);
    a.load(Size::H, R2, FP, HDR + 6);
    a.alu_imm(Alu::And, R2, wire16(0x3fff));
    a.jump_imm(Cond::Ne, R2, 0, next);
    a.load(Size::H, R2, FP, UDP + 2);
    a.jump_imm(Cond::Ne, R2, wire16(p.port), next);
    a.load(Size::W, R2, FP, HDR + 16);
    a.jump32_imm(Cond::Ne, R2, wire32(p.local), next);
    // From a peer.
    a.load(Size::W, R2, FP, HDR + 12);
    a.store(Size::W, FP, SRC, R2);
    lookup(&mut a, p.sources, SRC);
    a.jump_imm(Cond::Eq, R0, 0, next);
    // One IPv4 packet, with TTL to spare.
    inner_ipv4_with_ttl(&mut a, INNER, next);
    a.load(Size::H, R9, FP, INNER + 2);
    a.be16(R9);
    a.load(Size::W, R2, R6, SKB_LEN);
    a.alu_imm(Alu::Add, R2, -(ETH + OUTER));
    a.jump_reg(Cond::Ne, R2, R9, next);
    a.load(Size::W, R8, R6, SKB_GSO_SEGS);
    // Off with the outer headers (the Ethernet header moves up), keeping
    // a super-packet's segment size (else it grows by the headers taken
    // off, and each segment would exceed the pods' MTU). Kernels that know
    // `BPF_F_ADJ_ROOM_DECAP_L4_UDP` (probed once: [`decap_probe`]) also
    // forget that a super-packet was a UDP tunnel one. Elsewhere a
    // super-packet unframed here would keep its tunnel marks, and every
    // device on its way to a pod without offloads for tunnels (a bridge:
    // `cni0`) would cut it up in software: it is reframed for the receive
    // engine, whose VXLAN code clears them (or, without an engine, left to
    // the forwarder, which hands it to the TUN as the plain TCP
    // super-packet it is). A single packet is unframed here.
    //
    // A flow's single packets must not overtake its super-packets on the
    // shorter way: a flow that sent one in the last second (the `flows`
    // LRU map) goes the super-packets' way whole.
    let reframe = a.label();
    if p.decap_l4_udp {
        adjust_room(&mut a, -OUTER, ADJ_FIXED_GSO | ADJ_DECAP_L4_UDP);
        a.jump_imm(Cond::Ne, R0, 0, next);
    } else {
        let single = a.label();
        let plain = a.label();
        let whole = if p.engine.is_some() { reframe } else { next };
        a.load(Size::W, R2, R6, SKB_GSO_SIZE);
        a.jump_imm(Cond::Eq, R2, 0, single);
        a.call(KTIME_GET_NS);
        a.store(Size::Dw, FP, TIME, R0);
        a.load_map(R1, p.flows);
        a.mov(R2, FP);
        a.alu_imm(Alu::Add, R2, i32::from(FLOW));
        a.mov(R3, FP);
        a.alu_imm(Alu::Add, R3, i32::from(TIME));
        a.mov_imm(R4, 0);
        a.call(MAP_UPDATE_ELEM);
        a.goto(whole);
        a.bind(single)?;
        lookup(&mut a, p.flows, FLOW);
        a.jump_imm(Cond::Eq, R0, 0, plain);
        a.load(Size::Dw, R7, R0, 0);
        a.call(KTIME_GET_NS);
        a.alu_reg(Alu::Sub, R0, R7);
        a.jump_imm(Cond::Lt, R0, STICKY_NS, whole);
        a.bind(plain)?;
        adjust_room(&mut a, -OUTER, 0);
        a.jump_imm(Cond::Ne, R0, 0, next);
    }
    // Unframed: on into flannel0.
    decrement_ttl(&mut a, ETH, INNER + 8, drop);
    a.load(Size::W, R9, R6, SKB_LEN);
    a.alu_imm(Alu::Add, R9, -ETH);
    count(&mut a, p.stats, STAT_RX, R8, R9, SKEY)?;
    a.mov_imm(R1, p.tun as i32);
    a.mov_imm(R2, F_INGRESS);
    a.call(REDIRECT);
    a.exit();

    match p.engine {
        Some(engine) if !p.decap_l4_udp => {
            a.bind(reframe)?;
            reframe_for(&mut a, engine, p.stats, HDR, SKEY, drop, next)?;
        }
        _ => {}
    }
    finish(a, next, drop)
}

/// The receive program's reframing: the datagram whose outer IPv4 and UDP
/// headers are on the stack at `fp + hdr` becomes a VXLAN one for the
/// receive engine (same addresses, the engine's port, a VXLAN header and an
/// Ethernet header to the engine's MAC in front of the inner packet), and
/// goes on to the stack, which hands it to the engine's VXLAN code. The
/// inner TTL is decremented here, as on the direct path. r8 holds the
/// packet's segment count.
fn reframe_for(
    a: &mut Asm,
    engine: EngineParams,
    stats: i32,
    hdr: i16,
    skey: i16,
    drop: Label,
    next: Label,
) -> Result<(), AsmError> {
    // The new headers are built at -136 .. -86: IPv4, UDP, VXLAN, Ethernet.
    const NEW: i16 = -136;
    let udp = hdr + 20;
    let inner = udp + 8;
    // Room after the Ethernet header; the segment size stays.
    adjust_room(a, REFRAME, ADJ_FIXED_GSO);
    a.jump_imm(Cond::Ne, R0, 0, next);
    decrement_ttl(a, ETH + OUTER + REFRAME, inner + 8, drop);
    // The outer IPv4 header, longer by what is added, its checksum mended
    // (RFC 1624: HC' = ~(~HC + ~m + m')).
    for word in 0..5 {
        a.load(Size::W, R2, FP, hdr + 4 * word);
        a.store(Size::W, FP, NEW + 4 * word, R2);
    }
    a.load(Size::H, R4, FP, hdr + 2);
    a.mov(R2, R4);
    a.be16(R2);
    a.alu_imm(Alu::Add, R2, REFRAME);
    a.be16(R2);
    a.store(Size::H, FP, NEW + 2, R2);
    a.load(Size::H, R3, FP, hdr + 10);
    a.alu_imm(Alu::Xor, R3, 0xffff);
    a.alu_imm(Alu::Xor, R4, 0xffff);
    a.alu_reg(Alu::Add, R3, R4);
    a.alu_reg(Alu::Add, R3, R2);
    fold_and_complement(a, R3, R5);
    a.store(Size::H, FP, NEW + 10, R3);
    // UDP: the same source port, the engine's port, longer, no checksum.
    a.load(Size::H, R2, FP, udp);
    a.store(Size::H, FP, NEW + 20, R2);
    a.store_imm(Size::H, FP, NEW + 22, wire16(engine.port));
    a.load(Size::H, R2, FP, udp + 4);
    a.be16(R2);
    a.alu_imm(Alu::Add, R2, REFRAME);
    a.be16(R2);
    a.store(Size::H, FP, NEW + 24, R2);
    a.store_imm(Size::H, FP, NEW + 26, 0);
    // VXLAN: the "VNI present" flag, the engine's VNI.
    let vni = engine.vni.to_be_bytes();
    a.store_imm(Size::W, FP, NEW + 28, wire_bytes4([0x08, 0, 0, 0]));
    a.store_imm(
        Size::W,
        FP,
        NEW + 32,
        wire_bytes4([vni[1], vni[2], vni[3], 0]),
    );
    // Ethernet: to the engine, from a fixed address, IPv4.
    let (m, s) = (engine.mac, REFRAME_SOURCE);
    a.store_imm(Size::W, FP, NEW + 36, wire_bytes4([m[0], m[1], m[2], m[3]]));
    a.store_imm(Size::H, FP, NEW + 40, wire_bytes2([m[4], m[5]]));
    a.store_imm(Size::H, FP, NEW + 42, wire_bytes2([s[0], s[1]]));
    a.store_imm(Size::W, FP, NEW + 44, wire_bytes4([s[2], s[3], s[4], s[5]]));
    a.store_imm(Size::H, FP, NEW + 48, wire16(0x0800));
    a.mov(R1, R6);
    a.mov_imm(R2, ETH);
    a.mov(R3, FP);
    a.alu_imm(Alu::Add, R3, i32::from(NEW));
    a.mov_imm(R4, OUTER + REFRAME);
    a.mov_imm(R5, F_RECOMPUTE_CSUM);
    a.call(SKB_STORE_BYTES);
    a.jump_imm(Cond::Ne, R0, 0, drop);
    a.load(Size::W, R9, R6, SKB_LEN);
    a.alu_imm(Alu::Add, R9, -(ETH + OUTER + REFRAME));
    count(a, stats, STAT_RX, R8, R9, skey)?;
    ret(a, TCX_PASS);
    Ok(())
}

/// Four packet bytes as the machine reads them from memory.
fn wire_bytes4(b: [u8; 4]) -> i32 {
    u32::from_ne_bytes(b) as i32
}

/// Two packet bytes as the machine reads them from memory.
fn wire_bytes2(b: [u8; 2]) -> i32 {
    i32::from(u16::from_ne_bytes(b))
}

/// A program that tries `bpf_skb_adjust_room` with
/// `BPF_F_ADJ_ROOM_DECAP_L4_UDP` on the packet it is given and returns
/// what the helper returned: 0 where the kernel knows the flag (run once
/// with `BPF_PROG_TEST_RUN` on [`probe_packet`]).
pub(crate) fn decap_probe() -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    a.mov(R6, R1);
    adjust_room(&mut a, -OUTER, ADJ_FIXED_GSO | ADJ_DECAP_L4_UDP);
    a.exit();
    a.finish()
}

/// A datagram in flannel's framing for [`decap_probe`]: Ethernet, IPv4,
/// UDP 8285 → 8285, an inner IPv4 header and 8 bytes.
pub(crate) fn probe_packet() -> Vec<u8> {
    let mut p = vec![0u8; ETH as usize];
    p[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    p[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = |total: u16, proto: u8| {
        let mut h = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h
    };
    p.extend(ip(20 + 8 + 28, 17));
    p.extend_from_slice(&8285u16.to_be_bytes());
    p.extend_from_slice(&8285u16.to_be_bytes());
    p.extend_from_slice(&(8u16 + 28).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend(ip(28, 17));
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    p
}

/// The receive engine's ingress program: what the engine's VXLAN code
/// unframed for its own MAC (`PACKET_HOST`) and is IPv4 enters the stack
/// as received by `flannel0`, like every other received packet; anything
/// else is dropped.
pub(crate) fn engine_ingress(tun: u32) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let drop = a.label();
    ipv4_only(&mut a, drop);
    a.load(Size::W, R2, R6, SKB_PKT_TYPE);
    a.jump_imm(Cond::Ne, R2, 0, drop);
    a.mov_imm(R1, tun as i32);
    a.mov_imm(R2, F_INGRESS);
    a.call(REDIRECT);
    a.exit();
    a.bind(drop)?;
    ret(&mut a, TC_ACT_SHOT);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_programs_assemble() {
        let s = send(SendParams {
            routes: 3,
            stats: 4,
            underlay: 2,
            port: 8285,
        })
        .unwrap();
        let r = receive(ReceiveParams {
            sources: 5,
            flows: 6,
            stats: 4,
            tun: 7,
            port: 8285,
            local: Ipv4Addr::new(172, 18, 0, 2),
            decap_l4_udp: true,
            engine: None,
        })
        .unwrap();
        let with_engine = receive(ReceiveParams {
            sources: 5,
            flows: 6,
            stats: 4,
            tun: 7,
            port: 8285,
            local: Ipv4Addr::new(172, 18, 0, 2),
            decap_l4_udp: false,
            engine: Some(EngineParams {
                port: 8286,
                vni: 1,
                mac: [2, 1, 2, 3, 4, 5],
            }),
        })
        .unwrap();
        let guard = engine_ingress(7).unwrap();
        let probe = decap_probe().unwrap();
        // All end in exit; every jump stays inside.
        for p in [&s, &r, &with_engine, &guard, &probe] {
            assert_eq!(p.last().map(|i| i.code), Some(0x95));
            for (at, i) in p.iter().enumerate() {
                let class = i.code & 0x07;
                let op = i.code & 0xf0;
                if (class == 0x05 || class == 0x06) && op != 0x80 && op != 0x90 {
                    let to = at as i64 + 1 + i64::from(i.off);
                    assert!((0..p.len() as i64).contains(&to), "jump at {at} to {to}");
                }
            }
        }
    }

    #[test]
    fn wire_order_constants() {
        // The bytes in memory are network order whatever the machine.
        assert_eq!((wire16(8285) as u16).to_ne_bytes(), 8285u16.to_be_bytes());
        assert_eq!(
            wire32(Ipv4Addr::new(10, 1, 2, 3)).to_ne_bytes(),
            [10, 1, 2, 3]
        );
    }
}
