//! flannel's `net-conf.json`, parsed in full.
//!
//! Keys are matched case-insensitively, as flannel's Go decoder does. Every
//! error names the field. Values weft does not support (IPv6, backends other
//! than vxlan and host-gw, GBP) are errors that say so; fields that only
//! flannel's etcd mode or Windows use are accepted and reported as ignored.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};
use weft_overlay::{BackendConfig, VxlanConfig};

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
    /// `Network`: the cluster network.
    pub network: Ipv4Net,
    /// `EnableNFTables`: native nftables for NAT.
    pub enable_nftables: bool,
    /// `Backend`.
    pub backend: BackendConfig,
    /// Fields that were accepted but have no effect in weft, with why.
    pub ignored: Vec<String>,
}

/// Looks a key up case-insensitively (an exact match wins).
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<(&'a str, &'a Value)> {
    obj.get_key_value(key)
        .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
        .map(|(k, v)| (k.as_str(), v))
}

fn boolean(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    default: bool,
) -> Result<bool, NetConfError> {
    match get(obj, key) {
        None | Some((_, Value::Null)) => Ok(default),
        Some((_, Value::Bool(b))) => Ok(*b),
        Some((_, v)) => Err(err(field, format!("{v} is not true or false"))),
    }
}

fn number(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<u64>, NetConfError> {
    match get(obj, key) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, v)) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(field, format!("{v} is not a non-negative integer"))),
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
        let mut ignored = Vec::new();

        if boolean(obj, "EnableIPv6", "EnableIPv6", false)? {
            return Err(err(
                "EnableIPv6",
                "IPv6 is not supported by weft yet (only IPv4 clusters)",
            ));
        }
        if !boolean(obj, "EnableIPv4", "EnableIPv4", true)? {
            return Err(err(
                "EnableIPv4",
                "false, but weft needs an IPv4 cluster network (IPv6 is not supported yet)",
            ));
        }
        let network = match get(obj, "Network") {
            None => {
                return Err(err(
                    "Network",
                    "missing (the cluster network, e.g. \"10.244.0.0/16\")",
                ))
            }
            Some((_, Value::String(s))) => s
                .parse::<Ipv4Net>()
                .map_err(|_| err("Network", format!("{s:?} is not an IPv4 CIDR")))?,
            Some((_, v)) => return Err(err("Network", format!("{v} is not a string"))),
        };
        if network.trunc() != network {
            return Err(err(
                "Network",
                format!(
                    "{network} has host bits set (did you mean {}?)",
                    network.trunc()
                ),
            ));
        }
        if network.prefix_len() > 28 {
            return Err(err("Network", format!("{network} is smaller than /28")));
        }
        let enable_nftables = boolean(obj, "EnableNFTables", "EnableNFTables", false)?;
        for key in [
            "SubnetLen",
            "SubnetMin",
            "SubnetMax",
            "IPv6SubnetLen",
            "IPv6SubnetMin",
            "IPv6SubnetMax",
        ] {
            if let Some((k, _)) = get(obj, key) {
                ignored.push(format!("{k}: only flannel's etcd subnet manager uses it; node subnets come from spec.podCIDR"));
            }
        }
        if let Some((k, _)) = get(obj, "IPv6Network") {
            ignored.push(format!("{k}: IPv6 is disabled (EnableIPv6 is false)"));
        }
        let known = [
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
        ];
        for k in obj
            .keys()
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
        {
            ignored.push(format!("{k}: unknown field"));
        }
        let backend = match get(obj, "Backend") {
            None | Some((_, Value::Null)) => {
                ignored.push("Backend: missing; weft uses vxlan (flannel's code would fall back to udp, which weft does not support)".into());
                BackendConfig::Vxlan(VxlanConfig::default())
            }
            Some((_, Value::Object(b))) => backend(b, &mut ignored)?,
            Some((_, v)) => return Err(err("Backend", format!("{v} is not an object"))),
        };
        Ok(NetConf {
            network,
            enable_nftables,
            backend,
            ignored,
        })
    }

    /// Reads and parses the file.
    pub fn load(path: &std::path::Path) -> Result<NetConf, NetConfError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("(file)", format!("cannot read {}: {e}", path.display())))?;
        NetConf::parse(&text)
    }
}

fn backend(
    b: &Map<String, Value>,
    ignored: &mut Vec<String>,
) -> Result<BackendConfig, NetConfError> {
    let kind = match get(b, "Type") {
        None => return Err(err("Backend.Type", "missing (vxlan or host-gw)")),
        Some((_, Value::String(s))) => s.to_ascii_lowercase(),
        Some((_, v)) => return Err(err("Backend.Type", format!("{v} is not a string"))),
    };
    let extra = |known: &[&str], ignored: &mut Vec<String>| {
        for k in b
            .keys()
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
        {
            ignored.push(format!("Backend.{k}: not used by the {kind} backend"));
        }
    };
    match kind.as_str() {
        "vxlan" => {
            let mut c = VxlanConfig::default();
            if let Some(vni) = number(b, "VNI", "Backend.VNI")? {
                if vni == 0 || vni > 0x00ff_ffff {
                    return Err(err(
                        "Backend.VNI",
                        format!("{vni} is not a VXLAN network identifier (1 to 16777215)"),
                    ));
                }
                c.vni = u32::try_from(vni).unwrap_or(1);
            }
            if let Some(port) = number(b, "Port", "Backend.Port")? {
                c.port = match port {
                    0 => weft_overlay::model::DEFAULT_VXLAN_PORT,
                    p => u16::try_from(p)
                        .map_err(|_| err("Backend.Port", format!("{p} is not a UDP port")))?,
                };
            }
            if let Some(mtu) = number(b, "MTU", "Backend.MTU")? {
                if !(68 + 50..=65535).contains(&mtu) {
                    return Err(err(
                        "Backend.MTU",
                        format!("{mtu} is not a usable MTU (118 to 65535)"),
                    ));
                }
                c.mtu = u32::try_from(mtu).ok();
            }
            c.direct_routing = boolean(b, "DirectRouting", "Backend.DirectRouting", false)?;
            c.learning = boolean(b, "Learning", "Backend.Learning", false)?;
            if boolean(b, "GBP", "Backend.GBP", false)? {
                return Err(err(
                    "Backend.GBP",
                    "VXLAN group-based policy is not supported by weft",
                ));
            }
            for k in ["MacPrefix", "Name"] {
                if let Some((k, _)) = get(b, k) {
                    ignored.push(format!("Backend.{k}: Windows only"));
                }
            }
            extra(
                &[
                    "Type",
                    "VNI",
                    "Port",
                    "MTU",
                    "DirectRouting",
                    "Learning",
                    "GBP",
                    "MacPrefix",
                    "Name",
                ],
                ignored,
            );
            Ok(BackendConfig::Vxlan(c))
        }
        "host-gw" => {
            extra(&["Type"], ignored);
            Ok(BackendConfig::HostGw)
        }
        "udp" | "ipip" | "wireguard" | "ipsec" | "alloc" | "extension" | "tencent-vpc"
        | "alivpc" | "aws-vpc" | "gce" => Err(err(
            "Backend.Type",
            format!(
                "{kind:?} is a flannel backend that weft does not support (use vxlan or host-gw)"
            ),
        )),
        other => Err(err(
            "Backend.Type",
            format!("{other:?} is not a backend (vxlan or host-gw)"),
        )),
    }
}

/// The first address of a subnet + its prefix, as `FLANNEL_SUBNET` shows it (`10.244.1.1/24`).
pub fn first_ip(subnet: Ipv4Net) -> String {
    format!(
        "{}/{}",
        Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1)),
        subnet.prefix_len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_default_manifest() {
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.network, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
        assert!(!c.enable_nftables);
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
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
            BackendConfig::Vxlan(VxlanConfig {
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
            BackendConfig::Vxlan(VxlanConfig::default()),
            "Port 0 = the kernel's 8472"
        );
        let c =
            NetConf::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(c.backend, BackendConfig::HostGw);
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
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
                "EnableIPv6",
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
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
        assert!(c.ignored[0].starts_with("Backend: missing"));
    }

    #[test]
    fn first_ip_is_flannels_subnet_form() {
        assert_eq!(first_ip("10.244.1.0/24".parse().unwrap()), "10.244.1.1/24");
    }
}
