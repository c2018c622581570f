//! Address families as a value: flannel keeps them apart (`flannel.1` and
//! `flannel-v6.1`, `backend-data` and `backend-v6-data`, `public-ip` and
//! `public-ipv6`), and weft runs one overlay reconciler per enabled family.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, in flannel's order (IPv4 first).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The family of an address.
    pub fn of_addr(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `IPv4` / `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// 0 for IPv4, 1 for IPv6: an index into per-family arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per family (e.g. each family's lease of a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerFamily<T>([Option<T>; 2]);

impl<T> Default for PerFamily<T> {
    fn default() -> PerFamily<T> {
        PerFamily([None, None])
    }
}

impl<T> PerFamily<T> {
    /// None for either family.
    pub fn new() -> PerFamily<T> {
        PerFamily([None, None])
    }

    /// `value` for `family`, none for the other.
    pub fn one(family: Family, value: T) -> PerFamily<T> {
        let mut p = PerFamily::default();
        p.set(family, Some(value));
        p
    }

    /// The family's value.
    pub fn get(&self, family: Family) -> Option<&T> {
        self.0[family.index()].as_ref()
    }

    /// Sets the family's value, returning the old one.
    pub fn set(&mut self, family: Family, value: Option<T>) -> Option<T> {
        std::mem::replace(&mut self.0[family.index()], value)
    }

    /// Whether neither family has a value.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// The values present, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        Family::ALL
            .into_iter()
            .filter_map(|f| self.get(f).map(|v| (f, v)))
    }
}
