//! Choosing the underlay interface and the public IP, as flanneld does.

use std::net::Ipv4Addr;

use super::host::Interface;
use regex::Regex;

/// The chosen underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface name.
    pub name: String,
    /// Its address used as VXLAN source.
    pub ip: Ipv4Addr,
    /// Its MTU.
    pub mtu: u32,
}

/// What the choice is made from.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// `--iface`: names or IPs, first match wins.
    pub iface: &'a [String],
    /// `--iface-regex`: matched against IPs first, then names.
    pub iface_regex: &'a [Regex],
    /// `--iface-can-reach`, resolved: the route's interface and source.
    pub can_reach: Option<(u32, Option<Ipv4Addr>)>,
    /// `--public-ip` (or the `node-public-ip` annotation).
    pub public_ip: Option<Ipv4Addr>,
    /// The default route's interface.
    pub default_route: Option<u32>,
}

/// Picks the interface: `--iface`, else `--iface-regex`, else
/// `--iface-can-reach`, else the interface holding `--public-ip`, else the
/// default route's. The error says what was tried.
pub fn choose(req: &Request<'_>, ifaces: &[Interface]) -> Result<Underlay, String> {
    let with_ip = |i: &Interface, ip: Option<Ipv4Addr>| -> Result<Underlay, String> {
        let ip = match ip {
            Some(ip) => ip,
            None => {
                first_ipv4(i).ok_or_else(|| format!("interface {} has no IPv4 address", i.name))?
            }
        };
        if i.mtu == 0 {
            return Err(format!("interface {} reports MTU 0", i.name));
        }
        Ok(Underlay {
            name: i.name.clone(),
            ip,
            mtu: i.mtu,
        })
    };
    let owner = |ip: Ipv4Addr| {
        ifaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.addr() == ip))
    };
    if !req.iface.is_empty() {
        for want in req.iface {
            if let Ok(ip) = want.parse::<Ipv4Addr>() {
                if let Some(i) = owner(ip) {
                    return with_ip(i, Some(ip));
                }
            } else if let Some(i) = ifaces.iter().find(|i| &i.name == want) {
                return with_ip(i, None);
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
                    .find(|a| re.is_match(&a.addr().to_string()))
                {
                    return with_ip(i, Some(a.addr()));
                }
            }
            if let Some(i) = ifaces.iter().find(|i| re.is_match(&i.name)) {
                return with_ip(i, None);
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
        return with_ip(i, src);
    }
    if let Some(ip) = req.public_ip {
        if let Some(i) = owner(ip) {
            return with_ip(i, Some(ip));
        }
    }
    let index = req.default_route.ok_or(
        "no default route: choose the interface with --iface (name or IP) or --iface-regex",
    )?;
    let i = ifaces
        .iter()
        .find(|i| i.index == index)
        .ok_or("the default route's interface vanished")?;
    with_ip(i, None)
}

/// The first global IPv4 address, else the first link-local one.
fn first_ipv4(i: &Interface) -> Option<Ipv4Addr> {
    i.addresses
        .iter()
        .map(|a| a.addr())
        .find(|a| !a.is_link_local())
        .or_else(|| i.addresses.first().map(|a| a.addr()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    "172.18.0.2/16".parse().unwrap(),
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
                default_route: Some(2),
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(
            (u.name.as_str(), u.ip, u.mtu),
            ("eth1", Ipv4Addr::new(10, 9, 0, 7), 9000)
        );
        let by_ip = ["172.18.0.2".to_string()];
        assert_eq!(
            choose(
                &Request {
                    iface: &by_ip,
                    ..Default::default()
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
                    ..Default::default()
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
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(
            u.ip,
            Ipv4Addr::new(172, 18, 0, 2),
            "global address before link-local"
        );
        let u = choose(
            &Request {
                public_ip: Some(Ipv4Addr::new(10, 9, 0, 7)),
                default_route: Some(2),
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(u.name, "eth1");
        assert_eq!(
            choose(
                &Request {
                    default_route: Some(2),
                    ..Default::default()
                },
                &ifaces()
            )
            .unwrap()
            .name,
            "eth0"
        );
        let u = choose(
            &Request {
                can_reach: Some((3, Some(Ipv4Addr::new(10, 9, 0, 7)))),
                ..Default::default()
            },
            &ifaces(),
        )
        .unwrap();
        assert_eq!(u.name, "eth1");
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = choose(&Request::default(), &ifaces()).unwrap_err();
        assert!(e.contains("--iface"), "{e}");
        let missing = ["eth7".to_string()];
        assert!(choose(
            &Request {
                iface: &missing,
                ..Default::default()
            },
            &ifaces()
        )
        .unwrap_err()
        .contains("eth7"));
    }
}
