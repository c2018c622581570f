//! The pure diff: desired vs observed → the smallest plan of adds, in-place
//! replaces and deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::mac::MacAddr;
use crate::peers::Touched;
use crate::state::{
    DeviceSpec, Entries, FdbEntry, LinkSpec, Neighbour, Observed, ObservedDevice, ObservedKind,
    OverlayState, Route, VxlanDevice,
};

/// A change to the backend's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOp {
    /// Create the device (it does not exist).
    Create(DeviceSpec),
    /// Delete and create it again: a parameter that cannot change in place differs.
    Recreate {
        /// The existing device's index.
        ifindex: u32,
        /// The device to create.
        device: DeviceSpec,
        /// Which parameter differs, for the log.
        why: String,
    },
    /// Set the MTU in place.
    SetMtu(u32),
    /// Set the MAC in place.
    SetMac(MacAddr),
    /// Bring the device up.
    SetUp,
    /// Add the /32 address.
    AddAddress(ipnet::IpNet),
    /// Remove a stale address inside the cluster network.
    DelAddress(ipnet::IpNet),
}

/// Adds, in-place replaces and deletes of one kind of object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<T> {
    /// Objects to create.
    pub add: Vec<T>,
    /// Objects whose key exists with other values: rewritten in place (NLM_F_REPLACE).
    pub replace: Vec<T>,
    /// Objects to remove.
    pub delete: Vec<T>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            add: Vec::new(),
            replace: Vec::new(),
            delete: Vec::new(),
        }
    }
}

impl<T> Changes<T> {
    /// Number of kernel writes.
    pub fn len(&self) -> usize {
        self.add.len() + self.replace.len() + self.delete.len()
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything to write to bring the kernel to the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Device changes, applied first.
    pub device: Vec<DeviceOp>,
    /// Route changes.
    pub routes: Changes<Route>,
    /// Neighbour changes.
    pub neighbours: Changes<Neighbour>,
    /// FDB changes.
    pub fdb: Changes<FdbEntry>,
}

impl Plan {
    /// Number of kernel writes the plan costs.
    pub fn writes(&self) -> usize {
        self.device.len() + self.routes.len() + self.neighbours.len() + self.fdb.len()
    }

    /// True when the kernel already holds the desired state.
    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }

    /// True when the plan makes a new device (all its entries are then new too).
    pub fn creates_device(&self) -> bool {
        self.device
            .iter()
            .any(|op| matches!(op, DeviceOp::Create(_) | DeviceOp::Recreate { .. }))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {} ops, routes +{} ~{} -{}, neighbours +{} ~{} -{}, fdb +{} ~{} -{}",
            self.device.len(),
            self.routes.add.len(),
            self.routes.replace.len(),
            self.routes.delete.len(),
            self.neighbours.add.len(),
            self.neighbours.replace.len(),
            self.neighbours.delete.len(),
            self.fdb.add.len(),
            self.fdb.replace.len(),
            self.fdb.delete.len()
        )
    }
}

/// Computes the plan. Objects of the observed state that the desired state
/// does not hold are deleted: the observed state only ever holds what weft
/// manages (see `kernel`), so foreign objects are never touched.
pub fn diff(desired: &OverlayState, observed: &Observed) -> Plan {
    plan(
        desired.device.as_ref(),
        &desired.entries,
        observed,
        &Touched::everything(),
    )
}

/// The plan for the keys in `touched` only (every key when `touched.all`,
/// or when the device must be made anew): a change of one peer costs a few
/// lookups, not a walk over every peer. Keys outside `touched` must already
/// agree (the reconciler tracks which may not).
pub fn plan(
    device: Option<&DeviceSpec>,
    want: &Entries,
    observed: &Observed,
    touched: &Touched,
) -> Plan {
    let device = match device {
        Some(d) => device_ops(d, observed.device.as_ref()),
        None => Vec::new(),
    };
    let creates = device
        .iter()
        .any(|op| matches!(op, DeviceOp::Create(_) | DeviceOp::Recreate { .. }));
    // A new device starts empty: what was on the old one is gone with it.
    let emptied;
    let have = if creates {
        let mut e = observed.entries.clone();
        e.forget_overlay();
        emptied = e;
        &emptied
    } else {
        &observed.entries
    };
    if touched.all || creates {
        return Plan {
            device,
            routes: changes(&want.routes, &have.routes),
            neighbours: changes(&want.neighbours, &have.neighbours),
            fdb: changes(&want.fdb, &have.fdb),
        };
    }
    Plan {
        device,
        routes: changes_at(&touched.routes, &want.routes, &have.routes),
        neighbours: changes_at(&touched.neighbours, &want.neighbours, &have.neighbours),
        fdb: changes_at(&touched.fdb, &want.fdb, &have.fdb),
    }
}

/// The changes at the given keys only.
fn changes_at<K: Ord, T: Clone + PartialEq>(
    keys: &BTreeSet<K>,
    want: &BTreeMap<K, T>,
    have: &BTreeMap<K, T>,
) -> Changes<T> {
    let mut c = Changes::default();
    for k in keys {
        match (want.get(k), have.get(k)) {
            (Some(w), None) => c.add.push(w.clone()),
            (Some(w), Some(h)) if w != h => c.replace.push(w.clone()),
            (None, Some(h)) => c.delete.push(h.clone()),
            _ => {}
        }
    }
    c
}

/// One ordered walk over both maps (they are sorted by key): O(n), no lookups.
fn changes<K: Ord, T: Clone + PartialEq>(
    want: &BTreeMap<K, T>,
    have: &BTreeMap<K, T>,
) -> Changes<T> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let mut c = Changes::default();
    let (mut w, mut h) = (want.iter().peekable(), have.iter().peekable());
    loop {
        match (w.peek(), h.peek()) {
            (None, None) => return c,
            (Some((_, wv)), None) => {
                c.add.push((*wv).clone());
                w.next();
            }
            (None, Some((_, hv))) => {
                c.delete.push((*hv).clone());
                h.next();
            }
            (Some((wk, wv)), Some((hk, hv))) => match wk.cmp(hk) {
                Less => {
                    c.add.push((*wv).clone());
                    w.next();
                }
                Greater => {
                    c.delete.push((*hv).clone());
                    h.next();
                }
                Equal => {
                    if wv != hv {
                        c.replace.push((*wv).clone());
                    }
                    w.next();
                    h.next();
                }
            },
        }
    }
}

fn device_ops(want: &DeviceSpec, have: Option<&ObservedDevice>) -> Vec<DeviceOp> {
    let Some(have) = have else {
        return vec![DeviceOp::Create(want.clone())];
    };
    let why = match want {
        DeviceSpec::Vxlan(v) => incompatible(v, have),
        DeviceSpec::Tun(_) => {
            (have.kind != ObservedKind::Tun).then(|| "not a TUN device".to_string())
        }
    };
    if let Some(why) = why {
        return vec![DeviceOp::Recreate {
            ifindex: have.ifindex,
            device: want.clone(),
            why,
        }];
    }
    link_ops(&want.link(), have)
}

/// In-place changes of an existing device of the right kind.
fn link_ops(want: &LinkSpec, have: &ObservedDevice) -> Vec<DeviceOp> {
    let mut ops = Vec::new();
    if have.mtu != want.mtu {
        ops.push(DeviceOp::SetMtu(want.mtu));
    }
    if let Some(mac) = want.mac {
        if have.mac != Some(mac) {
            ops.push(DeviceOp::SetMac(mac));
        }
    }
    for stale in have
        .addresses
        .iter()
        .filter(|a| **a != want.address && want.network.contains(&a.addr()))
    {
        ops.push(DeviceOp::DelAddress(*stale));
    }
    if !have.addresses.contains(&want.address) {
        ops.push(DeviceOp::AddAddress(want.address));
    }
    if !have.up {
        ops.push(DeviceOp::SetUp);
    }
    ops
}

/// Why the existing device cannot be kept, if it cannot: a parameter that only
/// creation sets differs.
fn incompatible(want: &VxlanDevice, have: &ObservedDevice) -> Option<String> {
    let Some(have) = have.vxlan() else {
        return Some("not a VXLAN device".into());
    };
    let differs = |what: &str, w: String, h: String| (w != h).then(|| format!("{what} {h} ≠ {w}"));
    let show = |o: Option<String>| o.unwrap_or_else(|| "none".into());
    differs(
        "VNI",
        want.vni.to_string(),
        show(have.vni.map(|v| v.to_string())),
    )
    .or_else(|| {
        differs(
            "local",
            want.local.to_string(),
            show(have.local.map(|v| v.to_string())),
        )
    })
    .or_else(|| {
        differs(
            "port",
            want.port.to_string(),
            show(have.port.map(|v| v.to_string())),
        )
    })
    .or_else(|| {
        differs(
            "underlay",
            want.underlay.to_string(),
            show(have.underlay.map(|v| v.to_string())),
        )
    })
    .or_else(|| {
        differs(
            "learning",
            want.learning.to_string(),
            show(have.learning.map(|v| v.to_string())),
        )
    })
}

impl Plan {
    /// Records in `entries` what the kernel holds once this plan has been
    /// applied without error (the reconciler's view of the kernel).
    pub fn apply_to(&self, entries: &mut Entries) {
        if self.creates_device() {
            entries.forget_overlay();
        }
        for r in &self.routes.delete {
            entries.routes.remove(&r.dst);
        }
        for n in &self.neighbours.delete {
            entries.neighbours.remove(&n.ip);
        }
        for f in &self.fdb.delete {
            entries.fdb.remove(&f.mac);
        }
        for r in self.routes.add.iter().chain(&self.routes.replace) {
            entries.put_route(*r);
        }
        for n in self.neighbours.add.iter().chain(&self.neighbours.replace) {
            entries.put_neighbour(*n);
        }
        for f in self.fdb.add.iter().chain(&self.fdb.replace) {
            entries.put_fdb(*f);
        }
    }
}
