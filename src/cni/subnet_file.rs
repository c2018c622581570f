//! Reading `/run/flannel/subnet.env` (written by weftd, see
//! [`crate::subnet_env`], or by flanneld) as flannel's CNI plugin does:
//! one `KEY=VALUE` per line; `FLANNEL_NETWORK`/`FLANNEL_IPV6_NETWORK` may be
//! comma-separated lists; `FLANNEL_SUBNET` is taken as its network
//! (`10.244.1.1/24` → `10.244.1.0/24`). Unknown keys are ignored.
//!
//! Stricter than flannel: `FLANNEL_IPMASQ` must be `true` or `false`,
//! `FLANNEL_MTU` a number from 68 to 65535, families must match the keys.
//! Every error names the file, the key and the line, and sends the user to
//! the weftd pod, whose job it is to write the file.

use std::path::Path;

use super::error::{code, CniError};
use super::types::Cidr;

/// What the subnet file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    /// `FLANNEL_NETWORK`: the IPv4 cluster network(s).
    pub networks: Vec<Cidr>,
    /// `FLANNEL_SUBNET` as a network: this node's IPv4 pod subnet.
    pub subnet: Option<Cidr>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_networks: Vec<Cidr>,
    /// `FLANNEL_IPV6_SUBNET` as a network.
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
        let (mut nws, mut sn, mut nws6, mut sn6, mut mtu, mut ipmasq) =
            (Vec::new(), None, Vec::new(), None, None, None);
        for (n, line) in text.lines().enumerate() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |why: &str| invalid(path, format!("line {}: {key}={value:?} {why}", n + 1));
            let cidr = |v: &str, v4: bool| -> Result<Cidr, CniError> {
                let c: Cidr = v.trim().parse().map_err(|_| bad("is not a valid CIDR"))?;
                if c.is_ipv4() != v4 {
                    return Err(bad(if v4 { "is not IPv4" } else { "is not IPv6" }));
                }
                Ok(c)
            };
            let list = |v4: bool| -> Result<Vec<Cidr>, CniError> {
                let mut out: Vec<Cidr> = Vec::new();
                for item in value.split(',') {
                    let c = cidr(item, v4)?.network();
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
                Ok(out)
            };
            match key {
                "FLANNEL_NETWORK" => nws = list(true)?,
                "FLANNEL_IPV6_NETWORK" => nws6 = list(false)?,
                "FLANNEL_SUBNET" => sn = Some(cidr(value, true)?.network()),
                "FLANNEL_IPV6_SUBNET" => sn6 = Some(cidr(value, false)?.network()),
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
        let mut missing = Vec::new();
        if nws.is_empty() && nws6.is_empty() {
            missing.push("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK)");
        }
        if sn.is_none() && sn6.is_none() {
            missing.push("FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)");
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        for (key, subnet, net_key, networks) in [
            ("FLANNEL_SUBNET", sn, "FLANNEL_NETWORK", &nws),
            ("FLANNEL_IPV6_SUBNET", sn6, "FLANNEL_IPV6_NETWORK", &nws6),
        ] {
            if let Some(subnet) = subnet.filter(|_| !networks.is_empty()) {
                if !networks.iter().any(|n| n.contains(&subnet)) {
                    let nets: Vec<String> = networks.iter().map(ToString::to_string).collect();
                    return Err(invalid(
                        path,
                        format!(
                            "{key}={subnet} is not inside {net_key}={}",
                            if nets.is_empty() {
                                "(unset)".into()
                            } else {
                                nets.join(",")
                            }
                        ),
                    ));
                }
            }
        }
        match (mtu, ipmasq) {
            (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(SubnetFile {
                networks: nws,
                subnet: sn,
                ipv6_networks: nws6,
                ipv6_subnet: sn6,
                mtu,
                ipmasq,
            }),
            _ => Err(invalid(path, format!("missing {}", missing.join(", ")))),
        }
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
