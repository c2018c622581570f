//! flannel's `net-conf.json`, parsed in full.
//!
//! Keys are matched case-insensitively, as flannel's Go decoder does. Every
//! error names the field. Values weft does not support (backends other
//! than vxlan and host-gw, GBP) are errors that say so; fields that only
//! flannel's etcd mode or Windows use are accepted and reported as ignored.
//! The `Backend` section is read by the backend it names (see
//! `weft_overlay::backend`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use weft_overlay::backend::{self, Section, SectionError};
use weft_overlay::{BackendConfig, Family};

/// A problem with `net-conf.json`, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("net-conf.json: {field}: {reason}")]
pub struct NetConfError {
    /// The field, e.g. `Backend.VNI`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> NetConfError {
    NetConfError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The parts of `net-conf.json` weft uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `Network`: the IPv4 cluster network (`None` when `EnableIPv4` is false).
    pub network: Option<Ipv4Net>,
    /// `IPv6Network`: the IPv6 cluster network (when `EnableIPv6` is true).
    pub ipv6_network: Option<Ipv6Net>,
    /// `EnableNFTables`: native nftables for NAT.
    pub enable_nftables: bool,
    /// `Backend`.
    pub backend: BackendConfig,
    /// Fields that were accepted but have no effect in weft, with why.
    pub ignored: Vec<String>,
}

impl From<SectionError> for NetConfError {
    fn from(e: SectionError) -> NetConfError {
        NetConfError {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl NetConf {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<NetConf, NetConfError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err("(file)", format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("(file)", "not a JSON object"))?;
        let file = Section::new(obj, "");
        let mut ignored = Vec::new();

        let enable_ipv4 = file.boolean("EnableIPv4", true)?;
        let enable_ipv6 = file.boolean("EnableIPv6", false)?;
        if !enable_ipv4 && !enable_ipv6 {
            return Err(err(
                "EnableIPv4",
                "false, and EnableIPv6 is not true: no address family is enabled",
            ));
        }
        let network = if enable_ipv4 {
            Some(cluster_network::<Ipv4Net>(
                &file,
                "Network",
                "IPv4",
                "10.244.0.0/16",
                28,
            )?)
        } else {
            if let Some((k, _)) = file.get("Network") {
                ignored.push(format!("{k}: IPv4 is disabled (EnableIPv4 is false)"));
            }
            None
        };
        let ipv6_network = if enable_ipv6 {
            Some(cluster_network::<Ipv6Net>(
                &file,
                "IPv6Network",
                "IPv6",
                "fc00::/48",
                124,
            )?)
        } else {
            if let Some((k, _)) = file.get("IPv6Network") {
                ignored.push(format!("{k}: IPv6 is disabled (EnableIPv6 is false)"));
            }
            None
        };
        let enable_nftables = file.boolean("EnableNFTables", false)?;
        for key in [
            "SubnetLen",
            "SubnetMin",
            "SubnetMax",
            "IPv6SubnetLen",
            "IPv6SubnetMin",
            "IPv6SubnetMax",
        ] {
            if let Some((k, _)) = file.get(key) {
                ignored.push(format!("{k}: only flannel's etcd subnet manager uses it; node subnets come from spec.podCIDR"));
            }
        }
        for k in file.unknown(&[
            "Network",
            "EnableIPv4",
            "EnableIPv6",
            "EnableNFTables",
            "Backend",
            "SubnetLen",
            "SubnetMin",
            "SubnetMax",
            "IPv6Network",
            "IPv6SubnetLen",
            "IPv6SubnetMin",
            "IPv6SubnetMax",
        ]) {
            ignored.push(format!("{k}: unknown field"));
        }
        // The backend reads its own section.
        let backend = backend::parse(file.get("Backend").map(|(_, v)| v), &mut ignored)?;
        if ipv6_network.is_some() && !backend.backend().supports(Family::V6) {
            return Err(err(
                "EnableIPv6",
                format!(
                    "the {} backend carries IPv4 only (as flannel's); use vxlan or host-gw for IPv6",
                    backend.kind()
                ),
            ));
        }
        Ok(NetConf {
            network,
            ipv6_network,
            enable_nftables,
            backend,
            ignored,
        })
    }

    /// The cluster network of `family`, if that family is enabled.
    pub fn network(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => self.network.map(IpNet::V4),
            Family::V6 => self.ipv6_network.map(IpNet::V6),
        }
    }

    /// The enabled families' cluster networks, IPv4 first.
    pub fn networks(&self) -> impl Iterator<Item = IpNet> + '_ {
        Family::ALL.into_iter().filter_map(|f| self.network(f))
    }

    /// Reads and parses the file.
    pub fn load(path: &std::path::Path) -> Result<NetConf, NetConfError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("(file)", format!("cannot read {}: {e}", path.display())))?;
        NetConf::parse(&text)
    }
}

/// A cluster network field (`Network`, `IPv6Network`): present, of the
/// family, without host bits, and no smaller than `/max_prefix`.
fn cluster_network<N>(
    file: &Section<'_>,
    key: &str,
    family: &str,
    example: &str,
    max_prefix: u8,
) -> Result<N, NetConfError>
where
    N: std::str::FromStr + Copy + PartialEq + std::fmt::Display + Into<IpNet>,
{
    let s = file.string(key)?.ok_or_else(|| {
        err(
            key,
            format!("missing (the {family} cluster network, e.g. \"{example}\")"),
        )
    })?;
    let net: N = s
        .parse()
        .map_err(|_| err(key, format!("{s:?} is not an {family} CIDR")))?;
    let ip: IpNet = net.into();
    if ip.trunc() != ip {
        return Err(err(
            key,
            format!("{net} has host bits set (did you mean {}?)", ip.trunc()),
        ));
    }
    if ip.prefix_len() > max_prefix {
        return Err(err(key, format!("{net} is smaller than /{max_prefix}")));
    }
    Ok(net)
}

/// The first address of a subnet + its prefix, as `FLANNEL_SUBNET` and
/// `FLANNEL_IPV6_SUBNET` show it (`10.244.1.1/24`, `fc00:0:0:1::1/64`).
pub fn first_ip(subnet: IpNet) -> String {
    let first = match subnet.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    };
    format!("{first}/{}", subnet.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_overlay::VxlanConfig;

    #[test]
    fn flannel_default_manifest() {
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.network, Some("10.244.0.0/16".parse::<Ipv4Net>().unwrap()));
        assert_eq!(c.ipv6_network, None);
        assert!(!c.enable_nftables);
        assert_eq!(c.backend, BackendConfig::from(VxlanConfig::default()));
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn every_vxlan_field_and_case_insensitive_keys() {
        let c = NetConf::parse(
            r#"{"network":"10.1.0.0/16","enablenftables":true,"backend":{"type":"VXLAN","vni":4,"port":4789,"mtu":9001,"directrouting":true,"learning":true}}"#,
        )
        .unwrap();
        assert!(c.enable_nftables);
        assert_eq!(
            c.backend,
            BackendConfig::from(VxlanConfig {
                vni: 4,
                port: 4789,
                direct_routing: true,
                mtu: Some(9001),
                learning: true
            })
        );
        let c = NetConf::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","Port":0}}"#)
            .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::from(VxlanConfig::default()),
            "Port 0 = the kernel's 8472"
        );
        let c =
            NetConf::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(c.backend, BackendConfig::from(weft_overlay::HostGw));
        let c = NetConf::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"UDP"}}"#).unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::from(weft_overlay::UdpConfig::default())
        );
        let c = NetConf::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":8300}}"#)
            .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::from(weft_overlay::UdpConfig {
                port: 8300,
                kernel_path: true
            })
        );
        let c = NetConf::parse(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","KernelPath":false}}"#,
        )
        .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::from(weft_overlay::UdpConfig {
                port: 8285,
                kernel_path: false
            })
        );
        assert!(NetConf::parse(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","KernelPath":"no"}}"#
        )
        .is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("nope", "(file)"),
            ("[]", "(file)"),
            (r#"{"Backend":{"Type":"vxlan"}}"#, "Network"),
            (r#"{"Network":7}"#, "Network"),
            (r#"{"Network":"10.244.0.0/33"}"#, "Network"),
            (r#"{"Network":"10.244.0.1/16"}"#, "Network"),
            (r#"{"Network":"fc00::/48"}"#, "Network"),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::1/48"}"#,
                "IPv6Network",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/126"}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes","IPv6Network":"fc00::/48"}"#,
                "EnableIPv6",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}"#,
                "EnableIPv6",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":70000}}"#,
                "Backend.Port",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#,
                "EnableIPv4",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableNFTables":"yes"}"#,
                "EnableNFTables",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
                "Backend",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"bogus"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "Backend.Port",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":50}}"#,
                "Backend.MTU",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#,
                "Backend.GBP",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":1}}"#,
                "Backend.DirectRouting",
            ),
        ];
        for (text, field) in cases {
            let e = NetConf::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("net-conf.json: {field}: ")),
                "{e}"
            );
        }
        assert!(
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#)
                .unwrap_err()
                .reason
                .contains("does not support")
        );
    }

    #[test]
    fn etcd_only_windows_only_and_unknown_fields_are_reported_as_ignored() {
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Foo":1,"Backend":{"Type":"vxlan","MacPrefix":"0E-2A","Bar":2}}"#,
        )
        .unwrap();
        let joined = c.ignored.join("\n");
        for k in [
            "SubnetLen",
            "Foo: unknown field",
            "Backend.MacPrefix: Windows only",
            "Backend.Bar",
        ] {
            assert!(joined.contains(k), "{joined}");
        }
        let c = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.backend, BackendConfig::from(VxlanConfig::default()));
        assert!(c.ignored[0].starts_with("Backend: missing"));
    }

    #[test]
    fn first_ip_is_flannels_subnet_form() {
        assert_eq!(first_ip("10.244.1.0/24".parse().unwrap()), "10.244.1.1/24");
        assert_eq!(
            first_ip("fc00:0:0:1::/64".parse().unwrap()),
            "fc00:0:0:1::1/64"
        );
    }

    #[test]
    fn dual_stack_and_ipv6_only() {
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let nets: Vec<String> = c.networks().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.244.0.0/16", "fc00::/48"]);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = NetConf::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert_eq!(c.network(Family::V4), None);
        assert_eq!(
            c.network(Family::V6),
            Some("fc00::/48".parse::<IpNet>().unwrap())
        );
        // A field of a disabled family is reported, not used.
        let c = NetConf::parse(r#"{"Network":"10.244.0.0/16","IPv6Network":"fc00::/48"}"#).unwrap();
        assert_eq!(c.ipv6_network, None);
        assert!(
            c.ignored[0].starts_with("IPv6Network: IPv6 is disabled"),
            "{:?}",
            c.ignored
        );
        let c = NetConf::parse(
            r#"{"EnableIPv4":false,"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        )
        .unwrap();
        assert_eq!(c.network, None);
        assert!(
            c.ignored[0].starts_with("Network: IPv4 is disabled"),
            "{:?}",
            c.ignored
        );
    }
}
