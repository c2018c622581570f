//! Reading `/run/flannel/subnet.env` (written by weftd, see
//! [`crate::subnet_env`], or by flanneld) as flannel's CNI plugin does:
//! one `KEY=VALUE` per line; `FLANNEL_NETWORK`/`FLANNEL_IPV6_NETWORK` may be
//! comma-separated lists; `FLANNEL_SUBNET`/`FLANNEL_IPV6_SUBNET` are taken
//! as their network (`10.244.1.1/24` → `10.244.1.0/24`,
//! `fc00:0:0:1::1/64` → `fc00:0:0:1::/64`). Unknown keys are ignored.
//!
//! A family is on when both its keys are there (IPv4: `FLANNEL_NETWORK` and
//! `FLANNEL_SUBNET`; IPv6: `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`)
//! and off when neither is; at least one must be on, so a file may be
//! IPv4-only, IPv6-only (an IPv6-only cluster: no `FLANNEL_NETWORK` at all)
//! or dual-stack.
//!
//! Stricter than flannel: `FLANNEL_IPMASQ` must be `true` or `false`,
//! `FLANNEL_MTU` a number from 68 to 65535 (from 1280 when IPv6 is on),
//! each value must be of its key's family, a family's key without its
//! partner is an error (flannel would hand the bridge a range without the
//! cluster route, or a route without a range), and a subnet must lie inside
//! one of its family's networks. Every error names the file and the key
//! (and the line, for a bad value), and sends the user to the weftd pod,
//! whose job it is to write the file.

use std::path::Path;

use super::error::{code, CniError};
use super::types::Cidr;

/// What the subnet file says. A family's networks are empty and its
/// subnet `None` exactly when the family is off; at least one is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    /// `FLANNEL_NETWORK`: the IPv4 cluster network(s).
    pub networks: Vec<Cidr>,
    /// `FLANNEL_SUBNET` as a network: this node's IPv4 pod subnet.
    pub subnet: Option<Cidr>,
    /// `FLANNEL_IPV6_NETWORK`: the IPv6 cluster network(s).
    pub ipv6_networks: Vec<Cidr>,
    /// `FLANNEL_IPV6_SUBNET` as a network: this node's IPv6 pod subnet.
    pub ipv6_subnet: Option<Cidr>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether weftd masquerades (then the bridge must not).
    pub ipmasq: bool,
}

/// Where to look when the file is missing or wrong.
const HINT: &str = "weftd writes this file once it has configured the node: check that the weftd pod on this node is running and read its log";

fn invalid(path: &Path, what: String) -> CniError {
    CniError::new(
        code::INVALID_NETWORK_CONFIG,
        format!("subnet file {}: {what}", path.display()),
    )
    .details(HINT)
}

impl SubnetFile {
    /// Reads and parses the file. Missing: error 11 (try again later: weftd
    /// is not ready yet); unreadable: 5; missing or invalid keys: 7.
    pub fn load(path: &Path) -> Result<SubnetFile, CniError> {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "subnet file {} does not exist: the node's network is not ready yet",
                        path.display()
                    ),
                )
                .details(HINT));
            }
            Err(e) => {
                return Err(
                    CniError::io(format!("cannot read subnet file {}", path.display()), &e)
                        .details(HINT),
                )
            }
        };
        let text = String::from_utf8(text)
            .map_err(|_| invalid(path, "the file is not valid UTF-8".into()))?;
        SubnetFile::parse(&text, path)
    }

    /// Parses the file's text (`path` is only for messages).
    pub fn parse(text: &str, path: &Path) -> Result<SubnetFile, CniError> {
        let mut seen = PerFamily::<Seen>::default();
        let (mut mtu, mut ipmasq) = (None, None);
        for (n, line) in text.lines().enumerate() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |why: &str| invalid(path, format!("line {}: {key}={value:?} {why}", n + 1));
            if let Some((family, role)) = Family::of_key(key) {
                let slot = seen.get_mut(family);
                match role {
                    Role::Network => slot.networks = family.cidr_list(value).map_err(bad)?,
                    Role::Subnet => slot.subnet = Some(family.cidr(value).map_err(bad)?.network()),
                }
                continue;
            }
            match key {
                "FLANNEL_MTU" => {
                    let m: u32 = value
                        .parse()
                        .ok()
                        .filter(|m| (68..=65_535).contains(m))
                        .ok_or_else(|| bad("is not an MTU (68-65535)"))?;
                    mtu = Some(m);
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("is neither true nor false")),
                    });
                }
                _ => {}
            }
        }
        let mut missing: Vec<String> = Vec::new();
        let mut families = PerFamily::<Option<FamilyNet>>::default();
        for family in Family::ALL {
            let seen = std::mem::take(seen.get_mut(family));
            *families.get_mut(family) = family
                .finish(seen, &mut missing)
                .map_err(|e| invalid(path, e))?;
        }
        if families.v4.is_none() && families.v6.is_none() && missing.is_empty() {
            missing.push("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK)".into());
            missing.push("FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)".into());
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU".into());
        }
        if ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ".into());
        }
        let (Some(mtu), Some(ipmasq), true) = (mtu, ipmasq, missing.is_empty()) else {
            return Err(invalid(path, format!("missing {}", missing.join(", "))));
        };
        if let Some(v6) = families.v6.as_ref().filter(|_| mtu < IPV6_MIN_MTU) {
            return Err(invalid(
                path,
                format!(
                    "FLANNEL_MTU={mtu} is below IPv6's minimum MTU ({IPV6_MIN_MTU}), but {}={} is set",
                    Family::V6.subnet_key(),
                    v6.subnet
                ),
            ));
        }
        let split =
            |f: Option<FamilyNet>| f.map_or((Vec::new(), None), |f| (f.networks, Some(f.subnet)));
        let (networks, subnet) = split(families.v4);
        let (ipv6_networks, ipv6_subnet) = split(families.v6);
        Ok(SubnetFile {
            networks,
            subnet,
            ipv6_networks,
            ipv6_subnet,
            mtu,
            ipmasq,
        })
    }

    /// The node's pod subnets (IPv4 first).
    pub fn subnets(&self) -> Vec<Cidr> {
        self.subnet.into_iter().chain(self.ipv6_subnet).collect()
    }

    /// The cluster networks (IPv4 first).
    pub fn all_networks(&self) -> Vec<Cidr> {
        self.networks
            .iter()
            .chain(&self.ipv6_networks)
            .copied()
            .collect()
    }
}

/// IPv6's minimum link MTU (RFC 8200): below it the kernel turns IPv6 off
/// on the interface, so a v6 subnet with a smaller `FLANNEL_MTU` cannot work.
const IPV6_MIN_MTU: u32 = 1280;

/// An address family of the subnet file, with its two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `FLANNEL_NETWORK`, `FLANNEL_SUBNET`.
    V4,
    /// `FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`.
    V6,
}

/// Which of a family's keys a line sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Network,
    Subnet,
}

/// One value per family.
#[derive(Debug, Default)]
struct PerFamily<T> {
    v4: T,
    v6: T,
}

impl<T> PerFamily<T> {
    fn get_mut(&mut self, family: Family) -> &mut T {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

/// A family's keys as read, before they are checked to go together.
#[derive(Debug, Default)]
struct Seen {
    networks: Vec<Cidr>,
    subnet: Option<Cidr>,
}

/// A family the file configures: both keys, the subnet inside a network.
#[derive(Debug)]
struct FamilyNet {
    networks: Vec<Cidr>,
    subnet: Cidr,
}

impl Family {
    const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn network_key(self) -> &'static str {
        match self {
            Family::V4 => "FLANNEL_NETWORK",
            Family::V6 => "FLANNEL_IPV6_NETWORK",
        }
    }

    fn subnet_key(self) -> &'static str {
        match self {
            Family::V4 => "FLANNEL_SUBNET",
            Family::V6 => "FLANNEL_IPV6_SUBNET",
        }
    }

    /// The family and role of a key, if it is one of the four.
    fn of_key(key: &str) -> Option<(Family, Role)> {
        Family::ALL.into_iter().find_map(|f| {
            if key == f.network_key() {
                Some((f, Role::Network))
            } else if key == f.subnet_key() {
                Some((f, Role::Subnet))
            } else {
                None
            }
        })
    }

    /// One CIDR of this family; the error says why not.
    fn cidr(self, value: &str) -> Result<Cidr, &'static str> {
        let c: Cidr = value.trim().parse().map_err(|_| "is not a valid CIDR")?;
        match (self, c.is_ipv4()) {
            (Family::V4, true) | (Family::V6, false) => Ok(c),
            (Family::V4, false) => Err("is not IPv4"),
            (Family::V6, true) => Err("is not IPv6"),
        }
    }

    /// A comma-separated list of networks of this family, duplicates dropped.
    fn cidr_list(self, value: &str) -> Result<Vec<Cidr>, &'static str> {
        let mut out: Vec<Cidr> = Vec::new();
        for item in value.split(',') {
            let c = self.cidr(item)?.network();
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Checks that the family's keys go together: neither (the family is
    /// off), or both with the subnet inside one of the networks. A key
    /// without its partner is added to `missing`; a subnet outside its
    /// networks is an error.
    fn finish(self, seen: Seen, missing: &mut Vec<String>) -> Result<Option<FamilyNet>, String> {
        let (net_key, sub_key) = (self.network_key(), self.subnet_key());
        match (seen.networks.is_empty(), seen.subnet) {
            (true, None) => Ok(None),
            (false, None) => {
                missing.push(format!("{sub_key} ({net_key} is set)"));
                Ok(None)
            }
            (true, Some(_)) => {
                missing.push(format!("{net_key} ({sub_key} is set)"));
                Ok(None)
            }
            (false, Some(subnet)) if seen.networks.iter().any(|n| n.contains(&subnet)) => {
                Ok(Some(FamilyNet {
                    networks: seen.networks,
                    subnet,
                }))
            }
            (false, Some(subnet)) => {
                let nets: Vec<String> = seen.networks.iter().map(ToString::to_string).collect();
                Err(format!(
                    "{sub_key}={subnet} is not inside {net_key}={}",
                    nets.join(",")
                ))
            }
        }
    }
}
