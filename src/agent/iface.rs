//! Choosing the underlay interface and its addresses, as flanneld does:
//! one interface for every enabled family, and on it one address per family.

use std::net::IpAddr;

use super::host::Interface;
use regex::Regex;
use weft_overlay::{Family, PerFamily};

/// The chosen underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its address of each enabled family (the VXLAN source, the address
    /// other nodes reach this one at).
    pub ips: PerFamily<IpAddr>,
}

impl Underlay {
    /// Its address of `family` (present for every enabled family).
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips.get(family).copied()
    }
}

/// What the choice is made from.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The enabled families (net-conf.json), IPv4 first.
    pub families: &'a [Family],
    /// `--iface`: names or IPs, first match wins.
    pub iface: &'a [String],
    /// `--iface-regex`: matched against IPs first, then names.
    pub iface_regex: &'a [Regex],
    /// `--iface-can-reach`, resolved: the route's interface and source.
    pub can_reach: Option<(u32, Option<IpAddr>)>,
    /// `--public-ip` / `--public-ipv6` (or the `node-public-ip(v6)` annotations).
    pub public_ip: PerFamily<IpAddr>,
    /// Each family's default route's interface.
    pub default_route: PerFamily<u32>,
}

/// Picks the interface: `--iface`, else `--iface-regex`, else
/// `--iface-can-reach`, else the interface holding `--public-ip` (then
/// `--public-ipv6`), else the default route's (dual-stack: both default
/// routes must use the same interface, as flannel requires). Then one
/// address per enabled family on it: the one that chose it, else its first
/// global one. The error says what was tried.
pub fn choose(req: &Request<'_>, ifaces: &[Interface]) -> Result<Underlay, String> {
    let (iface, pinned) = pick(req, ifaces)?;
    if iface.mtu == 0 {
        return Err(format!("interface {} reports MTU 0", iface.name));
    }
    let mut ips = PerFamily::default();
    for &family in req.families {
        let ip = match pinned.filter(|p| Family::of_addr(p) == family) {
            Some(ip) => ip,
            None => first_address(iface, family)
                .ok_or_else(|| format!("interface {} has no {family} address", iface.name))?,
        };
        ips.set(family, Some(ip));
    }
    Ok(Underlay {
        name: iface.name.clone(),
        mtu: iface.mtu,
        ips,
    })
}

/// The interface, and the address that chose it, if one did.
fn pick<'i>(
    req: &Request<'_>,
    ifaces: &'i [Interface],
) -> Result<(&'i Interface, Option<IpAddr>), String> {
    let enabled = |ip: &IpAddr| req.families.contains(&Family::of_addr(ip));
    let owner = |ip: IpAddr| {
        ifaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.addr() == ip))
    };
    if !req.iface.is_empty() {
        for want in req.iface {
            if let Ok(ip) = want.parse::<IpAddr>() {
                if let Some(i) = owner(ip) {
                    return Ok((i, Some(ip)));
                }
            } else if let Some(i) = ifaces.iter().find(|i| &i.name == want) {
                return Ok((i, None));
            }
        }
        return Err(format!(
            "none of --iface {:?} exists on this node",
            req.iface
        ));
    }
    if !req.iface_regex.is_empty() {
        for re in req.iface_regex {
            for i in ifaces {
                if let Some(a) = i
                    .addresses
                    .iter()
                    .map(|a| a.addr())
                    .find(|a| enabled(a) && re.is_match(&a.to_string()))
                {
                    return Ok((i, Some(a)));
                }
            }
            if let Some(i) = ifaces.iter().find(|i| re.is_match(&i.name)) {
                return Ok((i, None));
            }
        }
        return Err(format!(
            "no interface address or name matches --iface-regex {:?}",
            req.iface_regex
                .iter()
                .map(Regex::as_str)
                .collect::<Vec<_>>()
        ));
    }
    if let Some((index, src)) = req.can_reach {
        let i = ifaces
            .iter()
            .find(|i| i.index == index)
            .ok_or("--iface-can-reach: the route's interface vanished")?;
        return Ok((i, src));
    }
    for &family in req.families {
        if let Some(&ip) = req.public_ip.get(family) {
            if let Some(i) = owner(ip) {
                return Ok((i, Some(ip)));
            }
        }
    }
    let mut chosen: Option<(Family, u32)> = None;
    for &family in req.families {
        let index = *req.default_route.get(family).ok_or_else(|| {
            format!(
                "no {family} default route: choose the interface with --iface (name or IP) or --iface-regex"
            )
        })?;
        match chosen {
            None => chosen = Some((family, index)),
            Some((first, other)) if other != index => {
                return Err(format!(
                    "the {family} default route's interface (index {index}) is not the {first} one's (index {other}): \
                     flannel needs one interface for both; choose it with --iface"
                ))
            }
            Some(_) => {}
        }
    }
    let (_, index) = chosen.ok_or("no address family is enabled")?;
    let i = ifaces
        .iter()
        .find(|i| i.index == index)
        .ok_or("the default route's interface vanished")?;
    Ok((i, None))
}

/// The interface's first global address of `family`, else (IPv4 only) its
/// first link-local one. IPv6 link-local addresses are never used: every
/// interface has one, and they cannot be routed between nodes.
fn first_address(i: &Interface, family: Family) -> Option<IpAddr> {
    let of_family = || {
        i.addresses
            .iter()
            .map(|a| a.addr())
            .filter(move |a| Family::of_addr(a) == family)
    };
    of_family()
        .find(|a| !is_link_local(a))
        .or_else(|| match family {
            Family::V4 => of_family().next(),
            Family::V6 => None,
        })
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4_only() -> Request<'static> {
        Request {
            families: &[Family::V4],
            ..Default::default()
        }
    }

    fn one(index: u32) -> PerFamily<u32> {
        PerFamily::one(Family::V4, index)
    }

    fn v4(ip: Ipv4Addr) -> IpAddr {
        IpAddr::V4(ip)
    }

    fn ifaces() -> Vec<Interface> {
        vec![
            Interface {
                name: "lo".into(),
                index: 1,
                mtu: 65536,
                up: true,
                addresses: vec!["127.0.0.1/8".parse().unwrap()],
            },
            Interface {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                up: true,
                addresses: vec![
                    "169.254.3.3/16".parse().unwrap(),
                    "fe80::1/64".parse().unwrap(),
                    "172.18.0.2/16".parse().unwrap(),
                    "fd00:18::2/64".parse().unwrap(),
                ],
            },
            Interface {
                name: "eth1".into(),
                index: 3,
                mtu: 9000,
                up: true,
                addresses: vec!["10.9.0.7/24".parse().unwrap()],
            },
        ]
    }

    #[test]
    fn flag_order_as_flannel() {
        let names = ["nope".to_string(), "eth1".to_string()];
        let u = choose(
            &Request {
                iface: &names,
                default_route: one(2),
                ..v4_only()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(
            (u.name.as_str(), u.ip(Family::V4), u.mtu),
            ("eth1", Some(v4(Ipv4Addr::new(10, 9, 0, 7))), 9000)
        );
        let by_ip = ["172.18.0.2".to_string()];
        assert_eq!(
            choose(
                &Request {
                    iface: &by_ip,
                    ..v4_only()
                },
                &ifaces()
            )
            .unwrap()
            .name,
            "eth0"
        );
        let re = [Regex::new(r"^10\.9\.").unwrap()];
        assert_eq!(
            choose(
                &Request {
                    iface_regex: &re,
                    ..v4_only()
                },
                &ifaces()
            )
            .unwrap()
            .name,
            "eth1"
        );
        let re = [Regex::new("^eth0$").unwrap()];
        let u = choose(
            &Request {
                iface_regex: &re,
                ..v4_only()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(
            u.ip(Family::V4),
            Some(v4(Ipv4Addr::new(172, 18, 0, 2))),
            "global address before link-local"
        );
        let u = choose(
            &Request {
                public_ip: PerFamily::one(Family::V4, v4(Ipv4Addr::new(10, 9, 0, 7))),
                default_route: one(2),
                ..v4_only()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(u.name, "eth1");
        assert_eq!(
            choose(
                &Request {
                    default_route: one(2),
                    ..v4_only()
                },
                &ifaces()
            )
            .unwrap()
            .name,
            "eth0"
        );
        let u = choose(
            &Request {
                can_reach: Some((3, Some(v4(Ipv4Addr::new(10, 9, 0, 7))))),
                ..v4_only()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(u.name, "eth1");
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = choose(&v4_only(), &ifaces()).unwrap_err();
        assert!(e.contains("--iface"), "{e}");
        let missing = ["eth7".to_string()];
        assert!(choose(
            &Request {
                iface: &missing,
                ..v4_only()
            },
            &ifaces()
        )
        .unwrap_err()
        .contains("eth7"));
    }

    #[test]
    fn dual_stack_and_ipv6_only_take_one_address_per_family() {
        let both = [Family::V4, Family::V6];
        let mut routes = PerFamily::default();
        routes.set(Family::V4, Some(2));
        routes.set(Family::V6, Some(2));
        let u = choose(
            &Request {
                families: &both,
                default_route: routes.clone(),
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(u.name, "eth0");
        assert_eq!(u.ip(Family::V4).unwrap().to_string(), "172.18.0.2");
        assert_eq!(
            u.ip(Family::V6).unwrap().to_string(),
            "fd00:18::2",
            "global, not link-local"
        );
        // The interface by its v6 address, IPv6 only.
        let by_ip = ["fd00:18::2".to_string()];
        let u = choose(
            &Request {
                families: &[Family::V6],
                iface: &by_ip,
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!((u.name.as_str(), u.ip(Family::V4)), ("eth0", None));
        // Default routes on two interfaces: refused, as flannel does.
        routes.set(Family::V6, Some(3));
        let e = choose(
            &Request {
                families: &both,
                default_route: routes,
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap_err();
        assert!(e.contains("--iface"), "{e}");
        // An interface without a v6 address.
        let names = ["eth1".to_string()];
        let e = choose(
            &Request {
                families: &both,
                iface: &names,
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap_err();
        assert!(e.contains("eth1 has no IPv6 address"), "{e}");
    }
}
