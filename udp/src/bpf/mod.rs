//! The `bpf(2)` system call, for the few commands weft uses: load a
//! program, make a map and read or write its elements, attach a program to
//! a device's tc hook (tcx, Linux 6.6+) as a link.
//!
//! Everything returns [`OwnedFd`]s: a map, program or link lives while its
//! descriptor is open (or something in the kernel holds it), so closing
//! the descriptors of a stopped data path removes it.

#![allow(unsafe_code)] // the bpf(2) system call has no safe wrapper

pub mod asm;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

pub use asm::Insn;

const MAP_CREATE: libc::c_int = 0;
const MAP_LOOKUP_ELEM: libc::c_int = 1;
const MAP_UPDATE_ELEM: libc::c_int = 2;
const MAP_DELETE_ELEM: libc::c_int = 3;
const PROG_LOAD: libc::c_int = 5;
const PROG_TEST_RUN: libc::c_int = 10;
const LINK_CREATE: libc::c_int = 28;

/// Program types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgType {
    /// `BPF_PROG_TYPE_SOCKET_FILTER` (the TUN steering program).
    SocketFilter = 1,
    /// `BPF_PROG_TYPE_SCHED_CLS` (tc).
    SchedCls = 3,
}

/// Map types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// `BPF_MAP_TYPE_HASH`.
    Hash = 1,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PercpuArray = 6,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash = 9,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie = 11,
}

/// `BPF_F_NO_PREALLOC`: elements are allocated as they are added (an LPM
/// trie requires it; a big hash map holds only what is in it).
pub const NO_PREALLOC: u32 = 1;

/// A tc hook (`BPF_TCX_INGRESS`, `BPF_TCX_EGRESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcxHook {
    /// Packets the device received, before the stack sees them.
    Ingress = 46,
    /// Packets the stack sends through the device, before its queue.
    Egress = 47,
}

/// `BPF_OBJ_NAME_LEN`.
const NAME_LEN: usize = 16;

fn name_bytes(name: &str) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    for (o, b) in out.iter_mut().zip(name.bytes().take(NAME_LEN - 1)) {
        *o = b;
    }
    out
}

/// Calls bpf(2) with `attr` (a prefix of `union bpf_attr` the command
/// reads, zero-padded).
///
/// # Safety
/// `T` must be `repr(C)` with the command's layout; every pointer in it
/// must be valid for what the command does with it for the whole call.
unsafe fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; its size goes with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad descriptor"))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C, align(8))]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; NAME_LEN],
    rest: [u8; 64],
}

/// A program the kernel refused, with what its verifier said.
#[derive(Debug, thiserror::Error)]
#[error("the kernel refused eBPF program {name}: {source}{}", if log.is_empty() { String::new() } else { format!("\n{log}") })]
pub struct LoadError {
    /// The program's name.
    pub name: String,
    /// The system call's error (EPERM: no `CAP_BPF`).
    pub source: io::Error,
    /// The verifier's log (its last lines), if it said anything.
    pub log: String,
}

/// Loads a program; on refusal, loads it again with the verifier's log on
/// to say why.
pub fn prog_load(kind: ProgType, name: &str, insns: &[Insn]) -> Result<OwnedFd, LoadError> {
    let load = |log: &mut [u8]| {
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type: kind as u32,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name_bytes(name),
            rest: [0; 64],
        };
        // SAFETY: `attr` is BPF_PROG_LOAD's layout; the instructions, the
        // license and the log buffer outlive the call, and the log's size
        // is its buffer's.
        unsafe { sys_bpf(PROG_LOAD, &mut attr) }.and_then(owned)
    };
    match load(&mut []) {
        Ok(fd) => Ok(fd),
        Err(source) if source.raw_os_error() == Some(libc::EPERM) => Err(LoadError {
            name: name.to_owned(),
            source,
            log: String::new(),
        }),
        Err(source) => {
            let mut buf = vec![0u8; 256 * 1024];
            let _ = load(&mut buf);
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let text = String::from_utf8_lossy(&buf[..end]);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            Err(LoadError {
                name: name.to_owned(),
                source,
                log: tail,
            })
        }
    }
}

#[repr(C, align(8))]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; NAME_LEN],
    rest: [u8; 68],
}

/// Makes a map.
pub fn map_create(
    kind: MapType,
    name: &str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: kind as u32,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name_bytes(name),
        rest: [0; 68],
    };
    // SAFETY: `attr` is BPF_MAP_CREATE's layout and holds no pointers.
    unsafe { sys_bpf(MAP_CREATE, &mut attr) }.and_then(owned)
}

#[repr(C, align(8))]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem(cmd: libc::c_int, map: &OwnedFd, key: &[u8], value: Option<*mut u8>) -> io::Result<()> {
    let mut attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.map_or(0, |v| v as u64),
        flags: 0,
    };
    // SAFETY: `attr` is the layout of the BPF_MAP_*_ELEM commands; the key
    // (and value) buffers have the map's key (value) size, checked by the
    // callers, and outlive the call.
    unsafe { sys_bpf(cmd, &mut attr) }.map(|_| ())
}

/// Adds or replaces an element. `key` and `value` must have the map's
/// sizes.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    // The kernel only reads the value for an update.
    elem(MAP_UPDATE_ELEM, map, key, Some(value.as_ptr().cast_mut()))
}

/// Removes an element (`ENOENT` if it was not there).
pub fn map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    elem(MAP_DELETE_ELEM, map, key, None)
}

/// Reads an element into `value` (for a per-CPU map: one value per
/// possible CPU, each rounded up to 8 bytes).
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    elem(MAP_LOOKUP_ELEM, map, key, Some(value.as_mut_ptr()))
}

#[repr(C, align(8))]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    rest: [u8; 48],
}

/// Attaches a tc program to a device's hook, after any already there. The
/// program stays attached while the link's descriptor is open (or until
/// the device goes).
pub fn tcx_attach(prog: &OwnedFd, ifindex: u32, hook: TcxHook) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: hook as u32,
        flags: 0,
        rest: [0; 48],
    };
    // SAFETY: `attr` is BPF_LINK_CREATE's layout and holds no pointers.
    unsafe { sys_bpf(LINK_CREATE, &mut attr) }.and_then(owned)
}

#[repr(C, align(8))]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    rest: [u8; 40],
}

/// Runs a loaded program once on `packet` (`BPF_PROG_TEST_RUN`); its
/// return value.
pub fn prog_test_run(prog: &OwnedFd, packet: &[u8]) -> io::Result<u32> {
    let mut attr = TestRun {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: u32::try_from(packet.len()).map_err(io::Error::other)?,
        data_size_out: 0,
        data_in: packet.as_ptr() as u64,
        data_out: 0,
        repeat: 1,
        duration: 0,
        rest: [0; 40],
    };
    // SAFETY: `attr` is BPF_PROG_TEST_RUN's layout; `data_in` points at
    // `packet`, alive and unchanged for the call (the kernel copies it);
    // no output buffer is given. The kernel writes `retval` back into
    // `attr`, through the exclusive reference.
    unsafe { sys_bpf(PROG_TEST_RUN, &mut attr) }?;
    Ok(attr.retval)
}

/// How many CPUs the kernel may ever run (the number of values a per-CPU
/// map holds per key): `/sys/devices/system/cpu/possible`, e.g. `0-3`.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(&text)
        .ok_or_else(|| io::Error::other(format!("cannot read the CPU list {text:?}")))
}

fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut max = None::<usize>;
    for part in text.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = Some(max.map_or(last, |m| m.max(last)));
    }
    max.map(|m| m + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts() {
        // Offsets from linux/bpf.h: prog_name at 48, expected_attach_type
        // at 68 (zero here), map_name at 28, link_create.flags at 12.
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(MapCreate, map_name), 28);
        assert_eq!(std::mem::offset_of!(LinkCreate, flags), 12);
        assert_eq!(std::mem::offset_of!(MapElem, key), 8);
        // test.retval at 4, data_in at 16, repeat at 32, batch_size at 76.
        assert_eq!(std::mem::offset_of!(TestRun, retval), 4);
        assert_eq!(std::mem::offset_of!(TestRun, data_in), 16);
        assert_eq!(std::mem::offset_of!(TestRun, repeat), 32);
        assert_eq!(std::mem::size_of::<TestRun>(), 80);
        for size in [
            std::mem::size_of::<ProgLoad>(),
            std::mem::size_of::<MapCreate>(),
            std::mem::size_of::<LinkCreate>(),
            std::mem::size_of::<MapElem>(),
            std::mem::size_of::<TestRun>(),
        ] {
            assert_eq!(size % 8, 0);
            assert!(size < 4096);
        }
    }

    #[test]
    fn names_are_cut_and_terminated() {
        assert_eq!(&name_bytes("weft")[..5], b"weft\0");
        let long = name_bytes("a_name_longer_than_sixteen");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1,4-7"), Some(8));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
